"""A model's weight layers in execution order, its blocks, and the one way to name modules.

A *weight layer* is a weight tensor of an ``nn.Linear``, an ``nn.ConvNd`` (transposed included), an
``nn.MultiheadAttention`` (its input and output projections) or a registered Linear-like type
(:func:`register_weight_layer`; Hugging Face's ``Conv1D`` is registered) that the forward pass
actually uses. Order is the order of use on an example input (traced by :mod:`emergeinit.trace`), not the
order of registration, and a tensor shared by several modules (tied embeddings / output
projections) is one layer. Modules are named by :func:`match_modules` wherever a user picks them
(``blocks=``, ``encoder_layers=``, ``decoder_layers=``).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from emergeinit.trace import (
    Residual, Tape, call_order, infer_example_input, preserve_state, record_tape, residual_branches, written_nodes,
)

__all__ = [
    "LayerType",
    "register_weight_layer",
    "unregister_weight_layer",
    "registered_weight_layers",
    "WeightLayer",
    "find_weight_layers",
    "LeftOut",
    "left_out_parameters",
    "LEFT_OUT_WARNING_SHARE",
    "layer_by_module",
    "qualified_name",
    "packed_qkv_rows",
    "ModuleSpec",
    "match_modules",
    "is_block_module",
    "Block",
    "find_blocks",
    "NormedWeight",
    "Storage",
    "weight_storage",
    "check_writable",
    "storage_of",
    "draw_target",
    "trained_parameters",
    "draw_weight_",
    "scale_weight_",
    "is_frozen",
    "warn_frozen",
]

ModuleSpec = Union[str, nn.Module, Iterable[Union[str, nn.Module]]]


def qualified_name(prefix: str, name: str) -> str:
    """``"features.0"`` + ``"weight"`` -> ``"features.0.weight"``; an empty part (the root module) drops out."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


# ------------------------------------------------------------------------- Linear-like layer types

@dataclass(frozen=True)
class LayerType:
    """How a Linear-like module holds its weight: the parameter names, and whether the weight is
    stored as (in, out) (``transposed``, as Hugging Face's ``Conv1D``) instead of (out, in)."""

    weight: str = "weight"
    bias: Optional[str] = "bias"
    transposed: bool = False


TypeKey = Union[type, str]

# The one piece of module state: Linear-like types besides nn.Linear. Keys are classes, or
# "module.QualName" strings so a type is known without importing its package.
_LINEAR_LIKE: Dict[TypeKey, LayerType] = {
    "transformers.pytorch_utils.Conv1D": LayerType(transposed=True),
}


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_weight_layer(module_type: TypeKey, *, weight: str = "weight", bias: Optional[str] = "bias",
                          transposed: bool = False) -> LayerType:
    """Declare a Linear-like module type (a class, or its ``"module.QualName"``) as a weight layer:
    its ``weight`` parameter is 2-D, (out, in), or (in, out) with ``transposed=True``; subclasses
    count too. Returns what was registered; registering a type again replaces its entry."""
    if not (isinstance(module_type, str) or (isinstance(module_type, type) and issubclass(module_type, nn.Module))):
        raise ValueError(f"module_type must be an nn.Module subclass or a 'module.QualName' string, got {module_type!r}")
    if isinstance(module_type, type) and issubclass(module_type, _BUILT_IN):
        raise ValueError(f"{module_type.__name__} is a weight layer already")
    if not isinstance(weight, str) or not weight or not (bias is None or isinstance(bias, str)):
        raise ValueError(f"weight must be a parameter name and bias a name or None, got {weight!r}, {bias!r}")
    spec = LayerType(weight, bias, bool(transposed))
    _LINEAR_LIKE[module_type] = spec
    return spec


def unregister_weight_layer(module_type: TypeKey) -> None:
    """Forget a type given to :func:`register_weight_layer` (a KeyError when it was not there)."""
    del _LINEAR_LIKE[module_type]


def registered_weight_layers() -> Tuple[Tuple[TypeKey, LayerType], ...]:
    """The Linear-like types registered now, as a hashable snapshot (a cached trace keys on it)."""
    return tuple(_LINEAR_LIKE.items())


