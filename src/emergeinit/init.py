"""The emergence-promoting initialization (eq 8): quiet the early layers, excite the late ones.

Start from a stable initialization (Kaiming or Xavier, or the model's current weights), then
multiply the weights of weight layer k (execution order, k = 0..L-1) by α**e_k, where e_k comes
from a schedule (:mod:`emergeinit.schedules`). With ``scope="blockwise"`` the schedule runs inside
each block (a transformer FFN pair, a residual block) separately.

Planning and applying are separate steps so a model on the meta device can be planned first and
scaled once materialized::

    plan = plan_emergence(model, alpha=2.0, schedule="normalized")   # touches no weight
    apply_plan_(model, plan, base="kaiming")                          # base init × factor, one pass
    emergence_init_(model, alpha=2.0, schedule="normalized")          # both at once
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from emergeinit.layers import WeightLayer, find_blocks, find_weight_layers
from emergeinit.trace import call_order, fork_rng, meta_stand_ins, to_meta
from emergeinit.schedules import Schedule, exponents, positive_number, resolve_schedule

__all__ = ["PlannedLayer", "InitPlan", "plan_emergence", "apply_plan_", "emergence_init_", "BASES"]

BASES = ("kaiming", "xavier")
SCOPES = ("global", "blockwise")
_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
# weights kept this many standard deviations below the dtype's max when a normal base init is
# checked for overflow before it is drawn (P(|z| > 8) ≈ 1e-15 per weight)
_NORMAL_BOUND = 8.0


@dataclass(frozen=True)
class PlannedLayer:
    """One scaled (or re-initialized) tensor: which one, its place in the schedule, its factor."""

    name: str  # owning module ("features.0")
    key: str  # parameter name, for model.get_parameter ("features.0.weight")
    kind: str  # "linear" | "conv" | "attention" | "embedding" | "norm"
    index: Optional[int]  # k in its schedule (None: not scheduled, factor 1)
    exponent: Optional[float]  # e_k (None where the factor does not come from a schedule)
    factor: float  # multiplier, computed in float64
    block: Optional[str] = None  # block the schedule ran in (scope="blockwise")
    bias_key: Optional[str] = None  # the layer's bias, if any
    shape: Tuple[int, ...] = ()
    rows: Optional[Tuple[int, int]] = None  # only rows [start, stop) (a slice of a packed tensor)


@dataclass
class InitPlan:
    """Per-tensor factors of an initialization, in execution order; apply with :func:`apply_plan_`."""

    layers: List[PlannedLayer]
    alpha: Optional[float] = None
    schedule: Optional[str] = None
    scope: Optional[str] = None
    scale_bias: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, key: Union[int, str]) -> PlannedLayer:
        """A layer by position, or by parameter key / module name."""
        if isinstance(key, int):
            return self.layers[key]
        for layer in self.layers:
            if key in (layer.key, layer.name):
                return layer
        raise KeyError(key)

    @property
    def factors(self) -> Dict[str, float]:
        """Parameter key -> factor (rows-restricted entries appear as ``key[start:stop]``)."""
        return {_label(l): l.factor for l in self.layers}

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (``json.dumps(plan.to_dict())``)."""
        return {
            "alpha": self.alpha,
            "schedule": self.schedule,
            "scope": self.scope,
            "scale_bias": self.scale_bias,
            "meta": _jsonable(self.meta),
            "layers": [
                {**asdict(l), "shape": list(l.shape), "rows": list(l.rows) if l.rows else None}
                for l in self.layers
            ],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        head = ["#", "layer", "kind", "block", "k", "e_k", "factor"]
        rows = []
        for i, l in enumerate(self.layers):
            rows.append([
                str(i), _label(l), l.kind, l.block or "-",
                "-" if l.index is None else str(l.index),
                "-" if l.exponent is None else f"{l.exponent:+.4g}",
                f"{l.factor:.6g}",
            ])
        widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        title = ", ".join(
            f"{k}={v}" for k, v in (("alpha", self.alpha), ("schedule", self.schedule), ("scope", self.scope))
            if v is not None
        )
        lines = [f"InitPlan({title}): {len(self.layers)} tensors", fmt(head), fmt(["-" * w for w in widths])]
        return "\n".join(lines + [fmt(r) for r in rows])


def _label(l: PlannedLayer) -> str:
    return f"{l.key}[{l.rows[0]}:{l.rows[1]}]" if l.rows else l.key


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (int, float, str, bool)) or x is None:
        return x
    return repr(x)


