"""Markdown tables from records, and the image task's Table-1-style report.

Shared helpers (the translation report uses them too): :func:`mean_std`, :func:`markdown_table`,
:func:`bold_best`, :func:`paired_interval`. In the image report a cell pools only runs whose
configs differ in the seed alone (rows that would otherwise pool different settings are split and
labelled with the keys that differ); every run is classified (ok, failed to train, diverged,
error: :func:`~emergeinit.bench.records.classify_run`), counted in its cell and never dropped;
and each row is compared with the Kaiming row of the same setting, seed by seed.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from emergeinit import stats
from emergeinit.bench import plots
from emergeinit.bench.auto_report import AUTO_KEYS, auto_rows
from emergeinit.bench.config import task_spec
from emergeinit.bench.records import (
    OUTCOMES, accuracy, classify_run, effective_config, group_records, init_label, latest_records, log10_emergence,
    record_config,
)

__all__ = ["mean_std", "markdown_table", "bold_best", "paired_interval", "image_report",
           "image_cells", "Cell", "paired_deltas", "Delta", "model_label", "auto_section"]


def mean_std(values: Sequence[float], digits: int = 1) -> str:
    """``"46.2 ± 0.6"`` (sample std); one value alone has no ± ; none gives ``"—"``."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bold_best(cells: Sequence[str], scores: Sequence[Optional[float]], higher: bool = True) -> List[str]:
    """Bold the cells whose score is the best of the column (ties all bold)."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return list(cells)
    best = max(valid) if higher else min(valid)
    return [f"**{c}**" if s is not None and s == best else c for c, s in zip(cells, scores)]


# ------------------------------------------------------------------------------- paired intervals

def paired_interval(diffs: Sequence[float]) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(mean, low, high) of seed-paired differences: the paired-t 95% interval of
    :func:`emergeinit.stats.paired_interval` (None bounds with fewer than 2 pairs; all None with none)."""
    if not diffs:
        return None, None, None
    interval = stats.paired_interval(diffs)
    return interval.mean, interval.low, interval.high


# --------------------------------------------------------------------------------- image report

_POOLED = ("seed",)  # the one key a cell pools over (besides the task's id-ignored keys)
_NAMED = ("init", "init_options.schedule", "init_options.alpha", "init_options.scope", "init_options.base",
          "extra_epoch")  # what init_label already shows


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts as dotted keys; an empty dict is no key at all (``init_options: {}``)."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True, default=str)


def _setting(flat: Mapping[str, Any]) -> Tuple:
    """What a cell is: every key but the seed and the keys that cannot change a result."""
    ignored = set(_POOLED) | set(task_spec(str(flat.get("task") or "image")).id_ignored)
    return tuple(sorted((k, _hashable(v)) for k, v in flat.items() if k not in ignored))


def model_label(config: Mapping[str, Any]) -> str:
    """A column name: the model and its options (``vgg13 (width=0.25)``)."""
    options = dict(config.get("model_options") or {})
    shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(options.items()))
    return str(config.get("model")) + (f" ({shown})" if shown else "")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return "null" if value is None else str(value)


@dataclass
class Cell:
    """The runs of one setting (configs equal but for the seed): a row and a column of a table."""

    row: str
    col: str
    config: Dict[str, Any]             # the setting's config (its first run's)
    records: List[Mapping[str, Any]] = field(default_factory=list)
    suffix: str = ""                   # "key=value, ..." that tells this row from others of its init label

    @property
    def flat(self) -> Dict[str, Any]:
        return _flatten(self.config)

    def outcome(self, record: Mapping[str, Any]) -> str:
        return classify_run(record)[0]

    def counts(self) -> Dict[str, int]:
        """Runs per outcome (ok, failed, diverged, error)."""
        out = {k: 0 for k in OUTCOMES}
        for r in self.records:
            out[self.outcome(r)] += 1
        return out

    def values(self, metric: str, ok_only: bool = False) -> List[float]:
        """``acc_1`` / ``acc_best`` / ``log10_e`` of the runs that have one (errors have none)."""
        vals = []
        for r in self.records:
            if self.outcome(r) == "error" or (ok_only and self.outcome(r) != "ok"):
                continue
            v = log10_emergence(r) if metric == "log10_e" else accuracy(r, metric)
            if v is not None:
                vals.append(v)
        return vals

    def by_seed(self, metric: str) -> Dict[Any, float]:
        out = {}
        for r in self.records:
            v = accuracy(r, metric) if self.outcome(r) != "error" else None
            if v is not None:
                out[record_config(r).get("seed")] = v
        return out


