"""``emergeinit measure``: the per-layer activity and emergence E of a model under an init.

    emergeinit measure --model vgg19 --init kaiming xavier emergence --data fashion-mnist
    emergeinit measure --model mypkg.nets:build --init none --data random --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # pixel statistics of the Fashion-MNIST training set
INITS = ("kaiming", "xavier", "emergence", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mlp",
                        help="built-in model (mlp, vgg19, vgg19_bn, resnet20, resnet110, ...) or package.module:factory")
    parser.add_argument("--init", nargs="+", default=["kaiming"], choices=INITS, metavar="INIT",
                        help=f"one or more of {', '.join(INITS)}; each measured on a fresh model from the same seed")
    parser.add_argument("--alpha", type=float, default=2.0, help="α of the emergence init (default 2)")
    parser.add_argument("--schedule", default="normalized", choices=("literal", "normalized"),
                        help="exponent schedule of the emergence init (default normalized)")
    parser.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "random"),
                        help="real Fashion-MNIST test images, or standard normal noise")
    parser.add_argument("--data-dir", default=FASHION_DIR, help=f"Fashion-MNIST IDX files (default {FASHION_DIR})")
    parser.add_argument("--batch", type=int, default=256, help="number of samples (default 256)")
    parser.add_argument("--input-shape", default=None,
                        help="shape of one sample as C,H,W or F (default: from the model)")
    parser.add_argument("--threshold", type=float, default=None, help="activity threshold (default: the library's)")
    parser.add_argument("--mode", default="count", choices=("count", "mean"),
                        help="a_i as mean active count per sample, or count of nodes active on average")
    parser.add_argument("--include-input", action="store_true", help="count the input as layer 0")
    parser.add_argument("--exclude-output", action="store_true", help="leave the logits out of E")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _fashion_images(data_dir: str, count: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images, normalized, shape (count, 1, 28, 28)."""
    from emergeinit.bench.data import read_idx

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            images = read_idx(path)[:count].float().div_(255.0)
            return ((images - FASHION_MEAN) / FASHION_STD).unsqueeze(1)
    raise FileNotFoundError(
        f"no Fashion-MNIST test images in {data_dir}: apt-get install dataset-fashion-mnist, "
        "or use --data random"
    )


def _fit(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Fashion-MNIST (N, 1, 28, 28) as the model wants it: flat 784, or C×32×32 padded/repeated."""
    shape = tuple(shape)
    if shape == (1, 28, 28):
        return images
    if shape == (784,):
        return images.flatten(1)
    if len(shape) == 3 and shape[1:] == (32, 32):
        padded = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-FASHION_MEAN / FASHION_STD)
        return padded.repeat(1, shape[0], 1, 1)
    raise ValueError(f"cannot feed Fashion-MNIST to inputs of shape {shape}; use --data random")


def _build(spec: str, seed: int) -> Tuple[nn.Module, Tuple[int, ...]]:
    """A built-in model by name, or ``package.module:factory`` called without arguments."""
    torch.manual_seed(seed)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        model = factory()
        from emergeinit.layers import infer_example_input

        return model, tuple(infer_example_input(model, batch=1).shape[1:])
    from emergeinit.bench.models import build_model, model_input_shape

    return build_model(spec), tuple(model_input_shape(spec))


def _inputs(args: argparse.Namespace, shape: Tuple[int, ...]) -> torch.Tensor:
    if args.data == "random":
        return torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    return _fit(_fashion_images(args.data_dir, args.batch), shape)


def main(args: argparse.Namespace) -> int:
    from emergeinit.probe import DEFAULT_THRESHOLD, measure_emergence

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    results: List[Dict[str, Any]] = []
    x = None
    for init in args.init:
        model, shape = _build(args.model, args.seed)
        if args.input_shape:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        if x is None:
            x = _inputs(args, shape)
        if init != "none":
            from emergeinit import initialize

            torch.manual_seed(args.seed)
            options = {"alpha": args.alpha, "schedule": args.schedule} if init == "emergence" else {}
            initialize(model, init, **options)
        report = measure_emergence(
            model, x, threshold=threshold, mode=args.mode,
            include_input=args.include_input, include_output=not args.exclude_output,
        )
        results.append({"model": args.model, "init": init, "data": args.data, **report.to_dict()})
        if not args.json:
            label = f"{args.model} · init {init}" + (f" (α={args.alpha:g}, {args.schedule})" if init == "emergence" else "")
            print(f"== {label} · {args.data} ×{args.batch}")
            print(report)
            print()
    if args.json:
        json.dump(results if len(results) > 1 else results[0], sys.stdout, indent=1)
        print()
    elif len(results) > 1:
        def log10(r: Dict[str, Any]) -> str:
            return "-inf" if r["log10"] is None else f"{r['log10']:.3f}"

        print("summary: " + ", ".join(f"{r['init']} log10 E = {log10(r)}" for r in results))
    return 0
