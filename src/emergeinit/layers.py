"""A model's weight layers in execution order, its blocks, and the one way to name modules.

A *weight layer* is a weight tensor of an ``nn.Linear``, an ``nn.ConvNd`` (transposed included) or
an ``nn.MultiheadAttention`` (its input and output projections) that the forward pass actually
uses. Order is the order of use on an example input (traced by :mod:`emergeinit.trace`), not the
order of registration, and a tensor shared by several modules (tied embeddings / output
projections) is one layer. Modules are named by :func:`match_modules` wherever a user picks them
(``blocks=``, ``encoder_layers=``, ``decoder_layers=``).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from emergeinit.trace import call_order

__all__ = [
    "WeightLayer",
    "find_weight_layers",
    "layer_by_module",
    "qualified_name",
    "packed_qkv_rows",
    "ModuleSpec",
    "match_modules",
    "is_block_module",
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


@dataclass(frozen=True)
class WeightLayer:
    """One weight tensor the forward pass uses: where it lives and what kind of layer owns it."""

    name: str  # qualified name of the owning module ("features.0", "encoder.layers.1.self_attn")
    module: nn.Module = field(repr=False, compare=False)
    param_name: str = "weight"  # "weight", or "in_proj_weight"/"q_proj_weight"/... for attention
    kind: str = "linear"  # "linear" | "conv" | "attention"
    aliases: Tuple[str, ...] = ()  # other modules that use the same tensor (tied weights)

    @property
    def key(self) -> str:
        """Unique name of the tensor: module name plus parameter name."""
        return qualified_name(self.name, self.param_name)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    @property
    def _bias_name(self) -> Optional[str]:
        if self.kind == "attention":
            return "in_proj_bias" if self.param_name == "in_proj_weight" else None
        return "bias"

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
        return int(w.shape[0])

    @property
    def in_nodes(self) -> int:
        """Nodes this layer reads: input features of a Linear, input channels of a Conv."""
        w = self.weight
        if isinstance(self.module, nn.modules.conv._ConvTransposeNd):
            return int(w.shape[0])
        if self.kind == "conv":
            return int(w.shape[1]) * int(getattr(self.module, "groups", 1))
        return int(w.shape[1])


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
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd or MultiheadAttention)"
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
                layers.append(WeightLayer(name, module, param_name, kind))
                continue
            first = layers[by_tensor[tensor]]  # a tied weight: one layer, more names
            if name != first.name and name not in first.aliases:
                layers[by_tensor[tensor]] = replace(first, aliases=first.aliases + (name,))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd or MultiheadAttention) "
            "used by its forward pass"
        )
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

_RESIDUAL_BLOCK_NAMES = ("BasicBlock", "Bottleneck", "PreActBlock", "PreActBottleneck")
_SHORTCUT_NAMES = ("downsample", "shortcut")


def is_block_module(module: nn.Module) -> bool:
    """Default blocks: transformer layers (their FFN pair), residual blocks, or any module whose
    class sets ``emergeinit_block = True``."""
    if getattr(module, "emergeinit_block", False):
        return True
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return True
    return type(module).__name__ in _RESIDUAL_BLOCK_NAMES


def _block_members(block_name: str, module: nn.Module, layers: Sequence[WeightLayer]) -> List[WeightLayer]:
    prefix = block_name + "." if block_name else ""
    inside = [l for l in layers if l.name.startswith(prefix) or l.name == block_name]
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        ffn = {prefix + "linear1", prefix + "linear2"}
        return [l for l in inside if l.name in ffn]
    if getattr(module, "emergeinit_block", False) is not True and type(module).__name__ in _RESIDUAL_BLOCK_NAMES:
        def on_shortcut(l: WeightLayer) -> bool:
            rest = l.name[len(prefix):].split(".")
            return any(part in _SHORTCUT_NAMES for part in rest)

        return [l for l in inside if not on_shortcut(l)]
    return inside


def find_blocks(
    model: nn.Module,
    layers: Sequence[WeightLayer],
    blocks: Optional[ModuleSpec] = None,
) -> Dict[str, List[WeightLayer]]:
    """Group weight layers into blocks, each block's layers in execution order.

    ``blocks``: modules, names or patterns (``"encoder.layers.*.ffn"``; see :func:`match_modules`),
    each matching at least one module. When None, the default blocks of :func:`is_block_module`.
    A layer in nested blocks belongs to the innermost one; layers in no block are left out.
    """
    modules = dict(model.named_modules())
    if blocks is None:
        chosen = [n for n, m in modules.items() if n and is_block_module(m)]
    else:
        chosen = match_modules(model, blocks, "block")
    owner: Dict[str, str] = {}
    for block_name in sorted(chosen, key=len):  # innermost (longest) last: it wins
        for layer in _block_members(block_name, modules[block_name], layers):
            owner[layer.key] = block_name
    grouped: Dict[str, List[WeightLayer]] = {}
    for layer in layers:
        if layer.key in owner:
            grouped.setdefault(owner[layer.key], []).append(layer)
    ordered_names = [n for n in chosen if n in grouped]
    return {n: grouped[n] for n in sorted(ordered_names, key=lambda n: layers.index(grouped[n][0]))}


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


def draw_weight_(storage: Storage, draw: Callable[[torch.Tensor], Any]) -> None:
    """W := what ``draw`` writes into a tensor of W's shape (a ``torch.nn.init`` function), exactly."""
    with torch.no_grad():
        draw(draw_target(storage))
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
