"""What the initializations cost, side by side in one run (a script, not a test: machines are noisy).

    .venv/bin/python benchmarks/bench_baselines.py [--models vgg19 resnet110] [--batch 32] [--iters 3]
        [--threads 1] [--methods-table] [--json out.json]

1. **Second-order baselines against a training step** (the default): for each model, one training
   step (forward, backward, SGD-with-momentum step; train mode; same batch) is timed before and
   after each method, and the method's seconds per iteration are its marginal cost: a run of
   1 + ``--iters`` iterations minus a run of 1, divided by ``--iters`` (set-up and the first
   iteration's one-time costs cancel). Rows: MetaInit; GradInit with only constraint steps
   (gamma = 0: gradient, then the gradient of its norm, a Hessian-vector product), with only
   objective steps (gamma = inf: gradient, then the loss after the anticipated step and its
   gradient) and with the default gamma = 1 (the mix the model gives; the record says which).
   "at paper count" multiplies seconds per iteration by 500 (MetaInit) or 390 (GradInit): an
   extrapolation, not a measurement.
2. ``--methods-table``: every method once on a fresh copy of the first model (same seed), with
   the passes its record counts (forward / backward / higher-order backward) and seconds, MetaInit
   and GradInit for ``--iters`` iterations; every method first runs once on a tiny net, so that
   lazy imports are billed to none.

Inputs are N(0, 1) images with random labels: the cost of these methods does not depend on the
pixel values. T-Fixup is for transformers and is not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import emergeinit as ei
from emergeinit.baselines.gradinit import GRADINIT_LR
from emergeinit.models import build_model, model_input_shape

PAPER_ITERS = {"metainit": 500, "gradinit": 390}


# ------------------------------------------------------------------ against a training step

def training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD step (momentum 0.9, weight decay 1e-4, as the Table-1 protocol) in train mode."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _run(name: str, method: str, options: Dict[str, Any], iters: int, seed: int) -> Tuple[float, Any]:
    torch.manual_seed(seed)
    model = build_model(name)
    key = "steps" if method == "metainit" else "iters"
    record = ei.initialize(model, method, **{**options, key: iters})
    return record.wall_seconds, record


def per_iteration(name: str, x: torch.Tensor, y: torch.Tensor, iters: int, seed: int) -> List[Dict[str, Any]]:
    """Each second-order method's marginal seconds per iteration against a training step of the
    same model and batch, timed around it."""
    torch.manual_seed(seed)
    step = training_step(build_model(name), x, y)
    step()  # warm-up: allocator, kernel selection
    arch = name if name in GRADINIT_LR else None
    plans = [
        ("metainit", "metainit", dict(data=(x, y))),
        ("gradinit, constraint steps (gamma 0)", "gradinit", dict(data=(x, y), arch=arch, gamma=0.0)),
        ("gradinit, objective steps (gamma inf)", "gradinit", dict(data=(x, y), arch=arch, gamma=math.inf)),
        ("gradinit, default gamma 1", "gradinit", dict(data=(x, y), arch=arch)),
    ]
    rows = []
    for label, method, options in plans:
        before = _median_time(step, 3)
        one, _ = _run(name, method, options, 1, seed)
        more, record = _run(name, method, options, 1 + iters, seed)
        after = _median_time(step, 3)
        train = (before + after) / 2
        per = (more - one) / iters
        mix = ""
        if method == "gradinit":
            mix = f"{record.details['constraint_steps']} constraint / {record.details['objective_steps']} objective"
        rows.append({"model": name, "method": label, "train_step_s": train, "per_iteration_s": per,
                     "ratio": per / train, "paper_min": per * PAPER_ITERS[method] / 60, "steps": mix,
                     "passes": f"{record.forward_passes} / {record.backward_passes} / {record.hvp_passes}"})
        print(f"  {name}, {label}: train step {train:.3f} s, {per:.3f} s per iteration, {per / train:.2f}x "
              f"({mix or 'all steps alike'})", flush=True)
    return rows


def per_iteration_table(rows: List[Dict[str, Any]], iters: int) -> str:
    lines = ["| model | method | training step s | s / iteration | × training step | steps of the "
             f"{1 + iters}-iteration run | at paper count (extrapolated) |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['train_step_s']:.3f} | {r['per_iteration_s']:.3f} | "
                     f"{r['ratio']:.2f}× | {r['steps'] or 'alike'} | {r['paper_min']:.0f} min |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- every method's passes

def warm_up() -> None:
    """Run every method once on a tiny net, so that lazy imports are not billed to the first one."""
    tiny = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                       torch.nn.Linear(4 * 6 * 6, 10))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for method, options in [("emergence", dict(alpha=2.0, example_input=x)), ("kaiming", {}),
                            ("xavier", {}), ("lsuv", dict(data=x)),
                            ("metainit", dict(steps=1, input_shape=tuple(x.shape))),
                            ("gradinit", dict(data=(x, y), iters=1))]:
        ei.initialize(tiny(), method, **options)


def methods(name: str, x: torch.Tensor, y: torch.Tensor, iters: int, seed: int) -> List[Dict[str, Any]]:
    warm_up()
    plans: List[Tuple[str, Dict[str, Any], int]] = [
        ("emergence", dict(alpha=2.0), 1),
        ("kaiming", dict(mode="fan_out", classifier_std=0.01), 1),
        ("xavier", {}, 1),
        ("lsuv", dict(data=x), 1),
        ("metainit", dict(steps=iters, input_shape=tuple(x.shape)), iters),
        ("gradinit", dict(data=(x, y), iters=iters, arch=name if name in GRADINIT_LR else None),
         iters),
    ]
    rows = []
    for method, options, n in plans:
        torch.manual_seed(seed)
        model = build_model(name)
        record = ei.initialize(model, method, **options)
        rows.append({"method": method, "iterations": n, "record": record})
        print(f"  {method}: {record.forward_passes} fwd, {record.backward_passes} bwd, "
              f"{record.hvp_passes} hvp, {record.wall_seconds:.2f} s", flush=True)
    return rows


def methods_table(rows: List[Dict[str, Any]]) -> str:
    base = next(r["record"].wall_seconds for r in rows if r["method"] == "emergence")
    head = ("| method | iterations run | forward | backward | higher-order backward | seconds (measured) "
            "| s / iteration | × emergence | at paper count (extrapolated) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        rec, n = r["record"], r["iterations"]
        per = rec.wall_seconds / n
        paper = PAPER_ITERS.get(r["method"])
        extra = f"{paper} it ≈ {per * paper / 60:.1f} min" if paper else "—"
        iters = str(n) if paper else "—"
        lines.append(
            f"| {r['method']} | {iters} | {rec.forward_passes} | {rec.backward_passes} | {rec.hvp_passes} "
            f"| {rec.wall_seconds:.3f} | {per:.3f} | {rec.wall_seconds / base:.3g}× | {extra} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg19", "resnet110"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3, help="iterations timed beyond the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods-table", action="store_true", help="also every method's passes and seconds")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    out: Dict[str, Any] = {"per_iteration": [], "methods": {}}
    for name in args.models:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch, *model_input_shape(name), generator=g)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        out["per_iteration"] += per_iteration(name, x, y, args.iters, args.seed)
        if args.methods_table and name == args.models[0]:
            out["methods"][name] = methods(name, x, y, args.iters, args.seed)
    print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
    print(per_iteration_table(out["per_iteration"], args.iters))
    for name, rows in out["methods"].items():
        print(f"\n{name}, every method:\n")
        print(methods_table(rows))
    if args.json:
        for rows in out["methods"].values():
            for r in rows:
                r["record"] = r["record"].to_dict()
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
