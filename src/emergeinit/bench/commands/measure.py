"""``emergeinit measure``: the per-layer activity and emergence E of a model under an init.

    emergeinit measure --model vgg19 --init kaiming xavier emergence --data fashion-mnist
    emergeinit measure --model mypkg.nets:build --init none --data random --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

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
    parser.add_argument("--data-dir", default=None,
                        help="folder with the Fashion-MNIST IDX files (default: the Debian package's)")
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


def fashion_images(data_dir: Optional[str], count: int, shape: Sequence[int]) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images, normalized as the harness does, in the shape
    the model wants: 1×28×28, flat 784, or 3×32×32 (zero-padded, channel-repeated)."""
    from emergeinit.bench.data import load_fashion_mnist

    shape = tuple(shape)
    if shape in ((1, 28, 28), (784,)):
        data = load_fashion_mnist(data_dir)
    elif shape == (3, 32, 32):
        data = load_fashion_mnist(data_dir, pad32=True)
    else:
        raise ValueError(f"cannot feed Fashion-MNIST to inputs of shape {shape}; use --data random")
    images = data.normalize(data.test_x[:count])
    return images.flatten(1) if shape == (784,) else images


def _build(spec: str, seed: int) -> Tuple[nn.Module, Tuple[int, ...]]:
    """A built-in model by name, or ``package.module:factory`` called without arguments."""
    torch.manual_seed(seed)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        model = factory()
        from emergeinit.trace import infer_example_input

        return model, tuple(infer_example_input(model, batch=1).shape[1:])
    from emergeinit.models import build_model, model_input_shape

    return build_model(spec), tuple(model_input_shape(spec))


def _inputs(args: argparse.Namespace, shape: Tuple[int, ...]) -> torch.Tensor:
    if args.data == "random":
        return torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    return fashion_images(args.data_dir, args.batch, shape)


def main(args: argparse.Namespace) -> int:
    import emergeinit as ei
    from emergeinit.probe import DEFAULT_THRESHOLD

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
            torch.manual_seed(args.seed)
            options = {"alpha": args.alpha, "schedule": args.schedule} if init == "emergence" else {}
            ei.initialize(model, init, **options)
        report = ei.measure_emergence(
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