def image_cells(records: Iterable[Mapping[str, Any]]) -> Dict[Tuple[str, str], Cell]:
    """(row, column) -> :class:`Cell`. A cell pools only runs whose configs differ in the seed; a
    row is the init's label, extended with ``key=value`` for every key that tells apart settings
    which would otherwise share that label in one column (``kaiming · train_limit=20000``)."""
    settings: Dict[Tuple, Cell] = {}
    for r in records:
        config = effective_config(r)
        key = _setting(_flatten(config))
        if key not in settings:
            settings[key] = Cell(init_label(config), model_label(config), config)
        settings[key].records.append(r)
    split: Dict[str, set] = {}
    buckets = group_records([{"c": c} for c in settings.values()], [lambda x: (x["c"].row, x["c"].col)])
    for group in buckets.values():
        cells = [g["c"] for g in group]
        if len(cells) > 1:
            settings_of = [dict(_setting(c.flat)) for c in cells]
            keys = set().union(*settings_of)
            differ = {k for k in keys if len({x.get(k) for x in settings_of}) > 1}
            split.setdefault(cells[0].row, set()).update(differ - set(_NAMED))
    out: Dict[Tuple[str, str], Cell] = {}
    for cell in settings.values():
        keys = sorted(split.get(cell.row, ()))
        if keys:
            flat = cell.flat
            cell.suffix = ", ".join(f"{k}={_short(flat.get(k))}" for k in keys)
            cell.row += " · " + cell.suffix
        out[(cell.row, cell.col)] = cell
    return out


def _reference_key(flat: Mapping[str, Any]) -> Tuple:
    """The setting of the Kaiming row a setting is compared with: the same config with
    ``init: kaiming``, no init options and no extra epoch."""
    ref = {k: v for k, v in flat.items() if not k.startswith("init_options.")}
    ref.update(init="kaiming", extra_epoch=None)
    return _setting(ref)


def _is_reference(flat: Mapping[str, Any]) -> bool:
    return flat.get("init") == "kaiming" and flat.get("extra_epoch") is None and not any(
        k.startswith("init_options.") for k in flat)


@dataclass
class Delta:
    """One row's seed-paired difference from its Kaiming row, in one column."""

    cell: Cell
    diffs: List[float]                 # per paired seed: row − Kaiming
    counts: Dict[str, int]             # the row's run outcomes
    reference_counts: Dict[str, int]   # the Kaiming row's

    @property
    def row(self) -> str:
        return self.cell.row

    @property
    def col(self) -> str:
        return self.cell.col

    @property
    def interval(self) -> Tuple[Optional[float], Optional[float], Optional[float]]:
        return paired_interval(self.diffs)

    def text(self, digits: int = 1) -> str:
        mean, lo, hi = self.interval
        if mean is None:
            return "no pair"
        ci = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if lo is not None else ""
        return f"{mean:+.{digits}f}{ci} (pairs={len(self.diffs)})"


def paired_deltas(cells: Mapping[Tuple[str, str], Cell], metric: str = "acc_1") -> List[Delta]:
    """Each non-Kaiming cell against the Kaiming cell of its setting, paired by seed (seeds with a
    value in both; a diverged run has none). Cells without a Kaiming partner are left out."""
    refs = {_setting(c.flat): c for c in cells.values() if _is_reference(c.flat)}
    out = []
    for cell in cells.values():
        ref = refs.get(_reference_key(cell.flat))
        if ref is None or ref is cell:
            continue
        mine, theirs = cell.by_seed(metric), ref.by_seed(metric)
        diffs = [mine[s] - theirs[s] for s in sorted(mine, key=str) if s in theirs]
        out.append(Delta(cell, diffs, cell.counts(), ref.counts()))
    return out


def _counts_text(counts: Mapping[str, int]) -> str:
    shown = [f"{counts[k]} {'failed' if k == 'failed' else k}" for k in OUTCOMES if counts.get(k)]
    return ", ".join(shown) if shown else "no runs"


def _cell_text(cell: Cell, metric: str, digits: int, outcomes: bool = True) -> str:
    counts = cell.counts()
    vals = cell.values(metric)
    text = f"{mean_std(vals, digits)} (n={len(vals)})"
    if not outcomes:
        return text
    if counts["ok"] == sum(counts.values()):
        return f"{text}, all ok"
    ok = cell.values(metric, ok_only=True)
    return f"{text}; ok runs {mean_std(ok, digits)} (n={len(ok)}); {_counts_text(counts)}"


