"""Everything that runs or inspects a model, in one place.

- running: :func:`run_model`, :func:`preserve_state` (modes and buffers restored), :func:`fork_rng`,
  :func:`refuse_meta` (a model without values says so before anything runs);
- the one batch convention (:func:`is_batch`, :func:`split_batch`, :func:`iter_batches`);
- non-finite diagnosis: :func:`first_nonfinite_layer`, :func:`nonfinite_error`, :func:`check_finite`;
- the one forward-hook tracer, :func:`forward_hooks`, and what is built on it: :func:`call_order`;
- input inference (:func:`infer_example_input`) and meta stand-ins (:func:`meta_stand_ins`), so a
  trace can run without real inputs or without arithmetic;
- the torch.fx tracer that reads a model into its :class:`~emergeinit.emergence.LayerGraph`
  (:func:`trace_fx`) and its one fallback policy (:func:`fx_or_warn`).

Nothing here knows about emergence counts or initialization: callers pass in what to look for.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (
    Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Protocol, Set, Tuple,
)

import torch
from torch import fx, nn

from emergeinit.emergence import LayerEdge, LayerGraph, LayerNode

__all__ = [
    "run_model",
    "preserve_state",
    "fork_rng",
    "refuse_meta",
    "Batch",
    "is_batch",
    "split_batch",
    "iter_batches",
    "NonFiniteError",
    "has_nonfinite",
    "first_nonfinite_layer",
    "nonfinite_error",
    "check_finite",
    "forward_hooks",
    "call_order",
    "candidate_inputs",
    "infer_example_input",
    "meta_stand_ins",
    "to_meta",
    "WEIGHT_MODULES",
    "ELEMENTWISE_MODULES",
    "LayerRead",
    "FxLayers",
    "trace_fx",
    "fx_or_warn",
]

WEIGHT_MODULES: Tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)
"""Modules whose output units (Linear) or channels (ConvNd, transposed included) are nodes."""

ELEMENTWISE_MODULES: Tuple[type, ...] = tuple(
    t for t in (
        getattr(nn, name, None) for name in (
            "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
            "Mish", "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus",
            "Softsign", "Tanhshrink", "Threshold", "LogSigmoid", "Hardshrink", "Softshrink",
            "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
            "FeatureAlphaDropout", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm",
        )
    ) if t is not None
) + (nn.modules.batchnorm._NormBase,)  # BatchNorm*, InstanceNorm*
"""Activation, dropout and normalization modules: a layer's nodes are read after a run of them."""


# ------------------------------------------------------------------------------------- running

def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on a tensor, a tuple of positional arguments, or a dict of keywords."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


@contextmanager
def preserve_state(model: nn.Module, *, buffers: bool = True) -> Iterator[None]:
    """Restore every module's train/eval flag and (``buffers``) every buffer, such as BN statistics,
    on exit, also when the body raises."""
    modes = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers() if b.device.type != "meta"] if buffers else []
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def fork_rng(model: nn.Module) -> Any:
    """``torch.random.fork_rng`` over the CPU and every CUDA device holding ``model``'s parameters:
    random draws inside leave the user's random state as it was."""
    return torch.random.fork_rng(devices=sorted({p.get_device() for p in model.parameters() if p.is_cuda}))


def refuse_meta(model: nn.Module, what: str) -> None:
    """A ValueError when ``model`` holds meta tensors: ``what`` (e.g. "measure_emergence") needs
    weights with values, and torch's own error ("Cannot copy out of meta tensor") says too little."""
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise ValueError(
            f"{what} needs weights with values, but {type(model).__name__} has {len(on_meta)} tensors on "
            f"the meta device ({', '.join(on_meta[:3])}{', ...' if len(on_meta) > 3 else ''}): "
            "materialize it first (model.to_empty(device=...), then an init)"
        )


@contextmanager
def _eval_without_grad(model: nn.Module) -> Iterator[None]:
    with preserve_state(model), torch.no_grad():
        model.eval()
        yield


# ------------------------------------------------------------------------------------- batches

Batch = Tuple[Any, Optional[torch.Tensor]]
"""``(inputs, targets)``: inputs a tensor or a dict of keywords, targets a tensor or None."""


