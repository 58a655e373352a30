"""``emergeinit demo``: the emergence init where it matters, with Kaiming beside it, on real data.

The demo runs one setting of the sensitivity map (configs/sensitivity.yaml) on the CPU in a few
minutes: :data:`DEMO_SPEC`, the same grid as configs/demo.yaml (a test keeps them equal). It prints
the accuracy table, each init's seed-paired difference from Kaiming with its 95% interval and its
failed runs, and one plain sentence per init saying what those numbers show; it writes the full
report and plots. Runs go through the runner, so a second call resumes (``--fresh`` starts over)
and ``emergeinit report`` reads its results too. ``--config FILE`` runs any other grid as the demo
(e.g. the cell of the map with the largest effect, once the full map has run).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

__all__ = ["add_arguments", "main", "DEMO_SPEC", "demo_spec", "describe"]

# The same grid as configs/demo.yaml (a test keeps the two equal). The setting: ResNet-20 (widths
# 8/16/32) without BN on Fashion-MNIST 16×16, the table1 protocol with GradInit's code's init as the
# base, 100 steps (Acc_1 on 2000 test images); Kaiming vs the normalized emergence init, global at
# α = 2 and α = 5, and blockwise at α = 5. Chosen from the map's sizing subset
# (results/sensitivity_sizing.jsonl, 3 seeds): its largest effect, a failure (global α = 5: every
# seed at chance, −36 points), with the blockwise scope halving the damage (docs/harness.md, "Demo").
# Last, ``alpha: auto`` (issue 14): the one call meant never to start worse than the base; its probe
# budget is 5% of a real epoch (469 steps of batch 128), and the demo prints what it picked per seed.
DEMO_SPEC: Dict[str, Any] = {
    "task": "image",
    "protocol": "table1",
    "defaults": {"dataset": "fashion-mnist-16", "epochs": 1, "max_epoch_steps": 100, "test_limit": 2000,
                 "crop_padding": 2, "cutout": 8, "model": "resnet20", "model_options": {"widths": [8, 16, 32]}},
    "grid": {"seed": [0, 1, 2, 3, 4]},
    "cells": [
        {"init": "kaiming"},
        {"init": "emergence", "init_options.schedule": "normalized", "init_options.scope": "global",
         "init_options.alpha": [2.0, 5.0]},
        {"init": "emergence", "init_options.schedule": "normalized", "init_options.scope": "blockwise",
         "init_options.alpha": 5.0},
        {"init": "emergence", "init_options.alpha": "auto", "init_options.epoch_steps": 469},
    ],
}


def demo_spec(seeds: int = 0) -> Dict[str, Any]:
    """:data:`DEMO_SPEC`, with seeds 0..seeds-1 instead of its own when ``seeds`` > 0."""
    spec = copy.deepcopy(DEMO_SPEC)
    if seeds > 0:
        spec["grid"]["seed"] = list(range(seeds))
    return spec


def describe(delta: Any) -> str:
    """One plain sentence on a row's seed-paired difference from Kaiming (a report ``Delta``)."""
    mean, lo, hi = delta.interval
    counts = delta.counts
    runs = sum(counts.values())
    bad = counts.get("failed", 0) + counts.get("diverged", 0)
    fails = f"; {bad} of its {runs} runs failed to train or diverged" if bad else ""
    if mean is None:
        return f"{delta.row}: no seed with a result in both rows{fails}."
    if delta.diffs and all(d == 0 for d in delta.diffs):
        return f"{delta.row}: the same Acc_1 as Kaiming in all {len(delta.diffs)} seeds{fails}."
    wins = sum(d > 0 for d in delta.diffs)
    head = f"{delta.row}: {mean:+.1f} points against Kaiming (higher in {wins} of {len(delta.diffs)} seeds"
    if lo is None:
        return f"{head}; one pair, no interval){fails}."
    if lo > 0:
        verdict = "a gain these seeds establish"
    elif hi < 0:
        verdict = "a loss these seeds establish"
    else:
        verdict = "not settled by these seeds: the interval holds 0"
    return f"{head}; 95% interval [{lo:+.1f}, {hi:+.1f}]): {verdict}{fails}."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for results.jsonl, report and plots")
    parser.add_argument("--config", help="run this grid file instead of the built-in demo grid")
    parser.add_argument("--seeds", type=int, default=0, help="seeds 0..N-1 instead of the grid's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every run (dotted for nested)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST (needs internet)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: small nets gain little from more, and on a busy "
                             "machine extra threads oversubscribe the cores; 0: torch's default)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier demo results in --out")
    parser.add_argument("--no-progress", action="store_true")


