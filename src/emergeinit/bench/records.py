"""Records: the results file a grid appends to, and the values a report reads out of a record.

A record is one run: its resolved ``config``, ``id``, ``status`` (ok | diverged | error), ``epochs``
(per-epoch metrics), ``emergence_at_init``, ``init_record``, ``extra`` and where it ran. Records
are appended one whole line at a time and fsync'ed; a reader skips a torn last line, and the next
append cuts that line off (only a line that is not a whole record: a record whose newline was
lost is kept). A record's identity is :func:`record_id`: the id of its config under today's
resolver, so records written under old key names still match the configs that name them anew.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from emergeinit.bench.config import canonical_keys, fill_legacy, resolve_config, run_id

__all__ = [
    "FINISHED",
    "append_record",
    "read_records",
    "record_id",
    "resolved_record_config",
    "effective_config",
    "latest_records",
    "finished_ids",
    "record_config",
    "record_value",
    "group_records",
    "log10_emergence",
    "accuracy",
    "init_label",
    "classify_run",
    "task_of",
    "OUTCOMES",
    "CHANCE_MARGIN",
    "LOSS_BLOWUP",
]

PathLike = Union[str, os.PathLike]
Key = Union[str, Callable[[Mapping[str, Any]], Any]]
FINISHED = ("ok", "diverged", "refused")  # a refused init refuses the same way on every retry
EXTRA_EPOCH_LABELS = {"const": "+1 epoch (const LR)", "warmup": "+1 epoch (warmup)"}


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


def resolved_record_config(record: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The record's config as resolved today: old key names renamed, keys added since at the value
    the run really used (:func:`~emergeinit.bench.config.fill_legacy`) or else at their defaults;
    None when it no longer resolves."""
    try:
        return resolve_config(fill_legacy(record["config"]))
    except (KeyError, TypeError, ValueError):
        return None


def record_id(record: Mapping[str, Any]) -> str:
    """The id of :func:`resolved_record_config`; the stored ``id`` when the config no longer
    resolves."""
    config = resolved_record_config(record)
    return run_id(config) if config is not None else record["id"]


