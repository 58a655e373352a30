"""Exponent schedules of eq 8 and the rules that choose α.

A schedule maps layer index k (0..L-1) and layer count L to an exponent e_k; layer k's weights are
multiplied by α**e_k. Both named schedules are antisymmetric about the middle layer (Σ e_k = 0), so
a bias-free ReLU network computes the same function before and after scaling.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "literal",
    "normalized",
    "SCHEDULES",
    "Schedule",
    "resolve_schedule",
    "exponents",
    "check_alpha",
    "alpha_for_lr",
    "auto_alpha",
]

Schedule = Union[str, Callable[[int, int], float]]


def literal(k: int, L: int) -> float:
    """Eq 8 as written: e_k = k - c with c = (L-1)/2 (half-integers when L is even)."""
    return k - (L - 1) / 2


def normalized(k: int, L: int) -> float:
    """e_k = (k - c)/c: first layer ÷α, last ×α, linear in between; 0 for a single layer."""
    c = (L - 1) / 2
    return 0.0 if L == 1 else (k - c) / c


SCHEDULES: Dict[str, Callable[[int, int], float]] = {"literal": literal, "normalized": normalized}


def resolve_schedule(schedule: Schedule) -> Tuple[str, Callable[[int, int], float]]:
    """(name, function) of a schedule given by name or as a callable ``(k, L) -> e_k``."""
    if callable(schedule):
        return getattr(schedule, "__name__", "custom"), schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return schedule, SCHEDULES[schedule]
    raise ValueError(
        f"unknown schedule {schedule!r}: use 'literal', 'normalized' or a callable (k, L) -> e_k"
    )


def exponents(L: int, schedule: Schedule = "literal") -> List[float]:
    """The exponents e_0..e_{L-1} of a schedule, each checked to be a finite number."""
    if L < 1:
        raise ValueError(f"a schedule needs at least one layer, got L={L}")
    name, fn = resolve_schedule(schedule)
    out = []
    for k in range(L):
        e = fn(k, L)
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise ValueError(f"schedule {name!r} returned {e!r} for k={k}, L={L}: not a number") from None
        if not math.isfinite(e):
            raise ValueError(f"schedule {name!r} returned {e} for k={k}, L={L}: not finite")
        out.append(e)
    return out


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    """α as a float, or a ValueError unless it is a finite number > 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        if not (isinstance(alpha, torch.Tensor) and alpha.numel() == 1):
            raise ValueError(f"{name} must be a positive finite number, got {alpha!r}")
    value = float(alpha)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def alpha_for_lr(alpha0: float, lr0: float, lr: float, depth: int) -> float:
    """Eq 11: α = α0·(lr0/lr)^(1/depth) — the α that keeps the initial gradient matched to ``lr``.

    ``alpha_for_lr(2, 1e-3, 1e-4, 2)`` = 2·√10 ≈ 6.32, the paper's two-layer example.
    """
    alpha0 = check_alpha(alpha0, "alpha0")
    lr0 = check_alpha(lr0, "lr0")
    lr = check_alpha(lr, "lr")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    return alpha0 * (lr0 / lr) ** (1.0 / depth)


# ------------------------------------------------------------------------------------- auto_alpha

DEFAULT_GRID: Tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


def _probe(model: nn.Module, batch: Any, loss_fn: Optional[Callable]) -> Tuple[float, float]:
    """(output RMS, gradient norm over all parameters) of one forward/backward on ``batch``."""
    from emergeinit.trace import run_model

    if loss_fn is None:
        out = run_model(model, batch)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = 0.5 * out.float().pow(2).mean()
    else:
        inputs, targets = batch
        out = run_model(model, inputs)
        loss = loss_fn(out, targets)
        out = out[0] if isinstance(out, (tuple, list)) else out
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    gnorm = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))
    rms = float(out.detach().double().pow(2).mean().sqrt())
    return rms, gnorm


def auto_alpha(
    model: nn.Module,
    batch: Any,
    *,
    loss_fn: Optional[Callable[[Any, Any], torch.Tensor]] = None,
    grid: Sequence[float] = DEFAULT_GRID,
    tolerance: float = 10.0,
    criterion: str = "largest",
    threshold: Optional[float] = None,
    measure: Optional[Callable[..., Any]] = None,
    return_trials: bool = False,
    **init_kwargs: Any,
) -> Union[float, Tuple[float, List[Dict[str, float]]]]:
    """Choose α from one probe batch, on deep copies (the user's model is untouched).

    Rule: for each α of ``grid`` apply :func:`emergeinit.emergence_init_` (``init_kwargs``, default
    ``base=None``: scale the current weights) to a copy, run one forward/backward, and call α
    *admissible* when the output RMS and the total gradient norm both stay within a factor
    ``tolerance`` of those at α = 1. ``criterion="largest"`` returns the largest admissible α;
    ``"emergence"`` returns the admissible α with the largest measured emergence
    (``measure``, default ``emergeinit.measure_emergence``: called as ``measure(model, inputs,
    threshold=...)``, its result's ``.log10`` is compared). α = 1 is always admissible.
    ``batch`` is the model input, or ``(inputs, targets)`` when ``loss_fn(output, targets)`` is given
    (otherwise the loss is ½·mean(output²)). ``return_trials=True`` also returns one dict per α.
    """
    from emergeinit.init import emergence_init_
    from emergeinit.trace import preserve_state

    if criterion not in ("largest", "emergence"):
        raise ValueError(f"unknown criterion {criterion!r}: use 'largest' or 'emergence'")
    tolerance = check_alpha(tolerance, "tolerance")
    if tolerance < 1:
        raise ValueError(f"tolerance must be >= 1, got {tolerance}")
    alphas = sorted({check_alpha(a, "grid value") for a in grid} | {1.0})
    init_kwargs.setdefault("base", None)
    example = batch if loss_fn is None else batch[0]
    trials: List[Dict[str, float]] = []
    devices = [p.device.index for p in model.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted(set(d for d in devices if d is not None))):
        for a in alphas:
            torch.manual_seed(0)  # every trial starts from the same random state
            twin = copy.deepcopy(model)
            emergence_init_(twin, alpha=a, example_input=example, **init_kwargs)
            with preserve_state(twin):
                rms, gnorm = _probe(twin, batch, loss_fn)
            trial = {"alpha": a, "output_rms": rms, "grad_norm": gnorm}
            if criterion == "emergence":
                if measure is None:
                    from emergeinit import measure_emergence as measure
                kw = {} if threshold is None else {"threshold": threshold}
                with torch.no_grad():
                    trial["log10_emergence"] = float(measure(twin, example, **kw).log10)
            trials.append(trial)
    ref = next(t for t in trials if t["alpha"] == 1.0)

    def within(x: float, x0: float) -> bool:
        if not (math.isfinite(x) and math.isfinite(x0)):
            return False
        if x0 == 0:
            return x == 0
        return 1 / tolerance <= x / x0 <= tolerance

    for t in trials:
        t["admissible"] = float(within(t["output_rms"], ref["output_rms"])
                                and within(t["grad_norm"], ref["grad_norm"]))
    ok = [t for t in trials if t["admissible"]] or [ref]
    if criterion == "largest":
        best = max(ok, key=lambda t: t["alpha"])
    else:
        best = max(ok, key=lambda t: (t["log10_emergence"], -t["alpha"]))
    return (best["alpha"], trials) if return_trials else best["alpha"]