def is_batch(data: Any) -> bool:
    """One batch, by the library's one convention: a tensor, a dict of keywords, or a pair
    ``(inputs, targets)`` (tuple or list, as a DataLoader yields it) whose inputs are a tensor or a
    dict and whose targets are a tensor or None. Anything else is read as an iterable of batches."""
    if isinstance(data, (torch.Tensor, dict)):
        return True
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], (torch.Tensor, dict))
        and (data[1] is None or isinstance(data[1], torch.Tensor))
    )


def split_batch(batch: Any) -> Batch:
    """``(inputs, targets)`` of one batch (targets None for a bare input); a ValueError otherwise."""
    if not is_batch(batch):
        got = type(batch).__name__ + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise ValueError(
            f"a batch must be a tensor, a dict of keywords or a pair (inputs, targets), got {got}"
        )
    if isinstance(batch, (torch.Tensor, dict)):
        return batch, None
    return batch[0], batch[1]


def iter_batches(data: Any) -> Iterator[Batch]:
    """``data`` as ``(inputs, targets)`` batches: one batch (:func:`is_batch`: a pair of tensors is
    one batch, never two), or an iterable of batches (a DataLoader, a generator, a list)."""
    if is_batch(data):
        yield split_batch(data)
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ValueError(f"expected a batch or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        yield split_batch(batch)


# ----------------------------------------------------------------------------- non-finite values

class NonFiniteError(FloatingPointError):
    """A loss, a layer's values or a gradient is NaN/inf; the message names the first layer whose
    output went bad (or the input)."""


def has_nonfinite(value: Any) -> bool:
    """Whether a floating-point tensor in ``value`` (tuples, lists and dicts searched) holds NaN/inf."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return any(has_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(has_nonfinite(v) for v in value.values())
    return False


def first_nonfinite_layer(model: nn.Module, x: Any) -> Optional[str]:
    """Name of the first leaf module (in execution order) whose output holds NaN/inf on ``x`` (one
    forward, no grad, in the model's current mode); ``"<input>"`` when the input already does; None
    when none does."""
    if has_nonfinite(x):
        return "<input>"
    names = {id(m): n for n, m in model.named_modules()}
    found: List[str] = []

    def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not found and has_nonfinite(output):
            found.append(names[id(module)] or type(module).__name__)

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    with forward_hooks(leaves, post=hook), torch.no_grad():
        run_model(model, x)
    return found[0] if found else None


def nonfinite_error(what: str, model: nn.Module, x: Any) -> NonFiniteError:
    """The error for ``what`` (a sentence: "gradinit: the loss at the start is nan"), with where the
    values first went bad when ``model`` runs on ``x``."""
    layer = first_nonfinite_layer(model, x)
    where = (
        "the input batch is not finite" if layer == "<input>"
        else f"first non-finite output: layer {layer!r}" if layer
        else "every layer output is finite: the loss function or the backward pass made it"
    )
    return NonFiniteError(f"{what} ({where})")


def check_finite(value: torch.Tensor, what: str, model: nn.Module, x: Any) -> None:
    """Raise :func:`nonfinite_error` when ``value`` holds NaN/inf (``what`` names it: "the loss")."""
    value = value.detach()
    bad = value[~torch.isfinite(value)]
    if bad.numel():
        raise nonfinite_error(f"{what} is {bad.flatten()[0].item()}", model, x)


# ------------------------------------------------------------------------------ the hook tracer

PreHook = Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any]], None]
PostHook = Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any], Any], None]


@contextmanager
def _attention_fastpath_off() -> Iterator[None]:
    """Eval-mode transformer layers may skip their Linear modules (a fused fast path): off inside."""
    mha = getattr(torch.backends, "mha", None)
    was = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(was)


def _observing(hook: Callable[..., Any]) -> Callable[..., None]:
    """``hook`` with its return value dropped: a returned value would replace the module's inputs
    or output."""
    def observe(*args: Any) -> None:
        hook(*args)

    return observe


@contextmanager
def forward_hooks(modules: Iterable[nn.Module], *, pre: Optional[PreHook] = None,
                  post: Optional[PostHook] = None) -> Iterator[None]:
    """Call ``pre(module, args, kwargs)`` before and ``post(module, args, kwargs, output)`` after
    every forward of ``modules`` inside the block; the hooks only observe, the attention fast path
    is off so nested Linear modules run, and every hook is removed on exit, also when the forward
    raises."""
    handles = []
    try:
        with _attention_fastpath_off():
            for m in modules:
                if pre is not None:
                    handles.append(m.register_forward_pre_hook(_observing(pre), with_kwargs=True))
                if post is not None:
                    handles.append(m.register_forward_hook(_observing(post), with_kwargs=True))
            yield
    finally:
        for h in handles:
            h.remove()


def call_order(model: nn.Module, modules: Iterable[nn.Module], example_input: Any = None) -> List[nn.Module]:
    """``modules`` in the order one forward of ``model`` first calls them (eval mode, no grad; modes
    and buffers restored). Without ``example_input`` each inferred candidate is tried inside the
    hooked forward itself, so the trace costs one pass."""
    calls: List[nn.Module] = []
    with forward_hooks(modules, pre=lambda m, args, kwargs: calls.append(m)):
        if example_input is None:
            _first_accepted(model, candidate_inputs(model), before_each=calls.clear)
        else:
            with _eval_without_grad(model):
                try:
                    run_model(model, example_input)
                except Exception as err:  # the user's forward: say what we were doing
                    raise ValueError(
                        f"tracing {type(model).__name__} on the example input failed "
                        f"({type(err).__name__}: {err}); pass an example_input its forward accepts"
                    ) from err
    return list({id(m): m for m in calls}.values())  # first calls, in order


# ------------------------------------------------------------------------------ input inference

def candidate_inputs(model: nn.Module, batch: int = 2) -> Iterator[torch.Tensor]:
    """Inputs shaped for each Linear/Conv in registration order (Conv: 32-pixel sides), until an
    embedding or attention module (those need real inputs)."""
    seen: Set[Tuple[int, ...]] = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)):
            return
        if isinstance(module, WEIGHT_MODULES):
            w = module.weight
            if isinstance(module, nn.Linear):
                shape: Tuple[int, ...] = (batch, module.in_features)
            else:
                shape = (batch, module.in_channels, *([32] * (w.dim() - 2)))
            if shape not in seen:
                seen.add(shape)
                yield torch.randn(shape, device=w.device, dtype=w.dtype)


def _first_accepted(model: nn.Module, candidates: Iterable[Any],
                    before_each: Callable[[], None] = lambda: None) -> Any:
    """The first candidate ``model``'s forward accepts (eval mode, no grad, state restored)."""
    with _eval_without_grad(model):
        for candidate in candidates:
            before_each()
            try:
                run_model(model, candidate)
                return candidate
            except Exception:  # noqa: BLE001 - a rejected candidate: try the next
                continue
    raise ValueError(
        f"cannot infer an input for {type(model).__name__} from its layers (embeddings and "
        "attention need real inputs); pass example_input="
    )


def infer_example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """An input ``model`` accepts, shaped from its Linear/Conv layers (:func:`candidate_inputs`);
    a ValueError asks for a real input when none fits."""
    return _first_accepted(model, candidate_inputs(model, batch))


# ------------------------------------------------------------------------------ meta stand-ins

@contextmanager
def meta_stand_ins(model: nn.Module) -> Iterator[None]:
    """Temporarily replace every parameter and buffer by a meta tensor of the same shape (ties
    kept), so a trace does no arithmetic and no pass over the weights; restored on exit."""
    twins: Dict[int, torch.Tensor] = {}
    saved: List[Tuple[Dict[str, Any], str, torch.Tensor]] = []
    try:
        for m in model.modules():
            for store in (m._parameters, m._buffers):
                for name, t in list(store.items()):
                    if t is None:
                        continue
                    if id(t) not in twins:
                        twin = t.detach().to("meta")
                        if isinstance(t, nn.Parameter):
                            twin = nn.Parameter(twin, requires_grad=t.requires_grad)
                        twins[id(t)] = twin
                    saved.append((store, name, t))
                    store[name] = twins[id(t)]
        yield
    finally:
        for store, name, t in reversed(saved):
            store[name] = t


def to_meta(x: Any) -> Any:
    """Tensors (inside tuples, lists and dicts too) moved to the meta device."""
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (tuple, list)):
        return type(x)(to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: to_meta(v) for k, v in x.items()}
    return x


# ------------------------------------------------------------------------- fx: op classification

_ELEMENTWISE_NAMES = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign",
    "tanhshrink", "threshold", "logsigmoid", "hardshrink", "softshrink", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "batch_norm",
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "clamp", "clip", "clamp_min",
    "clamp_max", "add", "sub", "mul", "div", "true_divide", "truediv", "neg", "contiguous",
}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_MIXING_NAMES = {
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum",
    "scaled_dot_product_attention", "multi_head_attention_forward", "embedding",
}
_METADATA_METHODS = {"size", "dim", "numel", "type", "get_device", "element_size", "nelement"}
_Modules = Dict[str, nn.Module]


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", "")


