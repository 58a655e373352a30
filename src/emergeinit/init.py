"""The emergence-promoting initialization (eq 8) and the transformer schemes, applied in place.

Per-tensor draws mirror ``torch.nn.init`` (same names, same arguments, the same random numbers for
the same seed) and take a ``factor`` folded into the draw, so "base init, then × factor" costs one
pass. On top of them:

- :func:`apply_plan_` writes an :class:`~emergeinit.plan.InitPlan`: a base draw × factor, or the
  current weights × factor, after checking every tensor, so a failed call changes nothing;
- :func:`emergence_init_` = :func:`~emergeinit.plan.plan_emergence` + :func:`apply_plan_`;
- :func:`tfixup_init_` and :func:`encoder_decoder_init_` on :func:`~emergeinit.plan.plan_transformer`.

Planning and applying are separate steps, so a model on the meta device can be planned first and
scaled once materialized::

    plan = plan_emergence(model, alpha=2.0, schedule="normalized")   # touches no weight
    apply_plan_(model, plan, base="kaiming")                          # base init × factor, one pass
    emergence_init_(model, alpha=2.0, schedule="normalized")          # both at once
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from emergeinit import sharding
from emergeinit.layers import ModuleSpec, NormedWeight, draw_target, packed_qkv_rows, storage_of
from emergeinit.options import FLAG, POSITIVE, Rule, check_values, one_of, optional
from emergeinit.plan import (
    InitPlan, PlannedLayer, UnrepresentableError, check_plan_options, plan_emergence, plan_transformer,
)
from emergeinit.schedules import Schedule

__all__ = [
    "Draw",
    "kaiming",
    "xavier",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "BaseInit",
    "BASES",
    "UnderflowWarning",
    "UNDERFLOW_WARN",
    "UNDERFLOW_REFUSE",
    "KEEP",
    "apply_plan_",
    "emergence_init_",
    "check_emergence_options",
    "TRANSFORMER_RULES",
    "tfixup_init_",
    "encoder_decoder_init_",
]

BASES = ("kaiming", "xavier")
KEEP = "keep"
"""``base="keep"`` (or None): no base draw; the model's current weights are scaled as they are, so
a model keeps the init its constructor gave it (the Table-1 protocol's base, docs/harness.md)."""
NORMAL_BOUND = 8.0
"""A normal draw is bounded by this many standard deviations when its largest value is checked
against the dtype's range before drawing (P(|z| > 8) ≈ 1e-15 per weight)."""

_WEIGHT_KINDS = ("linear", "conv", "attention")


# ---------------------------------------------------------------------------------------- draws

@dataclass(frozen=True)
class Draw:
    """A random draw for one tensor: N(0, scale²) (``"normal"``) or U(-scale, scale)
    (``"uniform"``), times a factor at draw time; ``zero_row`` is set to 0 afterwards (padding)."""

    distribution: str
    scale: float
    zero_row: Optional[int] = None

    @property
    def peak(self) -> float:
        """The largest magnitude the draw gives at factor 1 (normal: ``NORMAL_BOUND`` σ)."""
        return self.scale * (NORMAL_BOUND if self.distribution == "normal" else 1.0)

    def share_below(self, limit: float) -> float:
        """The expected share of drawn values whose magnitude is below ``limit`` (at factor 1)."""
        if self.distribution == "normal":
            return math.erf(limit / (self.scale * math.sqrt(2.0)))
        return min(1.0, limit / self.scale)

    def draw_(self, tensor: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        """Fill ``tensor`` in place, the factor folded into the distribution's parameters."""
        with torch.no_grad():
            if self.distribution == "normal":
                tensor.normal_(0.0, self.scale * factor)
            else:
                tensor.uniform_(-self.scale * factor, self.scale * factor)
            if self.zero_row is not None:
                tensor[self.zero_row].zero_()
        return tensor


def _choice(value: Any, choices: Sequence[Any], what: str) -> Any:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: use {' or '.join(repr(c) for c in choices)}")
    return value


def _by_distribution(distribution: str, std: float) -> Draw:
    """A normal draw with ``std``, or the uniform one with the same variance."""
    _choice(distribution, ("normal", "uniform"), "distribution")
    return Draw("normal", std) if distribution == "normal" else Draw("uniform", math.sqrt(3.0) * std)


def kaiming(tensor: torch.Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
            distribution: str = "normal") -> Draw:
    """The draw of ``torch.nn.init.kaiming_normal_`` / ``kaiming_uniform_`` for ``tensor``'s shape."""
    _choice(mode, ("fan_in", "fan_out"), "mode")
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(tensor)
    std = nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    return _by_distribution(distribution, std)


def xavier(tensor: torch.Tensor, gain: float = 1.0, distribution: str = "uniform") -> Draw:
    """The draw of ``torch.nn.init.xavier_uniform_`` / ``xavier_normal_`` for ``tensor``'s shape."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(tensor)
    return _by_distribution(distribution, gain * math.sqrt(2.0 / float(fan_in + fan_out)))


def kaiming_normal_(tensor: torch.Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", *, factor: float = 1.0) -> torch.Tensor:
    """``torch.nn.init.kaiming_normal_`` × ``factor`` in one draw (the same random numbers)."""
    return kaiming(tensor, a, mode, nonlinearity, "normal").draw_(tensor, factor)


def kaiming_uniform_(tensor: torch.Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", *, factor: float = 1.0) -> torch.Tensor:
    """``torch.nn.init.kaiming_uniform_`` × ``factor`` in one draw (the same random numbers)."""
    return kaiming(tensor, a, mode, nonlinearity, "uniform").draw_(tensor, factor)


def xavier_normal_(tensor: torch.Tensor, gain: float = 1.0, *, factor: float = 1.0) -> torch.Tensor:
    """``torch.nn.init.xavier_normal_`` × ``factor`` in one draw (the same random numbers)."""
    return xavier(tensor, gain, "normal").draw_(tensor, factor)


def xavier_uniform_(tensor: torch.Tensor, gain: float = 1.0, *, factor: float = 1.0) -> torch.Tensor:
    """``torch.nn.init.xavier_uniform_`` × ``factor`` in one draw (the same random numbers)."""
    return xavier(tensor, gain, "uniform").draw_(tensor, factor)


@dataclass(frozen=True)
class BaseInit:
    """The base draw of a plan's weight layers: Kaiming (normal unless ``distribution`` says
    otherwise; ``mode``, ``nonlinearity``, ``a``) or Xavier (uniform by default; ``gain``), with
    ``torch.nn.init``'s meaning. Checked on construction."""

    name: str = "kaiming"
    distribution: Optional[str] = None
    mode: str = "fan_in"
    nonlinearity: str = "relu"
    a: float = 0.0
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in BASES:
            raise ValueError(f"unknown base {self.name!r}: use 'kaiming', 'xavier', or 'keep' (None)")
        _choice(self.mode, ("fan_in", "fan_out"), "mode")
        _choice(self.distribution, (None, "normal", "uniform"), "distribution")
        if self.name == "kaiming":
            nn.init.calculate_gain(self.nonlinearity, self.a)  # raises on an unknown nonlinearity

    def draw(self, tensor: torch.Tensor) -> Draw:
        """The draw for ``tensor`` (a weight, or one q/k/v third of a packed one)."""
        if self.name == "kaiming":
            return kaiming(tensor, self.a, self.mode, self.nonlinearity, self.distribution or "normal")
        return xavier(tensor, self.gain, self.distribution or "uniform")


BaseLike = Union[str, BaseInit, None]


def _as_base(base: BaseLike, options: Any) -> Optional[BaseInit]:
    """``base`` given by name plus flat options (``mode=``, ``gain=``, ...), as a BaseInit, or None
    (the current weights are scaled; the options are still checked). An unknown option is a
    TypeError that lists the known ones."""
    known = [f.name for f in fields(BaseInit) if f.name != "name"]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise TypeError(f"unknown option {', '.join(map(repr, unknown))}: not an option of emergence_init_ "
                        f"or apply_plan_, nor of the base draw ({', '.join(known)})")
    if isinstance(base, BaseInit):
        return replace(base, **options) if options else base
    if base is None or base == KEEP:
        BaseInit(**options)
        return None
    return BaseInit(base, **options)


# ------------------------------------------------------------------------------- writing a plan

@dataclass(frozen=True)
class _Write:
    """One plan entry resolved against the model, checked, ready to write. For a sharded
    (DTensor) weight or bias that must be written whole (a draw, a row range), ``target``/``draws``
    or ``bias`` are views of its meta stand-in and ``*_source`` is the DTensor itself."""

    factor: float
    target: torch.Tensor  # the weight, or the rows the entry covers
    draws: Sequence[Tuple[torch.Tensor, Draw]]  # (view, draw) pieces; empty: scale ``target``
    bias: Optional[torch.Tensor]  # zeroed after a draw, or scaled with ``target``
    after_draw: Optional[Callable[[], None]] = None  # a weight-normed W: g = ‖v‖ once v is drawn
    weight_source: Optional[torch.Tensor] = None
    bias_source: Optional[torch.Tensor] = None
    covers_weight: bool = True  # the entry writes every element of the weight


Pieces = Callable[[PlannedLayer, torch.Tensor], List[Tuple[torch.Tensor, Draw]]]


class UnderflowWarning(UserWarning):
    """Some of a tensor's scaled values would leave the dtype's normal range (subnormal or zero)."""


UNDERFLOW_WARN = 0.01
"""A share of a tensor's values, above which an init that leaves them subnormal or zero warns."""
UNDERFLOW_REFUSE = 0.5
"""A share above which it is refused: the typical value of the tensor would be subnormal."""


def _check_range(key: str, w: torch.Tensor, factor: float, peak: Optional[float],
                 underflow: Optional[float] = None) -> None:
    """Raise unless ``factor`` and the largest scaled weight ``peak·factor`` fit ``w``'s dtype, and
    unless the ``underflow`` share of the scaled values (below the smallest normal number) is at
    most :data:`UNDERFLOW_REFUSE`; warn above :data:`UNDERFLOW_WARN`."""
    if not w.is_floating_point():
        raise ValueError(f"{key} is not a floating-point tensor ({w.dtype})")
    info = torch.finfo(w.dtype)
    as_dtype = float(torch.tensor(factor, dtype=torch.float64).to(w.dtype))
    if not math.isfinite(as_dtype):
        raise UnrepresentableError(f"factor {factor:.6g} of {key} overflows {w.dtype} (max {info.max:.6g})")
    if as_dtype == 0.0:
        raise UnrepresentableError(f"factor {factor:.6g} of {key} underflows to zero in {w.dtype}")
    if peak:
        scaled = peak * factor
        if not scaled < info.max:
            raise UnrepresentableError(
                f"scaling {key} by {factor:.6g} overflows {w.dtype}: its largest weight would be "
                f"{scaled:.6g} > {info.max:.6g}"
            )
        if scaled < info.tiny:
            raise UnrepresentableError(
                f"scaling {key} by {factor:.6g} underflows {w.dtype}: its largest weight would be "
                f"{scaled:.6g} < {info.tiny:.6g}"
            )
    if underflow is not None and underflow > UNDERFLOW_WARN:
        what = (f"scaling {key} by {factor:.6g} leaves {underflow:.1%} of its values subnormal or zero in "
                f"{w.dtype} (below {info.tiny:.3g})")
        if underflow > UNDERFLOW_REFUSE:
            raise UnrepresentableError(f"{what}: refused above {UNDERFLOW_REFUSE:.0%}; use a smaller alpha or a "
                             "wider dtype")
        warnings.warn(f"{what}: they lose precision", UnderflowWarning, stacklevel=4)


def _measured_peak(t: torch.Tensor) -> Optional[float]:
    """The largest magnitude in ``t`` (None on the meta device, where nothing can be read); over
    every rank's shard when ``t`` is sharded."""
    if t.device.type == "meta":
        return None
    return sharding.scalar(t.detach().abs().max()) if t.numel() else 0.0


def _readable(t: torch.Tensor, rows: Optional[Tuple[int, int]]) -> torch.Tensor:
    """The values of ``t`` (its rows, when given) that an entry scales, for the range checks: a
    sharded ``t``'s rows are gathered, a whole sharded ``t`` is read shard by shard."""
    if rows is None:
        return t
    return (sharding.whole_copy(t) if sharding.is_sharded(t) else t)[rows[0]:rows[1]]


def _view(t: torch.Tensor, rows: Optional[Tuple[int, int]], whole: bool) -> Tuple[torch.Tensor, bool]:
    """What a plan entry writes of parameter ``t`` (its rows, when given), and whether that is a
    view of ``t``'s meta stand-in, to be written whole (:mod:`emergeinit.sharding`): a sharded
    ``t`` that is drawn (``whole``) or cut into rows. A sharded ``t`` scaled as a whole is itself,
    multiplied shard by shard."""
    if sharding.is_sharded(t) and not (whole or rows is not None):
        return t, False
    base = sharding.stand_in(t)  # t itself unless sharded
    return (base if rows is None else base[rows[0]:rows[1]]), sharding.is_sharded(t)


def _drawn_underflow(draws: Sequence[Tuple[torch.Tensor, "Draw"]], factor: float, tiny: float) -> float:
    """The expected share of the drawn values (× factor) below ``tiny``, over all pieces."""
    total = sum(view.numel() for view, _ in draws)
    return sum(view.numel() * d.share_below(tiny / factor) for view, d in draws) / max(total, 1)


def _measured_underflow(t: torch.Tensor, factor: float) -> Optional[float]:
    """The share of ``t``'s nonzero values that ``factor`` < 1 would take below the dtype's smallest
    normal number (None on the meta device, or when nothing can newly underflow)."""
    if factor >= 1.0 or t.device.type == "meta" or not t.numel() or not t.is_floating_point():
        return None
    a = t.detach().abs()
    return sharding.scalar(((a > 0) & (a < torch.finfo(t.dtype).tiny / factor)).sum()) / t.numel()


def _resolve(model: nn.Module, layers: Sequence[PlannedLayer], pieces: Pieces, scale_bias: bool) -> List[_Write]:
    """Check every entry before anything is written: it names a tensor an init can write exactly
    (a parameter, or a weight-normed weight) of the planned shape, no tensor rows twice, and its
    factor and scaled values fit the dtype."""
    writes: List[_Write] = []
    seen: Dict[Tuple[int, Optional[Tuple[int, int]]], str] = {}
    for l in layers:
        stored = storage_of(model, l.key)  # a ValueError for what cannot be written exactly
        normed = stored if isinstance(stored, NormedWeight) else None
        w = draw_target(stored)
        if normed is not None and l.rows is not None:
            raise ValueError(f"{l.key} is weight-normed: a plan cannot scale some of its rows")
        if normed is not None and sharding.is_sharded(w):
            raise ValueError(f"{l.key} is weight-normed and sharded: not supported")
        if l.shape and tuple(w.shape) != tuple(l.shape):
            raise ValueError(f"{l.key} has shape {tuple(w.shape)}, the plan expects {tuple(l.shape)}")
        if (id(w), l.rows) in seen:
            raise ValueError(f"{l.key} and {seen[id(w), l.rows]} are the same tensor: a plan scales it once")
        seen[id(w), l.rows] = l.key
        target, weight_staged = _view(w, l.rows, True)  # pieces read shapes only
        draws = pieces(l, target)
        if not draws:
            target, weight_staged = _view(w, l.rows, False)
        bias_param = model.get_parameter(l.bias_key) if l.bias_key else None
        bias_rows = l.rows if bias_param is not None and bias_param.shape[0] == w.shape[0] else None
        bias, bias_staged = (None, False) if bias_param is None else _view(bias_param, bias_rows, False)
        if draws:
            tiny = torch.finfo(w.dtype).tiny if w.is_floating_point() else 0.0
            _check_range(l.key, w, l.factor, max(d.peak for _, d in draws),
                         _drawn_underflow(draws, l.factor, tiny))
        else:
            current = normed.value().detach() if normed is not None else _readable(w, l.rows)
            _check_range(l.key, w, l.factor, None if l.factor == 1.0 else _measured_peak(current),
                         _measured_underflow(current, l.factor))
            target = normed.g if normed is not None else target  # W × f is g × f, exactly
            if not (scale_bias and l.factor != 1.0):
                bias, bias_staged = None, False
            current_bias = _readable(bias_param, bias_rows) if bias is not None else None
            bias_peak = _measured_peak(current_bias) if current_bias is not None else None
            if bias_peak:  # a bias all zeros (or on meta) cannot leave the range
                _check_range(str(l.bias_key), bias_param, l.factor, bias_peak,
                             _measured_underflow(current_bias, l.factor))
        writes.append(_Write(l.factor, target, draws, bias, normed.renorm_ if normed is not None else None,
                             w if weight_staged else None, bias_param if bias_staged else None, l.rows is None))
    return writes


def _write_one(w: _Write) -> None:
    """Draw (then zero the bias) or scale one entry's tensors."""
    if w.draws:
        for view, draw in w.draws:
            draw.draw_(view, w.factor)
        if w.after_draw is not None:
            w.after_draw()
        if w.bias is not None:
            w.bias.zero_()
    elif w.factor != 1.0:
        w.target.mul_(w.factor)
        if w.bias is not None:
            w.bias.mul_(w.factor)


def _write_whole(w: _Write) -> None:
    """One entry over sharded tensors, each written whole on this rank (empty when a draw fills
    it, else gathered) and then cut back to this rank's shard: the unsharded result, bit for bit."""
    kept: List[Tuple[torch.Tensor, torch.Tensor]] = []
    target, draws, bias = w.target, w.draws, w.bias
    if w.weight_source is not None:
        source = w.weight_source
        full = sharding.empty_whole(source) if w.draws and w.covers_weight else sharding.whole_copy(source)
        target = sharding.on_copy(target, full)
        draws = [(sharding.on_copy(view, full), draw) for view, draw in draws]
        kept.append((source, full))
    if w.bias_source is not None and bias is not None:
        full_bias = sharding.whole_copy(w.bias_source)
        bias = sharding.on_copy(bias, full_bias)
        kept.append((w.bias_source, full_bias))
    _write_one(_Write(w.factor, target, draws, bias, w.after_draw))
    for source, full in kept:
        sharding.keep_shard_(source, full)


def _write_(writes: Sequence[_Write]) -> None:
    """Draw or scale every entry, in order (the order fixes which random numbers each one gets)."""
    with torch.no_grad():
        for w in writes:
            if not w.draws and w.factor == 1.0:
                continue
            if w.weight_source is not None or w.bias_source is not None:
                _write_whole(w)
            else:
                _write_one(w)


def _base_pieces(base: Optional[BaseInit]) -> Pieces:
    """Weight layers get the base draw, a packed q/k/v tensor per third (each a projection of its
    own); embeddings and norms, and everything when there is no base, are scaled as they are."""
    def pieces(l: PlannedLayer, target: torch.Tensor) -> List[Tuple[torch.Tensor, Draw]]:
        if base is None or l.kind not in _WEIGHT_KINDS:
            return []
        rows = packed_qkv_rows(l.key, target.shape[0]) if l.rows is None else None
        views = [target[lo:hi] for lo, hi in rows] if rows else [target]
        return [(v, base.draw(v.t() if l.transposed else v)) for v in views]

    return pieces


def apply_plan_(model: nn.Module, plan: InitPlan, *, base: BaseLike = None, **base_options: Any) -> InitPlan:
    """Scale ``model``'s tensors by ``plan``'s factors, in place; return the plan.

    ``base`` (``"kaiming"``, ``"xavier"`` or a :class:`BaseInit`; ``base_options`` are its fields,
    such as ``mode="fan_out"`` or ``gain=2``; ``"keep"`` or None: no draw) first re-draws every
    weight layer of the plan and zeroes its bias, folded into one pass (weights drawn with std·factor); embeddings and norm
    weights keep their values and are scaled. Everything is checked first — every key resolves,
    shapes match, factors and the scaled weights fit the dtype (fp16/bf16/fp32) — so a failed call
    changes nothing.
    """
    writes = _resolve(model, plan.layers, _base_pieces(_as_base(base, base_options)), plan.scale_bias)
    _write_(writes)
    return plan


def emergence_init_(
    model: nn.Module,
    *,
    alpha: float,
    schedule: Schedule = "literal",
    base: BaseLike = "kaiming",
    scope: str = "global",
    blocks: Optional[ModuleSpec] = None,
    example_input: Any = None,
    order: str = "execution",
    scale_bias: bool = False,
    embeddings: bool = False,
    norms: bool = False,
    include_frozen: bool = False,
    graph_depth: str = "shortest",
    **base_options: Any,
) -> InitPlan:
    """Initialize ``model`` in place with the emergence-promoting scheme and return its plan.

    :func:`~emergeinit.plan.plan_emergence` (which layers, in which order, which factor α**e_k; its
    arguments) then :func:`apply_plan_` (``base`` init and scaling in one pass; ``base_options``:
    ``mode``, ``nonlinearity``, ``a``, ``gain``, ``distribution`` as in :class:`BaseInit`).
    ``base="keep"`` (or None) draws nothing: the weights the model has (its constructor's init,
    or any init run before) are scaled, so the result differs from them by the factors alone. Same
    seed → bit-identical weights. Everything is checked before any weight changes: a failed call
    leaves the model as it was. Frozen tensors are left as they are unless ``include_frozen``.
    """
    resolved = _as_base(base, base_options)
    plan = plan_emergence(
        model, alpha=alpha, schedule=schedule, scope=scope, blocks=blocks,
        example_input=example_input, order=order, scale_bias=scale_bias,
        embeddings=embeddings, norms=norms, include_frozen=include_frozen,
        graph_depth=graph_depth,
    )
    plan.meta["base"] = resolved.name if resolved is not None else KEEP
    return apply_plan_(model, plan, base=resolved)


def check_emergence_options(options: Mapping[str, Any]) -> None:
    """Check the options of :func:`emergence_init_` without a model (names and values; what needs a
    model, such as a block pattern, is checked when it runs): a TypeError for an unknown name, a
    ValueError for a bad value. A grid checks its configs so before its first run."""
    named = inspect.signature(emergence_init_).parameters
    check_plan_options({k: v for k, v in options.items() if k in named})
    _as_base(options.get("base", "kaiming"), {k: v for k, v in options.items() if k not in named})


TRANSFORMER_RULES: Dict[str, Rule] = {
    "beta_enc": POSITIVE, "beta_dec": POSITIVE, "base": optional(one_of("tfixup", "xavier", KEEP)),
    "gain": POSITIVE, "scale_embeddings": FLAG, "include_frozen": FLAG,
}
"""The options of :func:`tfixup_init_` and :func:`encoder_decoder_init_` a rule can check."""


# ------------------------------------------------------------------------ transformer schemes

def _tfixup_pieces(model: nn.Module, gain: float) -> Pieces:
    """Xavier-uniform weight matrices (per row range) and N(0, d^-1/2) embeddings, padding row 0."""
    def pieces(l: PlannedLayer, target: torch.Tensor) -> List[Tuple[torch.Tensor, Draw]]:
        if l.kind == "embedding":
            pad = getattr(model.get_submodule(l.name), "padding_idx", None)
            return [(target, Draw("normal", target.shape[-1] ** -0.5, zero_row=pad))]
        return [(target, xavier(target.t() if l.transposed else target, gain))]

    return pieces


def encoder_decoder_init_(
    model: nn.Module,
    *,
    beta_enc: float = 1.0,
    beta_dec: float = 2.0,
    base: Optional[str] = "tfixup",
    encoder_layers: Optional[ModuleSpec] = None,
    decoder_layers: Optional[ModuleSpec] = None,
    scale_embeddings: bool = True,
    gain: float = 1.0,
    include_frozen: bool = False,
) -> InitPlan:
    """The paper's global transformer scheme: ``base``, then encoder-layer weights ÷ ``beta_enc`` and
    decoder-layer weights × ``beta_dec`` (every weight matrix inside those layers, q and k included;
    embeddings and layers outside both stacks keep their base values).

    ``base``: ``"tfixup"`` (T-Fixup, the paper's choice), ``"xavier"`` (Xavier weights, biases 0,
    embeddings kept), or ``"keep"``/None (scale the current weights). Layers are found or named as in
    :func:`~emergeinit.plan.find_transformer_layers`. Returns the per-tensor factors relative to the
    base's draw. Everything is checked before the first weight changes. Frozen tensors are left as
    they are, with a warning, unless ``include_frozen``.
    """
    if base == KEEP:
        base = None
    if base not in ("tfixup", "xavier", None):
        raise ValueError(f"unknown base {base!r}: use 'tfixup', 'xavier', or 'keep' (None)")
    check_values("encoder_decoder_init_", dict(gain=gain, scale_embeddings=scale_embeddings,
                                               include_frozen=include_frozen), TRANSFORMER_RULES)
    plan = plan_transformer(model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                            tfixup=base == "tfixup", scale_embeddings=scale_embeddings,
                            beta_enc=beta_enc, beta_dec=beta_dec, include_frozen=include_frozen)
    plan.meta["base"] = base if base is not None else KEEP
    if base is None:
        return apply_plan_(model, plan)
    # weight matrices first, embedding tables last: the weights draw the same random numbers with
    # or without the embeddings (base "xavier" keeps them)
    drawn = [l for l in plan.layers if l.kind != "embedding"]
    if base == "tfixup":
        drawn += [l for l in plan.layers if l.kind == "embedding"]
    _write_(_resolve(model, drawn, _tfixup_pieces(model, gain), scale_bias=False))
    return plan


def tfixup_init_(
    model: nn.Module,
    *,
    encoder_layers: Optional[ModuleSpec] = None,
    decoder_layers: Optional[ModuleSpec] = None,
    scale_embeddings: bool = True,
    gain: float = 1.0,
    include_frozen: bool = False,
) -> InitPlan:
    """T-Fixup (see :mod:`emergeinit.plan`): re-draw every weight, in place; return the factors.

    Works on ``nn.Transformer`` and on any model whose encoder/decoder layers are given or found
    (:func:`~emergeinit.plan.find_transformer_layers`). Attention blocks are
    ``nn.MultiheadAttention`` (a packed q/k/v weight drawn per third) or modules with
    ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linears; every other Linear of a layer counts as
    its FFN. ``scale_embeddings=False`` keeps the embeddings at N(0, d^-1/2). The factors are
    relative to Xavier / N(0, d^-1/2). Frozen tensors are left as they are unless ``include_frozen``.
    """
    return encoder_decoder_init_(model, beta_enc=1.0, beta_dec=1.0, base="tfixup",
                                 encoder_layers=encoder_layers, decoder_layers=decoder_layers,
                                 scale_embeddings=scale_embeddings, gain=gain, include_frozen=include_frozen)
