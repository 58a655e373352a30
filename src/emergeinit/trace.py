"""Everything that runs or inspects a model, in one place.

- running: :func:`run_model`, :func:`preserve_state` (modes and buffers restored), :func:`fork_rng`,
  :func:`refuse_meta` (a model without values says so before anything runs);
- the one batch convention (:func:`is_batch`, :func:`split_batch`, :func:`iter_batches`);
- non-finite diagnosis: :func:`first_nonfinite_layer`, :func:`nonfinite_error`, :func:`check_finite`;
- the one forward-hook tracer, :func:`forward_hooks`, and what is built on it: :func:`call_order`;
- input inference (:func:`infer_example_input`) and meta stand-ins (:func:`meta_stand_ins`), so a
  trace can run without real inputs or without arithmetic;
- the torch.fx tracer that reads a model into its :class:`~emergeinit.emergence.LayerGraph`
  (:func:`trace_fx`); the recorded forward (:func:`record_tape`, a ``TorchFunctionMode`` plus
  module hooks writing one run into an fx.Graph), which reads the same graph from models fx
  cannot trace; and the one policy choosing between them (:func:`layers_traced_or_recorded`).

Nothing here knows about emergence counts or initialization: callers pass in what to look for.
"""

from __future__ import annotations

import inspect
import itertools
import operator
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (
    Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Protocol, Set, Tuple, Union,
)

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from emergeinit.emergence import LayerEdge, LayerGraph, LayerNode

__all__ = [
    "run_model",
    "preserve_state",
    "fork_rng",
    "refuse_meta",
    "structure_key",
    "input_signature",
    "Batch",
    "is_batch",
    "split_batch",
    "warn_if_two_inputs",
    "iter_batches",
    "to_device",
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
    "PathChanged",
    "Tape",
    "record_tape",
    "TapeLayers",
    "layers_traced_or_recorded",
    "Residual",
    "residual_branches",
    "written_nodes",
    "modules_running",
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
            if m.training != mode:  # nn.Module.__setattr__ is slow; most flags are unchanged
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
    if not any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        return
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise ValueError(
            f"{what} needs weights with values, but {type(model).__name__} has {len(on_meta)} tensors on "
            f"the meta device ({', '.join(on_meta[:3])}{', ...' if len(on_meta) > 3 else ''}): "
            "materialize it first (model.to_empty(device=...), then an init)"
        )


# ----------------------------------------------------------------------- what a trace depends on

_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}
"""Attributes every nn.Module has (hook dicts, the parameter/buffer/child stores): not fingerprinted
as plain attributes (parameters, buffers and children are, on their own)."""

_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, type)
_PLAIN_TYPES = frozenset(_PLAIN)  # exact types, for a check without a call on most attributes


def _tensor_print(t: torch.Tensor, pins: List[Any]) -> Tuple[Any, ...]:
    pins.append(t)
    return (id(t), tuple(t.shape), t.dtype, t.device, t.requires_grad)


def _attribute_print(value: Any, pins: List[Any], depth: int = 0) -> Any:
    """A plain attribute's value as it can change what a forward does: numbers, strings, dtypes by
    value; tuples, lists and dicts of them by content (two levels deep); tensors by identity and
    shape; any other object by identity (kept alive in ``pins``, so the identity is not reused)."""
    if isinstance(value, _PLAIN):
        return value
    if type(value) is tuple and all(type(v) in _PLAIN_TYPES for v in value):  # kernel sizes, strides
        return ("tuple", value)
    if isinstance(value, torch.Tensor):
        return ("tensor",) + _tensor_print(value, pins)
    if depth < 2 and isinstance(value, (tuple, list)):
        return (type(value).__name__,) + tuple(_attribute_print(v, pins, depth + 1) for v in value)
    if depth < 2 and isinstance(value, dict):
        return ("dict",) + tuple((k if isinstance(k, _PLAIN) else id(k), _attribute_print(v, pins, depth + 1))
                                 for k, v in value.items())
    pins.append(value)
    return ("object", id(value))


