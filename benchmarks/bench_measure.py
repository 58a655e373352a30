"""Side-by-side timings for measuring emergence (a script, not a test: machines are noisy).

For each model and batch size, ``measure_emergence`` against a plain forward of the same batch
(both under torch.no_grad, eval mode, same threads), timed alternately so that drift in machine
load hits both alike, on

- a ResNet-50-sized net (torchvision's Bottleneck layout 3-4-6-3, widths 64..2048, 224x224) and a
  ViT-sized net (ViT-S/16: 12 blocks, width 384, 6 heads, MLP 1536, 224x224), both written here
  with torch only (no torchvision);
- the paper's VGG-19 and ResNet-110 (CIFAR, 32x32).

Printed per row: the forward's time, the first call of ``measure_emergence`` on a fresh model
(it traces the model) and later calls (the trace is cached), each as a ratio to the forward
(median per round, wall clock; process CPU time beside it). Goal: at most 1.5x at batch 8 on
the later calls. Then the layer graph of ResNet-110 and E on it (log space).

    .venv/bin/python benchmarks/bench_measure.py [--batches 1 8] [--repeats 5] [--threads 2]
        [--models resnet50 vit_s16 vgg19 resnet110]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from emergeinit import layer_graph, layered_emergence, measure_emergence
from emergeinit.models import build_model


# ---------------------------------------------------------------------- models written here

class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1, 3x3 (stride), 1x1 x4, each conv + BN; projection shortcut where
    the shape changes; ReLU after the residual add."""

    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, mid * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != mid * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, mid * 4, 1, stride, bias=False), nn.BatchNorm2d(mid * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet50(nn.Module):
    """A ResNet-50 (25.6M parameters with 1000 classes) in torchvision's layout."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(cin, mid, stride if i == 0 else 1))
                cin = mid * 4
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Attention(nn.Module):
    """ViT self-attention: one fused qkv Linear, F.scaled_dot_product_attention, an output Linear."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """A ViT-S/16 by default (22M parameters with 1000 classes): patch conv, class token, learned
    position embedding, pre-LN blocks, LayerNorm, a Linear head on the class token."""

    def __init__(self, image: int = 224, patch: int = 16, dim: int = 384, depth: int = 12, heads: int = 6,
                 hidden: int = 1536, classes: int = 1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


#: name -> (constructor, image side)
MODELS: Dict[str, Tuple[Callable[[], nn.Module], int]] = {
    "resnet50": (ResNet50, 224),
    "vit_s16": (ViT, 224),
    "vgg19": (lambda: build_model("vgg19"), 32),
    "resnet110": (lambda: build_model("resnet110"), 32),
}


# ------------------------------------------------------------------------------------- timing

def _best(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (the least disturbed run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _timed(fn: Callable[[], object]) -> Tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def _side_by_side(a: Callable[[], object], b: Callable[[], object], repeats: int) -> Tuple[float, float, float, float]:
    """Time ``a`` and ``b`` alternately so that drift in machine load hits both alike.

    Returns wall (fastest a, fastest b, median per-round ratio b/a) and the same median ratio in
    process CPU time, which other processes on a shared machine disturb less."""
    a(), b()
    wall: Dict[int, List[float]] = {id(a): [], id(b): []}
    cpu: Dict[int, List[float]] = {id(a): [], id(b): []}
    for _ in range(repeats):
        for fn in (a, b):
            w, c = _timed(fn)
            wall[id(fn)].append(w)
            cpu[id(fn)].append(c)
    ratio = statistics.median(y / x for x, y in zip(wall[id(a)], wall[id(b)]))
    cpu_ratio = statistics.median(y / x for x, y in zip(cpu[id(a)], cpu[id(b)]))
    return min(wall[id(a)]), min(wall[id(b)]), ratio, cpu_ratio


def compare(name: str, batch: int, repeats: int) -> Dict[str, float]:
    """Forward vs measure_emergence on one model and batch: a fresh model's first call (the trace
    included) against a forward timed just before it (median of three fresh models), then later
    calls alternating with forwards (:func:`_side_by_side`)."""
    make, side = MODELS[name]
    x = torch.randn(batch, 3, side, side)
    first_ratios: List[float] = []
    measure_emergence(make().eval(), x)  # one-time costs of the process (lazy imports) billed to no row
    for _ in range(3):  # a fresh model each time: its first call traces it
        torch.manual_seed(0)
        model = make().eval()
        _no_grad(model, x)  # warm-up: allocator, one-time kernel selection
        f, _ = _timed(lambda: _no_grad(model, x))
        m, _ = _timed(lambda: measure_emergence(model, x))
        first_ratios.append(m / f)
    f, m, ratio, cpu_ratio = _side_by_side(lambda: _no_grad(model, x), lambda: measure_emergence(model, x), repeats)
    return {"forward_ms": f * 1e3, "measure_ms": m * 1e3, "first": statistics.median(first_ratios),
            "later": ratio, "later_cpu": cpu_ratio}


def _no_grad(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print("| model | batch | forward ms | measure ms (later calls) | first call / forward | "
          "later / forward (wall) | later / forward (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batches:
            r = compare(name, batch, args.repeats)
            print(f"| {name} | {batch} | {r['forward_ms']:.1f} | {r['measure_ms']:.1f} | {r['first']:.2f} | "
                  f"{r['later']:.2f} | {r['later_cpu']:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")

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


if __name__ == "__main__":
    main()