# ------------------------------------------------------------------------------------------ plan

def _bias_key(layer: WeightLayer) -> Optional[str]:
    b = layer.bias
    if b is None:
        return None
    for n, p in layer.module.named_parameters(recurse=False):
        if p is b:
            return f"{layer.name}.{n}" if layer.name else n
    return None


def _entries(model: nn.Module, layers: List[WeightLayer], example_input: Any, *,
             embeddings: bool, norms: bool) -> Tuple[List[Tuple[str, str, str, Any, Optional[str]]],
                                                      Dict[str, int]]:
    """The scheduled tensors (name, key, kind, tensor, bias_key) in execution order, and for each
    norm parameter key the position of the scheduled tensor it follows."""
    base = [(l.name, l.key, l.kind, l.weight, _bias_key(l)) for l in layers]
    if not (embeddings or norms):
        return base, {}
    types = (_EMBEDDING_TYPES if embeddings else ()) + (_NORM_TYPES if norms else ())
    wanted = {id(l.module) for l in layers}
    order = call_order(model, [m for m in model.modules() if isinstance(m, types) or id(m) in wanted], example_input)
    pos = {id(m): i for i, m in enumerate(order)}
    names = {id(m): n for n, m in model.named_modules()}
    # weight layers not hooked (MultiheadAttention's out_proj is applied functionally) sit just
    # after the layer before them
    keyed: List[Tuple[float, Tuple]] = []
    last = -1.0
    for entry, l in zip(base, layers):
        p = float(pos.get(id(l.module), last + 1e-3))
        last = p
        keyed.append((p, entry))
    tensors = {id(e[3]) for e in base}
    norm_pos: List[Tuple[float, str, str, Any]] = []
    for m in order:
        name = names[id(m)]
        if embeddings and isinstance(m, _EMBEDDING_TYPES) and id(m.weight) not in tensors:
            tensors.add(id(m.weight))
            keyed.append((float(pos[id(m)]), (name, _join(name, "weight"), "embedding", m.weight, None)))
        if norms and isinstance(m, _NORM_TYPES) and getattr(m, "weight", None) is not None:
            norm_pos.append((float(pos[id(m)]), name, _join(name, "weight"), m.weight))
    keyed.sort(key=lambda t: t[0])
    entries = [e for _, e in keyed]
    follows: Dict[str, int] = {}
    for p, name, key, w in norm_pos:
        before = [i for i, (q, _) in enumerate(keyed) if q < p]
        if before:  # a norm before every weight layer follows nothing and stays unscaled
            follows[key] = before[-1]
    return entries, follows


