"""Find a model's weight layers in execution order and group them into blocks.

A *weight layer* is a weight tensor of an ``nn.Linear``, an ``nn.ConvNd`` (transposed included) or
an ``nn.MultiheadAttention`` (its input and output projections) that the forward pass actually
uses. Order is the order of use on an example input, not the order of registration, and a tensor
shared by several modules (tied embeddings / output projections) is one layer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "WeightLayer",
    "find_weight_layers",
    "find_blocks",
    "run_model",
    "infer_example_input",
    "preserve_state",
    "is_block_module",
    "layer_by_module",
]

_CONV_TYPES = (nn.modules.conv._ConvNd,)


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
        return f"{self.name}.{self.param_name}" if self.name else self.param_name

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param_name)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        if self.kind == "attention":
            bias_name = {"in_proj_weight": "in_proj_bias"}.get(self.param_name)
            return getattr(self.module, bias_name, None) if bias_name else None
        return getattr(self.module, "bias", None)

    @property
    def out_nodes(self) -> int:
        """Nodes this layer produces: output units of a Linear, output channels of a Conv."""
        w = self.weight
        if self.kind == "conv" and isinstance(self.module, nn.modules.conv._ConvTransposeNd):
            return int(w.shape[1]) * self.module.groups
        return int(w.shape[0])


def _weight_params(module: nn.Module) -> List[Tuple[str, str]]:
    """(param_name, kind) pairs of the weight tensors a module uses, in the order it uses them."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            names = ["in_proj_weight"]
        else:
            names = ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        return [(n, "attention") for n in names]
    if isinstance(module, nn.Linear):
        return [("weight", "linear")]
    if isinstance(module, _CONV_TYPES):
        return [("weight", "conv")]
    return []


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on a tensor, a tuple of positional arguments, or a dict of keywords."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


class preserve_state:
    """Context manager: restore every module's train/eval flag and every buffer (BN statistics)."""

    def __init__(self, model: nn.Module, *, buffers: bool = True):
        self.model = model
        self.buffers = buffers

    def __enter__(self) -> "preserve_state":
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._buffers = (
            [(b, b.detach().clone()) for b in self.model.buffers() if b.device.type != "meta"]
            if self.buffers
            else []
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, mode in self._modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)


def _candidate_inputs(model: nn.Module, batch: int) -> Iterator[torch.Tensor]:
    """Inputs shaped for each Linear/Conv in registration order, until an embedding or attention."""
    seen = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention)):
            return
        if isinstance(module, (nn.Linear,) + _CONV_TYPES):
            w = module.weight
            if isinstance(module, nn.Linear):
                shape: Tuple[int, ...] = (batch, module.in_features)
            else:
                shape = (batch, module.in_channels, *([32] * (w.dim() - 2)))
            if shape not in seen:
                seen.add(shape)
                yield torch.randn(shape, device=w.device, dtype=w.dtype)


def infer_example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """An input the model accepts, shaped from its Linear/Conv layers (Conv: 32-pixel sides).

    Candidates come from each layer in registration order, the first the forward accepts wins;
    models that start with an embedding or attention need a real input, and say so.
    """
    for candidate in _candidate_inputs(model, batch):
        try:
            with preserve_state(model), torch.no_grad():
                model.eval()
                run_model(model, candidate)
            return candidate
        except Exception:
            continue
    raise ValueError(
        f"cannot infer an input for {type(model).__name__} from its layers (embeddings and "
        "attention need real inputs); pass example_input="
    )


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
    names = {id(m): n for n, m in model.named_modules()}
    if order == "registration":
        used = [m for _, m in model.named_modules() if _weight_params(m)]
    else:
        used = _trace_calls(model, example_input, names)
    layers: List[WeightLayer] = []
    by_tensor: Dict[int, int] = {}
    for module in used:
        for param_name, kind in _weight_params(module):
            tensor = getattr(module, param_name, None)
            if tensor is None:
                continue
            name = names[id(module)]
            if id(tensor) in by_tensor:
                i = by_tensor[id(tensor)]
                first = layers[i]
                if name != first.name and name not in first.aliases:
                    layers[i] = WeightLayer(
                        first.name, first.module, first.param_name, first.kind,
                        first.aliases + (name,),
                    )
                continue
            by_tensor[id(tensor)] = len(layers)
            layers.append(WeightLayer(name, module, param_name, kind))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd or MultiheadAttention) "
            "used by its forward pass"
        )
    return layers


