"""Runs as independent units: a config in, one record out, appended to a results file.

A record is the task's result plus where and how it ran (config, git commit, versions, device,
wall time, status) and its outcome (ok, failed to train, diverged or error). A grid resumes by
skipping configs whose :func:`~emergeinit.bench.config.run_id` already has a finished record
(``ok`` or ``diverged``; ``error`` runs are retried).

The executor is the only seam between a grid and where its runs happen: anything with
``map(fn, configs) -> iterable of records`` (in the order it likes) will do, e.g. worker
processes (:class:`emergeinit.bench.pool.ProcessExecutor`) or a cluster
(:class:`emergeinit.bench.ray_executor.RayExecutor`); records are written here, by the caller,
as they come back. Configs are handed over lazily: an executor that takes the next one only when
it can start it (``takes_configs_lazily``) never starts a run after a part's deadline and lets the
runs in flight finish.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from emergeinit.bench.config import resolve_config, run_id, task_spec
from emergeinit.bench.env import device_name, git_commit, versions
from emergeinit.bench.loop import pick_device
from emergeinit.bench.records import PathLike, append_record, classify_run, finished_ids
from emergeinit.plan import UnrepresentableError

__all__ = ["execute", "failed_record", "run_task", "check_configs", "InProcessExecutor", "run_grid"]


def _task_function(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_task(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Run a resolved config with its task's run function (imported only now)."""
    return _task_function(task_spec(config["task"]).run)(config, progress=progress)


def check_configs(configs: Sequence[Mapping[str, Any]]) -> None:
    """Check every resolved config's init and init options with its task's check, without running
    anything: one ValueError that names every bad config (its id and what is wrong), so a typo such
    as ``init_options.alpah`` stops a grid before its first run, not in each run."""
    problems: Dict[str, List[str]] = {}  # what is wrong -> the ids of the configs it is wrong in
    for config in configs:
        try:
            _task_function(task_spec(config["task"]).check)(config)
        except (ValueError, TypeError) as err:
            what = f"init {config.get('init')!r} with init_options {config.get('init_options')}: {err}"
            problems.setdefault(what, []).append(run_id(config))
    if problems:
        bad = sum(map(len, problems.values()))
        raise ValueError(f"{bad} of {len(configs)} configs are invalid, nothing was run:\n" + "\n".join(
            f"  {len(ids)} config(s) ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}): {what}"
            for what, ids in problems.items()))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _head(config: Dict[str, Any], started: str) -> Dict[str, Any]:
    """The part of a record that says what ran and from which code."""
    return {"id": run_id(config), "task": config["task"], "config": config,
            "git_commit": git_commit(), "versions": versions(), "started": started}


def _failed(err: BaseException, trace: str) -> Dict[str, Any]:
    """The task part of a run that raised ``err``."""
    return {"epochs": [], "emergence_at_init": None, "init_record": None, "diverged": False,
            "extra": {"traceback": trace}, "status": "error", "error": f"{type(err).__name__}: {err}"}


def failed_record(config: Mapping[str, Any], err: BaseException, *, started: Optional[str] = None,
                  wall_s: Optional[float] = None, device: Optional[str] = None) -> Dict[str, Any]:
    """The ``error`` record of a run that never returned one (its worker crashed or was killed),
    written by whoever waited for it; the grid goes on, and a resumed grid runs it again."""
    resolved = resolve_config(config)
    trace = "".join(traceback.format_exception_only(type(err), err))
    return {**_head(resolved, started or _now()), **_failed(err, trace), "device": device, "wall_s": wall_s}


def execute(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Run one config and return its full record. An exception in the task becomes
    ``status="error"`` with its message, an init the dtype cannot hold (:class:`emergeinit.
    UnrepresentableError`) ``status="refused"`` (finished: it refuses the same way every time);
    Ctrl-C and kills still stop everything."""
    config = resolve_config(config)
    t0 = time.perf_counter()
    record = _head(config, _now())
    try:
        result = run_task(config, progress=progress)
        result.update(status="diverged" if result.get("diverged") else "ok", error=None)
    except UnrepresentableError as err:  # the init does not fit the dtype: the same every time
        result = {**_failed(err, traceback.format_exc(limit=8)), "status": "refused"}
    except Exception as err:
        result = _failed(err, traceback.format_exc(limit=8))
    status, error = result.pop("status"), result.pop("error")
    record.update(result)
    record.setdefault("device", device_name(pick_device(str(config["device"]))))
    record["wall_s"] = time.perf_counter() - t0
    record["status"] = status
    record["error"] = error
    record["outcome"], record["outcome_reason"] = classify_run(record)  # ok | failed | diverged | error
    return record


class InProcessExecutor:
    """Runs each config in this process, one after another, yielding records as they finish."""

    takes_configs_lazily = True

    def map(self, fn: Callable[[Dict[str, Any]], Dict[str, Any]],
            configs: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for config in configs:
            yield fn(config)


def run_grid(configs: Sequence[Mapping[str, Any]], results: PathLike, *, executor: Any = None,
             progress: bool = True, limit: Optional[int] = None,
             on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
             stop_after_s: Optional[float] = None) -> Dict[str, int]:
    """Run every config of a grid that has no finished record in ``results``, appending each
    record as it comes back; the pending configs are checked first (:func:`check_configs`), so an
    invalid one stops the grid before any run. Returns counts: total, skipped (already done), run,
    ok, diverged, error. ``limit`` caps how many pending runs start; ``stop_after_s``: start no run
    after that many seconds, so a time-boxed part ends cleanly (an executor that takes every config
    at once is closed at the first record after the deadline, cancelling its other runs). Each run
    draws its own progress bars unless the executor's ``shows_run_progress`` is False (worker
    processes); the grid's bar is drawn here."""
    t0 = time.perf_counter()
    unique: Dict[str, Dict[str, Any]] = {}
    for c in configs:
        resolved = resolve_config(c)
        unique.setdefault(run_id(resolved), resolved)
    done = finished_ids(results)
    pending = [c for i, c in unique.items() if i not in done]
    check_configs(pending)
    skipped = len(unique) - len(pending)
    if limit is not None:
        pending = pending[: max(0, int(limit))]
    counts = {"total": len(unique), "skipped": skipped, "run": 0, "ok": 0, "diverged": 0, "refused": 0,
              "error": 0}
    executor = executor or InProcessExecutor()
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="grid", unit="run")

    def late() -> bool:
        return stop_after_s is not None and time.perf_counter() - t0 > stop_after_s

    def in_time() -> Iterator[Dict[str, Any]]:
        for config in pending:
            if late():
                return
            yield config

    lazy = getattr(executor, "takes_configs_lazily", False)
    run_progress = progress and getattr(executor, "shows_run_progress", True)
    try:
        for record in executor.map(functools.partial(execute, progress=run_progress), in_time() if lazy else pending):
            append_record(results, record)
            counts["run"] += 1
            counts[record["status"]] += 1
            if on_record is not None:
                on_record(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=counts["ok"], diverged=counts["diverged"], refused=counts["refused"],
                                error=counts["error"],
                                refresh=False)
            if not lazy and late():
                break
    finally:
        if bar is not None:
            bar.close()
    return counts