def _linear_like(module: nn.Module) -> Optional[LayerType]:
    for cls in type(module).__mro__:
        spec = _LINEAR_LIKE.get(cls) or _LINEAR_LIKE.get(_type_name(cls))
        if spec is not None:
            return spec
    return None


_BUILT_IN = (nn.Linear, nn.modules.conv._ConvNd, nn.MultiheadAttention)


@dataclass(frozen=True)
class WeightLayer:
    """One weight tensor the forward pass uses: where it lives and what kind of layer owns it."""

    name: str  # qualified name of the owning module ("features.0", "encoder.layers.1.self_attn")
    module: nn.Module = field(repr=False, compare=False)
    param_name: str = "weight"  # "weight", or "in_proj_weight"/"q_proj_weight"/... for attention
    kind: str = "linear"  # "linear" | "conv" | "attention"
    aliases: Tuple[str, ...] = ()  # other modules that use the same tensor (tied weights)
    transposed: bool = False  # weight stored (in, out): a registered type such as HF Conv1D

    @property
    def key(self) -> str:
        """Unique name of the tensor: module name plus parameter name."""
        return qualified_name(self.name, self.param_name)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    @property
    def init_view(self) -> torch.Tensor:
        """The weight with outputs on dim 0 and inputs on dim 1 (a view): the layout in which
        ``torch.nn.init`` computes fans, so its functions draw a transposed weight right too."""
        w = self.weight
        return w.t() if self.transposed else w

    @property
    def _bias_name(self) -> Optional[str]:
        if self.kind == "attention":
            return "in_proj_bias" if self.param_name == "in_proj_weight" else None
        spec = _linear_like(self.module)
        return spec.bias if spec is not None else "bias"

    @property
    def bias(self) -> Optional[torch.Tensor]:
        name = self._bias_name
        return getattr(self.module, name, None) if name else None

    @property
    def bias_key(self) -> Optional[str]:
        """Parameter name of the bias, for ``model.get_parameter``; None when there is none."""
        name = self._bias_name
        if name is None or self.module._parameters.get(name) is None:
            return None
        return qualified_name(self.name, name)

    @property
    def out_nodes(self) -> int:
        """Nodes this layer produces: output units of a Linear, output channels of a Conv."""
        w = self.weight
        if isinstance(self.module, nn.modules.conv._ConvTransposeNd):
            return int(w.shape[1]) * self.module.groups
        return int(w.shape[1 if self.transposed else 0])

    @property
    def in_nodes(self) -> int:
        """Nodes this layer reads: input features of a Linear, input channels of a Conv."""
        w = self.weight
        if isinstance(self.module, nn.modules.conv._ConvTransposeNd):
            return int(w.shape[0])
        if self.kind == "conv":
            return int(w.shape[1]) * int(getattr(self.module, "groups", 1))
        return int(w.shape[0 if self.transposed else 1])


def _weight_params(module: nn.Module) -> List[Tuple[str, str]]:
    """(param_name, kind) pairs of the weight tensors a module uses, in the order it uses them."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            return [("in_proj_weight", "attention")]
        return [(f"{p}_proj_weight", "attention") for p in "qkv"]
    if isinstance(module, nn.Linear):
        return [("weight", "linear")]
    if isinstance(module, nn.modules.conv._ConvNd):
        return [("weight", "conv")]
    spec = _linear_like(module)
    if spec is not None and _stored_id(module, spec.weight) is not None:
        return [(spec.weight, "linear")]
    return []


def _stored_id(module: nn.Module, name: str) -> Optional[int]:
    """Identity of what holds ``module.<name>``, read without computing it (a parametrized weight is
    computed anew at every read, and reading a spectral-normed one in train mode moves its power
    iteration): its parametrization list, parameter, buffer or plain tensor attribute."""
    if parametrize.is_parametrized(module, name):
        return id(module.parametrizations[name])
    for store in (module._parameters, module._buffers, module.__dict__):
        if isinstance(store.get(name), torch.Tensor):
            return id(store[name])
    return None


def _is_transposed(module: nn.Module) -> bool:
    spec = _linear_like(module) if not isinstance(module, _BUILT_IN) else None
    return spec is not None and spec.transposed


# ------------------------------------------------------------------- what the library leaves out

LEFT_OUT_WARNING_SHARE = 0.01
""":func:`find_weight_layers` warns when at least this share of a model's parameters is left out."""


