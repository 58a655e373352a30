"""MetaInit and GradInit search through leaves made once (aliases of the parameters): the very
numbers a search that copies every parameter at every iteration gives, and the model untouched
until the search ends."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import emergeinit.baselines.gradinit as gradinit_module
import emergeinit.baselines.metainit as metainit_module
from emergeinit.baselines import gradinit_, metainit_


def net(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6) if bn else nn.Identity(), nn.ReLU(),
              nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)]
    return nn.Sequential(*layers)


def copying_scaled_params(leaves, base, names, scales):
    """The search before: a fresh copy of every parameter at every iteration."""
    params = {n: t.detach().clone().requires_grad_() for n, t in base.items()}
    for i, n in enumerate(names):
        params[n] = scales[i] * base[n]
    return params


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)


def run(method, options, bn):
    model = net(bn)
    record = method(model, batch(), **options)
    return {k: v.clone() for k, v in model.state_dict().items()}, record.details


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("method, module, options", [
    (metainit_, metainit_module, dict(steps=4)),
    (gradinit_, gradinit_module, dict(iters=4, gamma=0.0)),  # constraint steps: second derivatives
    (gradinit_, gradinit_module, dict(iters=4, gamma=math.inf)),  # objective steps, no graph of g kept
    (gradinit_, gradinit_module, dict(iters=4, gamma=math.inf, second_order=True)),
    (gradinit_, gradinit_module, dict(iters=6, lr=0.05)),  # the default mix
])
def test_the_search_gives_the_numbers_of_one_that_copies_every_step(method, module, options, bn, monkeypatch):
    state, details = run(method, options, bn)
    monkeypatch.setattr(module, "scaled_params", copying_scaled_params)
    want_state, want_details = run(method, options, bn)
    assert state.keys() == want_state.keys()
    assert all(torch.equal(state[k], want_state[k]) for k in state)
    assert details == want_details


def test_the_model_is_untouched_until_the_search_ends(monkeypatch):
    """The leaves share the parameters' storage: the search must never write through them."""
    model = net(bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    original = metainit_module.scaled_params

    def watching(leaves, base, names, scales):
        seen.append(all(torch.equal(model.state_dict()[k], before[k]) for k in before))
        return original(leaves, base, names, scales)

    monkeypatch.setattr(metainit_module, "scaled_params", watching)
    metainit_(model, batch(), steps=3)
    assert seen == [True, True, True]
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)  # written at the end


@pytest.mark.parametrize("steps", [3, 12, 25])
def test_metainit_names_the_step_whose_quotient_went_non_finite(steps):
    """Quotients are read back every few steps, not every step; the error still names the first
    bad step, and no weight changes."""
    from emergeinit.trace import NonFiniteError

    calls = []

    def loss_fn(out, y):
        calls.append(None)
        scale = float("nan") if len(calls) == 3 else 1.0  # the third step's loss, after a finite start
        return nn.functional.cross_entropy(out, y) * scale

    model = net(bn=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match="gradient quotient is nan at step 2$"):
        metainit_(model, batch(), steps=steps, loss_fn=loss_fn)
    assert len(calls) == min(steps, metainit_module.FINITE_CHECK_STEPS)  # stopped at the first read-back
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