def _table(cells: Mapping[Tuple[str, str], Cell], rows: List[str], cols: List[str],
           metric: str, digits: int, mark_best: bool, outcomes: bool = True) -> str:
    grid = [[""] * len(cols) for _ in rows]
    for j, col in enumerate(cols):
        texts, scores = [], []
        for row in rows:
            c = cells.get((row, col))
            vals = c.values(metric) if c is not None else []
            texts.append(_cell_text(c, metric, digits, outcomes) if c is not None else "")
            scores.append(round(statistics.mean(vals), digits) if vals else None)
        if mark_best:
            texts = bold_best(texts, scores)
        for i, t in enumerate(texts):
            grid[i][j] = t
    return markdown_table(["Init"] + cols, [[row] + g for row, g in zip(rows, grid)])


def _delta_table(deltas: Sequence[Delta], rows: List[str], cols: List[str]) -> str:
    by = {(d.row, d.col): d for d in deltas}
    body = []
    for row in rows:
        if not any((row, c) in by for c in cols):
            continue
        cells = []
        for col in cols:
            d = by.get((row, col))
            cells.append("" if d is None else f"{d.text()}; {_counts_text(d.counts)}")
        body.append([row] + cells)
    return markdown_table(["Init"] + cols, body)


def _base_note(cells: Iterable[Cell]) -> str:
    bases = sorted({(_short(c.flat.get("base_init")), _short(c.flat.get("classifier_init"))) for c in cells})
    text = {"model": "the model's own init (for the built-in VGG/ResNets, GradInit's code's)",
            "kaiming": "Kaiming fan_in redraw", "xavier": "Xavier redraw",
            "null": "none shared (each method drew its own; runs made before base_init existed)"}
    parts = [f"{text.get(b, b)}" + (f", classifier redrawn: {h}" if h != "null" else "") for b, h in bases]
    return "; ".join(parts)