@dataclass(frozen=True)
class LeftOut:
    """Parameters in modules the library does not understand: no weight layer, no embedding table,
    no scale (an ``nn.LSTM``, ``nn.Bilinear``, a custom layer nobody registered). The initializers
    leave them as they are and ``measure_emergence`` does not probe them."""

    keys: Tuple[str, ...]  # parameter names
    modules: Tuple[Tuple[str, str], ...]  # (module name, class name) owning them
    numel: int
    total: int  # parameters of the whole model (each tied tensor once)

    @property
    def share(self) -> float:
        return self.numel / self.total if self.total else 0.0


def _is_scale(p: torch.Tensor) -> bool:
    """A parameter added or multiplied onto activations, not a weight matrix: a vector, one with a
    single dimension above 1 (a (C, 1, 1) layer scale), or one broadcast over the batch (a (1, N, d)
    position embedding or class token)."""
    return p.dim() <= 1 or p.shape[0] == 1 or sum(s > 1 for s in p.shape) <= 1


def left_out_parameters(model: nn.Module) -> LeftOut:
    """What :class:`LeftOut` says, found from the module types alone (no forward pass): every
    parameter outside weight layers and embeddings that is not a scale (:func:`_is_scale`), with
    the other parameters (biases) of the modules that hold one."""
    understood: set = set()
    for m in model.modules():
        if _weight_params(m) or isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            understood.update(id(p) for p in m.parameters())
    keys: List[str] = []
    owners: Dict[str, str] = {}
    numel, total, seen = 0, 0, set()
    for name, m in model.named_modules():
        own = [(n, p) for n, p in m.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        total += sum(p.numel() for _, p in own)
        if all(id(p) in understood or _is_scale(p) for _, p in own):
            continue
        for n, p in own:
            if id(p) not in understood:
                keys.append(qualified_name(name, n))
                numel += p.numel()
        owners[name] = type(m).__name__
    return LeftOut(tuple(keys), tuple(owners.items()), numel, total)


def _warn_left_out(model: nn.Module) -> None:
    out = left_out_parameters(model)
    if out.share < LEFT_OUT_WARNING_SHARE:
        return
    shown = ", ".join(f"{n or '<root>'} ({t})" for n, t in out.modules[:6])
    more = f" and {len(out.modules) - 6} more" if len(out.modules) > 6 else ""
    # stacklevel 1: Python's own registry then says this once per model type, not once per call
    warnings.warn(
        f"{out.share:.0%} of the parameters of {type(model).__name__} are in modules emergeinit does "
        f"not treat as weight layers: {shown}{more}. The initializers leave them as they are and "
        "measure_emergence does not probe them (report.skipped lists them); declare a Linear-like "
        "type with emergeinit.register_weight_layer.",
        stacklevel=1,
    )


def packed_qkv_rows(key: str, rows: int) -> Optional[List[Tuple[int, int]]]:
    """Row ranges of q, k and v in a packed ``in_proj_weight`` of ``rows`` rows, each drawn and
    scaled as a separate projection would be; None for any other tensor."""
    if not key.endswith("in_proj_weight") or rows % 3:
        return None
    e = rows // 3
    return [(0, e), (e, 2 * e), (2 * e, 3 * e)]


def _with_out_projections(calls: List[nn.Module]) -> List[nn.Module]:
    """``nn.MultiheadAttention`` applies its ``out_proj`` functionally: it follows the input projection."""
    seen = {id(m) for m in calls}
    ordered: List[nn.Module] = []
    for m in calls:
        ordered.append(m)
        if isinstance(m, nn.MultiheadAttention) and id(m.out_proj) not in seen:
            seen.add(id(m.out_proj))
            ordered.append(m.out_proj)
    return ordered


def find_weight_layers(
    model: nn.Module,
    example_input: Any = None,
    *,
    order: str = "execution",
) -> List[WeightLayer]:
    """The weight layers of ``model`` in execution order (see the module docstring).

    ``example_input`` is a tensor, a tuple of positional arguments or a dict of keywords; when
    None, an input is inferred from the first layer (Linear: features, Conv: 32-pixel sides).
    ``order="registration"`` skips the trace and lists layers in ``named_modules`` order.
    The trace runs in eval mode without autograd and restores modes and buffers afterwards.
    """
    if order not in ("execution", "registration"):
        raise ValueError(f"unknown order {order!r}: use 'execution' or 'registration'")
    owners = [m for m in model.modules() if _weight_params(m)]
    if not owners:
        out = left_out_parameters(model)
        held = f"; its parameters are in {', '.join(f'{n} ({t})' for n, t in out.modules)}" if out.modules else ""
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd, MultiheadAttention or a "
            f"type given to register_weight_layer){held}"
        )
    if order == "execution":
        owners = _with_out_projections(call_order(model, owners, example_input))
    names = {id(m): n for n, m in model.named_modules()}
    layers: List[WeightLayer] = []
    by_tensor: Dict[int, int] = {}
    for module in owners:
        name = names[id(module)]
        for param_name, kind in _weight_params(module):
            tensor = _stored_id(module, param_name)
            if tensor is None:
                continue
            if tensor not in by_tensor:
                by_tensor[tensor] = len(layers)
                layers.append(WeightLayer(name, module, param_name, kind, transposed=_is_transposed(module)))
                continue
            first = layers[by_tensor[tensor]]  # a tied weight: one layer, more names
            if name != first.name and name not in first.aliases:
                layers[by_tensor[tensor]] = replace(first, aliases=first.aliases + (name,))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd or MultiheadAttention) "
            "used by its forward pass"
        )
    _warn_left_out(model)
    return layers