def _find(model: nn.Module, example_input: Any, order: str, trace: str, embeddings: bool, norms: bool):
    """Weight layers and scheduled entries, traced on meta stand-ins when ``trace="meta"`` (falling
    back to the real weights when the forward cannot run on meta tensors)."""
    if trace == "meta" and order == "execution":
        try:
            with meta_stand_ins(model):
                meta_input = to_meta(example_input)
                layers = find_weight_layers(model, meta_input, order=order)
                entries, follows = _entries(model, layers, meta_input, embeddings=embeddings, norms=norms)
            # entries hold the stand-ins: swap the real tensors back in
            entries = [(n, k, kind, model.get_parameter(k), b) for n, k, kind, _, b in entries]
            return layers, entries, follows
        except Exception:  # data-dependent forward, tensors kept outside parameters/buffers, ...
            pass
    layers = find_weight_layers(model, example_input, order=order)
    entries, follows = _entries(model, layers, example_input, embeddings=embeddings, norms=norms)
    return layers, entries, follows


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def plan_emergence(
    model: nn.Module,
    *,
    alpha: float,
    schedule: Schedule = "literal",
    scope: str = "global",
    blocks: Optional[Union[str, Iterable[str]]] = None,
    example_input: Any = None,
    order: str = "execution",
    scale_bias: bool = False,
    embeddings: bool = False,
    norms: bool = False,
    trace: str = "meta",
) -> InitPlan:
    """The plan of eq 8 for ``model``: per weight layer its index k, exponent e_k and α**e_k.

    Touches no weight and no global random state, and works on a meta-device model (the trace runs
    on meta tensors). The L weight layers are every Linear/ConvNd/MultiheadAttention weight the
    forward pass uses, in execution order on ``example_input`` (inferred from the first layer when
    None), a tied weight counted once. ``embeddings=True`` schedules embedding tables too;
    ``norms=True`` scales each norm layer's weight (γ) by the factor of the weight layer executed
    just before it. ``scope="blockwise"`` runs the schedule inside each block (``blocks``: module
    names or fnmatch patterns; default: transformer FFN pairs, residual blocks, modules with
    ``emergeinit_block = True``); layers outside every block keep factor 1. ``trace="meta"`` runs
    the tracing forward on meta stand-ins of the weights (no arithmetic; the real weights are used
    when the forward cannot run on meta tensors), ``"real"`` on the weights themselves.
    """
    alpha = positive_number(alpha, "alpha")
    if trace not in ("meta", "real"):
        raise ValueError(f"unknown trace {trace!r}: use 'meta' or 'real'")
    schedule_name, schedule_fn = resolve_schedule(schedule)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: use 'global' or 'blockwise'")
    if scope == "global" and blocks is not None:
        raise ValueError("blocks= is only used with scope='blockwise'")
    with fork_rng(model):  # planning never moves the user's random state
        layers, entries, follows = _find(model, example_input, order, trace, embeddings, norms)
    groups: List[Tuple[Optional[str], List[int]]]
    if scope == "global":
        groups = [(None, list(range(len(entries))))]
    else:
        found = find_blocks(model, layers, blocks)
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no default blocks (transformer layers, residual "
                "blocks, modules with emergeinit_block = True): name them with blocks="
            )
        index_of = {e[1]: i for i, e in enumerate(entries)}
        groups = [(b, [index_of[l.key] for l in ls]) for b, ls in found.items()]
    sched: Dict[int, Tuple[int, float, Optional[str]]] = {}
    for block, idx in groups:
        for k, (i, e) in enumerate(zip(idx, exponents(len(idx), schedule_fn))):
            sched[i] = (k, e, block)
    planned: List[PlannedLayer] = []
    for i, (name, key, kind, w, bias_key) in enumerate(entries):
        k, e, block = sched.get(i, (None, None, None))
        factor = alpha ** e if e is not None else 1.0
        if not math.isfinite(factor) or factor == 0.0:
            raise ValueError(f"factor alpha**e = {alpha}**{e} of {key} is not representable in float64")
        planned.append(PlannedLayer(name, key, kind, k, e, factor, block, bias_key, tuple(w.shape)))
    after: Dict[int, List[PlannedLayer]] = {}
    for key, i in follows.items():  # a norm's γ takes the factor of the layer it follows
        src = planned[i]
        bias = key[: -len("weight")] + "bias"
        after.setdefault(i, []).append(PlannedLayer(
            key.rsplit(".", 1)[0] if "." in key else "", key, "norm", src.index, src.exponent,
            src.factor, src.block, bias if _has_param(model, bias) else None,
            tuple(model.get_parameter(key).shape),
        ))
    planned = [p for i, layer in enumerate(planned) for p in [layer] + after.get(i, [])]
    return InitPlan(planned, alpha=alpha, schedule=schedule_name, scope=scope, scale_bias=scale_bias,
                    meta={"order": order, "embeddings": embeddings, "norms": norms})


def _has_param(model: nn.Module, key: str) -> bool:
    try:
        return model.get_parameter(key) is not None
    except AttributeError:
        return False


# ----------------------------------------------------------------------------------------- apply

