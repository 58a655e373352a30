"""Exponent schedules of eq 8 and the learning-rate rule for α (eq 11): plain arithmetic.

A schedule maps layer index k (0..L-1) and layer count L to an exponent e_k; layer k's weights are
multiplied by α**e_k. Both named schedules are antisymmetric about the middle layer (Σ e_k = 0), so
a bias-free ReLU network computes the same function before and after scaling. α from a probe
batch (which runs the model) is :func:`emergeinit.tuning.auto_alpha`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple, Union

__all__ = [
    "literal",
    "normalized",
    "SCHEDULES",
    "Schedule",
    "resolve_schedule",
    "exponents",
    "positive_number",
    "alpha_for_lr",
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


def positive_number(value: Any, name: str) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is a finite number > 0
    (a Python or numpy number, or a one-element tensor; never a bool or a string)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {number}")
    return number


def alpha_for_lr(alpha0: float, lr0: float, lr: float, depth: int) -> float:
    """Eq 11: α = α0·(lr0/lr)^(1/depth) — the α that keeps the initial gradient matched to ``lr``.

    ``alpha_for_lr(2, 1e-3, 1e-4, 2)`` = 2·√10 ≈ 6.32, the paper's two-layer example.
    """
    alpha0 = positive_number(alpha0, "alpha0")
    lr0 = positive_number(lr0, "lr0")
    lr = positive_number(lr, "lr")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    return alpha0 * (lr0 / lr) ** (1.0 / depth)