def layer_by_module(model: nn.Module, layers: Sequence[WeightLayer]) -> Dict[int, WeightLayer]:
    """``id(module) -> layer`` for the Linear/Conv layers, every module sharing a tied weight included."""
    by_module: Dict[int, WeightLayer] = {}
    for layer in layers:
        if layer.kind in ("linear", "conv"):
            by_module[id(layer.module)] = layer
            for alias in layer.aliases:
                by_module[id(model.get_submodule(alias))] = layer
    return by_module


# ------------------------------------------------------------------------------ naming modules

def _segments_match(parts: Sequence[str], pats: Sequence[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_segments_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and _segments_match(parts[1:], pats[1:])


def match_modules(model: nn.Module, spec: ModuleSpec, what: str = "module") -> List[str]:
    """Names of the submodules ``spec`` picks, in the order given, each once.

    ``spec`` is a module name, a pattern, a submodule, or an iterable of those. Patterns are
    dotted names: ``*`` stands for exactly one name segment (``layers.*`` picks ``layers.0`` but not
    ``layers.0.ffn``), ``**`` for any number of segments, none included (``**.ffn`` picks ``ffn``
    and ``enc.layers.0.ffn``), and within one segment ``*``, ``?`` and ``[...]`` work as in fnmatch
    (``layer*``). Strings never pick the root module. Every item must pick at least one module:
    a ValueError names the ``what`` that did not.
    """
    items = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
    names = {id(m): n for n, m in model.named_modules()}
    chosen: List[str] = []
    for item in items:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"{what} {type(item).__name__} is not a submodule of {type(model).__name__}")
            hits = [names[id(item)]]
        else:
            pattern = str(item).split(".")
            hits = [n for n in names.values() if n and _segments_match(n.split("."), pattern)]
            if not hits:
                raise ValueError(f"{what} {item!r} matches no module of {type(model).__name__}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


# ----------------------------------------------------------------------------------------- blocks

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_block_module(module: nn.Module) -> bool:
    """Blocks a module declares without a trace: any class setting ``emergeinit_block = True`` (all
    its weight layers), and torch's Transformer encoder/decoder layers (their FFN pair)."""
    if getattr(module, "emergeinit_block", False):
        return True
    return isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))


def _block_members(block_name: str, module: nn.Module, layers: Sequence[WeightLayer]) -> List[WeightLayer]:
    prefix = block_name + "." if block_name else ""
    inside = [l for l in layers if l.name.startswith(prefix) or l.name == block_name]
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        ffn = {prefix + "linear1", prefix + "linear2"}
        return [l for l in inside if l.name in ffn]
    return inside


