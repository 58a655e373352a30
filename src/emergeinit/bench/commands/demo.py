"""``emergeinit demo``: the paper's MLP on real Fashion-MNIST, Xavier vs Kaiming vs emergence
(both schedules), a few epochs and seeds on the CPU; prints E per init and the accuracy table,
writes the plots. Runs go through the runner, so ``emergeinit report`` reads its results too and
a second call resumes (``--fresh`` starts over)."""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any, Dict

__all__ = ["add_arguments", "main", "DEMO_SPEC", "demo_spec"]

# The same grid as configs/demo.yaml (a test keeps the two equal).
DEMO_SPEC: Dict[str, Any] = {
    "task": "image",
    "protocol": "seed",  # the paper's text: batch 128, constant lr 1e-3 (Adam)
    "defaults": {"model": "mlp", "dataset": "fashion-mnist", "epochs": 3},
    "grid": {"seed": [0, 1, 2]},
    "cells": [
        {"init": "xavier"},
        {"init": "kaiming"},
        {"init": "emergence", "init_options.alpha": 2.0,
         "init_options.schedule": ["literal", "normalized"]},
    ],
}


def demo_spec(epochs: int = 3, seeds: int = 3, alpha: float = 2.0) -> Dict[str, Any]:
    spec = copy.deepcopy(DEMO_SPEC)
    spec["defaults"]["epochs"] = epochs
    spec["grid"]["seed"] = list(range(seeds))
    spec["cells"][2]["init_options.alpha"] = alpha
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for results.jsonl, report and plots")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=2.0, help="emergence α (the paper: 2 at lr 1e-3)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST (needs internet)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: a small MLP gains little from more, and on a busy "
                             "machine extra threads oversubscribe the cores; 0: torch's default)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier demo results in --out")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from emergeinit.bench.config import resolve_config, run_id
    from emergeinit.bench.grid import apply_sets, expand_grid
    from emergeinit.bench.plots import format_e
    from emergeinit.bench.records import init_label, latest_records, read_records, record_id
    from emergeinit.bench.report import image_cells, image_report, markdown_table, mean_std
    from emergeinit.bench.runner import run_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if args.fresh and results.exists():
        results.unlink()
    sets = [f"device={args.device}"] + ([f"cpu_threads={args.threads}"] if args.threads else []) + ([f"data_dir={args.data_dir}"] if args.data_dir else [])
    sets += ["download=true"] if args.download else []
    configs = apply_sets(expand_grid(demo_spec(args.epochs, args.seeds, args.alpha)), sets)
    t0 = time.perf_counter()
    counts = run_grid(configs, results, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    ids = {run_id(resolve_config(c)) for c in configs}
    records = [r for r in latest_records(read_records(results)) if record_id(r) in ids]
    errors = [r for r in records if r["status"] == "error"]
    for r in errors:
        print(f"run {r['id']} failed: {r['error']}")
    cells = image_cells(records)
    rows = []
    for (label, _model), c in cells.items():
        finals = [statistics.mean([e["test_acc"] for e in r["epochs"] if e["epoch"] == args.epochs])
                  for r in records if init_label(r["config"]) == label and r["status"] != "error"
                  and any(e["epoch"] == args.epochs for e in r["epochs"])]
        logs = c["log10_e"]
        rows.append([label, format_e(statistics.mean(logs)) if logs else "n/a",
                     mean_std(c["acc_1"]), mean_std(finals), c["n"], c["diverged"]])
    print(f"\nMLP on Fashion-MNIST, seed protocol (Adam, lr 1e-3, batch 128), {args.epochs} epochs, "
          f"{args.seeds} seeds; E at init: 10^(mean log10 E) over seeds")
    print(markdown_table(["Init", "E at init", "Acc_1 (%)", f"Acc after epoch {args.epochs} (%)", "n",
                          "diverged"], rows))
    image_report(records, out)
    print(f"\n{counts['run']} runs now, {counts['skipped']} reused from {results}; {wall:.0f} s. "
          f"Report and plots in {out}/ (image_report.md, fig2_loss_emergence.png, fig3_mlp.png, "
          "active_fraction.png)")
    return 1 if errors else 0