def structure_key(model: nn.Module) -> Tuple[Tuple[Any, ...], List[Any]]:
    """(key, pins): a hashable fingerprint of everything a trace of ``model`` depends on, and the
    objects the key holds by identity (keep them alive with the trace, so no identity is reused).

    Per module (``named_modules`` order): its name, identity (not the root's: a cache keys on the
    root already), class, train/eval flag, a ``forward`` set on the instance, every parameter and
    buffer (identity, shape, dtype, device, requires_grad) and every plain attribute
    (:func:`_attribute_print`: the flag a forward branches on). Weight values are not in it: they
    do not change a trace. A forward that branches on anything else (a global variable, a field of
    a shared config object changed in place) is not seen."""
    pins: List[Any] = []
    parts: List[Any] = []
    for name, m in model.named_modules():
        if name:
            pins.append(m)
        own = vars(m)
        params = tuple((n, None if p is None else _tensor_print(p, pins)) for n, p in m._parameters.items())
        buffers = tuple((n, None if b is None else _tensor_print(b, pins)) for n, b in m._buffers.items())
        attrs = tuple((k, v if type(v) in _PLAIN_TYPES else _attribute_print(v, pins))
                      for k, v in own.items() if k not in _MODULE_INTERNALS)
        parts.append((name, id(m) if name else None, type(m), params, buffers, attrs))
    return tuple(parts), pins


