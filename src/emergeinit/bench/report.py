"""Markdown tables from records, and the image task's Table-1-style report.

Shared helpers (the translation report uses them too): :func:`mean_std`, :func:`markdown_table`,
:func:`bold_best`. Diverged runs are counted in their cell, never dropped.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from emergeinit.bench import plots
from emergeinit.bench.records import accuracy, group_records, init_label, latest_records, log10_emergence

__all__ = ["mean_std", "markdown_table", "bold_best", "image_report", "image_cells"]


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


# --------------------------------------------------------------------------------- image report

def image_cells(records: Iterable[Mapping[str, Any]]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(row = init label, column = model) -> {acc_1, acc_best, log10_e (lists), n, diverged, error}."""
    cells: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in records:
        cfg = r.get("config") or {}
        cell = cells.setdefault((init_label(cfg), str(cfg.get("model"))),
                                {"acc_1": [], "acc_best": [], "log10_e": [], "n": 0, "diverged": 0, "error": 0})
        if r.get("status") == "error":
            cell["error"] += 1
            continue
        cell["n"] += 1
        cell["diverged"] += int(r.get("status") == "diverged")
        for key in ("acc_1", "acc_best"):
            a = accuracy(r, key)
            if a is not None:
                cell[key].append(a)
        le = log10_emergence(r)
        if le is not None:
            cell["log10_e"].append(le)
    return cells


def _table(cells: Mapping[Tuple[str, str], Mapping[str, Any]], rows: List[str], cols: List[str],
           metric: str, digits: int, mark_best: bool) -> str:
    grid = [[""] * len(cols) for _ in rows]
    for j, col in enumerate(cols):
        texts, scores = [], []
        for row in rows:
            c = cells.get((row, col))
            if c is None:
                texts.append("")
                scores.append(None)
                continue
            vals = c[metric]
            text = mean_std(vals, digits)
            notes = [f"n={len(vals)}"]
            if c["diverged"]:
                notes.append(f"{c['diverged']} diverged")
            if c["error"]:
                notes.append(f"{c['error']} error")
            texts.append(f"{text} ({', '.join(notes)})")
            scores.append(round(statistics.mean(vals), digits) if vals else None)
        if mark_best:
            texts = bold_best(texts, scores)
        for i, t in enumerate(texts):
            grid[i][j] = t
    return markdown_table(["Init"] + cols, [[row] + g for row, g in zip(rows, grid)])


def image_report(records: Iterable[Mapping[str, Any]], out_dir: Union[str, Path]) -> str:
    """Table-1-style markdown for the image records (one section per protocol and dataset:
    Acc_1, Acc_best when runs trained longer, log10 E at init), plus the plots, written to
    ``out_dir``. Returns the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in latest_records(records) if r.get("task", "image") == "image"]
    parts: List[str] = []
    sections = group_records(records, ["config.protocol", "config.dataset"])
    for (protocol, dataset), recs in sections.items():
        cells = image_cells(recs)
        rows = list(dict.fromkeys(k[0] for k in cells))
        cols = list(dict.fromkeys(str(r["config"].get("model")) for r in recs))
        epochs = sorted({int(r["config"].get("epochs", 1)) for r in recs})
        devices = sorted({str(r.get("device")) for r in recs})
        parts.append(f"## {protocol} protocol on {dataset}\n")
        parts.append(f"Runs: {len(recs)}; measured epochs: {', '.join(map(str, epochs))}; "
                     f"device: {'; '.join(devices)}. Cells: mean ± std over seeds (n runs with a "
                     f"value); best mean per column in bold; diverged runs are counted, never dropped.\n")
        parts.append("### Acc_1 (%): test accuracy after the first measured epoch\n")
        parts.append(_table(cells, rows, cols, "acc_1", 1, True) + "\n")
        if max(epochs) > 1:
            parts.append("### Acc_best (%)\n")
            parts.append(_table(cells, rows, cols, "acc_best", 1, True) + "\n")
        parts.append("### log10 E at init\n")
        parts.append(_table(cells, rows, cols, "log10_e", 2, False) + "\n")
    if not parts:
        parts.append("No image records.\n")
    for title, path in plots.image_plots(records, out):
        parts.append(f"![{title}]({path.name})\n")
    text = "# Image classification\n\n" + "\n".join(parts)
    (out / "image_report.md").write_text(text)
    return text
