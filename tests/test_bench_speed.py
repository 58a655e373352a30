"""The speed settings change how fast a run goes, not what it computes: torch.compile on/off,
the optimizer's implementation, a compiled module reused across runs, the data-dependent inits'
iteration cap; and they stay out of run ids."""

import pytest
import torch

from _bench_helpers import write_fashion_mnist
from emergeinit.bench.config import resolve_config, run_id
from emergeinit.bench.image import make_optimizer, run
from emergeinit.bench.loop import optimizer_options, run_settings, uses_cudagraphs
from emergeinit.models import build_model

TINY = {"protocol": "seed", "model": "mlp", "dataset": "fashion-mnist", "init": "kaiming", "batch_size": 8,
        "eval_batch_size": 16, "max_epoch_steps": 5, "train_limit": 40, "test_limit": 32,
        "emergence_batch_size": 4, "device": "cpu", "epochs": 2, "cpu_threads": 1, "loss_points": 10}


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return str(write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=48, n_test=32))


def _numbers(r):
    return [(e["loss_curve"], e["test_acc"], e["test_loss"]) for e in r["epochs"]]


def test_compiled_runs_match_eager_ones_and_reuse_one_module(fm):
    eager = run({**TINY, "data_dir": fm}, progress=False)
    compiled = run({**TINY, "data_dir": fm, "compile": True}, progress=False)
    # the same steps, rounded differently by the compiler's kernels: equal to float32 noise
    for (curve_e, acc_e, loss_e), (curve_c, acc_c, loss_c) in zip(_numbers(eager), _numbers(compiled)):
        assert curve_c == pytest.approx(curve_e, rel=1e-5) and loss_c == pytest.approx(loss_e, rel=1e-5)
        assert acc_c == acc_e
    assert compiled["extra"]["acc_1"] == eager["extra"]["acc_1"]
    # a later compiled run of the same model trains the process's first module, with its own
    # weights: another seed gives other numbers, and the first seed again gives the same ones
    other = run({**TINY, "data_dir": fm, "compile": True, "seed": 1}, progress=False)
    assert _numbers(other) != _numbers(compiled)
    assert _numbers(run({**TINY, "data_dir": fm, "compile": True}, progress=False)) == _numbers(compiled)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_implementations_take_the_same_steps(optimizer):
    torch.manual_seed(0)
    model0 = build_model("mlp", in_features=12, hidden=(16, 8), num_classes=3)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    config = resolve_config({"protocol": "table1", "model": "mlp", "optimizer": optimizer, "lr": 0.05})
    weights = {}
    for impl in (None, "for_loop", "foreach", "fused"):
        model = build_model("mlp", in_features=12, hidden=(16, 8), num_classes=3)
        model.load_state_dict(model0.state_dict())
        opt = make_optimizer(model, {**config, "optimizer_impl": impl})
        assert opt.defaults.get("fused") is (True if impl == "fused" else None)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for impl in ("for_loop", "foreach", "fused"):
        torch.testing.assert_close(weights[impl], weights[None], rtol=1e-5, atol=1e-6)
    assert not torch.equal(weights[None], torch.cat([p.detach().flatten() for p in model0.parameters()]))


def test_speed_keys_are_checked_and_left_out_of_run_ids():
    base = resolve_config({"model": "vgg19"})
    assert (base["compile"], base["optimizer_impl"], base["cudnn_benchmark"]) == (False, None, False)
    fast = resolve_config({"model": "vgg19", "compile": "reduce-overhead", "optimizer_impl": "fused",
                           "cudnn_benchmark": True, "eval_batch_size": 5000})
    assert run_id(fast) == run_id(base)
    assert run_id(resolve_config({"model": "vgg19", "init_iterations": 2})) != run_id(base)
    with pytest.raises(ValueError, match="compile"):
        resolve_config({"compile": "fastest"})
    with pytest.raises(ValueError, match="optimizer_impl"):
        resolve_config({"task": "translation", "optimizer_impl": "cuda"})
    assert optimizer_options("fused") == {"fused": True} and optimizer_options(None) == {}
    assert uses_cudagraphs("reduce-overhead", "cuda") and not uses_cudagraphs("reduce-overhead", "cpu")
    assert not uses_cudagraphs(True, "cuda")


def test_run_settings_restore_cudnn_benchmark_and_threads():
    saved = torch.backends.cudnn.benchmark, torch.get_num_threads()
    with run_settings({"cudnn_benchmark": True, "cpu_threads": 1}):
        assert torch.backends.cudnn.benchmark is True and torch.get_num_threads() == 1
    assert (torch.backends.cudnn.benchmark, torch.get_num_threads()) == saved


@pytest.mark.parametrize("init,key", [("metainit", "steps"), ("gradinit", "iters")])
def test_init_iterations_caps_the_data_dependent_inits(fm, init, key):
    r = run({**TINY, "data_dir": fm, "init": init, "init_iterations": 2, "epochs": 1, "max_epoch_steps": 1,
             "init_batch_size": 4}, progress=False)
    record = r["init_record"]
    assert record["method"] == init and record["options"][key] == 2 and record["details"][key] == 2
    assert record["forward_passes"] == 2  # one per iteration (the papers' counts: 500 and 390)
