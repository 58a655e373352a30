"""What the report section on ``alpha: auto`` reads out of records (the section itself is
:func:`emergeinit.bench.report.auto_section`): what auto picked, and Acc_1 against the base init
it must never lose to, paired by seed.

A run with ``init: emergence`` and ``init_options.alpha: auto`` is paired with the run of the same
config and seed whose ``init_options.alpha`` is 1 (the base init itself, same base options): when
the probe keeps the base, the two runs are identical, so the difference is exactly 0. Without such
runs, the ``init: kaiming`` run of the same config and seed is the base (the sensitivity map's
reference row; the same init when the emergence runs keep the model's own Kaiming init). A column
passes when the seed-paired 95% interval of Acc_1(auto) - Acc_1(base) includes 0 or lies above
it. Runs with other numeric α of the same config (the sensitivity map's cells, from the same or
another results file) show where a fixed α gains; there the auto choice should pick α > 1.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from emergeinit.bench.config import task_spec
from emergeinit.bench.records import accuracy, effective_config, init_label
from emergeinit.stats import paired_interval

__all__ = ["AUTO_KEYS", "auto_rows", "picked_text"]

AUTO_KEYS = ("alpha", "schedule", "scope", "candidates", "budget", "min_gain", "screen_steps", "epoch_steps",
             "graph_depth")
"""init_options that say which α (or how to choose it); the rest (base, mode, ...) must match."""


def _column(config: Mapping[str, Any]) -> Tuple:
    """What a run shares with its base twin: everything but the seed, the α choice and the keys
    that cannot change a result (threads, speed keys: left out of run ids too)."""
    ignored = {"seed", "init_options", "init", *task_spec(str(config.get("task") or "image")).id_ignored}
    opts = {k: v for k, v in (config.get("init_options") or {}).items() if k not in AUTO_KEYS}
    rest = {k: v for k, v in config.items() if k not in ignored}
    return (repr(sorted(rest.items())), repr(sorted(opts.items())))


def _is_auto(config: Mapping[str, Any]) -> bool:
    return config.get("init") == "emergence" and (config.get("init_options") or {}).get("alpha") == "auto"


def _alpha(config: Mapping[str, Any]) -> Optional[float]:
    a = (config.get("init_options") or {}).get("alpha")
    return float(a) if config.get("init") == "emergence" and isinstance(a, (int, float)) else None


def _picked(record: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    auto = ((record.get("init_record") or {}).get("details") or {}).get("auto") or {}
    return auto.get("chosen")


def picked_text(record: Mapping[str, Any]) -> str:
    """What an ``alpha: auto`` run chose, as its candidate's label ("no choice recorded" for a run
    that ended before choosing)."""
    picked = _picked(record)
    return str(picked.get("label", "?")) if picked else "no choice recorded"


def _cost(record: Mapping[str, Any]) -> Optional[float]:
    auto = ((record.get("init_record") or {}).get("details") or {}).get("auto") or {}
    return (auto.get("cost") or {}).get("fraction_of_epoch")


def _paired(ours: Mapping[int, float], theirs: Mapping[int, float]) -> Optional[Any]:
    seeds = sorted(set(ours) & set(theirs))
    return paired_interval([ours[s] - theirs[s] for s in seeds]) if seeds else None


def _never_worse(diff: Any) -> Optional[bool]:
    """True when the paired interval includes 0 or lies above it; one pair decides only when it is
    not below 0; None without pairs."""
    if diff is None:
        return None
    if diff.high is None:
        return True if diff.mean >= 0 else None
    return diff.high >= 0


def auto_rows(records: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One row per column (config less seed and α) that has auto runs: picks, Acc_1 of auto and of
    the base by seed, the paired interval, the verdict, and the fixed-α cells that gain."""
    by_column: Dict[Tuple, Dict[str, Any]] = {}
    for r in records:
        cfg = effective_config(r)  # runs made before a key existed still pair
        if cfg.get("init") not in ("emergence", "kaiming") or r.get("status") == "error" or cfg.get("extra_epoch"):
            continue
        col = by_column.setdefault(_column(cfg), {"auto": {}, "base": {}, "kaiming": {}, "fixed": {}, "config": None})
        acc = accuracy(r, "acc_1")
        seed = int(cfg.get("seed", 0))
        if cfg.get("init") == "kaiming":
            col["kaiming"][seed] = acc
        elif _is_auto(cfg):
            col["config"] = cfg
            col["auto"][seed] = (acc, _picked(r), _cost(r))
        elif _alpha(cfg) == 1.0:
            col["base"][seed] = acc
        elif _alpha(cfg) is not None:
            col["fixed"].setdefault(init_label(cfg), {})[seed] = acc
    rows = []
    for col in by_column.values():
        if col["config"] is None:
            continue
        auto_acc = {s: a for s, (a, _, _) in col["auto"].items() if a is not None}
        base_row = "α=1" if col["base"] else "kaiming"
        base_acc = {s: a for s, a in (col["base"] or col["kaiming"]).items() if a is not None}
        diff = _paired(auto_acc, base_acc)
        gains = []
        for label, accs in col["fixed"].items():
            iv = _paired({s: a for s, a in accs.items() if a is not None}, base_acc)
            if iv is not None and iv.low is not None and iv.low > 0:
                gains.append((label, iv))
        picks = [p for _, p, _ in col["auto"].values() if p]
        above_one = sum(1 for p in picks if p.get("alpha", 1.0) > 1.0)
        costs = [c for _, _, c in col["auto"].values() if c is not None]
        rows.append({
            "config": col["config"], "base_row": base_row, "picks": [p.get("label", "?") for p in picks], "above_one": above_one,
            "auto": auto_acc, "base": base_acc, "difference": diff,
            "never_worse": _never_worse(diff),
            "gains": gains, "gain_taken": (above_one * 2 > len(picks)) if gains else None,
            "cost": max(costs) if costs else None,
        })
    return rows
