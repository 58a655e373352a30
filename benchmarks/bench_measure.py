"""Side-by-side timings for measuring emergence (a script, not a test: machines are noisy).

1. ``measure_emergence`` on a VGG-19 batch against a plain forward of the same batch
   (goal: ratio <= 1.25; both under torch.no_grad, eval mode, same threads);
2. the layer graph of ResNet-110 (fx trace) and its E in log space (goal: well under a second).

    .venv/bin/python benchmarks/bench_measure.py [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from emergeinit import layer_graph, layered_emergence, measure_emergence
from emergeinit.models import build_model


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (the least disturbed run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _side_by_side(a, b, repeats: int):
    """Time ``a`` and ``b`` alternately so that drift in machine load hits both alike.

    Returns wall (fastest a, fastest b, median per-round ratio b/a) and the same median ratio in
    process CPU time, which other processes on a shared machine disturb less."""
    a(), b()
    wall = {id(a): [], id(b): []}
    cpu = {id(a): [], id(b): []}
    for _ in range(repeats):
        for fn in (a, b):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[id(fn)].append(time.perf_counter() - t)
            cpu[id(fn)].append(time.process_time() - c)
    ratio = statistics.median(y / x for x, y in zip(wall[id(a)], wall[id(b)]))
    cpu_ratio = statistics.median(y / x for x, y in zip(cpu[id(a)], cpu[id(b)]))
    return min(wall[id(a)]), min(wall[id(b)]), ratio, cpu_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")

    vgg = build_model("vgg19").eval()
    x = torch.randn(args.batch, 3, 32, 32)

    def forward() -> None:
        with torch.no_grad():
            vgg(x)

    f, m, r, c = _side_by_side(forward, lambda: measure_emergence(vgg, x), args.repeats)
    print(f"VGG-19, batch {args.batch}: forward {f * 1e3:.1f} ms, measure_emergence {m * 1e3:.1f} ms "
          f"(fastest of {args.repeats}); ratio of fastest {m / f:.3f}, median per-round ratio "
          f"{r:.3f} wall, {c:.3f} CPU time (goal <= 1.25)")

    resnet = build_model("resnet110")
    graph_time = _best(lambda: layer_graph(resnet), args.repeats)
    graph = layer_graph(resnet)
    half = [n.width // 2 for n in graph.nodes]
    e_time = _best(lambda: graph.emergence(half, log=True), args.repeats)
    log_e = graph.emergence(half, log=True)
    chain = layered_emergence(graph.widths, half, log=True)
    print(f"ResNet-110 layer graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges "
          f"({sum(e.kind == 'identity' for e in graph.edges)} identity); "
          f"trace {graph_time * 1e3:.1f} ms, log E {e_time * 1e3:.1f} ms, total {(graph_time + e_time) * 1e3:.1f} ms")
    print(f"  half the nodes active: log10 E = {log_e / math.log(10):.3f} on the graph, "
          f"{chain / math.log(10):.3f} by eq 2 on the same widths (skips add paths)")
    rx = torch.randn(args.batch, 3, 32, 32)
    f, m, r, c = _side_by_side(lambda: _no_grad(resnet, rx), lambda: measure_emergence(resnet, rx), args.repeats)
    print(f"ResNet-110, batch {args.batch}: forward {f * 1e3:.1f} ms, measure_emergence {m * 1e3:.1f} ms; "
          f"ratio of fastest {m / f:.3f}, median per-round ratio {r:.3f} wall, {c:.3f} CPU time")


def _no_grad(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        model(x)


if __name__ == "__main__":
    main()
