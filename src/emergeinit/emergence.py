"""Emergence of a layered network from its node counts: eq 2 of the paper (eq 12 with channel
counts as widths) and the pivot layer of the lemma (eq 4-5).

E counts the directed paths that start at an inactive node of some layer i and end at an active
node of a later layer j of a fully connected layered network:
``E = sum_{i<j} (n_i - a_i) * a_j * prod_{i<k<j} n_k``.
Layers are indexed from 0 everywhere in this package (the paper counts from 1).
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any, List, Sequence, Tuple, Union

__all__ = ["layered_emergence", "lemma_pivot", "exact_pivot", "Number"]

Number = Union[int, float]


# ------------------------------------------------------------------------------------ validation

def _as_list(values: Any, what: str) -> List[Any]:
    """A plain list from a sequence, a numpy array or a torch tensor."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    return list(values)


def _number(value: Any, what: str) -> Number:
    """An int or a float; NaN, infinities, negatives and non-numbers are errors."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if isinstance(value, numbers.Integral):
        value = int(value)
    else:
        value = float(value)
        if math.isnan(value):
            raise ValueError(f"{what} is NaN")
        if math.isinf(value):
            raise ValueError(f"{what} is infinite")
    if value < 0:
        raise ValueError(f"{what} is negative ({value})")
    return value


def _validate(widths: Any, active: Any) -> Tuple[List[int], List[Number]]:
    """Checked copies of ``widths`` (whole numbers) and ``active`` (ints or floats, 0 <= a <= n)."""
    n = _as_list(widths, "widths")
    a = _as_list(active, "active")
    if not n and not a:
        raise ValueError("widths and active are empty: emergence needs at least one layer")
    if len(n) != len(a):
        raise ValueError(f"length mismatch: widths has {len(n)} layers, active has {len(a)}")
    ns: List[int] = []
    for i, w in enumerate(n):
        w = _number(w, f"widths[{i}]")
        if isinstance(w, float):
            if not w.is_integer():
                raise ValueError(f"widths[{i}] = {w} is not a whole number of nodes")
            w = int(w)
        ns.append(w)
    As: List[Number] = []
    for i, v in enumerate(a):
        v = _number(v, f"active[{i}]")
        if v > ns[i]:
            raise ValueError(f"active[{i}] = {v} exceeds widths[{i}] = {ns[i]}")
        As.append(v)
    return ns, As


def _exact(values: Sequence[Number]) -> List[Union[int, Fraction]]:
    """Ints stay ints; floats become the Fraction they stand for, so sums and products are exact."""
    return [v if isinstance(v, int) else Fraction(v) for v in values]


def _to_number(value: Union[int, Fraction], as_float: bool = False) -> Number:
    """An exact result as an int (when whole and ``as_float`` is false), else the nearest float
    (inf past the float range)."""
    if not as_float and (isinstance(value, int) or value.denominator == 1):
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return math.inf


# ------------------------------------------------------------------------------------- log space

def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _logaddexp(x: float, y: float) -> float:
    """log(exp(x) + exp(y)) without overflow; -inf stands for log 0."""
    if x == -math.inf:
        return y
    if y == -math.inf:
        return x
    hi, lo = (x, y) if x >= y else (y, x)
    return hi + math.log1p(math.exp(lo - hi))


# ---------------------------------------------------------------------------------- public API

def layered_emergence(widths: Sequence[Number], active: Sequence[Number], *, log: bool = False) -> Number:
    """Eq 2 (eq 12 when ``widths`` are channel counts): paths from inactive to active nodes.

    ``widths[i]`` is n_i, ``active[i]`` is a_i (an int, or a float such as a batch-averaged
    count). All-int input gives the exact Python int; float input gives the float nearest to the
    exact value (``inf`` past the float range). ``log=True`` gives the natural log of E by a
    log-space recursion that neither overflows nor underflows at any depth (E = 0 gives ``-inf``).
    O(N) in the number of layers, via S_{j+1} = n_j S_j + (n_j - a_j) and E = sum_j a_j S_j,
    where S_j counts the paths from inactive nodes into one node of layer j.
    """
    n, a = _validate(widths, active)
    if log:
        log_s, log_e = -math.inf, -math.inf
        for nj, aj in zip(n, a):
            log_e = _logaddexp(log_e, _log(aj) + log_s)
            log_s = _logaddexp(log_s + _log(nj), _log(nj - aj))
        return log_e
    s: Union[int, Fraction] = 0
    e: Union[int, Fraction] = 0
    for nj, aj in zip(n, _exact(a)):
        e += aj * s
        s = nj * s + (nj - aj)
    return _to_number(e, as_float=not all(isinstance(v, int) for v in a))


def lemma_pivot(widths: Sequence[Number], active: Sequence[Number]) -> int:
    """The pivot layer of the paper's lemma (eq 4), 0-based.

    The largest i with ``Delta_i = sum_k a_k - a_i - sum_{k<i} n_k > 0`` (eq 5: the paper's net
    change of E when layer i loses one active node, path products ignored). Layers 0..i favour
    fewer active nodes, layers after i favour more. Returns -1 when no layer satisfies it.
    Delta_i never increases with i, so the layers that satisfy it are a prefix.
    """
    n, a = _validate(widths, active)
    ex = _exact(a)
    total = sum(ex)
    before = 0
    pivot = -1
    for i, (ni, ai) in enumerate(zip(n, ex)):
        if total - ai - before > 0:
            pivot = i
        before += ni
    return pivot


def exact_pivot(widths: Sequence[Number], active: Sequence[Number]) -> int:
    """The pivot that the exact eq 2 gives, 0-based: the largest i where turning one active node
    of layer i inactive raises E, i.e. ``E(a_i - 1) > E(a_i)``; -1 when no layer qualifies.

    E is linear in each a_i, and ``E(a_i - 1) - E(a_i) = A_i - B_i``, where A_i counts paths from
    one node of layer i to later active nodes and B_i paths from earlier inactive nodes into one
    node of layer i. With all widths >= 1 this difference never increases with i, so the layers
    that gain from losing activity are a prefix, as the lemma says. Computed exactly (ints, or the
    Fractions the floats stand for), O(N).
    """
    n, a = _validate(widths, active)
    ex = _exact(a)
    count = len(n)
    into: List[Union[int, Fraction]] = [0] * count  # B_i
    for i in range(1, count):
        into[i] = n[i - 1] * into[i - 1] + (n[i - 1] - ex[i - 1])
    out: List[Union[int, Fraction]] = [0] * count  # A_i
    for i in range(count - 2, -1, -1):
        out[i] = ex[i + 1] + n[i + 1] * out[i + 1]
    pivot = -1
    for i in range(count):
        if out[i] > into[i]:
            pivot = i
    return pivot