@dataclass(frozen=True)
class Block(SequenceABC):
    """A block's weight layers in execution order (the block reads as that sequence), and each
    layer's index k in the block's schedule: layers that write one layer-graph node (a gated
    ``act(gate(x)) * up(x)`` pair) share their k. ``found`` says why it is a block: ``"named"``
    (``blocks=``), ``"declared"`` (``emergeinit_block``, a torch Transformer layer), ``"residual"``
    (its forward adds a branch of weight layers back onto its input) or ``"sibling"`` (the same
    class as a residual block, without the residual: a strided MBConv)."""

    name: str
    layers: Tuple[WeightLayer, ...]
    depths: Tuple[int, ...]
    found: str

    def __getitem__(self, i: Any) -> Any:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def depth(self) -> int:
        """How many schedule indices the block has (its L in eq 8)."""
        return len(set(self.depths))


def _inside(names: Iterable[str], module: str) -> bool:
    return all(n == module or n.startswith(module + ".") for n in names)


def _home(res: Residual, by_key: Dict[str, WeightLayer]) -> Optional[str]:
    """The innermost module running a residual add that holds its whole branch (not the root)."""
    names = [by_key[k].name for k in res.branch]
    return next((m for m in reversed(res.stack) if m and _inside(names, m)), None)


def _recorded(model: nn.Module, layers: Dict[int, WeightLayer], example_input: Any) -> Optional[Tape]:
    """A forward of ``model`` recorded in eval mode (on meta stand-ins where it runs there); None
    when no example input is given and none can be inferred."""
    if example_input is None:
        try:
            example_input = infer_example_input(model)
        except ValueError:
            return None
    with preserve_state(model):
        model.eval()
        return record_tape(model, example_input, layers)


def find_blocks(
    model: nn.Module,
    layers: Sequence[WeightLayer],
    blocks: Optional[ModuleSpec] = None,
    *,
    example_input: Any = None,
) -> Dict[str, Block]:
    """Group weight layers into blocks (:class:`Block`), in execution order.

    ``blocks``: modules, names or patterns (``"encoder.layers.*.ffn"``; see :func:`match_modules`),
    each matching at least one module, each holding its weight layers. When None, the default
    blocks, read from a forward on ``example_input`` (inferred when None) recorded with
    :func:`emergeinit.trace.record_tape`:

    - residual units: the innermost module whose forward adds a branch of two or more weight
      layers, without attention, back onto what came in (plain or through one projection
      shortcut). Its members are the branch's layers, shortcut left out: a ResNet
      BasicBlock/Bottleneck, a ConvNeXt block, an inverted residual (MBConv), the FFN sublayer of
      any transformer layer (fc1/fc2, c_fc/c_proj, intermediate/output, wi/wo, gate/up/down);
    - modules of the same class as a residual unit that have no residual (strided MBConvs): all
      their weight layers;
    - modules declared with ``emergeinit_block = True`` (all their weight layers) and torch's
      ``nn.TransformerEncoderLayer``/``DecoderLayer`` (their FFN pair), also without a forward.

    A layer in overlapping blocks belongs to the innermost one (the one with fewer layers for
    branches of one module). A ValueError lists what was looked for when nothing is found.
    """
    modules = dict(model.named_modules())
    # the forward is read with every weight layer, also those left out of ``layers`` (frozen ones):
    # a layer on a branch is a layer, not an unknown op
    every = {**layer_by_module(model, find_weight_layers(model, order="registration")),
             **layer_by_module(model, layers)}
    by_key = {l.key: l for l in every.values()}
    tape = _recorded(model, every, example_input)
    candidates: List[Tuple[str, List[WeightLayer], str]] = []  # (name, members, found)
    residuals: List[Residual] = []
    if blocks is not None:
        chosen = match_modules(model, blocks, "block")
        candidates = [(n, _block_members(n, modules[n], layers), "named") for n in chosen]
    else:
        candidates = [(n, _block_members(n, m, layers), "declared") for n, m in modules.items()
                      if n and is_block_module(m)]
        if tape is not None:
            residuals = residual_branches(tape, every)
            candidates += _residual_blocks(modules, layers, residuals, by_key)
    nodes = written_nodes(tape, every) if tape is not None else {}
    owner: Dict[str, int] = {}
    order = sorted(range(len(candidates)), key=lambda i: (len(candidates[i][0].split("#")[0]), -len(candidates[i][1])))
    for i in order:  # innermost last: it wins
        for layer in candidates[i][1]:
            owner[layer.key] = i
    found: Dict[str, Block] = {}
    for i, (name, _, how) in sorted(enumerate(candidates), key=lambda c: _first(c[1][1], layers, owner, c[0])):
        members = [l for l in layers if owner.get(l.key) == i]
        if members and name not in found:
            ranks = sorted({nodes.get(l.key, j) for j, l in enumerate(members)})
            depths = tuple(ranks.index(nodes.get(l.key, j)) for j, l in enumerate(members))
            found[name] = Block(name, tuple(members), depths, how)
    if not found and blocks is None:
        raise ValueError(_no_blocks(model, tape, residuals))
    return found


