"""The paper's figures from image records (matplotlib, written as PNG files).

- Fig 2: training-loss curves per init, with E at init in the legend (one panel per model).
- Fig 3: the MLP's training loss and test accuracy per epoch, mean ± std over seeds.
- Active fraction a_i / n_i per weight layer at init, one line per init (and α), per model.
- The α map: Acc_1 − Kaiming (seed-paired, 95% interval, failures) per α and variant, per model.

Loss axes are logarithmic, so a run whose loss explodes to 1e9 leaves the others readable.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from emergeinit.bench.records import group_records, init_label, log10_emergence

__all__ = ["image_plots", "loss_curves_plot", "mlp_plot", "active_fraction_plot", "format_e", "pyplot",
           "integer_ticks", "sensitivity_heatmap", "default_naming"]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported on first use: an extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks():
    """A tick locator that puts ticks on whole numbers only (epochs, layer indices)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def format_e(log10_value: Optional[float]) -> str:
    """E from its log10, as ``1.09e9`` (no overflow for any size)."""
    if log10_value is None:
        return "n/a"
    exp = math.floor(log10_value)
    return f"{10 ** (log10_value - exp):.2f}e{exp}"


def _by(records: Sequence[Mapping[str, Any]], key: Any) -> Dict[Any, List[Mapping[str, Any]]]:
    """Records by one key (see :func:`group_records`), keyed by its value rather than a 1-tuple."""
    return {k[0]: v for k, v in group_records(records, [key]).items()}


Naming = Callable[[Mapping[str, Any]], Tuple[str, str]]


def default_naming(record: Mapping[str, Any]) -> Tuple[str, str]:
    """(panel, curve) of a record: its model and its init label. The report passes its own (the
    table's column and row), so curves split exactly as the table's cells do."""
    return str(record["config"].get("model")), init_label(record["config"])


def _legend(ax: Any, n: int) -> bool:
    """A legend beside the axes when there are many curves, so it never hides them; True then."""
    if n > 8:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=max(1, math.ceil(n / 24)))
        return True
    ax.legend(fontsize=7)
    return False


