"""Tasks by name: each is a function ``run(config, *, progress=True) -> dict`` (the task part of a
record), imported only when a run of that task starts."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping

__all__ = ["TASKS", "RESOLVERS", "task_function", "run_task", "resolve_task_config"]

TASKS: Dict[str, str] = {
    "image": "emergeinit.bench.image:run",
    "translation": "emergeinit.bench.translation:run",
}

# Optional: a task's function that fills in its protocol's defaults (the record stores the result).
RESOLVERS: Dict[str, str] = {
    "image": "emergeinit.bench.protocols:resolve_config",
    "translation": "emergeinit.bench.translation:resolve_config",
}


def _load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def task_function(task: str) -> Callable[..., Dict[str, Any]]:
    """The run function of ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return _load(TASKS[task])


def resolve_task_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config with its task's protocol defaults filled in (unchanged if the task has no
    resolver)."""
    task = config.get("task", "image")
    target = RESOLVERS.get(task)
    if target is None:
        return dict(config)
    try:
        resolver = _load(target)
    except (ModuleNotFoundError, AttributeError):  # that task defines no resolver (yet)
        return dict(config)
    return resolver(config)


def run_task(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Run one config with its task's function."""
    return task_function(config.get("task", "image"))(config, progress=progress)
