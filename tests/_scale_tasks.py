"""A quick task of the harness's kind for the scale-out tests, named ``_scale_tasks:FAKE`` in a
config (how a user names a task of their own). Workers import it through their PYTHONPATH."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping

from emergeinit.bench.config import SHARED, Task

NAME = "_scale_tasks:FAKE"


def run(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Sleep ``sleep`` seconds and report ``seed`` as the accuracy. With ``hang_file`` set and
    not yet there, write this process's pid to it and hang (the test kills the worker)."""
    hang = config.get("hang_file")
    if hang and not Path(hang).exists():
        Path(hang).write_text(str(os.getpid()))
        time.sleep(120)
    time.sleep(float(config["sleep"]))
    return {"epochs": [{"epoch": 1, "phase": "main", "train_loss": 1.0, "test_acc": float(config["seed"])}],
            "emergence_at_init": None, "init_record": None, "diverged": False, "device": "cpu",
            "extra": {"pid": os.getpid()}}


def check(config: Mapping[str, Any]) -> None:
    """The task's config check (run for every config before a grid starts): a sleep is a number."""
    if float(config["sleep"]) < 0:
        raise ValueError("sleep must be >= 0")


FAKE = Task(
    run="_scale_tasks:run",
    defaults={**SHARED, "task": NAME, "protocol": "default", "device": "cpu", "sleep": 0.0, "hang_file": None},
    protocols={"default": {}},
    id_ignored=("hang_file",),
    finish=lambda config: None,
    check="_scale_tasks:check",
)
