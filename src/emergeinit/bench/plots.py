"""The paper's figures from image records (matplotlib, written as PNG files).

- Fig 2: training-loss curves per init, with E at init in the legend (one panel per model).
- Fig 3: the MLP's training loss and test accuracy per epoch, mean ± std over seeds.
- Active fraction a_i / n_i per weight layer at init, one line per init (and α), per model.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from emergeinit.bench.records import group_records, init_label, log10_emergence

__all__ = ["image_plots", "loss_curves_plot", "mlp_plot", "active_fraction_plot", "format_e", "pyplot",
           "integer_ticks"]


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


def _init_label(record: Mapping[str, Any]) -> str:
    return init_label(record["config"])


def _model_panels(records: Sequence[Mapping[str, Any]]):
    """A figure with one panel per model (2 columns), or None without records: ``(plt, fig,
    [(axes, model, {init label: records})])``."""
    by_model = _by(records, "config.model")
    if not by_model:
        return None
    plt = pyplot()
    n = len(by_model)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    panels = [(ax, model, _by(recs, _init_label)) for ax, (model, recs) in zip(axes.flat, by_model.items())]
    return plt, fig, panels


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_curve(curves: List[List[float]]) -> List[float]:
    curves = [c for c in curves if c]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [statistics.mean(c[i] for c in curves) for i in range(n)]


def loss_curves_plot(records: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Fig 2: training loss against epochs (fractional, all phases), per init, E in the legend."""
    figure = _model_panels(records)
    if figure is None:
        return None
    plt, fig, panels = figure
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
            logs = [v for v in (log10_emergence(r) for r in group) if v is not None]
            # the report's convention: 10^(mean log10 E) over seeds
            e_text = format_e(statistics.mean(logs)) if logs else "n/a"
            ax.plot(xs_all[: len(ys)], ys, label=f"{label}  E={e_text}")
        ax.set_title(f"{model}: training loss (mean over seeds)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def mlp_plot(records: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Fig 3: the MLP's per-epoch training loss and test accuracy, mean ± std over seeds."""
    recs = [r for r in records if r["config"].get("model") == "mlp"]
    if not recs:
        return None
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, group in _by(recs, _init_label).items():
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
            line, = ax.plot(xs, mean, marker="o", label=label)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.15)
    ax_loss.set(title="MLP: training loss per epoch", xlabel="epoch", ylabel="train loss")
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


def active_fraction_plot(records: Sequence[Mapping[str, Any]], path: Path) -> Optional[Path]:
    """Active fraction a_i / n_i per layer at init, one line per init (its α in the label)."""
    figure = _model_panels([r for r in records if _fractions(r)])
    if figure is None:
        return None
    plt, fig, panels = figure
    for ax, model, by_label in panels:
        for label, group in by_label.items():
            ys = _mean_curve([_fractions(r) for r in group])
            ax.plot(range(len(ys)), ys, marker=".", label=label)
        ax.xaxis.set_major_locator(integer_ticks())
        ax.set(title=f"{model}: active fraction per layer at init", xlabel="layer i (0-based, execution order)",
               ylabel="a_i / n_i", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def image_plots(records: Sequence[Mapping[str, Any]], out_dir: Path) -> List[Tuple[str, Path]]:
    """Write every figure the records allow; return (title, path) pairs of those written."""
    out_dir = Path(out_dir)
    written = []
    for title, fn, name in (
        ("Fig 2: training loss and E at init", loss_curves_plot, "fig2_loss_emergence.png"),
        ("Fig 3: MLP training loss and test accuracy", mlp_plot, "fig3_mlp.png"),
        ("Active fraction per layer at init", active_fraction_plot, "active_fraction.png"),
    ):
        path = fn(records, out_dir / name)
        if path is not None:
            written.append((title, path))
    return written
