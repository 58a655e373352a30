"""Exponent schedules (eq 8), alpha_for_lr (eq 11) and auto_alpha."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import emergeinit
from emergeinit.schedules import alpha_for_lr, exponents
from emergeinit.tuning import auto_alpha


@pytest.mark.parametrize("L, expected", [
    (1, [0.0]),
    (2, [-0.5, 0.5]),
    (3, [-1.0, 0.0, 1.0]),
    (4, [-1.5, -0.5, 0.5, 1.5]),
    (5, [-2.0, -1.0, 0.0, 1.0, 2.0]),
])
def test_literal_is_eq8_as_written(L, expected):
    assert exponents(L, "literal") == expected


@pytest.mark.parametrize("L, expected", [
    (1, [0.0]),
    (2, [-1.0, 1.0]),
    (3, [-1.0, 0.0, 1.0]),
    (4, [-1.0, -1 / 3, 1 / 3, 1.0]),
    (5, [-1.0, -0.5, 0.0, 0.5, 1.0]),
])
def test_normalized_runs_from_minus_one_to_one(L, expected):
    assert exponents(L, "normalized") == pytest.approx(expected, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 200), schedule=st.sampled_from(["literal", "normalized"]))
def test_named_schedules_sum_to_zero_and_are_antisymmetric(L, schedule):
    e = exponents(L, schedule)
    assert abs(sum(e)) < 1e-9
    assert all(abs(e[k] + e[L - 1 - k]) < 1e-12 for k in range(L))
    assert e == sorted(e)


def test_callable_schedule_and_bad_schedules():
    assert exponents(3, lambda k, L: 2 * k) == [0.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="unknown schedule"):
        exponents(3, "linear")
    with pytest.raises(ValueError, match="not finite"):
        exponents(3, lambda k, L: float("nan"))
    with pytest.raises(ValueError, match="not a number"):
        exponents(3, lambda k, L: "x")
    with pytest.raises(ValueError, match="at least one layer"):
        exponents(0)


def test_alpha_for_lr_matches_the_papers_example():
    a = alpha_for_lr(2, 1e-3, 1e-4, 2)
    assert a == pytest.approx(2 * math.sqrt(10), rel=1e-12)
    assert round(a, 2) == 6.32
    assert alpha_for_lr(2, 1e-3, 1e-3, 5) == 2.0
    assert alpha_for_lr(3, 1e-2, 1e-3, 1) == pytest.approx(30.0)
    assert emergeinit.alpha_for_lr is alpha_for_lr


@pytest.mark.parametrize("bad", [
    dict(alpha0=0), dict(alpha0=-2), dict(lr=float("nan")), dict(lr0=float("inf")), dict(depth=0),
    dict(depth=1.5),
])
def test_alpha_for_lr_rejects_bad_input(bad):
    kw = dict(alpha0=2, lr0=1e-3, lr=1e-4, depth=2) | bad
    with pytest.raises(ValueError):
        alpha_for_lr(**kw)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False),
                         nn.ReLU(), nn.Linear(16, 3, bias=False))


def test_auto_alpha_keeps_the_model_and_obeys_the_tolerance():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(32, 6)
    rng = torch.get_rng_state()
    grid = (1.5, 2.0, 3.0, 10.0)
    # bias-free ReLU net, Σe = 0: outputs never change, so only the gradient norm limits α
    loose, trials = auto_alpha(model, x, grid=grid, tolerance=1e6, schedule="normalized", return_trials=True)
    assert loose == 10.0
    assert [t["alpha"] for t in trials] == [1.0, 1.5, 2.0, 3.0, 10.0]
    assert all(t["output_rms"] == pytest.approx(trials[0]["output_rms"], rel=1e-5) for t in trials)
    tight = auto_alpha(model, x, grid=grid, tolerance=1.0, schedule="normalized")
    assert tight == 1.0
    ratios = {t["alpha"]: t["grad_norm"] / trials[0]["grad_norm"] for t in trials}
    limit = max(ratios[3.0], 1 / ratios[3.0]) * 1.0001  # admits 3 (and everything below it)
    assert all(max(r, 1 / r) < limit for a, r in ratios.items() if a <= 3.0)
    assert max(ratios[10.0], 1 / ratios[10.0]) > limit
    assert auto_alpha(model, x, grid=grid, tolerance=limit, schedule="normalized") == 3.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_auto_alpha_emergence_criterion_picks_the_largest_measured_e():
    class Report:
        def __init__(self, log10):
            self.log10 = log10

    def fake_measure(model, inputs, **kw):  # E peaks where the first weight is halved (α = 2)
        w = model[0].weight.detach().abs().mean().item()
        return Report(-abs(math.log(w / ref)))

    model = _mlp()
    ref = model[0].weight.detach().abs().mean().item() / 2
    x = torch.randn(8, 6)
    a = auto_alpha(model, x, grid=(1.5, 2.0, 4.0), tolerance=1e6, schedule="normalized", criterion="emergence",
                   measure=fake_measure)
    assert a == 2.0
    with pytest.raises(ValueError, match="criterion"):
        auto_alpha(model, x, criterion="best")


def test_auto_alpha_refuses_non_finite_inputs_and_reference():
    from emergeinit.trace import NonFiniteError

    x = torch.randn(8, 6)
    x[3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="input batch is not finite"):
        auto_alpha(_mlp(), x)  # once returned 1.0
    model = _mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="at alpha = 1 .*first non-finite output: layer '2'"):
        auto_alpha(model, torch.randn(8, 6))


def test_auto_alpha_reads_a_pair_as_inputs_and_targets():
    model, x = _mlp(), torch.randn(8, 6)
    y = torch.randint(0, 3, (8,))
    _, with_pair = auto_alpha(model, (x, y), grid=(2.0,), return_trials=True)
    _, bare = auto_alpha(model, x, grid=(2.0,), return_trials=True)
    assert with_pair == bare  # the targets are not a second input
    with pytest.raises(ValueError, match="loss_fn needs targets"):
        auto_alpha(model, x, loss_fn=torch.nn.functional.cross_entropy)
    a = auto_alpha(model, (x, y), loss_fn=torch.nn.functional.cross_entropy, grid=(2.0,))
    assert a in (1.0, 2.0)
