"""Epoch time of the harness's training loop against a bare PyTorch loop, side by side.

Same model (fresh copy of one initial state for every epoch), same data already in memory, same
optimizer and batch size; the harness adds its own per-step work (lr schedule, the on-device
batch pipeline, loss bookkeeping, periodic divergence checks). Augmentation is off in both, so
the ratio is the harness's overhead alone. Epochs alternate bare / harness; medians are reported, and the median
ratio of back-to-back pairs (robust to load that drifts on a shared machine).

    .venv/bin/python benchmarks/bench_harness.py                     # MLP, Fashion-MNIST, 1 thread
    .venv/bin/python benchmarks/bench_harness.py --model resnet20 --train-limit 5000

Goal: ratio harness / bare <= 1.10.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F

from emergeinit.bench.config import resolve_config
from emergeinit.bench.data import load_dataset
from emergeinit.bench.image import build_image_model, lr_lambda, make_optimizer, subset, train_epoch


def bare_epoch(model, data, optimizer, batch_size, generator):
    model.train()
    n = data.train_x.shape[0]
    perm = torch.randperm(n, generator=generator)
    for i in range(math.ceil(n / batch_size)):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x = data.normalize(data.train_x[idx])
        loss = F.cross_entropy(model(x), data.train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dataset = "fashion-mnist" if args.model == "mlp" else "fashion-mnist-32"
    config = resolve_config({"protocol": "seed", "model": args.model, "dataset": dataset, "device": "cpu"})
    data = load_dataset(dataset)
    if args.train_limit:
        data = subset(data, {"train_limit": args.train_limit})
    torch.manual_seed(0)
    model0 = build_image_model(config, data)
    steps = math.ceil(data.train_x.shape[0] / config["batch_size"])
    factor = lr_lambda(config, steps)
    times = {"bare": [], "harness": []}
    for r in range(args.repeats):
        for kind in ("bare", "harness"):
            model = copy.deepcopy(model0)
            opt = make_optimizer(model, config)
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            if kind == "bare":
                bare_epoch(model, data, opt, config["batch_size"], gen)
            else:
                train_epoch(model, data, opt, config, lr_factor=factor, step0=0, generator=gen)
            times[kind].append(time.perf_counter() - t0)
    bare, harness = statistics.median(times["bare"]), statistics.median(times["harness"])
    print(f"{args.model} on {dataset}: {data.train_x.shape[0]} images, batch {config['batch_size']}, "
          f"{config['optimizer']}, {args.threads} thread(s), {args.repeats} epochs each")
    print(f"bare loop    {bare:7.2f} s/epoch  (all: {', '.join(f'{t:.2f}' for t in times['bare'])})")
    print(f"harness loop {harness:7.2f} s/epoch  (all: {', '.join(f'{t:.2f}' for t in times['harness'])})")
    pairs = [h / b for b, h in zip(times["bare"], times["harness"])]
    print(f"ratio harness / bare = {harness / bare:.3f} (medians); median of the {len(pairs)} "
          f"back-to-back pairs = {statistics.median(pairs):.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
