"""Runs as independent units: a config in, one JSON record out, appended to a results file.

A record is the task's result plus where and how it ran (config, git commit, versions, device,
wall time, status). Records are appended one whole line at a time and fsync'ed; a reader skips a
torn last line, and the next append cuts that line off (only a line that is not a whole record: a
record whose newline was lost is kept). A grid resumes by skipping configs whose
:func:`run_id` already has a finished record (``ok`` or ``diverged``; ``error`` runs are retried).

The executor is the only seam between a grid and where its runs happen: anything with
``map(fn, configs) -> iterable of records`` (in the order it likes) will do, e.g. a process or
cluster pool; records are written here, by the caller, as they come back.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from emergeinit.bench.env import device_name, git_commit, pick_device, versions
from emergeinit.bench.tasks import resolve_task_config, run_task

__all__ = [
    "run_id",
    "execute",
    "append_record",
    "read_records",
    "latest_records",
    "finished_ids",
    "InProcessExecutor",
    "run_grid",
    "FINISHED",
]

PathLike = Union[str, os.PathLike]
FINISHED = ("ok", "diverged")
# where the data came from and how many CPU threads ran it do not change a result
_ID_IGNORED = ("data_dir", "download", "cpu_threads")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, Any]) -> str:
    """Short sha1 of the canonical JSON of ``config`` (less :data:`_ID_IGNORED`: data location,
    CPU threads)."""
    kept = {k: v for k, v in config.items() if k not in _ID_IGNORED}
    return hashlib.sha1(canonical_json(kept).encode()).hexdigest()[:12]


def execute(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Run one config and return its full record. An exception in the task becomes
    ``status="error"`` with its message; Ctrl-C and kills still stop everything."""
    config = resolve_task_config(config)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    record: Dict[str, Any] = {
        "id": run_id(config), "task": config.get("task", "image"), "config": config,
        "git_commit": git_commit(), "versions": versions(), "started": started,
    }
    try:
        result = run_task(config, progress=progress)
        status, error = ("diverged" if result.get("diverged") else "ok"), None
    except Exception as err:
        result = {"epochs": [], "emergence_at_init": None, "init_record": None, "diverged": False,
                  "extra": {"traceback": traceback.format_exc(limit=8)}}
        status, error = "error", f"{type(err).__name__}: {err}"
    record.update(result)
    record.setdefault("device", device_name(pick_device(str(config.get("device", "auto")))))
    record["wall_s"] = time.perf_counter() - t0
    record["status"] = status
    record["error"] = error
    return record


def _last_line_start(f: Any, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none), read backwards
    in chunks so a line of any length is found whole."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 20))
        f.seek(start)
        chunk = f.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _mend_tail(path: Path) -> None:
    """Make the file end in a newline before an append. A last line without one is kept (a newline
    is added) when it is a whole JSON record (an editor stripped the newline); only a line that
    does not parse (a write killed part-way) is cut, and never more than that one line."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = _last_line_start(f, size)
        f.seek(start)
        tail = f.read(size - start)
        try:
            json.loads(tail)
        except ValueError:  # torn (json.JSONDecodeError, or bytes that are not UTF-8)
            f.truncate(start)
            return
        f.seek(size)
        f.write(b"\n")


def append_record(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line, in one write, flushed and fsync'ed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _mend_tail(path)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: PathLike) -> List[Dict[str, Any]]:
    """All records of a results file, in file order; a torn last line is skipped silently, any
    other unreadable line with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # the last piece has no newline: a torn write
                warnings.warn(f"{path}: skipping unreadable line {i + 1}")
    return records


def latest_records(records: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One record per id: the last finished one, else the last one (an error). Order kept."""
    by_id: Dict[str, Dict[str, Any]] = {}
    for r in records:
        old = by_id.get(r["id"])
        if old is None or r.get("status") in FINISHED or old.get("status") not in FINISHED:
            by_id[r["id"]] = dict(r)
    return list(by_id.values())


def finished_ids(path: PathLike) -> set:
    """Ids with an ``ok`` or ``diverged`` record in the results file."""
    return {r["id"] for r in read_records(path) if r.get("status") in FINISHED}


class InProcessExecutor:
    """Runs each config in this process, one after another, yielding records as they finish."""

    def map(self, fn: Callable[[Dict[str, Any]], Dict[str, Any]],
            configs: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for config in configs:
            yield fn(config)


def run_grid(configs: Sequence[Mapping[str, Any]], results: PathLike, *, executor: Any = None,
             progress: bool = True, limit: Optional[int] = None,
             on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
             stop_after_s: Optional[float] = None) -> Dict[str, int]:
    """Run every config of a grid that has no finished record in ``results``, appending each
    record as it comes back. Returns counts: total, skipped (already done), run, ok, diverged,
    error. ``limit`` caps how many pending runs start; ``stop_after_s``: start no run after that
    many seconds (with the in-process executor), so a time-boxed part ends cleanly."""
    t0 = time.perf_counter()
    resolved = [resolve_task_config(c) for c in configs]
    unique: Dict[str, Dict[str, Any]] = {}
    for c in resolved:
        unique.setdefault(run_id(c), c)
    done = finished_ids(results)
    pending = [c for i, c in unique.items() if i not in done]
    if limit is not None:
        pending = pending[: max(0, int(limit))]
    counts = {"total": len(unique), "skipped": len(unique) - len([i for i in unique if i not in done]),
              "run": 0, "ok": 0, "diverged": 0, "error": 0}
    executor = executor or InProcessExecutor()
    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="grid", unit="run")
    try:
        for record in executor.map(functools.partial(execute, progress=progress), pending):
            append_record(results, record)
            counts["run"] += 1
            counts[record["status"]] += 1
            if on_record is not None:
                on_record(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=counts["ok"], diverged=counts["diverged"], error=counts["error"],
                                refresh=False)
            if stop_after_s is not None and time.perf_counter() - t0 > stop_after_s:
                break
    finally:
        if bar is not None:
            bar.close()
    return counts