def _base_name(node: fx.Node) -> str:
    """``relu_`` -> ``relu``, ``__add__`` -> ``add``, ``iadd`` -> ``add``."""
    name = _target_name(node).strip("_")
    if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
        name = name[1:]
    return name


def _is_metadata(node: fx.Node) -> bool:
    """Users that read a shape or a dtype, not the values."""
    if node.op == "call_method" and node.target in _METADATA_METHODS:
        return True
    return node.op == "call_function" and node.target in (getattr, len)


def _is_elementwise(node: fx.Node, modules: _Modules) -> bool:
    """Elementwise or normalization ops: a layer's nodes are read after a run of them."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), ELEMENTWISE_MODULES)
    if node.op in ("call_function", "call_method"):
        return _base_name(node) in _ELEMENTWISE_NAMES
    return False


def _is_inplace(node: fx.Node, modules: _Modules) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
        return True
    name = _target_name(node)
    if node.op in ("call_function", "call_method") and name.endswith("_") and not name.endswith("__"):
        return True
    if node.op == "call_function" and callable(node.target):
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return node.kwargs.get("inplace") is True
        return bound.arguments.get("inplace") is True
    return False


def _is_mixing(node: fx.Node, modules: _Modules) -> bool:
    """Ops that connect every input node to every output node (weights, attention)."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return m is not None and any(  # parameters outside normalization layers: weights
            True for sub in m.modules() if not isinstance(sub, ELEMENTWISE_MODULES)
            for _ in sub.parameters(recurse=False)
        )
    if node.op in ("call_function", "call_method"):
        return _base_name(node) in _MIXING_NAMES
    return False


