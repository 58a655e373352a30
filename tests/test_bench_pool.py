"""Runs side by side in worker processes (compare --jobs K): the same records as in-process runs,
a crashed worker becomes an error record while the grid goes on, a deadline starts no new run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _bench_helpers import write_fashion_mnist
from _pool_helpers import echo_or_die, failure
from emergeinit.bench.pool import ProcessExecutor
from emergeinit.bench.records import read_records
from emergeinit.bench.runner import run_grid

ROOT = Path(__file__).resolve().parents[1]


def test_a_dead_worker_becomes_a_failure_and_the_others_go_on():
    configs = [{"seed": s} for s in (0, 1, 2, 3, 4, 5)]
    out = list(ProcessExecutor(2, on_failure=failure).map(echo_or_die, configs))
    by_seed = {r["seed"]: r for r in out}
    assert sorted(by_seed) == [0, 1, 2, 3, 4, 5] and len(out) == 6
    assert by_seed[1]["status"] == "error" and "exit code 7" in by_seed[1]["error"]
    assert by_seed[2]["status"] == "error" and "ValueError: bad config" in by_seed[2]["error"]
    assert by_seed[1]["device"] == "worker process" and by_seed[1]["wall_s"] >= 0
    ok = [r for r in out if r["status"] == "ok"]
    assert len(ok) == 4 and all(r["pid"] != os.getpid() for r in ok)
    assert len({r["pid"] for r in ok}) <= 3  # two workers, one of them replaced after the crash


def test_configs_are_taken_only_when_a_worker_is_free():
    taken = []

    def configs():
        for s in (0, 3, 4, 5):
            taken.append(s)
            yield {"seed": s, "sleep": 0.5}

    records = ProcessExecutor(2, on_failure=failure).map(echo_or_die, configs())
    first = next(records)
    assert first["status"] == "ok" and len(taken) == 3  # two started, the third on the first's return
    records.close()  # the caller stops: the run still in flight is terminated, no more are taken
    assert len(taken) == 3


def test_a_dead_worker_gives_a_whole_error_record():
    rec = ProcessExecutor(1)._failure({"task": "image", "seed": 3}, "the worker process died (exit code -9)", 0.0)
    assert rec["status"] == "error" and rec["error"] == "WorkerError: the worker process died (exit code -9)"
    assert rec["config"]["seed"] == 3 and rec["epochs"] == [] and len(rec["id"]) == 12
    assert rec["device"] == "worker process" and rec["started"].startswith("1970-01-01")
    json.dumps(rec)


def _grid(tmp_path):
    folder = write_fashion_mnist(tmp_path / "fm", n_train=48, n_test=16)
    base = {"task": "image", "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist",
            "data_dir": str(folder), "batch_size": 8, "max_epoch_steps": 4, "train_limit": 32,
            "emergence_batch_size": 4, "device": "cpu", "cpu_threads": 1, "epochs": 2}
    return [{**base, "init": init, "seed": seed} for seed in (0, 1) for init in ("kaiming", "xavier")]


def _results(path):
    return {r["id"]: [(e["train_loss"], e["test_acc"], e["test_loss"], e["loss_curve"]) for e in r["epochs"]]
            for r in read_records(path)}


def test_compare_jobs_2_resumes_and_gives_the_in_process_records(tmp_path):
    configs = _grid(tmp_path)
    counts = run_grid(configs, tmp_path / "one.jsonl", progress=False)
    assert counts["ok"] == 4
    results = tmp_path / "two.jsonl"  # a grid killed after two runs: two whole records on file
    results.write_text("".join(line + "\n" for line in (tmp_path / "one.jsonl").read_text().splitlines()[:2]))
    grid = tmp_path / "grid.yaml"
    base = {k: v for k, v in configs[0].items() if k not in ("init", "seed", "task", "protocol")}
    grid.write_text(json.dumps({"task": "image", "protocol": "seed", "defaults": base,
                                "grid": {"seed": [0, 1], "init": ["kaiming", "xavier"]}}))
    cmd = [sys.executable, "-m", "emergeinit.cli", "compare", "--config", str(grid), "--results", str(results),
           "--jobs", "2", "--no-progress"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 runs in the grid: 2 already done, 2 run now (2 ok, 0 diverged, 0 refused, 0 error)" in done.stdout
    records = read_records(results)
    assert len(records) == 4 and len({r["id"] for r in records}) == 4
    assert all(r["status"] == "ok" and len(r["epochs"]) == 2 for r in records)
    # same seed, same thread count, same CPU: the worker processes' numbers are the in-process ones
    assert _results(results) == _results(tmp_path / "one.jsonl")
