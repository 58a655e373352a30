"""The training-loop mechanics both tasks share: thread counts restored, lr per step, step caps,
and a divergence check that runs every few steps rather than after each one."""

import pytest
import torch

from emergeinit.bench import loop
from emergeinit.bench.loop import cpu_threads, pick_device, step_budget, train_steps


def test_cpu_threads_are_restored_even_after_an_error():
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with cpu_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(RuntimeError), cpu_threads(2):
            raise RuntimeError("the run failed")
        assert torch.get_num_threads() == 3
        with cpu_threads(None):  # None: leave torch's count alone
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_step_budget():
    assert step_budget(10) == 10
    assert step_budget(10, max_epoch_steps=4) == 4
    assert step_budget(10, max_steps=25, done=20) == 5
    assert step_budget(10, max_epoch_steps=4, max_steps=25, done=23) == 2
    assert step_budget(10, max_steps=5, done=9) == 0


def _regression(lrs, nan_from=None, **kw):
    """train_steps on a 1-parameter model; the loss goes NaN from step ``nan_from``."""
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.0)
    seen = []

    def loss_fn(i):
        seen.append(opt.param_groups[0]["lr"])
        loss = (w * 2.0).sum() ** 2
        if nan_from is not None and i >= nan_from:
            loss = loss * float("nan")
        return loss, loss.detach()

    out = train_steps(opt, range(100), loss_fn, lr_at=lambda s: lrs[s], **kw)
    return out, seen


def test_lr_per_step_and_total():
    lrs = [0.01 * s for s in range(20)]
    out, seen = _regression(lrs, total=5, step0=3)
    assert seen == lrs[3:8] and out.steps == 5 and out.lr == lrs[7]
    assert out.diverged_at is None and out.values.shape == (5,)


def test_divergence_is_checked_every_few_steps(monkeypatch):
    checks = []
    real = loop.torch.isfinite
    monkeypatch.setattr(loop.torch, "isfinite", lambda t: checks.append(len(t)) or real(t))
    out, _ = _regression([1e-3] * 100, total=10, check_every=4)
    assert out.diverged_at is None and checks == [4, 4, 2]  # one sync per 4 steps, and the tail
    checks.clear()
    out, _ = _regression([1e-3] * 100, nan_from=5, total=10, check_every=4)
    assert out.diverged_at == 5 and out.steps == 8  # found at the check after step 8
    assert checks == [4, 4]