def _first(members: List[WeightLayer], layers: Sequence[WeightLayer], owner: Dict[str, int], i: int) -> int:
    """Where a candidate block starts in execution order (for ordering the blocks)."""
    keys = {l.key for l in members if owner.get(l.key) == i}
    return next((j for j, l in enumerate(layers) if l.key in keys), len(layers))


def _residual_blocks(modules: Dict[str, nn.Module], layers: Sequence[WeightLayer], residuals: List[Residual],
                     by_key: Dict[str, WeightLayer]) -> List[Tuple[str, List[WeightLayer], str]]:
    """Blocks from residual adds (branches without attention), then their classes' other instances."""
    out: List[Tuple[str, List[WeightLayer], str]] = []
    homes: Dict[str, int] = {}
    kept = {l.key for l in layers}
    for res in residuals:
        home = _home(res, by_key)
        if res.attention or home is None:
            continue
        homes[home] = homes.get(home, 0) + 1
        name = home if homes[home] == 1 else f"{home}#{homes[home]}"
        out.append((name, [by_key[k] for k in res.branch if k in kept], "residual"))
    kinds = {type(modules[h]) for h in homes if not isinstance(modules[h], _CONTAINERS)}
    for n, m in modules.items():
        if n and n not in homes and type(m) in kinds:
            out.append((n, _block_members(n, m, layers), "sibling"))
    return out


def _no_blocks(model: nn.Module, tape: Optional[Tape], residuals: List[Residual]) -> str:
    if tape is None:
        seen = "no forward could be recorded to look for residual units (pass example_input=)"
    elif residuals:
        around = sum(r.attention for r in residuals)
        seen = (f"{len(residuals)} residual add(s) seen, {around} around attention and "
                f"{len(residuals) - around} with their branch outside every module but the root")
    else:
        seen = "no residual add seen in its forward"
    return (
        f"{type(model).__name__} has no default blocks. Looked for: modules whose forward adds a "
        "branch of two or more weight layers without attention back onto their input (residual "
        "blocks, transformer FFN sublayers) and their classes' other instances, torch "
        "Transformer layers, and classes with emergeinit_block = True; "
        f"{seen}. Name the blocks with blocks="
    )


# ---------------------------------------------------------------------- how a weight is stored

@dataclass(frozen=True)
class NormedWeight:
    """A weight under ``torch.nn.utils.parametrizations.weight_norm``: W = g·v/‖v‖, norms over every
    dim but ``dim``. W × f is g × f, exactly; a draw written into v becomes W exactly once g = ‖v‖."""

    g: nn.Parameter  # the parametrization's original0
    v: nn.Parameter  # original1, of W's shape
    dim: int

    def value(self) -> torch.Tensor:
        """W, computed from g and v."""
        return self.v * (self.g / torch.norm_except_dim(self.v, 2, self.dim))

    def renorm_(self) -> None:
        """g = ‖v‖: W equals v (after something was drawn into v)."""
        with torch.no_grad():
            self.g.copy_(torch.norm_except_dim(self.v, 2, self.dim))


Storage = Union[nn.Parameter, NormedWeight]