def _fans(shape: Sequence[int]) -> Tuple[int, int]:
    """(fan_in, fan_out) as ``torch.nn.init`` computes them."""
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a tensor with 2 or more dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _base_spec(shape: Sequence[int], base: str, *, mode: str, nonlinearity: str, a: float,
               gain: float, distribution: Optional[str]) -> Tuple[str, float]:
    """("normal", std) or ("uniform", bound) of the base init of a tensor of ``shape``."""
    fan_in, fan_out = _fans(shape)
    if base == "kaiming":
        dist = distribution or "normal"
        fan = fan_in if mode == "fan_in" else fan_out
        std = nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    else:
        dist = distribution or "uniform"
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return (dist, std) if dist == "normal" else (dist, math.sqrt(3.0) * std)


def _pieces(layer: PlannedLayer, w: torch.Tensor) -> List[Tuple[int, int]]:
    """Row ranges initialized separately: q, k and v of a packed attention projection."""
    if layer.kind == "attention" and layer.key.endswith("in_proj_weight") and w.shape[0] % 3 == 0:
        e = w.shape[0] // 3
        return [(0, e), (e, 2 * e), (2 * e, 3 * e)]
    return [(0, w.shape[0])]


def _check_options(base: Optional[str], mode: str, distribution: Optional[str]) -> None:
    if base is not None and base not in BASES:
        raise ValueError(f"unknown base {base!r}: use 'kaiming', 'xavier' or None")
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"unknown mode {mode!r}: use 'fan_in' or 'fan_out'")
    if distribution not in (None, "normal", "uniform"):
        raise ValueError(f"unknown distribution {distribution!r}: use 'normal' or 'uniform'")


def _check_range(key: str, w: torch.Tensor, factor: float, peak: Optional[float]) -> None:
    """Raise unless ``factor`` and the largest scaled weight ``peak·factor`` fit ``w``'s dtype."""
    if not w.is_floating_point():
        raise ValueError(f"{key} is not a floating-point tensor ({w.dtype})")
    info = torch.finfo(w.dtype)
    as_dtype = float(torch.tensor(factor, dtype=torch.float64).to(w.dtype))
    if not math.isfinite(as_dtype):
        raise ValueError(f"factor {factor:.6g} of {key} overflows {w.dtype} (max {info.max:.6g})")
    if as_dtype == 0.0:
        raise ValueError(f"factor {factor:.6g} of {key} underflows to zero in {w.dtype}")
    if peak is None or peak == 0.0:
        return
    scaled = peak * factor
    if not scaled < info.max:
        raise ValueError(
            f"scaling {key} by {factor:.6g} overflows {w.dtype}: its largest weight would be "
            f"{scaled:.6g} > {info.max:.6g}"
        )
    if scaled < info.tiny:
        raise ValueError(
            f"scaling {key} by {factor:.6g} underflows {w.dtype}: its largest weight would be "
            f"{scaled:.6g} < {info.tiny:.6g}"
        )


