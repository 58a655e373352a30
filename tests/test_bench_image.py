"""End-to-end runs of every model for a few steps on generated data in the real file formats."""

import hashlib
import math

import pytest
import torch

from _bench_helpers import write_cifar_archive, write_fashion_mnist
from emergeinit.bench.image import run

TINY = {"batch_size": 4, "eval_batch_size": 8, "max_epoch_steps": 2, "train_limit": 8, "test_limit": 8,
        "emergence_batch_size": 4, "init_batch_size": 4, "device": "cpu", "epochs": 1,
        "cpu_threads": 1}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar_archive(folder, per_batch=4)
    return folder


@pytest.fixture(scope="module")
def cifar_md5(cifar_dir):
    return hashlib.md5((cifar_dir / "cifar-10-python.tar.gz").read_bytes()).hexdigest()


def check_result(r, epochs=(1,)):
    assert r["diverged"] is False
    assert [e["epoch"] for e in r["epochs"]] == list(epochs)
    for e in r["epochs"]:
        assert e["steps"] == 2 and math.isfinite(e["train_loss"]) and 0 <= e["test_acc"] <= 100
        assert e["test_acc"] * 8 / 100 == pytest.approx(round(e["test_acc"] * 8 / 100))  # k of 8 right
    assert r["emergence_at_init"] is not None and r["init_record"] is not None
    assert r["extra"]["acc_1"] == r["epochs"][-1 if len(epochs) == 1 else 1]["test_acc"]


@pytest.mark.parametrize("model,init,options", [
    ("vgg19", "emergence", {"alpha": 2.0, "schedule": "normalized"}),
    ("vgg19_bn", "kaiming", {}),
    ("resnet110", "emergence", {"alpha": 2.0, "schedule": "normalized", "scope": "blockwise"}),
    ("resnet110_bn", "emergence", {"alpha": 5.0, "schedule": "normalized", "scope": "global"}),
])
def test_cifar_models_train_a_few_steps(cifar_dir, cifar_md5, monkeypatch, model, init, options):
    monkeypatch.setattr("emergeinit.bench.data.CIFAR10_MD5", cifar_md5)
    r = run({**TINY, "model": model, "init": init, "init_options": options, "data_dir": str(cifar_dir),
             "dataset": "cifar10"}, progress=False)
    check_result(r)
    assert r["init_record"]["method"] == init
    # BN nets train on batch statistics, so E at init is read in train mode for them
    assert r["emergence_at_init"]["training"] is model.endswith("_bn")


def test_mlp_on_idx_files_with_extra_warmup_epoch(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    r = run({**TINY, "protocol": "table1", "model": "mlp", "dataset": "fashion-mnist", "init": "xavier",
             "data_dir": str(folder), "extra_epoch": "warmup", "schedule_epochs": 2}, progress=False)
    check_result(r, epochs=(0, 1))
    assert [e["phase"] for e in r["epochs"]] == ["extra", "main"]
    assert r["epochs"][0]["lr_end"] == pytest.approx(0.1)  # warm-up reaches the base lr
    # cosine over 2 epochs of 2 steps, step 1 of the main phase: 0.1 · ½(1 + cos(π/4))
    assert r["epochs"][1]["lr_end"] == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_data_dependent_init_runs_on_training_batches(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    r = run({**TINY, "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist-32",
             "init": "lsuv", "data_dir": str(folder)}, progress=False)
    check_result(r)
    assert r["init_record"]["method"] == "lsuv" and r["init_record"]["forward_passes"] > 0


def test_nan_loss_stops_the_run_as_diverged(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=32, n_test=8)
    r = run({**TINY, "protocol": "seed", "optimizer": "sgd", "lr": 1e30, "model": "mlp",
             "dataset": "fashion-mnist", "data_dir": str(folder), "max_epoch_steps": 8, "epochs": 2,
             "nan_check_every": 1}, progress=False)
    assert r["diverged"] is True and r["epochs"] == []
    assert r["extra"]["diverged_at"]["epoch"] == 1 and 0 < r["extra"]["diverged_at"]["step"] < 8


def test_max_steps_caps_the_run_and_max_epoch_steps_each_epoch(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    base = {**TINY, "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist", "data_dir": str(folder),
            "init": "xavier", "epochs": 3}
    r = run({**base, "max_steps": 3}, progress=False)  # epochs of 2 steps (max_epoch_steps): 2 + 1
    assert [(e["epoch"], e["steps"]) for e in r["epochs"]] == [(1, 2), (2, 1)]
    r = run({**base, "max_steps": 3, "extra_epoch": "const"}, progress=False)  # the extra epoch counts
    assert [(e["phase"], e["steps"]) for e in r["epochs"]] == [("extra", 2), ("main", 1)]


def test_image_run_restores_the_thread_count(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        r = run({**TINY, "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist",
                 "data_dir": str(folder), "init": "xavier"}, progress=False)
        assert r["device"].startswith("cpu: ") and r["device"].endswith("(1 threads)")  # ran on 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(saved)