def input_signature(x: Any) -> Any:
    """What a recorded forward can depend on in an input besides its values: the structure of
    tuples, lists and dicts, and each tensor's shape, dtype, device and layout (hashable)."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype, x.device, x.layout)
    if isinstance(x, (tuple, list)):
        return (type(x).__name__,) + tuple(input_signature(v) for v in x)
    if isinstance(x, dict):
        return ("dict",) + tuple((k, input_signature(v)) for k, v in x.items())
    return x if isinstance(x, _PLAIN) else ("object", type(x), id(x))


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


def warn_if_two_inputs(data: Any, what: str) -> None:
    """Warn when ``data`` is a pair whose "targets" look like a second batch of inputs (a tensor of
    the inputs' shape and floating dtype): by the one convention it is one batch ``(inputs,
    targets)``, and ``what`` (a function that ignores targets) reads the first tensor only. A pair
    with real targets (class labels, or any other shape or dtype) stays silent."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        return
    x, y = data
    if x.is_floating_point() and y.dtype == x.dtype and y.shape == x.shape:
        warnings.warn(
            f"{what}: a pair of tensors is one batch (inputs, targets), so only the first tensor is "
            f"read; the second has the same shape {tuple(x.shape)} and dtype as the inputs, as if it "
            "were a second batch of inputs. To pass two batches, pass iter([x1, x2]) or "
            "[(x1, None), (x2, None)]; to pass one batch, pass the inputs alone",
            stacklevel=3,
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


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors (inside tuples/dicts too) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


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


# ----------------------------------------------------------------------------- op classification

_ELEMENTWISE_NAMES = {
    "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu",
    "mish", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "softplus", "softsign",
    "tanhshrink", "threshold", "logsigmoid", "hardshrink", "softshrink", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "batch_norm",
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "clamp", "clip", "clamp_min",
    "clamp_max", "add", "sub", "mul", "div", "true_divide", "truediv", "neg", "contiguous",
    "pow", "erf", "exp", "sqrt", "rsqrt", "reciprocal", "abs", "square", "to", "type_as", "float",
    "half", "bfloat16", "double", "clone",
}
_FRESH_NAMES = {
    "new_empty", "new_zeros", "new_ones", "new_full", "empty_like", "zeros_like", "ones_like",
    "full_like", "rand_like", "randn_like", "bernoulli",
}
"""Ops whose output takes only a shape from their input (a drop-path mask): no data flows through."""
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
_DUNDER_ARITHMETIC = {"add", "sub", "mul", "truediv", "div", "floordiv", "pow", "matmul", "mod"}
_MIXING_NAMES = {
    "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum",
    "scaled_dot_product_attention", "multi_head_attention_forward", "embedding",
}
_METADATA_METHODS = {"size", "dim", "numel", "type", "get_device", "element_size", "nelement"}


def _op_name(target: Any) -> str:
    """The base name of an op: ``relu_`` -> ``relu``, ``__radd__``/``__iadd__``/``iadd`` -> ``add``."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        return core[1:] if core[:1] in ("i", "r") and core[1:] in _DUNDER_ARITHMETIC else core
    if target in _INPLACE_OPERATORS:
        return name[1:]
    return name.strip("_")


def _is_metadata(node: fx.Node) -> bool:
    """Users that read a shape or a dtype, not the values."""
    if node.op == "call_method" and node.target in _METADATA_METHODS:
        return True
    return node.op == "call_function" and node.target in (getattr, len)


def _tensors(value: Any) -> List[torch.Tensor]:
    """The tensors inside ``value`` (tuples, lists and dicts searched)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _OpNames(TorchFunctionMode):
    """Names of the ops that read ``source`` or a value computed from it (shape reads and fresh
    masks aside)."""

    def __init__(self, source: torch.Tensor):
        super().__init__()
        self.derived = {id(source)}
        self.keep = [source]  # alive, so no id is reused
        self.names: List[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = _op_name(func)
        if name not in _FRESH_NAMES and any(id(t) in self.derived for t in _tensors((args, kwargs))):
            made = _tensors(out)
            if made:
                self.names.append(name)
                self.derived.update(id(t) for t in made)
                self.keep.extend(made)
        return out


def _elementwise_module(m: nn.Module) -> bool:
    """A module a layer's nodes are read after: an activation, dropout or normalization module of
    torch; any module whose parameters are all 1-D scales (a custom norm such as RMSNorm, a layer
    scale); or a parameter- and buffer-free module that, run on a meta tensor, applies elementwise
    ops only and keeps the shape (an activation module of another library)."""
    if isinstance(m, ELEMENTWISE_MODULES):
        return True
    params = list(m.parameters())
    if params:
        return all(p.dim() <= 1 for p in params)
    if next(m.buffers(), None) is not None:
        return False
    probe = torch.empty(2, 3, 5, device="meta")
    try:
        with torch.no_grad(), _OpNames(probe) as seen:
            out = m(probe)
    except Exception:  # noqa: BLE001 - a module that wants other inputs is not elementwise
        return False
    return isinstance(out, torch.Tensor) and out.shape == probe.shape and set(seen.names) <= _ELEMENTWISE_NAMES


class _Ops:
    """Classifies the nodes of a traced or recorded graph; ``call_module`` targets name ``modules``."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.modules = modules
        self._elementwise: Dict[int, bool] = {}

    def module(self, node: fx.Node) -> Optional[nn.Module]:
        return self.modules.get(str(node.target)) if node.op == "call_module" else None

    def elementwise(self, node: fx.Node) -> bool:
        """Elementwise or normalization ops: a layer's nodes are read after a run of them."""
        m = self.module(node)
        if m is not None:
            if id(m) not in self._elementwise:
                self._elementwise[id(m)] = _elementwise_module(m)
            return self._elementwise[id(m)]
        return node.op in ("call_function", "call_method") and _op_name(node.target) in _ELEMENTWISE_NAMES

    def inplace(self, node: fx.Node) -> bool:
        m = self.module(node)
        if m is not None:
            return bool(getattr(m, "inplace", False))
        if node.op == "call_function" and node.target in _INPLACE_OPERATORS:
            return True
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node.op in ("call_function", "call_method") and name.endswith("_") and not name.endswith("__"):
            return True
        if node.op == "call_function" and callable(node.target):
            try:
                bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
            except (TypeError, ValueError):
                return node.kwargs.get("inplace") is True
            return bound.arguments.get("inplace") is True
        return False

    def mixing(self, node: fx.Node) -> bool:
        """Ops that connect every input node to every output node (weights, attention)."""
        m = self.module(node)
        if m is not None:  # parameters outside normalization layers and scales: weights
            return next(m.parameters(), None) is not None and not self.elementwise(node)
        return node.op in ("call_function", "call_method") and _op_name(node.target) in _MIXING_NAMES


def _holds_layer(m: nn.Module, weight_ids: Set[int]) -> bool:
    return any(id(x) in weight_ids or isinstance(x, nn.MultiheadAttention) for x in m.modules())


class _Tracer(fx.Tracer):
    """Traces into every module that holds a weight layer; everything else is one opaque call
    (parameter-free helpers such as padded shortcuts need not be traceable)."""

    def __init__(self, weight_ids: Set[int]) -> None:
        super().__init__()
        self.weight_ids = weight_ids
        self._holds: Dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.weight_ids or isinstance(m, nn.MultiheadAttention):
            return True
        if id(m) not in self._holds:
            self._holds[id(m)] = _holds_layer(m, self.weight_ids)
        return not self._holds[id(m)]


def _follow(start: fx.Node, pos: Dict[fx.Node, int], ops: _Ops) -> Tuple[fx.Node, List[fx.Node]]:
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
                if ops.inplace(u) and ops.elementwise(u) and u.args and u.args[0] in aliases:
                    if all(pos[o] > pos[u] for o in users if o is not u):
                        aliases.append(u)
                        grew = True
                break  # only the earliest user may extend the alias set
        run.extend(aliases[1:])
        read = max(aliases, key=pos.__getitem__)
        others = {u for a in aliases for u in a.users if u not in aliases and not _is_metadata(u)}
        if len(others) == 1:
            (nxt,) = others
            if ops.elementwise(nxt):
                node = nxt
                run.append(nxt)
                continue
        return read, run


# ------------------------------------------------------------------- the layer graph of a graph

class TracedLayer(Protocol):
    """What the tracers read of a weight layer (:class:`emergeinit.layers.WeightLayer` is one)."""

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
    """A graph's weight-layer calls grouped by the value their elementwise run ends at."""

    def __init__(self, graph: fx.Graph, modules: Mapping[str, nn.Module], layers: Mapping[int, TracedLayer]):
        self.ops = _Ops(modules)
        self.layers = layers
        self.nodes = list(graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.owner: Dict[fx.Node, fx.Node] = {}  # every node on a run -> the run's read node
        self.groups = self._group_calls(self.nodes)
        self.index = {g.read: i for i, g in enumerate(self.groups)}

    def layer_of(self, node: fx.Node) -> Optional[TracedLayer]:
        """The weight layer a ``call_module`` node runs (attention modules are not probed)."""
        m = self.ops.module(node)
        return None if m is None or isinstance(m, nn.MultiheadAttention) else self.layers.get(id(m))

    def _group_calls(self, nodes: List[fx.Node]) -> List[_Group]:
        by_read: Dict[fx.Node, _Group] = {}
        uses: Dict[str, int] = {}
        for call in nodes:
            layer = self.layer_of(call)
            if layer is None:
                continue
            read, run = _follow(call, self.pos, self.ops)
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
            if _is_metadata(node):  # a shape or dtype read carries no node values
                continue
            if node in self.owner:
                g = self.index[self.owner[node]]
                found[g] = found.get(g, False) or mixed
            elif node.op == "placeholder":
                found[_INPUT] = found.get(_INPUT, False) or mixed
            elif node.op not in ("get_attr", "output"):
                m = mixed or self.ops.mixing(node)
                stack.extend((a, m) for a in node.all_input_nodes)
        return found

    def edges(self) -> Tuple[Dict[Tuple[int, int], str], Optional[fx.Node]]:
        """Edges between groups, ``full`` winning over ``identity``, and the first call that reads
        the model input."""
        edges: Dict[Tuple[int, int], str] = {}
        input_call: Optional[fx.Node] = None
        self.reads_from: Dict[str, Set[int]] = {}  # layer key -> the groups (or _INPUT) its calls read
        for gi, g in enumerate(self.groups):
            for call, layer in zip(g.calls, g.layers):  # what the layer reads: every source feeds every node
                arg = call.args[0] if call.args else None
                for src in self.sources(arg) if isinstance(arg, fx.Node) else ():
                    if src == _INPUT and (input_call is None or self.pos[call] < self.pos[input_call]):
                        input_call = call
                    _add_edge(edges, src, gi, "full")
                    self.reads_from.setdefault(layer.key, set()).add(src)
            for n in [n for n, r in self.owner.items() if r is g.read and n not in g.calls]:
                for arg in n.all_input_nodes:  # skip connections merging into the run (residual adds)
                    if self.owner.get(arg) is g.read or arg.op == "get_attr":
                        continue
                    for src, mixed in self.sources(arg).items():
                        _add_edge(edges, src, gi, "full" if mixed else "identity")
        return edges, input_call

    def layer_graph(self, include_input: bool, include_output: bool
                    ) -> Tuple[LayerGraph, List[LayerRead], FrozenSet[str]]:
        """The layer graph, where each of its nodes is read, and the keys of the layers it reads.
        ``include_input`` adds the first layer's input as node 0; ``include_output=False`` drops
        the nodes nothing reads from (the logits)."""
        edges, input_call = self.edges()
        reads: List[LayerRead] = []
        nodes: List[LayerNode] = []
        remap: Dict[int, int] = {}  # group (or _INPUT) -> graph node
        if include_input and input_call is not None:
            first = self.layer_of(input_call)
            assert first is not None and isinstance(input_call.args[0], fx.Node)
            remap[_INPUT] = 0
            reads.append(LayerRead(input_call.args[0], first.kind, before=input_call))
            nodes.append(LayerNode("input", first.in_nodes, (), "input"))
        read_from = {s for (s, _) in edges}
        for gi, g in enumerate(self.groups):
            if include_output or gi in read_from:
                remap[gi] = len(nodes)
                reads.append(LayerRead(g.read, g.kind))
                nodes.append(LayerNode("+".join(g.names), g.width, tuple(l.key for l in g.layers), g.kind))
        graph_edges = sorted(
            (LayerEdge(remap[s], remap[d], k) for (s, d), k in edges.items() if s in remap and d in remap),
            key=lambda e: (e.dst, e.src),
        )
        probed = frozenset(l.key for g in self.groups for l in g.layers)
        remap.setdefault(_INPUT, -1)  # the input, when it is not node 0
        self.inputs = {key: tuple(sorted(remap[s] for s in srcs if s in remap))
                       for key, srcs in self.reads_from.items()}
        return LayerGraph(tuple(nodes), tuple(graph_edges)), reads, probed


def _add_edge(edges: Dict[Tuple[int, int], str], src: int, dst: int, kind: str) -> None:
    if src != dst and edges.get((src, dst)) != "full":
        edges[(src, dst)] = kind


# ----------------------------------------------------------------------------- fx: static trace

@dataclass
class FxLayers:
    """A model traced by torch.fx into its layer graph, and where each layer node is read."""

    module: fx.GraphModule  # shares the model's submodules
    reads: List[LayerRead]  # one per node of ``graph``
    graph: LayerGraph
    probed: FrozenSet[str]  # keys of the weight layers the graph reads (before include_output)
    inputs: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    """Layer key -> the graph nodes its calls read (-1: the model input, when it is not node 0)."""

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


def trace_fx(model: nn.Module, layers: Mapping[int, TracedLayer], *, include_input: bool = False,
             include_output: bool = True) -> FxLayers:
    """Trace ``model`` with torch.fx (no forward runs) into its layer graph.

    ``layers`` maps ``id(module)`` to the weight layer it runs (Linear/Conv/Linear-like; every
    module of a tied weight). One graph node per value a set of layers writes, read after their
    elementwise run; edges through a weight layer or a mixing op are ``full``, parameter-free skips
    ``identity``. ``include_input`` adds the first layer's input as node 0; ``include_output=False``
    drops the nodes nothing reads from (the logits). Raises whatever fx raises on an untraceable
    forward.
    """
    tracer = _Tracer(set(layers))
    fx_graph = tracer.trace(model)  # sets tracer.root
    gm = fx.GraphModule(tracer.root, fx_graph, type(model).__name__)
    walk = _Walk(gm.graph, dict(gm.named_modules()), layers)
    graph, reads, probed = walk.layer_graph(include_input, include_output)
    return FxLayers(gm, reads, graph, probed, walk.inputs)


# ------------------------------------------------------------------------ the recorded forward

class PathChanged(RuntimeError):
    """A replayed forward ran other ops than the recorded one (its input took another path)."""


@dataclass
class Tape:
    """One forward written down as an fx.Graph: every torch function called outside the leaf
    modules (a ``call_function`` node), every leaf module call (``call_module``, its target the
    module's name), the inputs as placeholders and parameters/buffers as ``get_attr`` nodes. Each
    node's ``meta`` holds its ``step`` (ops and leaf calls counted in order), the ``item`` of a
    tuple output it stands for, and the ``stack`` of module names running it."""

    graph: fx.Graph
    modules: Dict[str, nn.Module]
    leaves: FrozenSet[int]  # ids of the modules run as one op
    signature: Tuple[str, ...]  # one entry per step


class _Recorder(TorchFunctionMode):
    """Counts the steps of one forward (leaf-module calls and the torch functions outside them),
    and either writes them into a graph or, replaying a recorded one, checks each step against
    ``expected`` and hands the values at ``taps`` to their callback."""

    def __init__(self, model: nn.Module, leaves: FrozenSet[int], *, build: bool,
                 expected: Optional[Tuple[str, ...]] = None,
                 taps: Optional[Mapping[int, List[Tuple[Optional[int], bool, Callable[[Any], None]]]]] = None):
        super().__init__()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.leaves = leaves
        self.depth = 0  # > 0 inside a leaf module
        self.stack: List[str] = []
        self.steps: List[str] = []
        self.expected, self.taps = expected, taps or {}
        self.graph = fx.Graph() if build else None
        self.node_of: Dict[int, fx.Node] = {}
        self.alive: List[Any] = []  # every value the graph refers to stays alive: no id is reused
        self.params = {id(t): n for n, t in list(model.named_parameters()) + list(model.named_buffers())}

    # -- module hooks
    def enter(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.stack.append(self.names.get(id(module), ""))
        if id(module) in self.leaves:
            self.depth += 1

    def leave(self, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        self.stack.pop()
        if id(module) in self.leaves:
            self.depth -= 1
            if self.depth == 0:
                self._step("call_module", self.names[id(module)], args, kwargs, out)

    # -- torch functions
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            if _op_name(func) == "setitem" and args and isinstance(args[0], torch.Tensor):
                self._step("call_function", func, args, kwargs, args[0])  # x[i] = y: a new x
            elif _tensors(out):
                self._step("call_function", func, args, kwargs, out)
        return out

    def _step(self, op: str, target: Any, args: Any, kwargs: Any, out: Any) -> None:
        step = len(self.steps)
        self.steps.append(f"{op}:{target if op == 'call_module' else _op_name(target)}")
        if self.expected is not None and (step >= len(self.expected) or self.expected[step] != self.steps[-1]):
            raise PathChanged(f"step {step} is {self.steps[-1]}, the recorded forward had "
                              f"{self.expected[step] if step < len(self.expected) else 'no such step'}")
        self.depth += 1  # what a tap computes is not part of the forward
        try:
            for item, before, record in self.taps.get(step, ()):
                record(args[0] if before else (out if item is None else out[item]))
        finally:
            self.depth -= 1
        if self.graph is None:
            return
        node = self.graph.create_node(op, target, self._arg(tuple(args)), self._arg(dict(kwargs)))
        node.meta.update(step=step, item=None, stack=tuple(self.stack))
        self._bind(node, out, step)

    def _bind(self, node: fx.Node, out: Any, step: int) -> None:
        if isinstance(out, torch.Tensor):
            self.node_of[id(out)] = node
            self.alive.append(out)
        elif isinstance(out, (tuple, list)):
            for i, v in enumerate(out):
                if isinstance(v, torch.Tensor):
                    part = self.graph.call_function(operator.getitem, (node, i))
                    part.meta.update(step=step, item=i, stack=node.meta["stack"])
                    self.node_of[id(v)] = part
                    self.alive.append(v)

    def _arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            node = self.node_of.get(id(value))
            if node is None:  # a parameter, a buffer, or a tensor made where nothing was recorded
                node = self.graph.get_attr(self.params.get(id(value), "<unrecorded>"))
                self.node_of[id(value)] = node
                self.alive.append(value)
            return node
        if isinstance(value, (tuple, list)):
            return tuple(self._arg(v) for v in value)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        return value

    def placeholders(self, example_input: Any) -> None:
        """The model's input tensors as placeholder nodes."""
        for i, t in enumerate(_tensors(example_input)):
            self.node_of[id(t)] = self.graph.placeholder(f"input_{i}")
            self.alive.append(t)

    def run(self, model: nn.Module, example_input: Any) -> Any:
        hooked = list(model.modules())
        with forward_hooks(hooked, pre=self.enter, post=self.leave), self:
            return run_model(model, example_input)


def _leaves(model: nn.Module, weight_ids: Set[int]) -> FrozenSet[int]:
    """Weight-layer modules, attention modules, and the modules that hold no weight layer."""
    return frozenset(id(m) for m in model.modules()
                     if id(m) in weight_ids or isinstance(m, nn.MultiheadAttention)
                     or not _holds_layer(m, weight_ids))


def record_tape(model: nn.Module, example_input: Any, weight_ids: Iterable[int], *, meta: bool = True) -> Tape:
    """Run ``model`` once on ``example_input`` and write the forward down (:class:`Tape`), without
    autograd, in the modes the model is in (modes and buffers restored). ``weight_ids``: ids of
    the weight-layer modules. ``meta``: run on meta stand-ins of the weights and the input (no
    arithmetic, no memory), and on the real ones when the forward cannot run on meta tensors
    (it branches on values)."""
    leaves = _leaves(model, set(weight_ids))

    def record() -> Tape:
        recorder = _Recorder(model, leaves, build=True)
        x = to_meta(example_input) if on_meta else example_input
        recorder.placeholders(x)
        with preserve_state(model), torch.no_grad():
            recorder.run(model, x)
        # the root is never a leaf call of a model with weight layers; leaving it out means a tape
        # kept with a model (a cache) does not keep the model alive
        modules = {n: m for n, m in model.named_modules() if n}
        return Tape(recorder.graph, modules, leaves, tuple(recorder.steps))

    on_meta = meta
    if meta:
        try:
            with meta_stand_ins(model):
                return record()
        except Exception:  # noqa: BLE001 - a forward that reads values: record the real one
            on_meta = False
    try:
        return record()
    except Exception as err:  # the user's forward: say what we were doing
        raise ValueError(
            f"recording a forward of {type(model).__name__} on the example input failed "
            f"({type(err).__name__}: {err}); pass an example_input its forward accepts"
        ) from err


@dataclass
class TapeLayers:
    """A model's layer graph read from a recorded forward (:class:`Tape`), and where each layer
    node is read; :meth:`tapped` replays the model with those reads."""

    model_ref: "weakref.ReferenceType[nn.Module]"  # weak: a cached TapeLayers does not keep its model alive
    layers: Mapping[int, TracedLayer]
    tape: Tape
    reads: List[LayerRead]
    graph: LayerGraph
    probed: FrozenSet[str]
    include_input: bool = False
    include_output: bool = True
    inputs: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)  # as FxLayers.inputs

    @property
    def model(self) -> nn.Module:
        """The model the tape was recorded from (a ReferenceError once it is gone)."""
        model = self.model_ref()
        if model is None:
            raise ReferenceError("the model of this recorded forward no longer exists")
        return model

    @classmethod
    def of(cls, model: nn.Module, layers: Mapping[int, TracedLayer], tape: Tape, *,
           include_input: bool = False, include_output: bool = True) -> "TapeLayers":
        walk = _Walk(tape.graph, tape.modules, layers)
        graph, reads, probed = walk.layer_graph(include_input, include_output)
        return cls(weakref.ref(model), layers, tape, reads, graph, probed, include_input, include_output,
                   walk.inputs)

    def tapped(self, record: Callable[[int, Any], None]) -> Callable[..., Any]:
        """A callable that runs the model like the model itself and calls ``record(i, value)`` with
        the values of layer node i. A batch that takes another path through the forward is
        recorded anew; its layer graph must be this one (a ValueError otherwise)."""
        state = {"tape": self}

        def run(*args: Any, **kwargs: Any) -> Any:
            current: TapeLayers = state["tape"]
            x = kwargs if kwargs else (args[0] if len(args) == 1 else args)
            try:
                return current._replay(x, record)
            except PathChanged:
                again = TapeLayers.of(self.model, self.layers, record_tape(self.model, x, self.layers),
                                      include_input=self.include_input, include_output=self.include_output)
                if again.graph != self.graph:
                    raise ValueError(
                        f"{type(self.model).__name__} runs other weight layers on different batches "
                        f"({', '.join(again.graph.names)} vs {', '.join(self.graph.names)}): "
                        "measure the batches separately"
                    ) from None
                state["tape"] = again
                return again._replay(x, record)

        return run

    def _replay(self, example_input: Any, record: Callable[[int, Any], None]) -> Any:
        taps: Dict[int, List[Tuple[Optional[int], bool, Callable[[Any], None]]]] = {}
        for i, read in enumerate(self.reads):
            at = read.before if read.before is not None else read.node
            taps.setdefault(at.meta["step"], []).append(
                (at.meta["item"], read.before is not None, lambda v, i=i: record(i, v)))
        recorder = _Recorder(self.model, self.tape.leaves, build=False, expected=self.tape.signature, taps=taps)
        out = recorder.run(self.model, example_input)
        if len(recorder.steps) != len(self.tape.signature):
            raise PathChanged(f"{len(recorder.steps)} steps, the recorded forward had {len(self.tape.signature)}")
        return out


def layers_traced_or_recorded(model: nn.Module, layers: Mapping[int, TracedLayer], example_input: Any, *,
                              include_input: bool, include_output: bool) -> Union[FxLayers, TapeLayers]:
    """The one fallback policy: :func:`trace_fx`, or, when fx cannot trace the model (data-dependent
    control flow, ``**kwargs`` forwards such as Hugging Face models'), the layer graph of a
    recorded forward on ``example_input`` (inferred when None), with one warning per model type."""
    try:
        return trace_fx(model, layers, include_input=include_input, include_output=include_output)
    except Exception as err:  # noqa: BLE001 - any fx failure falls back
        reason = f"{type(err).__name__}: {err}"
    if example_input is None:
        example_input = infer_example_input(model)
    tape = record_tape(model, example_input, layers)
    # stacklevel 1 and a message without the call's details: Python's warning registry then
    # says it once per model type, not on every call
    warnings.warn(
        f"torch.fx could not trace {type(model).__name__} ({reason.splitlines()[0][:200]}); its layer "
        "graph is read from a recorded forward instead (skip connections and functional "
        "activations seen), which follows the path the example input takes",
        stacklevel=1,
    )
    return TapeLayers.of(model, layers, tape, include_input=include_input, include_output=include_output)


# ----------------------------------------------------------------------- residual branches

@dataclass(frozen=True)
class Residual:
    """A skip connection in a recorded forward: an add whose one operand (the branch) runs two or
    more weight layers the other (the skip) does not, while the skip runs at most one of its own
    (a projection shortcut)."""

    stack: Tuple[str, ...]  # names of the modules running the add, outermost first
    branch: Tuple[str, ...]  # keys of the branch's weight layers, in execution order
    shortcut: Tuple[str, ...]  # key of the skip's own weight layer, if any
    attention: bool  # the branch mixes values outside weight layers (attention, a functional linear)


def written_nodes(tape: Tape, layers: Mapping[int, TracedLayer]) -> Dict[str, int]:
    """Layer key -> index of the layer-graph node it writes in ``tape`` (execution order). Layers
    whose outputs meet in one elementwise run share a node: a gated pair ``act(gate(x)) * up(x)``,
    a residual branch and its projection shortcut."""
    walk = _Walk(tape.graph, tape.modules, layers)
    return {l.key: gi for gi, g in enumerate(walk.groups) for l in g.layers}


def residual_branches(tape: Tape, layers: Mapping[int, TracedLayer]) -> List[Residual]:
    """Every residual add of ``tape`` (see :class:`Residual`), in execution order."""
    walk = _Walk(tape.graph, tape.modules, layers)
    keys: List[str] = []  # bit -> layer key, in the order the forward first runs them
    bit: Dict[str, int] = {}
    deps: Dict[fx.Node, int] = {}  # the weight layers a value depends on, as bits
    mixes: Dict[fx.Node, int] = {}  # the mixing ops (outside weight layers) it depends on
    for node in walk.nodes:
        d = m = 0
        for arg in node.all_input_nodes:
            d |= deps[arg]
            m |= mixes[arg]
        layer = walk.layer_of(node)
        if layer is not None:
            if layer.key not in bit:
                bit[layer.key] = len(keys)
                keys.append(layer.key)
            d |= 1 << bit[layer.key]
        elif walk.ops.mixing(node):
            m |= 1 << walk.pos[node]
        deps[node], mixes[node] = d, m
    found: List[Residual] = []
    for node in walk.nodes:
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if node.op != "call_function" or _op_name(node.target) != "add" or len(operands) != 2:
            continue
        for main, skip in (operands, operands[::-1]):
            branch, own = deps[main] & ~deps[skip], deps[skip] & ~deps[main]
            if bin(branch).count("1") < 2 or bin(own).count("1") > 1:
                continue
            found.append(Residual(
                stack=node.meta["stack"],
                branch=tuple(keys[i] for i in range(len(keys)) if branch >> i & 1),
                shortcut=tuple(keys[i] for i in range(len(keys)) if own >> i & 1),
                attention=bool(mixes[main] & ~mixes[skip]),
            ))
            break
    return found


# ----------------------------------------------------------------------------- ops by module

def modules_running(model: nn.Module, example_input: Any, op: str) -> List[str]:
    """Names (with class) of the innermost modules whose forward on ``example_input`` runs the aten
    op ``op`` (``"aten::hardsigmoid"``), in the order they first run it; no autograd, modes and
    buffers restored."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: List[nn.Module] = []
    found: Dict[str, None] = {}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func._schema.name == op and stack:
                found[f"'{names[id(stack[-1])] or '<root>'}' ({type(stack[-1]).__name__})"] = None
            return func(*args, **(kwargs or {}))

    with forward_hooks(list(model.modules()), pre=lambda m, a, k: stack.append(m),
                       post=lambda m, a, k, o: stack.pop()), _eval_without_grad(model), Watch():
        run_model(model, example_input)
    return list(found)
