"""Functions the process-pool tests send to worker processes (importable there by name)."""

import os
import time


def echo_or_die(config):
    """A fake run: seed 1 kills its worker process outright, seed 2 raises, others succeed
    (after ``sleep`` seconds) and report the worker's pid."""
    if config["seed"] == 1:
        os._exit(7)
    if config["seed"] == 2:
        raise ValueError("bad config")
    time.sleep(config.get("sleep", 0))
    return {"seed": config["seed"], "pid": os.getpid(), "status": "ok"}


def failure(config, err, **where):
    return {"seed": config["seed"], "status": "error", "error": str(err), **where}
