"""``emergeinit init``: build a model, apply the emergence-promoting initialization, print the plan."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Tuple

import torch
from torch import nn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a harness model (mlp, vgg19, vgg19_bn, resnet20[_bn], resnet110[_bn]) "
                             "or pkg.module:factory (called without arguments)")
    parser.add_argument("--alpha", type=float, required=True, help="the scale α of eq 8")
    parser.add_argument("--schedule", choices=("literal", "normalized"), default="literal")
    parser.add_argument("--scope", choices=("global", "blockwise"), default="global")
    parser.add_argument("--blocks", nargs="+", default=None,
                        help="block module names or fnmatch patterns (scope blockwise)")
    parser.add_argument("--base", choices=("kaiming", "xavier", "none"), default="kaiming")
    parser.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                        default=None, help="one sample's shape, e.g. 3,32,32 (default: inferred)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _build(spec: str) -> Tuple[nn.Module, Tuple[int, ...]]:
    if ":" in spec:
        module_name, factory = spec.split(":", 1)
        return getattr(importlib.import_module(module_name), factory)(), ()
    from emergeinit.models import build_model, model_input_shape

    return build_model(spec), model_input_shape(spec)


def main(args: argparse.Namespace) -> int:
    import emergeinit as ei

    torch.manual_seed(args.seed)
    model, shape = _build(args.model)
    shape = args.input_shape or shape
    example = torch.randn(2, *shape) if shape else None
    try:
        plan = ei.emergence_init_(
            model, alpha=args.alpha, schedule=args.schedule, scope=args.scope, blocks=args.blocks,
            base=None if args.base == "none" else args.base, example_input=example,
        )
    except ValueError as err:
        print(f"emergeinit init: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan)
    return 0