def weight_storage(module: nn.Module, name: str, key: str = "") -> Storage:
    """Where an init writes ``module.<name>`` (``key`` names it in errors), found without computing
    it: the parameter itself, or a :class:`NormedWeight`. Any other parametrization (spectral_norm,
    orthogonal, ...) cannot be scaled exactly, and a weight a hook recomputes at every forward (the
    old ``torch.nn.utils.weight_norm``/``spectral_norm``) would lose what is written: both are a
    ValueError, raised before anything changes."""
    key = key or name
    if parametrize.is_parametrized(module, name):
        chain = module.parametrizations[name]
        kinds = [type(p).__name__ for p in chain]
        if kinds == ["_WeightNorm"]:
            return NormedWeight(chain.original0, chain.original1, int(chain[0].dim))
        raise ValueError(
            f"{key} is parametrized ({' then '.join(kinds)}): an init cannot write it exactly (only "
            "weight_norm is supported); initialize before parametrizing, or remove the parametrization "
            "first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    stored = module._parameters.get(name)
    if isinstance(stored, nn.Parameter):
        return stored
    if isinstance(getattr(module, name, None), torch.Tensor):
        raise ValueError(
            f"{key} is not a parameter but a tensor recomputed by the module (the hook-based "
            "torch.nn.utils.weight_norm / spectral_norm?): what an init writes would be overwritten at "
            "the next forward; use torch.nn.utils.parametrizations.weight_norm, or initialize first"
        )
    raise ValueError(f"{key} is not a parameter of {type(module).__name__}")


def check_writable(layers: Iterable[WeightLayer]) -> None:
    """:func:`weight_storage` of every layer, for its ValueError: run it before any weight is read
    (reading a spectral-normed weight in train mode moves its power iteration)."""
    for layer in layers:
        weight_storage(layer.module, layer.param_name, layer.key)


def storage_of(model: nn.Module, key: str) -> Storage:
    """:func:`weight_storage` of the tensor a parameter key names (``"features.0.weight"``)."""
    module_name, _, name = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise ValueError(f"{key} is not a parameter of {type(model).__name__}") from None
    return weight_storage(module, name, key)


def trained_parameters(layer: WeightLayer) -> List[nn.Parameter]:
    """The parameters that hold a layer's weight, which an optimizer trains: the weight itself, or
    every parameter of its parametrization (any kind: nothing is written)."""
    if parametrize.is_parametrized(layer.module, layer.param_name):
        return list(layer.module.parametrizations[layer.param_name].parameters())
    stored = layer.module._parameters.get(layer.param_name)
    return [stored] if stored is not None else []


def draw_target(storage: Storage) -> nn.Parameter:
    """The parameter of W's shape and dtype (W itself, or v): what a draw is written into."""
    return storage.v if isinstance(storage, NormedWeight) else storage


def draw_weight_(storage: Storage, draw: Callable[[torch.Tensor], Any], transposed: bool = False) -> None:
    """W := what ``draw`` writes into a tensor of W's shape (a ``torch.nn.init`` function), exactly.
    ``transposed`` (a weight stored (in, out), as HF Conv1D): ``draw`` gets the (out, in) view, so
    ``torch.nn.init`` computes the fans the right way round."""
    with torch.no_grad():
        target = draw_target(storage)
        draw(target.t() if transposed else target)
        if isinstance(storage, NormedWeight):
            storage.renorm_()


def scale_weight_(storage: Storage, factor: float) -> None:
    """W × ``factor``, in place and exactly (a weight-normed W through its g)."""
    with torch.no_grad():
        (storage.g if isinstance(storage, NormedWeight) else storage).mul_(factor)


def is_frozen(storage: Storage) -> bool:
    """True when any parameter holding the weight has ``requires_grad=False``: writing it would
    change what the user froze (a pretrained backbone)."""
    held = (storage.g, storage.v) if isinstance(storage, NormedWeight) else (storage,)
    return any(not p.requires_grad for p in held)


def warn_frozen(method: str, keys: Sequence[str]) -> None:
    """Say which frozen tensors ``method`` left as they were."""
    if keys:
        shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
        warnings.warn(
            f"{method}: {len(keys)} frozen tensors (requires_grad=False) are left as they are: {shown}; "
            "pass include_frozen=True to initialize them too",
            stacklevel=3,
        )