class _Tracer(fx.Tracer):
    """Traces into every module that holds a weight layer; everything else is one opaque call
    (parameter-free helpers such as padded shortcuts need not be traceable)."""

    _LEAVES = WEIGHT_MODULES + (nn.MultiheadAttention,)

    def __init__(self) -> None:
        super().__init__()
        self._holds: Dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self._LEAVES):
            return True
        if id(m) not in self._holds:
            self._holds[id(m)] = any(isinstance(x, self._LEAVES) for x in m.modules())
        return not self._holds[id(m)]


def _follow(start: fx.Node, pos: Dict[fx.Node, int], modules: _Modules) -> Tuple[fx.Node, List[fx.Node]]:
    """From a weight-layer call, walk the run of elementwise ops that only it feeds; returns the
    node to read after, and every node on the run (in-place ops on the value included)."""
    run = [start]
    node = start
    while True:
        aliases = [node]
        grew = True
        while grew:  # in-place elementwise ops on the value, when nothing else read it before them
            grew = False
            users = [u for a in aliases for u in a.users if u not in aliases and not _is_metadata(u)]
            for u in sorted(set(users), key=pos.__getitem__):
                if _is_inplace(u, modules) and _is_elementwise(u, modules) and u.args and u.args[0] in aliases:
                    if all(pos[o] > pos[u] for o in users if o is not u):
                        aliases.append(u)
                        grew = True
                break  # only the earliest user may extend the alias set
        run.extend(aliases[1:])
        read = max(aliases, key=pos.__getitem__)
        others = {u for a in aliases for u in a.users if u not in aliases and not _is_metadata(u)}
        if len(others) == 1:
            (nxt,) = others
            if _is_elementwise(nxt, modules):
                node = nxt
                run.append(nxt)
                continue
        return read, run


# ----------------------------------------------------------------------- fx: the layer graph

