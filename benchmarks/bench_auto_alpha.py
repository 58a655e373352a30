"""What ``choose_init`` costs against one training epoch, side by side, on real Fashion-MNIST.

For each of the paper's models (CPU sizes: VGG-19 at 1/8 width, ResNet-110 at 1/4 width, the MLP
as is), with the table1 optimizer (SGD 0.1, momentum 0.9, clip 1 without BN), batch 128:

- one epoch: a bare training loop over the 60,000 training images (469 steps), timed; with
  ``--epoch-steps N`` only N steps are timed and the epoch is N's time × 469 / N (said in the output);
- the probe: ``choose_init(model, batches, epoch_steps=469, budget=0.05)`` on the same batches,
  timed as a whole: deep copies, every candidate's plan and draw, and its training steps.

Printed per model: probe seconds, its steps, epoch seconds and the ratio probe / epoch (goal <=
0.05). Each model's probe and epoch run back to back, so they see the same machine load. The
first meta-device trace in a process imports torch's decomposition machinery (seconds, once, for
any emergence init): it is paid before the first model and printed on its own.

    .venv/bin/python benchmarks/bench_auto_alpha.py                        # all models, full epochs
    .venv/bin/python benchmarks/bench_auto_alpha.py --models mlp resnet110 --epoch-steps 100
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Dict, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import emergeinit as ei
from emergeinit.bench.data import load_dataset
from emergeinit.models.image import MLP, VGG, VGG19_CFG, CifarResNet

MODELS = {
    "mlp": (lambda: MLP(in_features=784), "fashion-mnist", False),
    "vgg19": (lambda: VGG([v if v == "M" else v // 8 for v in VGG19_CFG], batch_norm=False, in_channels=3),
              "fashion-mnist-32", False),
    "vgg19_bn": (lambda: VGG([v if v == "M" else v // 8 for v in VGG19_CFG], batch_norm=True, in_channels=3),
                 "fashion-mnist-32", True),
    "resnet110": (lambda: CifarResNet((18, 18, 18), batch_norm=False, widths=(4, 8, 16)), "fashion-mnist-32", False),
    "resnet110_bn": (lambda: CifarResNet((18, 18, 18), batch_norm=True, widths=(4, 8, 16)), "fashion-mnist-32", True),
}


def batches(data, batch_size: int, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(data.train_x.shape[0], generator=gen).split(batch_size):
            yield data.normalize(data.train_x[idx]), data.train_y[idx]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def epoch_seconds(model: nn.Module, stream, steps: int, clip: float) -> float:
    opt = sgd(model)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--epoch-steps", type=int, default=None, help="time only this many steps of the epoch")
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # once per process, the first meta-device trace of any emergence init imports torch's
    # decomposition machinery; pay it here, outside both timings, and show what it cost
    t0 = time.perf_counter()
    ei.plan_emergence(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), alpha=2.0)
    print(f"process warm-up (first meta trace): {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for name in args.models:
        make, dataset, bn = MODELS[name]
        data = load_dataset(dataset)
        full = math.ceil(data.train_x.shape[0] / 128)
        torch.manual_seed(0)
        model = make()
        clip = 0.0 if bn else 1.0
        t0 = time.perf_counter()
        choice = ei.choose_init(model, batches(data, 128, 1), epoch_steps=full, budget=args.budget,
                                optimizer=sgd, clip_grad_norm=clip or None)
        probe = time.perf_counter() - t0
        timed = min(full, args.epoch_steps or full)
        epoch = epoch_seconds(copy.deepcopy(model), batches(data, 128, 2), timed, clip) * full / timed
        rows.append((name, probe, choice.steps_run, epoch, timed, full, choice.chosen.label))
        print(f"{name}: probe {probe:.1f} s ({choice.steps_run} steps, chose {choice.chosen.label}); epoch "
              f"{epoch:.1f} s ({timed} of {full} steps timed); ratio {probe / epoch:.4f}", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), budget {args.budget}")
    print("| model | probe s | probe steps | epoch s | steps timed | probe / epoch | chose |")
    print("|---|---|---|---|---|---|---|")
    for name, probe, steps, epoch, timed, full, chose in rows:
        print(f"| {name} | {probe:.1f} | {steps} | {epoch:.1f} | {timed}/{full} | {probe / epoch:.4f} | {chose} |")


if __name__ == "__main__":
    main()
