"""A training epoch of the harness with its speed settings against a plain eager float32 loop of the
same model, data and optimizer, side by side in one process; the ratio is printed.

The plain loop is what one writes without the harness: shuffle, the same batched augmentation,
forward, cross-entropy, backward, clip (nets without BN), SGD step, the lr set per step. The
harness epoch is ``emergeinit.bench.image.train_epoch`` under the given config keys (on CUDA by
default bf16 autocast, channels_last, torch.compile with CUDA graphs, the fused optimizer, cuDNN
autotuning) on the module a compiled run trains (one per shape, weights copied in). Each side
first runs one untimed warm-up epoch (compilation, graph capture, cuDNN autotuning: printed, and
paid once per worker process and shape in a grid); the timed epochs then alternate
plain / harness, both restarting from one initial state. Evaluation of the test set is timed the
same way (the harness in ``eval_batch_size`` batches under its settings; plain: fp32, 1000).

    python benchmarks/bench_gpu_epoch.py --model vgg19                 # on a GPU: the Table-1 settings
    python benchmarks/bench_gpu_epoch.py --model resnet110 --data-dir data/fashion-mnist
    python benchmarks/bench_gpu_epoch.py --device cpu --model resnet20 --train-limit 512   # CPU check

Goal (issue 12): harness / plain <= 0.5 on an H200 for VGG-19 and ResNet-110. On CPU the default
harness settings are eager ones, so the ratio there is the harness's own overhead (about 1).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping

import torch
import torch.nn.functional as F

from emergeinit.bench import augment
from emergeinit.bench.config import has_batch_norm, resolve_config
from emergeinit.bench.data import DatasetError, ImageData, load_dataset
from emergeinit.bench.grid import parse_assignment
from emergeinit.bench.image import (_training_module, build_image_model, evaluate, lr_lambda, make_optimizer,
                                    subset, train_epoch)
from emergeinit.bench.loop import pick_device, run_settings

GPU_SETTINGS = {"amp": True, "channels_last": True, "compile": "reduce-overhead", "optimizer_impl": "fused",
                "cudnn_benchmark": True, "eval_batch_size": 5000}


def plain_epoch(model: torch.nn.Module, data: ImageData, optimizer: torch.optim.Optimizer,
                config: Mapping[str, Any], lr_at: Callable[[int], float], generator: torch.Generator) -> None:
    """The loop one writes by hand: fp32, eager, one step per batch."""
    model.train()
    n, bs = data.train_x.shape[0], int(config["batch_size"])
    perm = torch.randperm(n, device=data.train_x.device, generator=generator)
    params = list(model.parameters())
    for i, idx in enumerate(perm.split(bs)):
        x = augment.random_crop(data.train_x[idx], int(config["crop_padding"]), generator)
        if config["flip"]:
            x = augment.random_flip(x, generator)
        x = augment.cutout(data.normalize(x), int(config["cutout"]), generator)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        loss = F.cross_entropy(model(x), data.train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["clip_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, float(config["clip_grad_norm"]))
        optimizer.step()


@torch.no_grad()
def plain_eval(model: torch.nn.Module, data: ImageData) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=data.test_x.device)
    for i in range(0, data.test_x.shape[0], 1000):
        out = model(data.normalize(data.test_x[i:i + 1000]))
        correct += (out.argmax(1) == data.test_y[i:i + 1000]).sum()
    return 100.0 * correct.item() / data.test_x.shape[0]


def synthetic(n_train: int, n_test: int, device: torch.device) -> ImageData:
    """Random 32×32×3 uint8 images and labels (where no dataset is at hand): speed only."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    return ImageData("synthetic", x[:n_train].to(device), y[:n_train].to(device), x[n_train:].to(device),
                     y[n_train:].to(device), mean.to(device), std.to(device), 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: vgg19 on CUDA, resnet20 on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: the Debian one)")
    ap.add_argument("--synthetic", action="store_true", help="random images instead of Fashion-MNIST-32")
    ap.add_argument("--train-limit", type=int, default=None, help="default: all on CUDA, 512 on CPU")
    ap.add_argument("--test-limit", type=int, default=None, help="default: all on CUDA, 512 on CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="harness config keys (default on CUDA: " + ", ".join(f"{k}={v}" for k, v in GPU_SETTINGS.items())
                    + "; on CPU: none, i.e. eager)")
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("vgg19" if cuda else "resnet20")
    small = None if cuda else 512
    train_limit = args.train_limit if args.train_limit is not None else small
    test_limit = args.test_limit if args.test_limit is not None else small
    settings: Dict[str, Any] = dict(GPU_SETTINGS) if cuda else {}
    settings.update(parse_assignment(s) for s in args.set)
    base = {"protocol": "table1", "model": model_name, "dataset": "fashion-mnist-32", "device": str(device)}
    plain_cfg = resolve_config(base)
    harness_cfg = resolve_config({**base, **settings})

    if args.synthetic:
        data = synthetic(train_limit or 50000, test_limit or 10000, device)
    else:
        try:
            data = load_dataset("fashion-mnist-32", args.data_dir, device=device)
        except DatasetError as err:
            raise SystemExit(f"{err}\n(or pass --synthetic)")
    data = subset(data, {"train_limit": train_limit, "test_limit": test_limit})
    torch.manual_seed(0)
    model0 = build_image_model(plain_cfg, data).to(device)
    steps = math.ceil(data.train_x.shape[0] / plain_cfg["batch_size"])
    factor = lr_lambda(plain_cfg, steps)

    def plain_run(seed: int) -> Dict[str, float]:
        model = copy.deepcopy(model0)
        opt = make_optimizer(model, plain_cfg)
        gen = torch.Generator(device=device).manual_seed(seed)
        t = _timed(cuda, lambda: plain_epoch(model, data, opt, plain_cfg, lambda s: 0.1 * factor(s), gen))
        e = _timed(cuda, lambda: plain_eval(model, data))
        return {"train": t, "eval": e}

    def harness_run(seed: int) -> Dict[str, float]:
        model = copy.deepcopy(model0)
        if harness_cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        model = _training_module(model, harness_cfg)  # what image.run trains: one module per shape
        opt = make_optimizer(model, harness_cfg)
        gen = torch.Generator(device=device).manual_seed(seed)
        with run_settings(harness_cfg):
            t = _timed(cuda, lambda: train_epoch(model, data, opt, harness_cfg, lr_factor=factor, step0=0,
                                                 generator=gen))
            e = _timed(cuda, lambda: evaluate(model, data, harness_cfg))
        return {"train": t, "eval": e}

    warm = {"plain": plain_run(0), "harness": harness_run(0)}
    times: Dict[str, List[Dict[str, float]]] = {"plain": [], "harness": []}
    for r in range(1, args.repeats + 1):
        times["plain"].append(plain_run(r))
        times["harness"].append(harness_run(r))

    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{model_name} on {data.name}: {data.train_x.shape[0]} train / {data.test_x.shape[0]} test images, "
          f"batch {plain_cfg['batch_size']}, {steps} steps, {name}, torch {torch.__version__}")
    print(f"harness settings: {settings or 'eager (defaults)'}; plain: eager fp32")
    print(f"warm-up epoch (compile, graphs, autotune): plain {warm['plain']['train']:.2f} s, "
          f"harness {warm['harness']['train']:.2f} s")
    for part in ("train", "eval"):
        p = [t[part] for t in times["plain"]]
        h = [t[part] for t in times["harness"]]
        pairs = statistics.median(b / a for a, b in zip(p, h))
        print(f"{part:5s}: plain {statistics.median(p):7.3f} s  harness {statistics.median(h):7.3f} s  "
              f"ratio harness/plain = {statistics.median(h) / statistics.median(p):.3f} (medians), "
              f"{pairs:.3f} (median of {len(p)} back-to-back pairs)")
    print("goal on an H200: train ratio <= 0.5")


def _timed(cuda: bool, fn: Callable[[], Any]) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