class TracedLayer(Protocol):
    """What the fx tracer reads of a weight layer (:class:`emergeinit.layers.WeightLayer` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def out_nodes(self) -> int: ...

    @property
    def in_nodes(self) -> int: ...


@dataclass(frozen=True)
class LayerRead:
    """Where a layer node's values are read in the traced graph."""

    node: fx.Node  # the value holding the nodes (after the elementwise run)
    kind: str  # "linear": units on the last dim; "conv": channels on dim 1
    before: Optional[fx.Node] = None  # the input node: read as this call receives it


@dataclass
class FxLayers:
    """A model traced by torch.fx into its layer graph, and where each layer node is read."""

    module: fx.GraphModule  # shares the model's submodules
    reads: List[LayerRead]  # one per node of ``graph``
    graph: LayerGraph
    probed: FrozenSet[str]  # keys of the weight layers the graph reads (before include_output)

    def tapped(self, record: Callable[[int, Any], None]) -> fx.GraphModule:
        """The traced module, changed in place so that each forward calls ``record(i, value)`` with
        the values of layer node i: one call per node, no hook on the model."""
        gm, graph = self.module, self.module.graph
        for i, read in enumerate(self.reads):
            target = f"_emergeinit_tap_{i}"
            gm.add_submodule(target, _Tap(record, i))
            before = read.before is not None
            with graph.inserting_before(read.before) if before else graph.inserting_after(read.node):
                graph.call_module(target, (read.node,))
        gm.recompile()
        return gm


class _Tap(nn.Module):
    def __init__(self, record: Callable[[int, Any], None], index: int):
        super().__init__()
        self.record, self.index = record, index

    def forward(self, x: Any) -> None:
        self.record(self.index, x)


_INPUT = -1  # the model input, as a source of edges


@dataclass
class _Group:
    """One layer node: the value its network nodes are read from and the calls that write them."""

    read: fx.Node
    kind: str
    width: int
    calls: List[fx.Node] = field(default_factory=list)
    layers: List[TracedLayer] = field(default_factory=list)
    names: List[str] = field(default_factory=list)


class _Walk:
    """The traced graph, its weight-layer calls grouped by the value their elementwise run ends at."""

    def __init__(self, gm: fx.GraphModule, layers: Mapping[int, TracedLayer]):
        self.modules: _Modules = dict(gm.named_modules())
        self.layers = layers
        nodes = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(nodes)}
        self.owner: Dict[fx.Node, fx.Node] = {}  # every node on a run -> the run's read node
        self.groups = self._group_calls(nodes)
        self.index = {g.read: i for i, g in enumerate(self.groups)}

    def layer_of(self, node: fx.Node) -> Optional[TracedLayer]:
        """The weight layer a ``call_module`` node runs (attention modules are not probed)."""
        m = self.modules.get(str(node.target)) if node.op == "call_module" else None
        return None if m is None or isinstance(m, nn.MultiheadAttention) else self.layers.get(id(m))

    def _group_calls(self, nodes: List[fx.Node]) -> List[_Group]:
        by_read: Dict[fx.Node, _Group] = {}
        uses: Dict[str, int] = {}
        for call in nodes:
            layer = self.layer_of(call)
            if layer is None:
                continue
            read, run = _follow(call, self.pos, self.modules)
            for n in run:
                self.owner.setdefault(n, read)
            uses[layer.key] = uses.get(layer.key, 0) + 1
            group = by_read.setdefault(read, _Group(read, layer.kind, layer.out_nodes))
            group.calls.append(call)
            group.layers.append(layer)
            group.names.append(str(call.target) if uses[layer.key] == 1 else f"{call.target}#{uses[layer.key]}")
        return sorted(by_read.values(), key=lambda g: self.pos[g.read])

    def sources(self, start: fx.Node) -> Dict[int, bool]:
        """Groups (or ``_INPUT``) that feed ``start`` without crossing another weight layer; True
        where the way crosses a mixing op (attention, a functional linear)."""
        found: Dict[int, bool] = {}
        stack = [(start, False)]
        visited: Set[Tuple[fx.Node, bool]] = set()
        while stack:
            node, mixed = stack.pop()
            if (node, mixed) in visited:
                continue
            visited.add((node, mixed))
            if node in self.owner:
                g = self.index[self.owner[node]]
                found[g] = found.get(g, False) or mixed
            elif node.op == "placeholder":
                found[_INPUT] = found.get(_INPUT, False) or mixed
            elif node.op not in ("get_attr", "output"):
                m = mixed or _is_mixing(node, self.modules)
                stack.extend((a, m) for a in node.all_input_nodes)
        return found

    def edges(self) -> Tuple[Dict[Tuple[int, int], str], Optional[fx.Node]]:
        """Edges between groups, ``full`` winning over ``identity``, and the first call that reads
        the model input."""
        edges: Dict[Tuple[int, int], str] = {}
        input_call: Optional[fx.Node] = None
        for gi, g in enumerate(self.groups):
            for call in g.calls:  # what the layer reads: every source node feeds every node
                arg = call.args[0] if call.args else None
                for src in self.sources(arg) if isinstance(arg, fx.Node) else ():
                    if src == _INPUT and (input_call is None or self.pos[call] < self.pos[input_call]):
                        input_call = call
                    _add_edge(edges, src, gi, "full")
            for n in [n for n, r in self.owner.items() if r is g.read and n not in g.calls]:
                for arg in n.all_input_nodes:  # skip connections merging into the run (residual adds)
                    if self.owner.get(arg) is g.read or arg.op == "get_attr":
                        continue
                    for src, mixed in self.sources(arg).items():
                        _add_edge(edges, src, gi, "full" if mixed else "identity")
        return edges, input_call