def _model_panels(records: Sequence[Mapping[str, Any]], naming: Naming):
    """A figure with one panel per model (2 columns; 1 when curves are many), or None without
    records: ``(plt, fig, [(axes, model, {curve label: records})])``."""
    by_model = _by(records, lambda r: naming(r)[0])
    if not by_model:
        return None
    plt = pyplot()
    n = len(by_model)
    labels = max(len({naming(r)[1] for r in recs}) for recs in by_model.values())
    cols = min(n, 1 if labels > 8 else 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    if labels > 8:  # legends go beside the axes (tight_layout cannot place those): room between rows
        fig.subplots_adjust(hspace=0.35)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    panels = [(ax, model, _by(recs, lambda r: naming(r)[1])) for ax, (model, recs) in zip(axes.flat, by_model.items())]
    return plt, fig, panels


def _save(plt: Any, fig: Any, path: Path, tight: bool = True) -> Path:
    """Write the figure and close it; ``tight=False`` when a legend sits beside its axes (which
    tight_layout cannot place; the saved bounding box still takes it in)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _mean_curve(curves: List[List[float]]) -> List[float]:
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [statistics.mean(c[i] for c in curves) for i in range(n)]


def loss_curves_plot(records: Sequence[Mapping[str, Any]], path: Path,
                     naming: Naming = default_naming) -> Optional[Path]:
    """Fig 2: training loss against epochs (fractional, all phases), per init, E in the legend."""
    figure = _model_panels(records, naming)
    if figure is None:
        return None
    plt, fig, panels = figure
    outside = False
    for ax, model, by_label in panels:
        for label, group in by_label.items():
            xs_all, curves = None, []
            for r in group:
                xs, ys = [], []
                for e in r.get("epochs") or []:
                    c = e.get("loss_curve") or []
                    base = e["epoch"] - (0 if e.get("phase") == "extra" else 1)
                    xs += [base + (i + 0.5) / len(c) for i in range(len(c))]
                    ys += c
                if ys:
                    curves.append(ys)
                    xs_all = xs if xs_all is None or len(xs) < len(xs_all) else xs_all
            ys = _mean_curve(curves)
            if not ys:
                continue
            ax.plot(xs_all[: len(ys)], ys, label=f"{label}  E={_e_text(group)}")
        ax.set_title(f"{model}: training loss (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss (log scale)")
        ax.set_yscale("log")
        outside |= _legend(ax, len(by_label))
    return _save(plt, fig, path, tight=not outside)


def _e_text(group: Sequence[Mapping[str, Any]]) -> str:
    """E at init of a group of runs: 10^(mean log10 E) over seeds, the report's convention."""
    logs = [v for v in (log10_emergence(r) for r in group) if v is not None]
    return format_e(statistics.mean(logs)) if logs else "n/a"


def mlp_plot(records: Sequence[Mapping[str, Any]], path: Path, naming: Naming = default_naming) -> Optional[Path]:
    """Fig 3: the MLP's per-epoch training loss and test accuracy, mean ± std over seeds."""
    recs = [r for r in records if r["config"].get("model") == "mlp"]
    if not recs:
        return None
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, group in _by(recs, lambda r: naming(r)[1]).items():
        for ax, key in ((ax_loss, "train_loss"), (ax_acc, "test_acc")):
            series: Dict[int, List[float]] = {}
            for r in group:
                for e in r.get("epochs") or []:
                    if e.get(key) is not None:
                        series.setdefault(int(e["epoch"]), []).append(float(e[key]))
            if not series:
                continue
            xs = sorted(series)
            mean = [statistics.mean(series[x]) for x in xs]
            std = [statistics.stdev(series[x]) if len(series[x]) > 1 else 0.0 for x in xs]
            line, = ax.plot(xs, mean, marker="o", label=f"{label}  E={_e_text(group)}")
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.15)
    ax_loss.set(title="MLP: training loss per epoch", xlabel="epoch", ylabel="train loss (log scale)", yscale="log")
    ax_acc.set(title="MLP: test accuracy per epoch", xlabel="epoch", ylabel="test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(integer_ticks())
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _fractions(record: Mapping[str, Any]) -> List[float]:
    layers = (record.get("emergence_at_init") or {}).get("layers") or []
    out = []
    for layer in layers:
        nodes, active = layer.get("nodes"), layer.get("active")
        if nodes:
            out.append(float(active) / float(nodes))
    return out


def active_fraction_plot(records: Sequence[Mapping[str, Any]], path: Path,
                         naming: Naming = default_naming) -> Optional[Path]:
    """Active fraction a_i / n_i per layer at init, one line per init (its α in the label)."""
    figure = _model_panels([r for r in records if _fractions(r)], naming)
    if figure is None:
        return None
    plt, fig, panels = figure
    outside = False
    for ax, model, by_label in panels:
        for label, group in by_label.items():
            ys = _mean_curve([_fractions(r) for r in group])
            ax.plot(range(len(ys)), ys, marker=".", label=label)
        ax.xaxis.set_major_locator(integer_ticks())
        ax.set(title=f"{model}: active fraction per layer at init", xlabel="layer i (0-based, execution order)",
               ylabel="a_i / n_i", ylim=(-0.02, 1.02))
        outside |= _legend(ax, len(by_label))
    return _save(plt, fig, path, tight=not outside)


def _signed(x: float) -> str:
    """A signed number short enough for a heatmap cell: one decimal below 10, none above."""
    return f"{x:+.1f}" if abs(x) < 10 else f"{x:+.0f}"


def sensitivity_heatmap(cells: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Optional[Path]:
    """The α map: per panel (model) a grid of variants (rows) × α (columns), coloured by the mean
    seed-paired Acc_1 − Kaiming, with its 95% interval and the failed / diverged runs written in.
    ``cells``: dicts with panel, row, alpha, mean, low, high, pairs, counts. Panels with fewer than
    two α values are left out; None when none is left."""
    panels: Dict[str, List[Mapping[str, Any]]] = {}
    for c in cells:
        if isinstance(c.get("alpha"), (int, float)):
            panels.setdefault(str(c["panel"]), []).append(c)
    panels = {k: v for k, v in panels.items() if len({c["alpha"] for c in v}) > 1}
    if not panels:
        return None
    import numpy as np

    plt = pyplot()
    means = [abs(c["mean"]) for v in panels.values() for c in v if c.get("mean") is not None]
    vmax = min(30.0, max([5.0] + means))
    layout = []
    for name, group in panels.items():
        rows = list(dict.fromkeys(c["row"] for c in group))
        alphas = sorted({c["alpha"] for c in group})
        layout.append((name, group, rows, alphas))
    height = sum(1.2 + 0.55 * len(rows) for _, _, rows, _ in layout)
    width = 3.0 + 1.15 * max(len(a) for *_, a in layout)
    fig, axes = plt.subplots(len(layout), 1, figsize=(width + 3.5, height), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [len(r) + 1 for _, _, r, _ in layout]})
    image = None
    for ax, (name, group, rows, alphas) in zip(axes[:, 0], layout):
        grid = np.full((len(rows), len(alphas)), np.nan)
        for c in group:
            i, j = rows.index(c["row"]), alphas.index(c["alpha"])
            if c.get("mean") is not None:
                grid[i, j] = c["mean"]
            counts = c.get("counts") or {}
            bad = int(counts.get("failed", 0)) + int(counts.get("diverged", 0))
            runs = sum(int(v) for v in counts.values())
            lines = ["no pair" if c.get("mean") is None else f"{c['mean']:+.1f}"]
            if c.get("low") is not None:
                lines.append(f"[{_signed(c['low'])}, {_signed(c['high'])}]")
            if bad:
                lines.append(f"{bad}/{runs} failed")
            ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=6.5,
                    color="black" if c.get("mean") is None or abs(c["mean"]) < 0.6 * vmax else "white")
        image = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(alphas)), [f"α={a:g}" for a in alphas])
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(f"{name}: Acc_1 − Kaiming (points, seed-paired mean, 95% interval)", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.6, label="Acc_1 − Kaiming (points)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def image_plots(records: Sequence[Mapping[str, Any]], out_dir: Path,
                naming: Naming = default_naming) -> List[Tuple[str, Path]]:
    """Write every figure the records allow; return (title, path) pairs of those written.
    ``naming``: a record's (panel, curve) names."""
    out_dir = Path(out_dir)
    written = []
    for title, fn, name in (
        ("Fig 2: training loss and E at init", loss_curves_plot, "fig2_loss_emergence.png"),
        ("Fig 3: MLP training loss and test accuracy", mlp_plot, "fig3_mlp.png"),
        ("Active fraction per layer at init", active_fraction_plot, "active_fraction.png"),
    ):
        path = fn(records, out_dir / name, naming)
        if path is not None:
            written.append((title, path))
    return written