def _configs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from emergeinit.bench.grid import apply_sets, expand_grid, load_grid

    configs = load_grid(args.config) if args.config else expand_grid(demo_spec(args.seeds))
    if args.config and args.seeds > 0:
        configs = [c for c in configs if int(c.get("seed", 0)) < args.seeds]
    sets = [f"device={args.device}"] + ([f"cpu_threads={args.threads}"] if args.threads else [])
    sets += ([f"data_dir={args.data_dir}"] if args.data_dir else []) + (["download=true"] if args.download else [])
    return apply_sets(configs, sets + list(args.set))


def _summary(records: List[Mapping[str, Any]]) -> str:
    from emergeinit.bench.plots import format_e
    from emergeinit.bench.report import image_cells, markdown_table, mean_std, paired_deltas

    cells = image_cells(records)
    deltas = {(d.row, d.col): d for d in paired_deltas(cells)}
    rows = []
    for (row, col), cell in cells.items():
        logs = cell.values("log10_e")
        counts = cell.counts()
        delta = deltas.get((row, col))
        rows.append([row, col, format_e(sum(logs) / len(logs)) if logs else "n/a", mean_std(cell.values("acc_1")),
                     "—" if delta is None else delta.text(),
                     ", ".join(f"{v} {k}" for k, v in counts.items() if v)])
    table = markdown_table(["Init", "Model", "E at init", "Acc_1 (%)", "Acc_1 − Kaiming, seed-paired [95%]",
                            "runs"], rows)
    picks = _auto_picks(records)
    return (table + "\n\n" + "\n".join(f"- {describe(d)}" for d in deltas.values())
            + (f"\n- alpha: auto picked, per seed: {picks}." if picks else ""))


def _auto_picks(records: List[Mapping[str, Any]]) -> str:
    """What ``alpha: auto`` chose in each seed's run, e.g. ``seed 0: the base (α = 1)``."""
    from emergeinit.bench.auto_report import picked_text

    runs = sorted((int(r["config"].get("seed", 0)), r) for r in records
                  if (r["config"].get("init_options") or {}).get("alpha") == "auto")
    return "; ".join(f"seed {seed}: {picked_text(r)}" for seed, r in runs)


def main(args: argparse.Namespace) -> int:
    from emergeinit.bench.config import resolve_config, run_id
    from emergeinit.bench.records import latest_records, read_records, record_id
    from emergeinit.bench.report import image_report
    from emergeinit.bench.runner import run_grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if args.fresh and results.exists():
        results.unlink()
    configs = _configs(args)
    t0 = time.perf_counter()
    counts = run_grid(configs, results, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    ids = {run_id(resolve_config(c)) for c in configs}
    records = [r for r in latest_records(read_records(results)) if record_id(r) in ids]
    errors = [r for r in records if r["status"] == "error"]
    for r in errors:
        print(f"run {r['id']} failed: {r['error']}")
    first = resolve_config(configs[0])
    seeds = sorted({int(c.get("seed", 0)) for c in configs})
    print(f"\n{first['protocol']} protocol on {first['dataset']}, {len(seeds)} seeds; E at init: "
          f"10^(mean log10 E) over seeds. Acc_1: test accuracy after the first measured epoch"
          + (f" ({first['max_epoch_steps']} steps)" if first.get("max_epoch_steps") else "") + ".\n")
    print(_summary(records))
    image_report(records, out)
    print(f"\n{counts['run']} runs now, {counts['skipped']} reused from {results}; {wall:.0f} s. "
          f"Report and plots in {out}/ (image_report.md, fig2_loss_emergence.png, active_fraction.png)")
    return 1 if errors else 0