def apply_plan_(
    model: nn.Module,
    plan: InitPlan,
    *,
    base: Optional[str] = None,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    a: float = 0.0,
    gain: float = 1.0,
    distribution: Optional[str] = None,
) -> InitPlan:
    """Scale ``model``'s tensors by ``plan``'s factors, in place; return the plan.

    ``base="kaiming"`` (``mode``, ``nonlinearity``, ``a``; normal by default) or ``"xavier"``
    (``gain``; uniform by default) first re-draws every weight layer of the plan and zeroes its
    bias, folded into one pass (weights drawn with std·factor); embeddings and norm weights keep
    their values. Everything is checked first — every key resolves, shapes match, factors and the
    scaled weights fit the dtype (fp16/bf16/fp32) — so a failed call changes nothing.
    """
    _check_options(base, mode, distribution)
    if base == "kaiming":
        nn.init.calculate_gain(nonlinearity, a)  # raises on an unknown nonlinearity
    if base is not None and any(l.rows is not None for l in plan.layers):
        raise ValueError("a plan that scales slices of tensors (rows=) cannot be combined with base=")
    # ---- check everything before the first weight is touched
    resolved: List[Tuple[PlannedLayer, torch.Tensor, Optional[torch.Tensor]]] = []
    seen: Dict[Tuple[int, Optional[Tuple[int, int]]], str] = {}
    for l in plan.layers:
        try:
            w = model.get_parameter(l.key)
        except AttributeError:
            raise ValueError(f"plan layer {l.key!r} is not a parameter of {type(model).__name__}") from None
        if l.shape and tuple(w.shape) != tuple(l.shape):
            raise ValueError(f"{l.key} has shape {tuple(w.shape)}, the plan expects {tuple(l.shape)}")
        tag = (id(w), l.rows)
        if tag in seen:
            raise ValueError(f"{l.key} and {seen[tag]} are the same tensor: a plan scales it once")
        seen[tag] = l.key
        bias = model.get_parameter(l.bias_key) if l.bias_key else None
        reinit = base is not None and l.kind in ("linear", "conv", "attention")
        if reinit:
            peak = 0.0
            for lo, hi in _pieces(l, w):
                dist, s = _base_spec((hi - lo,) + tuple(w.shape[1:]), base, mode=mode,
                                     nonlinearity=nonlinearity, a=a, gain=gain, distribution=distribution)
                peak = max(peak, s * (_NORMAL_BOUND if dist == "normal" else 1.0))
        elif w.device.type == "meta" or l.factor == 1.0:
            peak = None
        else:
            part = w.detach() if l.rows is None else w.detach()[l.rows[0]:l.rows[1]]
            peak = float(part.abs().max()) if part.numel() else 0.0
        _check_range(l.key, w, l.factor, peak)
        if plan.scale_bias and bias is not None and not reinit and l.factor != 1.0:
            bpeak = None if bias.device.type == "meta" or bias.numel() == 0 else float(bias.detach().abs().max())
            if bpeak:
                _check_range(l.bias_key, bias, l.factor, bpeak)
        resolved.append((l, w, bias))
    # ---- apply
    with torch.no_grad():
        for l, w, bias in resolved:
            if base is not None and l.kind in ("linear", "conv", "attention"):
                for lo, hi in _pieces(l, w):  # base init with the factor folded in: one pass
                    dist, s = _base_spec((hi - lo,) + tuple(w.shape[1:]), base, mode=mode,
                                         nonlinearity=nonlinearity, a=a, gain=gain,
                                         distribution=distribution)
                    if dist == "normal":
                        w[lo:hi].normal_(0.0, s * l.factor)
                    else:
                        w[lo:hi].uniform_(-s * l.factor, s * l.factor)
                if bias is not None:
                    bias.zero_()
                continue
            if l.factor == 1.0:
                continue
            target = w if l.rows is None else w[l.rows[0]:l.rows[1]]
            target.mul_(l.factor)
            if plan.scale_bias and bias is not None:
                (bias if l.rows is None else bias[l.rows[0]:l.rows[1]]).mul_(l.factor)
    return plan


def emergence_init_(
    model: nn.Module,
    *,
    alpha: float,
    schedule: Schedule = "literal",
    base: Optional[str] = "kaiming",
    scope: str = "global",
    blocks: Optional[Union[str, Iterable[str]]] = None,
    example_input: Any = None,
    order: str = "execution",
    scale_bias: bool = False,
    embeddings: bool = False,
    norms: bool = False,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    a: float = 0.0,
    gain: float = 1.0,
    distribution: Optional[str] = None,
) -> InitPlan:
    """Initialize ``model`` in place with the emergence-promoting scheme and return its plan.

    ``plan_emergence`` (which layers, in which order, which factor α**e_k) then ``apply_plan_``
    (``base`` init and scaling in one pass). Same seed → bit-identical weights. All arguments are
    checked before any weight changes: a failed call leaves the model as it was.
    """
    _check_options(base, mode, distribution)
    plan = plan_emergence(
        model, alpha=alpha, schedule=schedule, scope=scope, blocks=blocks,
        example_input=example_input, order=order, scale_bias=scale_bias,
        embeddings=embeddings, norms=norms,
    )
    plan.meta["base"] = base
    return apply_plan_(model, plan, base=base, mode=mode, nonlinearity=nonlinearity, a=a,
                       gain=gain, distribution=distribution)