def image_report(records: Iterable[Mapping[str, Any]], out_dir: Union[str, Path]) -> str:
    """Table-1-style markdown for the image records (one section per protocol and dataset: Acc_1
    with run outcomes, its seed-paired difference from Kaiming, Acc_best when runs trained longer,
    log10 E at init, and the α map when a section varies α), plus the plots, written to
    ``out_dir``. Returns the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in latest_records(records) if r.get("task", "image") == "image"]
    parts: List[str] = []
    sections = group_records(records, [lambda r: effective_config(r).get("protocol"), lambda r: effective_config(r).get("dataset")])
    heatmaps: List[Tuple[str, Path]] = []
    names: Dict[int, Tuple[str, str]] = {}  # id(record) -> (column, row): plots split as the tables do
    for i, ((protocol, dataset), recs) in enumerate(sections.items()):
        cells = image_cells(recs)
        names.update({id(r): (c.col, c.row) for c in cells.values() for r in c.records})
        rows = list(dict.fromkeys(k[0] for k in cells))
        cols = list(dict.fromkeys(k[1] for k in cells))
        epochs = sorted({int(effective_config(r).get("epochs", 1)) for r in recs})
        devices = sorted({str(r.get("device")) for r in recs})
        total = {k: sum(c.counts()[k] for c in cells.values()) for k in OUTCOMES}
        parts.append(f"## {protocol} protocol on {dataset}\n")
        parts.append(f"Runs: {len(recs)} ({_counts_text(total)}); measured epochs: {', '.join(map(str, epochs))}; "
                     f"device: {'; '.join(devices)}. Base: {_base_note(cells.values())}.\n")
        parts.append("Cells: mean ± std over seeds of the runs with a value (n), then, unless every run "
                     "is ok, the mean of the ok runs alone and the count of each outcome. A run *failed* "
                     "when its final test accuracy is within 2 points of chance or its final training loss "
                     "is over 10× its first step's; *diverged*: a non-finite training loss. Best mean per "
                     "column in bold. A cell pools only runs that differ in the seed.\n")
        parts.append("### Acc_1 (%): test accuracy after the first measured epoch\n")
        parts.append(_table(cells, rows, cols, "acc_1", 1, True) + "\n")
        deltas = paired_deltas(cells)
        if deltas:
            parts.append("### Acc_1 − Kaiming (points), seed-paired\n")
            parts.append("Mean difference from the Kaiming row of the same setting and base over the seeds "
                         "both have, [paired-t 95% interval], then this row's run outcomes.\n")
            parts.append(_delta_table(deltas, rows, cols) + "\n")
            path = plots.sensitivity_heatmap([_heat_cell(d) for d in deltas], out / f"alpha_map_{i}.png",
                                             f"{protocol} on {dataset}")
            if path is not None:
                heatmaps.append((f"Acc_1 − Kaiming by α ({protocol} on {dataset})", path))
        if max(epochs) > 1:
            parts.append("### Acc_best (%)\n")
            parts.append(_table(cells, rows, cols, "acc_best", 1, True) + "\n")
        parts.append("### log10 E at init\n")
        parts.append(_table(cells, rows, cols, "log10_e", 2, False, outcomes=False) + "\n")
        auto = auto_section(recs)
        if auto:
            parts.append(auto)
    if not parts:
        parts.append("No image records.\n")
    naming = lambda r: names.get(id(r)) or plots.default_naming(r)  # noqa: E731
    for title, path in heatmaps + plots.image_plots(records, out, naming):
        parts.append(f"![{title}]({path.name})\n")
    text = "# Image classification\n\n" + "\n".join(parts)
    (out / "image_report.md").write_text(text)
    return text


def _heat_cell(d: Delta) -> Dict[str, Any]:
    """A Delta as the heatmap reads it: panel (column), row (the label without α), α, interval."""
    mean, lo, hi = d.interval
    options = dict(d.cell.config.get("init_options") or {})
    alpha = options.pop("alpha", None)
    row = init_label({**d.cell.config, "init_options": options}) + (f" · {d.cell.suffix}" if d.cell.suffix else "")
    return {"panel": d.col, "row": row, "alpha": alpha, "mean": mean, "low": lo, "high": hi,
            "pairs": len(d.diffs), "counts": d.counts}


# ------------------------------------------------------------------------ alpha: auto vs its base

def _mean(values: Iterable[float]) -> str:
    vals = list(values)
    return f"{sum(vals) / len(vals):.1f}" if vals else "—"


def _keys_that_differ(configs: List[Mapping[str, Any]]) -> Dict[Any, List[str]]:
    """Per model, the config keys (not seed, init, init_options) whose values differ between its
    configs: what tells apart two rows of one model (``classifier_init``)."""
    by_model: Dict[Any, List[Mapping[str, Any]]] = {}
    for cfg in configs:
        by_model.setdefault(cfg.get("model"), []).append(cfg)
    out: Dict[Any, List[str]] = {}
    for model, cfgs in by_model.items():
        keys = set().union(*cfgs) - {"seed", "init", "init_options"}
        out[model] = sorted(k for k in keys if len({repr(c.get(k)) for c in cfgs}) > 1)
    return out


def auto_section(records: Iterable[Mapping[str, Any]]) -> str:
    """Markdown: model × base options × what auto picked × Acc_1 against the base, paired by seed."""
    rows = auto_rows(records)
    if not rows:
        return ""
    table = []
    differ = _keys_that_differ([r["config"] for r in rows])
    for row in rows:
        cfg = row["config"]
        base_opts = {k: v for k, v in (cfg.get("init_options") or {}).items() if k not in AUTO_KEYS}
        base_opts.update({k: _short(cfg.get(k)) for k in differ.get(cfg.get("model"), ())})
        picks: Dict[str, int] = {}
        for p in row["picks"]:
            picks[p] = picks.get(p, 0) + 1
        diff = row["difference"]
        verdict = {True: "yes", False: "**no**", None: "—"}[row["never_worse"]]
        gains = "; ".join(f"{label}: {iv}" for label, iv in row["gains"]) or "none shown"
        taken = {True: "yes", False: "**no**", None: "—"}[row["gain_taken"]]
        table.append([
            cfg.get("model"), (", ".join(f"{k}={v}" for k, v in sorted(base_opts.items())) or "default")
            + f" ({row['base_row']} row)",
            "; ".join(f"{k} ×{n}" for k, n in picks.items()) or "—",
            f"{_mean(row['base'].values())} (n={len(row['base'])})",
            f"{_mean(row['auto'].values())} (n={len(row['auto'])})",
            str(diff) if diff else "—", verdict, gains, taken,
            f"{row['cost']:.1%}" if row["cost"] is not None else "—",
        ])
    header = ["model", "base", "auto picked (seeds)", "Acc_1 base", "Acc_1 auto", "auto − base, paired [95%]",
              "never worse", "fixed α that gain (paired vs base)", "α > 1 where a gain", "probe cost (of an epoch)"]
    return ("### alpha: auto against its base init (Acc_1, %)\n\n"
            "Pairs are seeds of the same config; the base is `init_options.alpha: 1` with the same base "
            "options. *Never worse*: the paired 95% interval includes 0 or lies above it. *Fixed α that "
            "gain*: runs of a numeric α in the same config whose paired interval lies above 0.\n\n"
            + markdown_table(header, table) + "\n")