class _no_attention_fastpath:
    """Eval-mode transformer layers may skip their Linear modules (fused fast path): turn it off."""

    def __enter__(self) -> None:
        mha = getattr(torch.backends, "mha", None)
        self._was = mha.get_fastpath_enabled() if mha else None
        if mha:
            mha.set_fastpath_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        if self._was is not None:
            torch.backends.mha.set_fastpath_enabled(self._was)


def layer_by_module(model: nn.Module, layers: Sequence[WeightLayer]) -> Dict[int, WeightLayer]:
    """``id(module) -> layer`` for the Linear/Conv layers, every module sharing a tied weight included."""
    by_module: Dict[int, WeightLayer] = {}
    for layer in layers:
        if layer.kind in ("linear", "conv"):
            by_module[id(layer.module)] = layer
            for alias in layer.aliases:
                by_module[id(model.get_submodule(alias))] = layer
    return by_module


def _trace_calls(model: nn.Module, example_input: Any, names: Dict[int, str]) -> List[nn.Module]:
    if not any(_weight_params(m) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no weight layers (Linear, ConvNd or MultiheadAttention)"
        )
    calls: List[nn.Module] = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        calls.append(module)

    # no example input: try each inferred candidate in the hooked forward itself (one pass)
    inputs = [example_input] if example_input is not None else list(_candidate_inputs(model, 2))
    handles = [
        m.register_forward_pre_hook(pre_hook) for m in model.modules() if _weight_params(m)
    ]
    try:
        with preserve_state(model), torch.no_grad(), _no_attention_fastpath():
            model.eval()
            for i, candidate in enumerate(inputs):
                calls.clear()
                try:
                    run_model(model, candidate)
                    break
                except Exception as err:  # the user's forward: say what we were doing
                    if example_input is not None:
                        raise ValueError(
                            f"tracing {type(model).__name__} on the example input failed "
                            f"({type(err).__name__}: {err}); pass an example_input its forward "
                            "accepts"
                        ) from err
            else:
                raise ValueError(
                    f"cannot infer an input for {type(model).__name__} from its layers "
                    "(embeddings and attention need real inputs); pass example_input="
                )
    finally:
        for h in handles:
            h.remove()
    seen: set = set()
    ordered = []
    for m in calls:
        if id(m) not in seen:
            seen.add(id(m))
            ordered.append(m)
    # nn.MultiheadAttention applies its out_proj functionally: it follows the input projection.
    result: List[nn.Module] = []
    for m in ordered:
        if isinstance(m, nn.MultiheadAttention):
            result.append(m)
            if id(m.out_proj) not in seen:
                seen.add(id(m.out_proj))
                result.append(m.out_proj)
        else:
            result.append(m)
    return result


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


def _matches(name: str, pattern: str) -> bool:
    """fnmatch per dotted segment: ``*`` stands for one module name, never for a dotted path."""
    parts, pats = name.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, p) for a, p in zip(parts, pats))


def find_blocks(
    model: nn.Module,
    layers: Sequence[WeightLayer],
    blocks: Optional[Iterable[str]] = None,
) -> Dict[str, List[WeightLayer]]:
    """Group weight layers into blocks, each block's layers in execution order.

    ``blocks``: module names or patterns ("encoder.layers.*.ffn", ``*`` = one name segment); each must
    match at least one module. When None, the default blocks of :func:`is_block_module`. A layer in
    nested blocks belongs to the innermost one; layers in no block are left out.
    """
    modules = dict(model.named_modules())
    if blocks is None:
        chosen = [n for n, m in modules.items() if n and is_block_module(m)]
    else:
        patterns = [blocks] if isinstance(blocks, str) else list(blocks)
        chosen = []
        for pattern in patterns:
            hits = [n for n in modules if n and _matches(n, pattern)]
            if not hits:
                raise ValueError(f"block {pattern!r} matches no module of {type(model).__name__}")
            chosen.extend(h for h in hits if h not in chosen)
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
