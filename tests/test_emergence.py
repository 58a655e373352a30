"""Eq 2 / eq 12 on counts, the lemma pivot (eq 4-5) and the exact pivot."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emergeinit import exact_pivot, layered_emergence, lemma_pivot


def brute_force_paths(widths, masks):
    """Enumerate every path of a fully connected layered graph, one by one (no DP)."""
    count = 0

    def walk(layer, _node, inactive_start):
        nonlocal count
        for nxt in range(layer + 1, layer + 2):
            if nxt >= len(widths):
                return
            for j in range(widths[nxt]):
                if masks[nxt][j]:
                    count += 1
                walk(nxt, j, inactive_start)

    for i, w in enumerate(widths):
        for k in range(w):
            if not masks[i][k]:
                walk(i, k, True)
    return count


def eq2_sum(widths, active):
    """Eq 2 exactly as printed: the double sum with its product, in Fractions."""
    total = Fraction(0)
    for i in range(len(widths)):
        for j in range(i + 1, len(widths)):
            prod = math.prod(widths[i + 1:j])
            total += (widths[i] - Fraction(active[i])) * Fraction(active[j]) * prod
    return total


@st.composite
def layered(draw, max_layers=5, max_width=3, min_width=0):
    widths = draw(st.lists(st.integers(min_width, max_width), min_size=1, max_size=max_layers))
    masks = [draw(st.lists(st.booleans(), min_size=w, max_size=w)) for w in widths]
    return widths, masks


def test_hand_computed_example():
    # widths 4, 3, 2 with 1, 2, 1 active:
    # i=0 (3 inactive): to layer 1 3*2 = 6, to layer 2 3*3*1 = 9; i=1 (1 inactive): 1*1 = 1
    assert layered_emergence([4, 3, 2], [1, 2, 1]) == 16
    assert type(layered_emergence([4, 3, 2], [1, 2, 1])) is int
    # moving the inactive node of layer 1 to layer 0 ... all active: no inactive source, E = 0
    assert layered_emergence([4, 3, 2], [4, 3, 2]) == 0
    assert layered_emergence([5], [2]) == 0  # one layer: no pair i < j


@settings(max_examples=150, deadline=None)
@given(layered())
def test_matches_brute_force_path_enumeration(case):
    widths, masks = case
    active = [sum(m) for m in masks]
    assert layered_emergence(widths, active) == brute_force_paths(widths, masks)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1)), min_size=1, max_size=8))
def test_float_active_is_the_exact_value_rounded(layers):
    widths = [w for w, _ in layers]
    active = [w * f for w, f in layers]
    exact = eq2_sum(widths, active)
    assert layered_emergence(widths, active) == float(exact)
    if exact > 0:
        # log of the exact rational, not of its float (which underflows near 5e-324)
        log_exact = math.log(exact.numerator) - math.log(exact.denominator)
        assert math.isclose(layered_emergence(widths, active, log=True), log_exact, rel_tol=1e-12)
    else:
        assert layered_emergence(widths, active, log=True) == -math.inf


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30), st.data())
def test_log_matches_log_of_exact_int(widths, data):
    active = [data.draw(st.integers(0, w)) for w in widths]
    exact = layered_emergence(widths, active)
    got = layered_emergence(widths, active, log=True)
    if exact == 0:
        assert got == -math.inf
    else:
        assert math.isclose(got, math.log(exact), rel_tol=1e-12, abs_tol=1e-12)


def test_deep_wide_log_is_finite_and_correct():
    widths = [4096] * 1000
    active = [2048 + (i % 7) for i in range(1000)]
    exact = layered_emergence(widths, active)
    assert exact.bit_length() > 11000  # far beyond any float
    got = layered_emergence(widths, active, log=True)
    assert math.isfinite(got)
    assert math.isclose(got, math.log(exact), rel_tol=1e-12)
    # floats: the value itself overflows to inf, its log does not
    floats = [a + 0.5 for a in active]
    assert layered_emergence(widths, floats) == math.inf
    assert math.isclose(layered_emergence(widths, floats, log=True), got, rel_tol=1e-4)


def test_tiny_float_activity_does_not_underflow():
    widths = [4096] * 1000
    active = [1e-300] * 1000
    got = layered_emergence(widths, active, log=True)
    assert math.isfinite(got) and got > 0  # (n - a) terms dominate: E ~ 1e-300 * 4096**998


def test_array_inputs_and_integral_types():
    exact = layered_emergence([4, 3, 2], [1, 2, 1])
    assert layered_emergence(np.array([4, 3, 2]), np.array([1, 2, 1])) == exact
    assert layered_emergence(torch.tensor([4, 3, 2]), torch.tensor([1, 2, 1])) == exact
    assert layered_emergence((4, 3, 2), [np.int64(1), 2, 1]) == exact
    assert layered_emergence([4.0, 3, 2], [1.0, 2.0, 1.0]) == 16.0  # floats in, float out
    assert type(layered_emergence([4.0, 3, 2], [1.0, 2.0, 1.0])) is float


@pytest.mark.parametrize(
    "widths, active, message",
    [
        ([4, 3], [1], "length mismatch"),
        ([], [], "empty"),
        ([4, -3], [1, 1], r"widths\[1\] is negative"),
        ([4, 3], [1, -1], r"active\[1\] is negative"),
        ([4, 3], [5, 1], r"active\[0\] = 5 exceeds widths\[0\] = 4"),
        ([4, 3], [1, float("nan")], r"active\[1\] is NaN"),
        ([4, float("nan")], [1, 1], r"widths\[1\] is NaN"),
        ([4, 3], [1, float("inf")], "infinite"),
        ([4.5, 3], [1, 1], "not a whole number"),
        ([4, 3], [1, "2"], "must be a number"),
        ([4, 3], 5, "sequence"),
    ],
)
def test_errors_name_the_problem(widths, active, message):
    for fn in (layered_emergence, lemma_pivot, exact_pivot):
        with pytest.raises(ValueError, match=message):
            fn(widths, active)
    with pytest.raises(ValueError, match=message):
        layered_emergence(widths, active, log=True)


def test_lemma_pivot_hand_example():
    # widths 4, 3, 2 with actives 1, 2, 1: sum a = 4
    # Delta_0 = 4 - 1 - 0 = 3 > 0; Delta_1 = 4 - 2 - 4 = -2; Delta_2 = 4 - 1 - 7 = -4
    assert lemma_pivot([4, 3, 2], [1, 2, 1]) == 0
    # later layers large and fully active: the balance moves right
    # sum a = 18; Delta = 18, 16, 12, 4, -4
    assert lemma_pivot([2, 2, 2, 8, 8], [0, 0, 2, 8, 8]) == 3
    assert lemma_pivot([3, 3], [3, 0]) == -1  # Delta_0 = 3 - 3 = 0: no layer qualifies


def test_exact_pivot_hand_example():
    # A_i (paths from one node of i to later active nodes) vs B_i (inactive paths into one node)
    # widths 4, 3, 2, actives 1, 2, 1: A = 5, 1, 0 and B = 0, 3, 10
    assert exact_pivot([4, 3, 2], [1, 2, 1]) == 0
    assert layered_emergence([4, 3, 2], [0, 2, 1]) == 21 > 16  # layer 0 gains from losing one
    # where the paper's Delta (path products ignored) and the exact E disagree:
    # A = 292, 146, 72, 8, 0 and B = 0, 2, 6, 12, 96  -> D = 292, 144, 66, -4, -96
    assert exact_pivot([2, 2, 2, 8, 8], [0, 0, 2, 8, 8]) == 2
    assert lemma_pivot([2, 2, 2, 8, 8], [0, 0, 2, 8, 8]) == 3
    assert exact_pivot([3, 3], [0, 0]) == -1  # nothing active later: losing activity gains nothing


@settings(max_examples=150, deadline=None)
@given(layered(max_layers=6, max_width=4))
def test_lemma_pivot_is_the_largest_i_of_eq_4(case):
    widths, masks = case
    active = [sum(m) for m in masks]
    deltas = [sum(active) - active[i] - sum(widths[:i]) for i in range(len(widths))]
    want = max((i for i, d in enumerate(deltas) if d > 0), default=-1)
    assert lemma_pivot(widths, active) == want
    assert all(d > 0 for d in deltas[:want + 1])  # a prefix, as eq 5 implies


@settings(max_examples=150, deadline=None)
@given(layered(max_layers=6, max_width=4, min_width=1), st.booleans())
def test_exact_pivot_compares_e_with_one_active_node_fewer(case, as_float):
    widths, masks = case
    active = [sum(m) + (0.25 if as_float and sum(m) < w else 0) for m, w in zip(masks, widths)]
    gains = []
    for i in range(len(widths)):
        fewer = list(active)
        fewer[i] -= 1  # E is linear in a_i, so this is well defined even at a_i = 0
        gains.append(eq2_sum(widths, fewer) - eq2_sum(widths, active))
    want = max((i for i, g in enumerate(gains) if g > 0), default=-1)
    assert exact_pivot(widths, active) == want
    assert all(g > 0 for g in gains[:want + 1]) and all(g <= 0 for g in gains[want + 1:])