def latest_records(records: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One record per :func:`record_id`: the last finished one, else the last one (an error).
    Order kept."""
    by_id: Dict[str, Dict[str, Any]] = {}
    for r in records:
        key = record_id(r)
        old = by_id.get(key)
        if old is None or r.get("status") in FINISHED or old.get("status") not in FINISHED:
            by_id[key] = dict(r)
    return list(by_id.values())


def finished_ids(path: PathLike) -> set:
    """Ids (:func:`record_id`) of the ``ok`` or ``diverged`` records in the results file."""
    return {record_id(r) for r in read_records(path) if r.get("status") in FINISHED}


def record_config(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The record's config under current key names (records of any age)."""
    return canonical_keys(record.get("config") or {})


def effective_config(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The config a report reads: resolved as today (old runs at the values they used), or, when it
    no longer resolves, as stored under current key names."""
    return resolved_record_config(record) or record_config(record)


def record_value(record: Mapping[str, Any], key: Key) -> Any:
    """A dotted path into a record (``config.model``), or a function of the record."""
    if callable(key):
        return key(record)
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def group_records(records: Iterable[Mapping[str, Any]], keys: Sequence[Key]) -> Dict[Tuple, List[Mapping[str, Any]]]:
    """Records grouped by the values of ``keys`` (dotted paths or functions), in first-seen order."""
    groups: Dict[Tuple, List[Mapping[str, Any]]] = {}
    for r in records:
        k = tuple(_hashable(record_value(r, key)) for key in keys)
        groups.setdefault(k, []).append(r)
    return groups


def log10_emergence(record: Mapping[str, Any]) -> Optional[float]:
    """log10 of E at init of a record (None when it was not measured)."""
    e = record.get("emergence_at_init") or {}
    if e.get("log10") is not None:
        return float(e["log10"])
    v = e.get("value")
    if v is None:
        return None
    v = int(v) if isinstance(v, int) else float(v)
    return math.log10(v) if v > 0 else None


def accuracy(record: Mapping[str, Any], which: str) -> Optional[float]:
    """``acc_1`` (test accuracy after the first measured epoch) or ``acc_best`` (the best over
    measured epochs) of an image record; None without a measured epoch."""
    main = [e.get("test_acc") for e in record.get("epochs") or [] if e.get("phase", "main") == "main"]
    main = [a for a in main if a is not None]
    if not main:
        return None
    return main[0] if which == "acc_1" else max(main)


def init_label(config: Mapping[str, Any]) -> str:
    """A row name for tables and legends: the init, its main options, and the extra epoch."""
    init = str(config.get("init"))
    opts = dict(config.get("init_options") or {})
    parts = []
    for key in ("schedule", "alpha", "alpha_from_lr", "scope", "base"):
        if key in opts and opts[key] is not None:
            value = opts[key]
            if key == "alpha":
                parts.append(f"α={value:g}" if isinstance(value, (int, float)) else f"α={value}")
            elif key == "alpha_from_lr" and isinstance(value, Mapping):
                parts.append(f"α from lr (α0={value.get('alpha0')}, lr0={value.get('lr0')})")
            else:
                parts.append(f"{value}")
    if config.get("layerwise_lr"):
        parts.append("layer-wise lr")
    label = init + (f" ({', '.join(parts)})" if parts else "")
    extra = config.get("extra_epoch")
    if extra:
        label += " " + EXTRA_EPOCH_LABELS[extra]
    return label


# ----------------------------------------------------------------------------- run outcomes

OUTCOMES = ("ok", "failed", "diverged", "refused", "error")
CHANCE_MARGIN = 2.0  # a final test accuracy within this many points of chance: failed to train
LOSS_BLOWUP = 10.0   # a final training loss above this many times the first step's: failed to train
_CLASSES = {"cifar10": 10, "fashion-mnist": 10, "fashion-mnist-32": 10, "fashion-mnist-16": 10}


def _losses(record: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    """(first step's training loss, final training loss) of a record. The first is
    ``extra.first_loss``; records made before it existed give the first point of the first loss
    curve (a mean over the first few steps). The final is the last point of the last loss curve."""
    epochs = record.get("epochs") or []
    first = (record.get("extra") or {}).get("first_loss")
    if first is None and epochs:
        curve = epochs[0].get("loss_curve") or []
        first = curve[0] if curve else epochs[0].get("train_loss")
    final = None
    if epochs:
        curve = epochs[-1].get("loss_curve") or []
        final = curve[-1] if curve else epochs[-1].get("train_loss")
    return first, final


def classify_run(record: Mapping[str, Any]) -> Tuple[str, str]:
    """``(outcome, why)``: ``refused`` (the init's factors or weights do not fit the dtype; refused
    before any weight changed), ``error`` (the run raised otherwise), ``diverged`` (a non-finite training loss),
    ``failed`` (failed to train: a final test accuracy within :data:`CHANCE_MARGIN` points of
    chance, or a final training loss above :data:`LOSS_BLOWUP` × the first step's; a finite loss of
    1e31 is not ok), else ``ok``."""
    status = record.get("status")
    if status == "refused":
        return "refused", str(record.get("error") or "the init does not fit the dtype")
    if status == "error":
        return "error", str(record.get("error") or "the run raised")
    if status == "diverged":
        where = (record.get("extra") or {}).get("diverged_at") or {}
        return "diverged", "non-finite training loss" + (
            f" (epoch {where.get('epoch')}, step {where.get('step')})" if where else "")
    epochs = record.get("epochs") or []
    accs = [e.get("test_acc") for e in epochs if e.get("test_acc") is not None]
    config = record_config(record)
    classes = (record.get("extra") or {}).get("num_classes") or _CLASSES.get(str(config.get("dataset")))
    if accs and classes:
        chance = 100.0 / float(classes)
        if abs(accs[-1] - chance) <= CHANCE_MARGIN:
            return "failed", (f"final test accuracy {accs[-1]:.1f}% is within {CHANCE_MARGIN:g} points "
                              f"of chance ({chance:g}%)")
    first, final = _losses(record)
    if first is not None and final is not None and first > 0 and not final <= LOSS_BLOWUP * first:
        return "failed", f"final training loss {final:.3g} > {LOSS_BLOWUP:g} × the first step's ({first:.3g})"
    if not epochs and task_of(record) == "image":
        return "failed", "no epoch finished"
    return "ok", ""


def task_of(record: Mapping[str, Any]) -> str:
    """The record's task (``image`` for records older than the task key)."""
    return str(record.get("task") or (record.get("config") or {}).get("task") or "image")
