"""What each initialization costs on VGG-19 with a batch of 128, side by side with the emergence init.

    .venv/bin/python benchmarks/bench_baselines.py [--iters 2] [--batch 128] [--json out.json]

One run, one machine, every method on a fresh VGG-19 (same seed): passes through the network
(forward / first-order backward / higher-order backward) and wall seconds, as counted by the
methods' own :class:`emergeinit.InitRecord`. MetaInit and GradInit are run for ``--iters``
iterations, not their papers' 500 / 390: the table gives the seconds measured at that count and
the seconds per iteration; the column "at paper count" multiplies the two and is an
extrapolation, not a measurement. Inputs are N(0, 1) images with random labels: the cost of
these methods does not depend on the pixel values. T-Fixup is for transformers and is not run.
Every method runs once on a tiny net first, so that one-time lazy imports are billed to none.
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any, Dict, List, Tuple

import torch

import emergeinit as ei
from emergeinit.models import build_model, model_input_shape

PAPER_ITERS = {"metainit": 500, "gradinit": 390}


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


def run(iters: int, batch: int, seed: int) -> List[Dict[str, Any]]:
    warm_up()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *model_input_shape("vgg19"), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    plans: List[Tuple[str, Dict[str, Any], int]] = [
        ("emergence", dict(alpha=2.0), 1),
        ("kaiming", dict(mode="fan_out", classifier_std=0.01), 1),
        ("xavier", {}, 1),
        ("lsuv", dict(data=x), 1),
        ("metainit", dict(steps=iters, input_shape=tuple(x.shape)), iters),
        ("gradinit", dict(data=(x, y), iters=iters, arch="vgg19"), iters),
    ]
    rows = []
    for method, options, n in plans:
        torch.manual_seed(seed)
        model = build_model("vgg19")
        record = ei.initialize(model, method, **options)
        rows.append({"method": method, "iterations": n, "record": record})
        print(f"{method}: {record.forward_passes} fwd, {record.backward_passes} bwd, "
              f"{record.hvp_passes} hvp, {record.wall_seconds:.2f} s", flush=True)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
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
    parser.add_argument("--iters", type=int, default=2, help="MetaInit / GradInit iterations to run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the records here")
    args = parser.parse_args()
    print(f"VGG-19, batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}", flush=True)
    rows = run(args.iters, args.batch, args.seed)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r, "record": r["record"].to_dict()} for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
