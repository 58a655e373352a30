"""``emergeinit train``: run one image configuration and append its record to a results file.

``--nproc N`` trains it data-parallel on N processes of this machine (DDP; one per GPU, or gloo
processes on the CPU); under ``torchrun ... -m emergeinit.cli train`` it joins torchrun's process
group instead (several nodes). Either way rank 0 alone writes the record (:mod:`emergeinit.bench.ddp`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

__all__ = ["add_arguments", "main", "config_from_args"]

# flag -> config key (only flags the user gives are set; the protocol supplies the rest)
_FLAGS = {
    "protocol": "protocol", "model": "model", "dataset": "dataset", "init": "init",
    "alpha": "init_options.alpha", "schedule": "init_options.schedule",
    "scope": "init_options.scope", "base": "init_options.base", "seed": "seed",
    "epochs": "epochs", "extra_epoch": "extra_epoch", "optimizer": "optimizer", "lr": "lr",
    "batch_size": "batch_size", "data_dir": "data_dir", "device": "device",
    "base_init": "base_init", "classifier_init": "classifier_init",
}
_UNSET = object()  # default of the flags whose "none" is a value of its own (base_init, classifier_init)


def _alpha(text: str) -> object:
    """A number, or "auto"."""
    return text if text == "auto" else float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=["table1", "seed"], help="hyperparameter set (default table1)")
    parser.add_argument("--model", help="mlp, vgg11/13/16/19[_bn], resnet20/32/44/56/110[_bn]")
    parser.add_argument("--dataset", choices=["cifar10", "fashion-mnist", "fashion-mnist-32", "fashion-mnist-16"])
    parser.add_argument("--init", help="kaiming, xavier, emergence, metainit, gradinit, lsuv")
    parser.add_argument("--base-init", type=_none_or_str, default=_UNSET, metavar="{model,kaiming,xavier,none}",
                        help="the weights every init starts from (default: the protocol's; table1: model, "
                             "the model's own init as in GradInit's code; seed: kaiming; none: each "
                             "method's own draw, as before this option)")
    parser.add_argument("--classifier-init", type=_classifier, default=_UNSET, metavar="{kaiming,torch,STD}",
                        help="redraw the base's classifier: Kaiming fan_in, nn.Linear's default, or N(0, STD²)")
    parser.add_argument("--alpha", type=_alpha, help="emergence: the factor α of eq 8, or 'auto' "
                        "(chosen by short probes on training batches: emergeinit.choose_init)")
    parser.add_argument("--schedule", choices=["literal", "normalized"], help="emergence: exponent schedule")
    parser.add_argument("--scope", choices=["global", "blockwise", "graph"],
                        help="emergence: over the net, per block, or by depth in the layer graph")
    parser.add_argument("--base", help="emergence: its own base draw (kaiming, xavier; keep or none: no "
                                       "draw); only with --base-init none, else the protocol's base is its base")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int, help="measured epochs (Acc_1 after the first)")
    parser.add_argument("--extra-epoch", choices=["const", "warmup"], help="one epoch before the measured ones")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--download", action="store_true", help="fetch a missing dataset (needs internet)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key (dotted for nested: init_options.base=xavier)")
    parser.add_argument("--results", default="results/train.jsonl", help="results file to append to")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train data-parallel on N processes of this machine (DDP: one per GPU, or "
                             "gloo processes on the CPU); the global batch stays --batch-size")
    parser.add_argument("--no-progress", action="store_true")


def _none_or_str(text: str) -> Any:
    return None if text.lower() in ("none", "null") else text


def _classifier(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return _none_or_str(text)


def config_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The run config the flags describe, resolved with the protocol's defaults."""
    from emergeinit.bench.config import resolve_config, set_dotted
    from emergeinit.bench.grid import apply_sets

    config: Dict[str, Any] = {"task": "image"}
    for flag, key in _FLAGS.items():
        value = getattr(args, flag)
        if value is not _UNSET and (value is not None or flag in ("base_init", "classifier_init")):
            set_dotted(config, key, value)  # nested at once: --set init_options.x=... adds to --alpha's dict
    if (config.get("init_options") or {}).get("base", "") == "none":  # the flag's word for base=None
        config["init_options"]["base"] = None
    if args.download:
        config["download"] = True
    (config,) = apply_sets([config], args.set)
    return resolve_config(config, task="image")


def main(args: argparse.Namespace) -> int:
    from emergeinit.bench.ddp import launch, run_ranked
    from emergeinit.bench.runner import check_configs

    try:  # a bad config is an error now, not an error record in the results file
        config = config_from_args(args)
        check_configs([config])
    except (ValueError, TypeError) as err:
        print(f"emergeinit train: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.nproc > 1:
        print("emergeinit train: --nproc starts its own processes: leave it out under torchrun", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(config, indent=1, sort_keys=True))
    if args.nproc > 1:
        record = launch(config, args.results, args.nproc, progress=not args.no_progress)
    else:  # one process, or one rank of torchrun's group
        record = run_ranked(config, args.results, progress=not args.no_progress)
        if record is None:  # not rank 0: rank 0 reports
            return 0
    for e in record["epochs"]:
        print(f"epoch {e['epoch']} ({e['phase']}): train loss {e['train_loss']}, test acc {e['test_acc']:.2f}%")
    e = record.get("emergence_at_init") or {}
    print(f"E at init: log10 {e.get('log10')}; status {record['status']}"
          + (f" ({record['error']})" if record["error"] else "") + f"; record {record['id']} -> {args.results}")
    return 0 if record["status"] != "error" else 1