def _add_edge(edges: Dict[Tuple[int, int], str], src: int, dst: int, kind: str) -> None:
    if src != dst and edges.get((src, dst)) != "full":
        edges[(src, dst)] = kind


def trace_fx(model: nn.Module, layers: Mapping[int, TracedLayer], *, include_input: bool = False,
             include_output: bool = True) -> FxLayers:
    """Trace ``model`` with torch.fx (no forward runs) into its layer graph.

    ``layers`` maps ``id(module)`` to the weight layer it runs (Linear/Conv; every module of a tied
    weight). One graph node per value a set of layers writes, read after their elementwise run;
    edges through a weight layer or a mixing op are ``full``, parameter-free skips ``identity``.
    ``include_input`` adds the first layer's input as node 0; ``include_output=False`` drops the
    nodes nothing reads from (the logits). Raises whatever fx raises on an untraceable forward.
    """
    tracer = _Tracer()
    fx_graph = tracer.trace(model)  # sets tracer.root
    gm = fx.GraphModule(tracer.root, fx_graph, type(model).__name__)
    walk = _Walk(gm, layers)
    edges, input_call = walk.edges()
    reads: List[LayerRead] = []
    nodes: List[LayerNode] = []
    remap: Dict[int, int] = {}  # group (or _INPUT) -> graph node
    if include_input and input_call is not None:
        first = walk.layer_of(input_call)
        assert first is not None and isinstance(input_call.args[0], fx.Node)
        remap[_INPUT] = 0
        reads.append(LayerRead(input_call.args[0], first.kind, before=input_call))
        nodes.append(LayerNode("input", first.in_nodes, (), "input"))
    read_from = {s for (s, _) in edges}
    for gi, g in enumerate(walk.groups):
        if include_output or gi in read_from:
            remap[gi] = len(nodes)
            reads.append(LayerRead(g.read, g.kind))
            nodes.append(LayerNode("+".join(g.names), g.width, tuple(l.key for l in g.layers), g.kind))
    graph_edges = sorted(
        (LayerEdge(remap[s], remap[d], k) for (s, d), k in edges.items() if s in remap and d in remap),
        key=lambda e: (e.dst, e.src),
    )
    probed = frozenset(l.key for g in walk.groups for l in g.layers)
    return FxLayers(gm, reads, LayerGraph(tuple(nodes), tuple(graph_edges)), probed)


def fx_or_warn(model: nn.Module, layers: Mapping[int, TracedLayer], *, include_input: bool,
               include_output: bool, instead: str) -> Optional[FxLayers]:
    """The one fallback policy: :func:`trace_fx`, or, when fx cannot trace the model (data-dependent
    control flow), a warning that says what the caller does ``instead`` and None."""
    try:
        return trace_fx(model, layers, include_input=include_input, include_output=include_output)
    except Exception as err:  # noqa: BLE001 - any fx failure falls back
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({type(err).__name__}: {err}); {instead}",
            stacklevel=3,
        )
        return None
