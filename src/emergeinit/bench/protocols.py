"""Every hyperparameter of the image harness, in one place.

A *run config* is a flat, JSON-able dict. :func:`resolve_config` starts from the keys every run has
(:data:`COMMON`), lays the named protocol (:data:`PROTOCOLS`) over them, then the user's keys, and
fills in what depends on the model (gradient clipping only without batch norm). The resolved
config is what a run prints and what its record stores, so a record says exactly how it was made.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, Mapping

__all__ = [
    "COMMON",
    "PROTOCOLS",
    "resolve_config",
    "has_batch_norm",
    "lr_lambda",
]

# Keys every image run has, with the values used when neither the protocol nor the user sets them.
COMMON: Dict[str, Any] = {
    "task": "image",
    "protocol": "table1",
    "model": "vgg19",
    "model_options": {},          # keyword arguments of emergeinit.models.build_model
    "dataset": "cifar10",         # cifar10 | fashion-mnist (28×28×1) | fashion-mnist-32 (32×32×3)
    "data_dir": None,             # None: the dataset's default place (see bench.data)
    "download": False,            # fetch a missing dataset from its original location
    "init": "kaiming",            # a method of emergeinit.initialize
    "init_options": {},           # its options (emergence: alpha, schedule, scope, base)
    "init_batch_size": 128,       # data-dependent inits (metainit, gradinit, lsuv) see one batch
    "emergence_batch_size": 256,  # E at init is measured on this many training images
    "emergence_threshold": None,  # None: measure_emergence's own default
    "emergence_training": None,   # E in train mode (batch statistics)? None: yes for BN nets only
    "seed": 0,
    "epochs": 1,                  # measured epochs; Acc_1 is the test accuracy after the first
    "extra_epoch": None,          # None | "const" | "warmup": one epoch before the measured ones
    "batch_size": 128,
    "eval_batch_size": 1000,
    "optimizer": "sgd",           # sgd | adam | adamw
    "lr": 0.1,
    "momentum": 0.9,              # sgd momentum; adam betas stay torch's defaults
    "nesterov": False,
    "weight_decay": 0.0,
    "decay_norm": False,          # weight decay on normalization parameters (BN γ, β)
    "lr_schedule": "constant",    # constant | cosine (stepped per iteration)
    "schedule_epochs": None,      # cosine horizon in epochs; None: `epochs`
    "clip_grad_norm": None,       # float, None, or "no_bn": 1.0 for nets without batch norm
    "crop_padding": 0,            # random crop after zero padding (pixels); 0: off
    "flip": False,                # random horizontal flip
    "cutout": 0,                  # side of the cutout square (pixels); 0: off
    "train_limit": None,          # use only the first N training images (tests, quick looks)
    "test_limit": None,           # evaluate on the first N test images
    "max_steps": None,            # stop each epoch after N steps (tests, quick looks)
    "loss_points": 20,            # training-loss curve points kept per epoch (Fig 2)
    "device": "auto",             # auto: cuda when available, else cpu
    "cpu_threads": None,          # torch CPU threads during the run; None: torch's default
    "amp": False,                 # bf16 autocast on CUDA (no loss scaling needed)
    "channels_last": False,       # channels_last memory format for conv nets on CUDA
    "nan_check_every": 20,        # steps between divergence checks (each one syncs the device)
}

PROTOCOLS: Dict[str, Dict[str, Any]] = {
    # The protocol behind the paper's Table-1 baselines (GradInit's CIFAR-10 code).
    "table1": {
        "protocol": "table1",
        "dataset": "cifar10",
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "decay_norm": False,
        "lr_schedule": "cosine",
        "schedule_epochs": 200,
        "clip_grad_norm": "no_bn",
        "crop_padding": 4,
        "flip": True,
        "cutout": 16,
        "epochs": 1,
    },
    # The paper's own words for its runs: batch 128, constant learning rate 1e-3 (optimizer unnamed).
    "seed": {
        "protocol": "seed",
        "dataset": "cifar10",
        "batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "lr_schedule": "constant",
        "clip_grad_norm": None,
        "crop_padding": 0,
        "flip": False,
        "cutout": 0,
        "epochs": 1,
    },
}

def has_batch_norm(model: str) -> bool:
    """Whether a model name of emergeinit.models has batch norm (the ``_bn`` variants)."""
    return model.endswith("_bn")


def set_dotted(config: Dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b] = value`` for ``key="a.b"``, copying nested dicts on the way."""
    head, _, rest = key.partition(".")
    if rest:
        inner = config.get(head)
        inner = dict(inner) if isinstance(inner, Mapping) else {}
        set_dotted(inner, rest, value)
        config[head] = inner
    else:
        config[head] = value


def resolve_config(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The full run config: COMMON, then the protocol, then ``overrides`` (dotted keys allowed,
    e.g. ``init_options.alpha``). Unknown keys are an error, so a typo cannot pass silently."""
    flat: Dict[str, Any] = {}
    for key, value in overrides.items():
        set_dotted(flat, key, copy.deepcopy(value))
    protocol = flat.get("protocol", COMMON["protocol"])
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    unknown = sorted(set(flat) - set(COMMON))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {', '.join(sorted(COMMON))}")
    config = copy.deepcopy(COMMON)
    config.update(copy.deepcopy(PROTOCOLS[protocol]))
    for key, value in flat.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), Mapping):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    if config["clip_grad_norm"] == "no_bn":
        config["clip_grad_norm"] = None if has_batch_norm(config["model"]) else 1.0
    if config["schedule_epochs"] is None:
        config["schedule_epochs"] = config["epochs"]
    if config["extra_epoch"] not in (None, "const", "warmup"):
        raise ValueError(f"extra_epoch must be None, 'const' or 'warmup', got {config['extra_epoch']!r}")
    if config["lr_schedule"] not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config['lr_schedule']!r}")
    if config["optimizer"] not in ("sgd", "adam", "adamw"):
        raise ValueError(f"optimizer must be sgd, adam or adamw, got {config['optimizer']!r}")
    return config


def lr_lambda(config: Mapping[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier at a global step (0-based): the extra epoch first (constant 1, or a
    linear warm-up from 0 reaching 1 on its last step), then the main schedule from its start
    (constant, or cosine from 1 towards 0 over ``schedule_epochs``, stepped per iteration)."""
    extra = steps_per_epoch if config.get("extra_epoch") else 0
    warmup = config.get("extra_epoch") == "warmup"
    horizon = max(1, int(config["schedule_epochs"]) * steps_per_epoch)
    cosine = config["lr_schedule"] == "cosine"

    def factor(step: int) -> float:
        if step < extra:
            return (step + 1) / extra if warmup else 1.0
        t = min(step - extra, horizon)
        return 0.5 * (1.0 + math.cos(math.pi * t / horizon)) if cosine else 1.0

    return factor
