"""Grids on Ray (a local Ray on this machine's 2 CPUs): each run a Ray task, the driver alone
writes records, a killed worker becomes an error record and the grid goes on, a resumed grid
runs each finished config once."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray

from _bench_helpers import write_fashion_mnist
from _scale_tasks import NAME
from emergeinit.bench.ray_executor import RayExecutor
from emergeinit.bench.records import finished_ids, read_records
from emergeinit.bench.runner import run_grid
from emergeinit.cli import main

TESTS = Path(__file__).resolve().parent
# workers import the fake task from tests/ (and emergeinit from src/ when it is not installed)
WORKER_ENV = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])}}


def _fake(seed, **keys):
    return {"task": NAME, "seed": seed, "sleep": 0.2, **keys}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _kill_when_hanging(hang_file: Path, done: list) -> threading.Thread:
    """Kill (SIGKILL) the worker process whose pid appears in ``hang_file``."""
    def kill():
        deadline = time.time() + 180
        while time.time() < deadline:
            if hang_file.exists() and hang_file.read_text().strip():
                pid = int(hang_file.read_text())
                os.kill(pid, signal.SIGKILL)
                done.append(pid)
                return
            time.sleep(0.1)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_killed_worker_is_an_error_record_and_resume_runs_it_once(local_ray, tmp_path):
    data = write_fashion_mnist(tmp_path / "fm", n_train=40, n_test=20)
    hang = tmp_path / "hang.pid"
    image = {"task": "image", "protocol": "seed", "model": "mlp", "dataset": "fashion-mnist",
             "data_dir": str(data), "init": "emergence", "init_options.alpha": 2.0,
             "init_options.schedule": "normalized", "batch_size": 16, "cpu_threads": 1}
    configs = [_fake(s) for s in (0, 1, 3, 4)] + [_fake(2, hang_file=str(hang)), image]
    results = tmp_path / "grid.jsonl"
    killed: list = []
    killer = _kill_when_hanging(hang, killed)
    counts = run_grid(configs, results, executor=RayExecutor(runtime_env=WORKER_ENV), progress=False)
    killer.join(timeout=1)
    assert killed, "the hanging run never started"
    assert counts == {"total": 6, "skipped": 0, "run": 6, "ok": 5, "diverged": 0, "refused": 0, "error": 1}

    raw = results.read_bytes()
    assert raw.endswith(b"\n") and all(json.loads(line) for line in raw.splitlines())  # whole lines
    records = read_records(results)
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    (dead,) = [r for r in records if r["status"] == "error"]
    assert dead["config"]["seed"] == 2 and dead["config"]["task"] == NAME
    assert "WorkerCrashedError" in dead["error"] and dead["device"] == "ray worker"
    fakes = [r for r in records if r["task"] == NAME and r["status"] == "ok"]
    assert sorted(r["epochs"][0]["test_acc"] for r in fakes) == [0.0, 1.0, 3.0, 4.0]
    assert all(r["extra"]["pid"] != os.getpid() for r in fakes)  # they ran in Ray workers
    (real,) = [r for r in records if r["task"] == "image"]  # one real (tiny) image run
    assert real["status"] == "ok" and real["device"].startswith("cpu")
    assert real["epochs"][0]["steps"] == 3 and 0.0 <= real["epochs"][0]["test_acc"] <= 100.0
    assert real["emergence_at_init"]["log10"] > 0 and real["init_record"]["method"] == "emergence"

    again = run_grid(configs, results, executor=RayExecutor(runtime_env=WORKER_ENV), progress=False)
    assert again == {"total": 6, "skipped": 5, "run": 1, "ok": 1, "diverged": 0, "refused": 0, "error": 0}
    records = read_records(results)
    ok = Counter(r["id"] for r in records if r["status"] == "ok")
    assert len(ok) == 6 and set(ok.values()) == {1}  # every finished run once
    assert len(finished_ids(results)) == 6
    assert run_grid(configs, results, executor=RayExecutor(runtime_env=WORKER_ENV), progress=False)["run"] == 0


def test_stopping_early_cancels_the_rest_and_resume_finishes_them(local_ray, tmp_path):
    configs = [{**_fake(s), "sleep": 0.5} for s in range(5)]
    results = tmp_path / "grid.jsonl"
    first = run_grid(configs, results, executor=RayExecutor(runtime_env=WORKER_ENV), progress=False,
                     stop_after_s=0.0)
    assert first["run"] == 1 and len(read_records(results)) == 1
    rest = run_grid(configs, results, executor=RayExecutor(runtime_env=WORKER_ENV), progress=False)
    assert rest["skipped"] == 1 and rest["run"] == 4 and rest["ok"] == 4
    assert sorted(Counter(r["id"] for r in read_records(results)).values()) == [1] * 5


def test_compare_command_runs_the_grid_as_ray_tasks(local_ray, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"task: '{NAME}'\ndefaults: {{sleep: 0.1}}\ngrid: {{seed: [0, 1, 2]}}\n")
    results = tmp_path / "r.jsonl"
    args = ["compare", "--config", str(grid), "--results", str(results), "--executor", "ray",
            "--cpus-per-run", "1", "--runtime-env", json.dumps(WORKER_ENV), "--no-progress"]
    assert main(args + ["--limit", "2"]) == 0
    assert len(read_records(results)) == 2
    assert ray.is_initialized()  # a Ray the executor did not start is left running
    assert main(args) == 0
    records = read_records(results)
    assert sorted(r["config"]["seed"] for r in records) == [0, 1, 2]
    assert {r["status"] for r in records} == {"ok"}


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'emergeinit\[ray\]'"):
        RayExecutor()
    with pytest.raises(ValueError, match="gpus_per_run"):
        RayExecutor(gpus_per_run=-1)
