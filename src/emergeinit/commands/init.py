"""``emergeinit init``: build a model, apply the emergence-promoting initialization, print the plan
(with ``--alpha auto``: the automatic choice and its evidence first)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Iterator, Tuple

import torch
from torch import nn

DATA_CHOICES = ("random", "fashion-mnist", "fashion-mnist-32", "cifar10")


def _alpha(text: str) -> Any:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a harness model (mlp, vgg19, vgg19_bn, resnet20[_bn], resnet110[_bn]) "
                             "or pkg.module:factory (called without arguments)")
    parser.add_argument("--alpha", type=_alpha, required=True,
                        help="the scale α of eq 8, or 'auto': choose α, schedule and scope by short training "
                             "probes on --data (emergeinit.choose_init; the base init unless a candidate wins)")
    parser.add_argument("--schedule", choices=("literal", "normalized"), default="literal")
    parser.add_argument("--scope", choices=("global", "blockwise", "graph"), default="global")
    parser.add_argument("--blocks", nargs="+", default=None,
                        help="block module names or fnmatch patterns (scope blockwise)")
    parser.add_argument("--base", choices=("kaiming", "xavier", "none"), default="kaiming")
    parser.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=None, help="one sample's shape, e.g. 3,32,32 (default: inferred)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the plan (and the choice) as JSON")
    auto = parser.add_argument_group("--alpha auto")
    auto.add_argument("--data", choices=DATA_CHOICES, default="random",
                      help="probe batches: 'random' (default) is Gaussian inputs of the model's input shape "
                           "with random labels, which only tells how fast each candidate fits noise (it "
                           "still catches candidates that diverge); a dataset name reads real training "
                           "images through the harness's loaders (emergeinit[bench])")
    auto.add_argument("--data-dir", default=None, help="folder of the dataset (default: its usual place)")
    auto.add_argument("--batch-size", type=int, default=128)
    auto.add_argument("--classes", type=int, default=10, help="label count of random data")
    auto.add_argument("--budget", type=float, default=0.05, help="probe steps as a fraction of one epoch")
    auto.add_argument("--epoch-steps", type=int, default=None,
                      help="optimizer steps of one training epoch (default: the dataset's at --batch-size; "
                           "469 for random data)")
    auto.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                      help="the optimizer you train with (sgd: momentum 0.9)")
    auto.add_argument("--lr", type=float, default=1e-3)
    auto.add_argument("--clip-grad-norm", type=float, default=None)


def _build(spec: str) -> Tuple[nn.Module, Tuple[int, ...]]:
    if ":" in spec:
        module_name, factory = spec.split(":", 1)
        return getattr(importlib.import_module(module_name), factory)(), ()
    from emergeinit.models import build_model, model_input_shape

    return build_model(spec), model_input_shape(spec)


def _probe_data(args: argparse.Namespace, shape: Tuple[int, ...]) -> Tuple[Iterator[Any], int]:
    """Endless probe batches and the steps of one epoch."""
    if args.data == "random":
        if not shape:
            raise ValueError("random probe data needs --input-shape for a model given as pkg.module:factory")
        gen = torch.Generator().manual_seed(args.seed + 1)

        def random_batches() -> Iterator[Any]:
            while True:
                yield (torch.randn(args.batch_size, *shape, generator=gen),
                       torch.randint(0, args.classes, (args.batch_size,), generator=gen))

        return random_batches(), 469
    from emergeinit.bench.data import load_dataset

    data = load_dataset(args.data, args.data_dir)
    gen = torch.Generator().manual_seed(args.seed + 1)

    def real_batches() -> Iterator[Any]:
        while True:
            for idx in torch.randperm(data.train_x.shape[0], generator=gen).split(args.batch_size):
                yield data.normalize(data.train_x[idx]), data.train_y[idx]

    return real_batches(), -(-data.train_x.shape[0] // args.batch_size)


def main(args: argparse.Namespace) -> int:
    import emergeinit as ei

    torch.manual_seed(args.seed)
    model, shape = _build(args.model)
    shape = args.input_shape or shape
    example = torch.randn(2, *shape) if shape else None
    base = None if args.base == "none" else args.base
    try:
        if args.alpha == "auto":
            batches, epoch = _probe_data(args, shape)
            make = (lambda m: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9)) if args.optimizer == "sgd" \
                else (lambda m: torch.optim.Adam(m.parameters(), lr=args.lr))
            choice = ei.auto_init_(model, batches, budget=args.budget, epoch_steps=args.epoch_steps or epoch,
                                   optimizer=make, clip_grad_norm=args.clip_grad_norm, base=base,
                                   example_input=example, blocks=args.blocks)
            plan = choice.plan
            if args.json:
                print(json.dumps({"choice": choice.to_dict(), "plan": plan.to_dict()}, indent=2))
            else:
                print(f"probe data: {args.data}\n{choice}\n\n{plan}")
            return 0
        plan = ei.emergence_init_(
            model, alpha=args.alpha, schedule=args.schedule, scope=args.scope, blocks=args.blocks,
            base=base, example_input=example,
        )
    except ValueError as err:
        print(f"emergeinit init: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan)
    return 0
