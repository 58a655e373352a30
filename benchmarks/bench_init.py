"""Cost of the emergence-promoting initialization relative to the base init it starts from.

    python benchmarks/bench_init.py [--width 4096] [--layers 6] [--repeats 5]

Times, side by side in one run on one model (≥100M parameters by default; interleaved repeats,
medians): (a) Kaiming-normal init of every weight layer alone (``torch.nn.init``), (b)
``emergence_init_(base="kaiming")`` — plan (trace) + Kaiming with the factor folded into the draw,
(c) Kaiming followed by a separate scaling pass (``apply_plan_`` on the drawn weights), for
reference. Prints the ratios b/a (goal ≤ 1.10) and c/a.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import emergeinit as ei


def build(width: int, layers: int) -> nn.Module:
    mods = []
    for i in range(layers):
        mods += [nn.Linear(width, width, bias=False, device="meta")]
        if i < layers - 1:
            mods.append(nn.ReLU())
    model = nn.Sequential(*mods)
    return model.to_empty(device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = build(args.width, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    example = torch.randn(2, args.width)
    plan = ei.plan_emergence(model, alpha=2.0, schedule="normalized", example_input=example)

    def base_only() -> None:
        for w in weights:
            nn.init.kaiming_normal_(w, nonlinearity="relu")

    def emergence() -> None:
        ei.emergence_init_(model, alpha=2.0, schedule="normalized", base="kaiming", example_input=example)

    def base_then_scale() -> None:
        base_only()
        ei.apply_plan_(model, plan)

    runs = {"base": base_only, "emergence": emergence, "base+separate scaling": base_then_scale}
    times = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {args.layers} x Linear({args.width}, {args.width}), {n_params / 1e6:.1f}M parameters, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} repeats (median)")
    for k, v in med.items():
        print(f"  {k:<24} {v * 1e3:9.1f} ms   ratio to base {v / med['base']:.3f}")


if __name__ == "__main__":
    main()
