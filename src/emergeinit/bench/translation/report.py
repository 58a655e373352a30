"""Table-2-style report of translation records: BLEU_1 / BLEU_best per init (mean ± std over seeds,
diverged runs counted), ratios against Xavier at equal budget, BLEU-per-epoch and loss plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from emergeinit.bench.plots import integer_ticks, pyplot
from emergeinit.bench.records import group_records, record_config
from emergeinit.bench.report import bold_best, markdown_table, mean_std

__all__ = ["translation_report", "method_label", "run_summary"]

Record = Mapping[str, Any]


def method_label(config: Mapping[str, Any]) -> str:
    """``emergence (blockwise, α=10, literal)``, ``tfixup (no LN)``: the init and what sets it apart."""
    init = config.get("init", "?")
    opts = dict(config.get("init_options") or {})
    parts: List[str] = []
    if "scope" in opts:
        parts.append(str(opts.pop("scope")))
    if "alpha" in opts:
        parts.append(f"α={float(opts.pop('alpha')):g}")
    if "beta_enc" in opts:
        beta_enc = float(opts.pop("beta_enc"))
        if beta_enc != 1.0:
            parts.append(f"β_enc={beta_enc:g}")
    if "beta_dec" in opts:
        parts.append(f"β_dec={float(opts.pop('beta_dec')):g}")
    parts += [f"{k}={v}" for k, v in sorted(opts.items()) if k not in ("base", "example_input")]
    if config.get("layer_norm") is False:
        parts.append("no LN")
    return f"{init} ({', '.join(parts)})" if parts else str(init)


def run_summary(record: Record) -> Dict[str, Optional[float]]:
    """BLEU_1, BLEU_best, last validation loss, epochs, training seconds of one record."""
    epochs = record.get("epochs") or []
    bleus = [e["bleu"] for e in epochs if e.get("bleu") is not None]
    losses = [e["valid_loss"] for e in epochs if e.get("valid_loss") is not None]
    extra = record.get("extra") or {}
    return {
        "bleu_1": bleus[0] if bleus else None,
        "bleu_best": max(bleus) if bleus else None,
        "valid_loss": losses[-1] if losses else None,
        "epochs": float(len(epochs)),
        "train_s": extra.get("train_s", epochs[-1].get("train_s") if epochs else None),
    }


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.mean(vals) if vals else None


def _setting(record: Record) -> Tuple[str, str]:
    c = record_config(record)
    return (str(c.get("protocol", "?")), str(c.get("dataset", "?")))


def _curves_plot(groups: Mapping[str, List[Record]], key: str, ylabel: str, path: Path) -> Optional[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for label, recs in groups.items():
        curves = [[e.get(key) for e in r.get("epochs") or []] for r in recs]
        n = max((len(c) for c in curves), default=0)
        mean = [_mean([c[i] for c in curves if i < len(c)]) for i in range(n)]
        xs = [i + 1 for i, m in enumerate(mean) if m is not None]
        ys = [m for m in mean if m is not None]
        if ys:
            ax.plot(xs, ys, marker="o", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def translation_report(records: Sequence[Record], out_dir: Union[str, Path]) -> str:
    """Markdown: per (protocol, corpus) a Table-2-style table and ratios against Xavier; writes
    ``translation_<protocol>_<dataset>_{bleu,loss}.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Translation (Table 2)", ""]
    for (setting,), recs in group_records(records, [_setting]).items():
        protocol, data = setting
        devices = sorted({str(r.get("device", "?")) for r in recs})
        lines += [f"## {protocol} on {data}", "", f"Device: {', '.join(devices)}.", ""]
        groups: Dict[str, List[Record]] = {}
        for (label,), rs in group_records(recs, [lambda r: method_label(record_config(r))]).items():
            groups[label] = rs
        rows, b1, bb, vl = [], [], [], []
        for label, rs in groups.items():
            ok = [r for r in rs if r.get("status", "ok") == "ok" and not r.get("diverged")]
            sums = [run_summary(r) for r in ok]
            diverged = sum(1 for r in rs if r.get("diverged") or r.get("status") == "diverged")
            errors = sum(1 for r in rs if r.get("status") == "error")
            b1.append(_mean([s["bleu_1"] for s in sums]))
            bb.append(_mean([s["bleu_best"] for s in sums]))
            vl.append(_mean([s["valid_loss"] for s in sums]))
            runs = f"{len(rs)}" + (f" ({diverged} diverged)" if diverged else "") + (f" ({errors} error)" if errors else "")
            rows.append([
                label,
                mean_std([s["bleu_1"] for s in sums], 2),
                mean_std([s["bleu_best"] for s in sums], 2),
                mean_std([s["valid_loss"] for s in sums], 3),
                mean_std([s["epochs"] for s in sums], 0),
                mean_std([s["train_s"] for s in sums], 0),
                runs,
            ])
        for col, scores, higher in ((1, b1, True), (2, bb, True), (3, vl, False)):
            cells = bold_best([r[col] for r in rows], scores, higher)
            for r, c in zip(rows, cells):
                r[col] = c
        lines += [markdown_table(
            ["Method", "BLEU_1", "BLEU_best", "valid loss (last)", "epochs", "train s", "runs"], rows
        ), ""]
        xavier = next((rs for label, rs in groups.items() if label == "xavier"), None)
        if xavier:
            base = [run_summary(r) for r in xavier if not r.get("diverged") and r.get("status", "ok") == "ok"]
            ref = {k: _mean([s[k] for s in base]) for k in ("valid_loss", "bleu_best", "train_s")}
            ratio_rows = []
            for label, rs in groups.items():
                sums = [run_summary(r) for r in rs if not r.get("diverged") and r.get("status", "ok") == "ok"]
                cells = [label]
                for k in ("valid_loss", "bleu_best", "train_s"):
                    m = _mean([s[k] for s in sums])
                    cells.append(f"{m / ref[k]:.3f}" if m is not None and ref[k] else "—")
                ratio_rows.append(cells)
            lines += ["Ratios against Xavier (same protocol, corpus and epochs; mean over seeds):", "",
                      markdown_table(["Method", "valid loss", "BLEU_best", "train seconds"], ratio_rows), ""]
        stem = f"translation_{protocol}_{data}".replace("/", "_")
        for key, ylabel, suffix in (("bleu", "BLEU (sacrebleu)", "bleu"), ("valid_loss", "validation NLL / token", "loss")):
            path = _curves_plot(groups, key, ylabel, out / f"{stem}_{suffix}.png")
            if path is not None:
                lines += [f"![{ylabel} per epoch]({path.name})", ""]
    return "\n".join(lines) + "\n"
