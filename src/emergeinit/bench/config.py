"""Every hyperparameter of the harness, in one place: each task's defaults and protocols, the keys
left out of run ids, the old key names still accepted, and the one resolver.

A *run config* is a flat, JSON-able dict. :func:`resolve_config` renames old keys
(:data:`ALIASES`), starts from the task's defaults, lays the named protocol over them, then the
user's keys (dotted keys such as ``init_options.alpha`` set one field of a nested dict), and fills
in what depends on other keys. The resolved config holds only current key names; it is what a run
prints, what its record stores and what :func:`run_id` hashes, so a record says exactly how it
was made and an old-key config gets the same id as its new-key twin.

A key means the same thing in every task that has it. The step caps in particular:
``max_steps`` caps the optimizer steps of the whole run (extra epoch included), and
``max_epoch_steps`` caps them in each epoch; ``epochs`` counts epochs of training.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = [
    "ALIASES",
    "TASKS",
    "Task",
    "SHARED",
    "TRANSLATION_INITS",
    "COMPILE_MODES",
    "OPTIMIZER_IMPLS",
    "IMAGE_SPEED_KEYS",
    "resolve_config",
    "canonical_keys",
    "run_id",
    "task_spec",
    "set_dotted",
    "has_batch_norm",
    "is_base_row",
    "check_base_use",
    "fill_legacy",
    "BASE_INITS",
    "CLASSIFIER_INITS",
]

# Old key name -> its one name now. The meaning is unchanged, except that the image task's old
# ``max_steps`` was a cap per epoch: that idea is ``max_epoch_steps`` now (docs/harness.md).
ALIASES: Dict[str, str] = {
    "threads": "cpu_threads",
    "clip_norm": "clip_grad_norm",
    "max_epochs": "epochs",
    "max_updates": "max_steps",
    "warmup_updates": "warmup_steps",
    "data": "dataset",
    "data_path": "data_dir",
    "max_train_pairs": "train_limit",
}

# Keys every task has, one meaning each; a task's table below sets its own default values.
SHARED: Dict[str, Any] = {
    "model": None,
    "dataset": None,
    "data_dir": None,             # None: the dataset's default place
    "train_limit": None,          # use only the first N training examples (tests, quick looks)
    "init": None,                 # an init by name (the task's table says which names)
    "init_options": {},           # its keyword options
    "seed": 0,
    "epochs": 1,                  # epochs of training (the image task: measured epochs)
    "max_steps": None,            # stop the run after N optimizer steps in all
    "max_epoch_steps": None,      # end each epoch after at most N optimizer steps
    "lr": None,
    "weight_decay": 0.0,
    "clip_grad_norm": None,       # max gradient norm; None or 0: no clipping
    "device": "auto",             # auto: cuda when available, else cpu
    "cpu_threads": None,          # torch CPU threads during the run (restored after); None: unchanged
    "amp": False,                 # bf16 autocast on CUDA (no loss scaling needed)
    "nan_check_every": 20,        # steps between divergence checks (each one syncs the device)
    "optimizer_impl": None,       # None (torch's choice) | for_loop | foreach | fused (a speed key)
}

# values of the ``compile`` key: True is torch.compile's default mode; the modes with CUDA graphs
# ("reduce-overhead", "max-autotune") only use them on CUDA
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZER_IMPLS = (None, "for_loop", "foreach", "fused")
IMAGE_SPEED_KEYS = ("optimizer_impl", "compile", "cudnn_benchmark", "eval_batch_size")

IMAGE: Dict[str, Any] = {
    **SHARED,
    "task": "image",
    "protocol": "table1",
    "model": "vgg19",             # a name of emergeinit.models.build_model
    "model_options": {},          # its keyword arguments
    "dataset": "cifar10",         # cifar10 | fashion-mnist (28×28×1) | fashion-mnist-32 (32×32×3)
    "download": False,            # fetch a missing dataset from its original location
    "test_limit": None,           # evaluate on the first N test images
    "init": "kaiming",            # a method of emergeinit.initialize
    "base_init": None,            # the weights every row starts from: model | kaiming | xavier (below)
    "classifier_init": None,      # then the classifier redrawn: None (kept) | kaiming | torch | a std
    "init_batch_size": 128,       # data-dependent inits (metainit, gradinit, lsuv) see batches this big
    "emergence_batch_size": 256,  # E at init is measured on this many training images
    "emergence_threshold": None,  # None: measure_emergence's own default
    "emergence_training": None,   # E in train mode (batch statistics)? None: yes for BN nets only
    "init_iterations": None,      # iterations of metainit/gradinit; None: the method's own (the papers')
    "extra_epoch": None,          # None | "const" | "warmup": one epoch before the measured ones
    "batch_size": 128,
    "eval_batch_size": 1000,
    "optimizer": "sgd",           # sgd | adam | adamw
    "lr": 0.1,
    "momentum": 0.9,              # sgd momentum; adam betas stay torch's defaults
    "nesterov": False,
    "decay_norm": False,          # weight decay on normalization parameters (BN γ, β)
    "layerwise_lr": False,        # per-layer rates lr·G/‖∇_{x_l} L‖ (the paper's "On learning rates"), read at init
    "lr_schedule": "constant",    # constant | cosine (stepped per iteration)
    "schedule_epochs": None,      # cosine horizon in epochs; None: `epochs`
    "crop_padding": 0,            # random crop after zero padding (pixels); 0: off
    "flip": False,                # random horizontal flip
    "cutout": 0,                  # side of the cutout square (pixels); 0: off
    "loss_points": 20,            # training-loss curve points kept per epoch (Fig 2)
    "channels_last": False,       # channels_last memory format for conv nets on CUDA
    # speed keys (left out of run ids: they change rounding, not what is computed; see tests)
    "compile": False,             # torch.compile the training and evaluation forward: False | True | a mode
    "cudnn_benchmark": False,     # let cuDNN time its conv algorithms (CUDA; restored after the run)
}

# Bases (``base_init``): what every row of a protocol starts from, so that a row's difference from
# the Kaiming row is its method's alone. "model": the model builder's own init (for the built-in
# VGG and CIFAR ResNets, GradInit's code's); "kaiming" / "xavier": kaiming_init_ / xavier_init_ at
# their defaults; None: no common base, each method draws as it did before this key existed
# (kept so that older records mean what they meant; docs/harness.md "Bases").
BASE_INITS = (None, "model", "kaiming", "xavier")
CLASSIFIER_INITS = (None, "kaiming", "torch")  # or a positive number: N(0, std²)
# inits that draw every weight themselves: a row of theirs replaces the base instead of starting from it
OWN_DRAW_INITS = ("kaiming", "xavier", "lsuv")

IMAGE_PROTOCOLS: Dict[str, Dict[str, Any]] = {
    # The protocol behind the paper's Table-1 baselines (GradInit's CIFAR-10 code), with that code's
    # init as every row's base.
    "table1": {
        "base_init": "model",
        "dataset": "cifar10", "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
        "weight_decay": 1e-4, "decay_norm": False, "lr_schedule": "cosine", "schedule_epochs": 200,
        "clip_grad_norm": "no_bn", "crop_padding": 4, "flip": True, "cutout": 16, "epochs": 1,
    },
    # The paper's own words for its runs: batch 128, constant learning rate 1e-3 (optimizer unnamed),
    # from "Kaiming initialization" (fan_in, normal, ReLU gain).
    "seed": {
        "base_init": "kaiming",
        "dataset": "cifar10", "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
        "lr_schedule": "constant", "clip_grad_norm": None, "crop_padding": 0, "flip": False,
        "cutout": 0, "epochs": 1,
    },
}

TRANSLATION_INITS = ("default", "xavier", "tfixup", "emergence", "emergence_encdec")

TRANSLATION: Dict[str, Any] = {
    **SHARED,
    "task": "translation",
    "protocol": "cpu_small",
    "model": "transformer",
    "init": "xavier",             # one of TRANSLATION_INITS
    "dataset": "trans-de-en",     # or iwslt14 (data_dir: the prepared or the raw de-en folder)
    "valid_size": 1000,           # trans-de-en held-out pairs (iwslt14 has its own split)
    "test_size": 1000,
    "vocab_size": 8000,           # joint sentencepiece BPE (a soft limit)
    "max_len": 128,               # subword pieces per side; longer sentences are cut
    "dim": 512,
    "ffn_dim": 1024,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "heads": 4,
    "share_embeddings": True,
    "tie_output": True,
    "layer_norm": True,           # False drops every LayerNorm (T-Fixup's architecture)
    "dropout": 0.3,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "label_smoothing": 0.1,
    "lr": 5e-4,
    "betas": [0.9, 0.98],
    "eps": 1e-8,
    "weight_decay": 1e-4,         # decoupled (AdamW), as fairseq's Adam applies it
    "warmup_steps": 4000,         # inverse-sqrt schedule
    "max_tokens": 4096,           # padded tokens per batch
    "epochs": 80,
    "bleu_split": "test",         # the paper reports BLEU of every epoch (BLEU_1, BLEU_best)
    "bleu_beam": 5,               # 1: greedy
    "len_penalty": 1.0,
    "bleu_max_sentences": None,   # score the first N sentences of bleu_split only
    "decode_max_tokens": None,    # source tokens × beam per decoding batch; None: max_tokens
    "measure_emergence": True,    # E at init on one training batch
    "cache_dir": ".cache/emergeinit/translation",  # sentencepiece models, by hash of their input
}

TRANSLATION_PROTOCOLS: Dict[str, Dict[str, Any]] = {
    # the paper's sizes: 6+6 layers, embedding 512, FFN 1024 (fairseq transformer_iwslt_de_en)
    "iwslt14": {"dim": 512, "ffn_dim": 1024, "encoder_layers": 6, "decoder_layers": 6, "vocab_size": 10000},
    # ~5M parameters; trains in about 10 minutes on a 2-core CPU on trans-de-en
    "cpu_small": {"dim": 256, "ffn_dim": 512, "encoder_layers": 3, "decoder_layers": 3, "vocab_size": 6000,
                  "dropout": 0.1, "lr": 1e-3, "warmup_steps": 300, "max_tokens": 2000, "epochs": 5,
                  "bleu_beam": 1, "bleu_max_sentences": 500, "max_len": 64},
}


def has_batch_norm(model: str) -> bool:
    """Whether a model name of emergeinit.models has batch norm (the ``_bn`` variants)."""
    return model.endswith("_bn")


def _check_choice(config: Mapping[str, Any], key: str, allowed: Tuple[Any, ...]) -> None:
    if config[key] not in allowed:
        raise ValueError(f"{key} must be one of {allowed}, got {config[key]!r}")


def _finish_image(config: Dict[str, Any]) -> None:
    _check_choice(config, "compile", COMPILE_MODES)
    if config["clip_grad_norm"] == "no_bn":
        config["clip_grad_norm"] = None if has_batch_norm(config["model"]) else 1.0
    if config["schedule_epochs"] is None:
        config["schedule_epochs"] = config["epochs"]
    _check_choice(config, "extra_epoch", (None, "const", "warmup"))
    _check_choice(config, "lr_schedule", ("constant", "cosine"))
    _check_choice(config, "optimizer", ("sgd", "adam", "adamw"))
    _check_base(config)


def is_base_row(config: Mapping[str, Any]) -> bool:
    """Whether a resolved image config's row is its base alone: ``kaiming`` on a Kaiming base
    (``model``, whose built-in builders all draw a Kaiming variant, or ``kaiming``), ``xavier`` on
    a Xavier base."""
    base, init = config.get("base_init"), config.get("init")
    return base is not None and ((init == "kaiming" and base in ("model", "kaiming"))
                                 or (init == "xavier" and base == "xavier"))


def _check_base(config: Mapping[str, Any]) -> None:
    """``base_init`` and ``classifier_init`` are valid values (how the init uses them is
    :func:`check_base_use`'s, run with the init's own checks before any run)."""
    _check_choice(config, "base_init", BASE_INITS)
    head = config["classifier_init"]
    if not (head in CLASSIFIER_INITS or (isinstance(head, (int, float)) and not isinstance(head, bool)
                                         and math.isfinite(head) and head > 0)):
        raise ValueError(f"classifier_init must be one of {CLASSIFIER_INITS} or a std > 0, got {head!r}")
    if config["base_init"] is None and head is not None:
        raise ValueError("classifier_init redraws the classifier of the base: set base_init too")


def check_base_use(config: Mapping[str, Any]) -> None:
    """A resolved image config's init agrees with its base: a base row takes no options, an init
    that draws every weight itself takes no ``classifier_init``, the emergence init no base of its
    own. A ValueError says which, and how to fix it."""
    base, init, head = config.get("base_init"), config.get("init"), config.get("classifier_init")
    if base is None:
        return
    options = dict(config.get("init_options") or {})
    if is_base_row(config) and options:
        raise ValueError(f"the {init} row is the base itself (base_init={base}); its options "
                         f"{sorted(options)} belong to base_init/classifier_init (or set base_init: null "
                         f"for the old per-method draws)")
    if init in OWN_DRAW_INITS and not is_base_row(config) and head is not None:
        raise ValueError(f"{init} draws every weight itself, so classifier_init={head!r} would be lost")
    if init == "emergence" and options.get("base") not in (None, "keep"):
        raise ValueError(f"base_init={base} is the emergence init's base; drop init_options.base "
                         f"({options['base']!r}) or set base_init: null")


def fill_legacy(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored config with the values its run used for keys added since (``Task.legacy``), so that
    resolving it today gives the config that run really had, not today's defaults."""
    flat = canonical_keys(config)
    legacy = task_spec(flat.get("task") or "image").legacy
    return {**{k: v for k, v in legacy.items() if k not in flat}, **flat}


def _finish_translation(config: Dict[str, Any]) -> None:
    if config["init"] not in TRANSLATION_INITS:
        raise ValueError(f"unknown init {config['init']!r}: use one of {TRANSLATION_INITS}")


@dataclass(frozen=True)
class Task:
    """One task of the harness: its run function, defaults, protocols and run-id rules."""

    run: str                            # "module:function", imported when a run of the task starts
    defaults: Mapping[str, Any]         # every key the task knows, with its default
    protocols: Mapping[str, Mapping[str, Any]]
    id_ignored: Tuple[str, ...]         # keys that cannot change a result: left out of run ids
    finish: Callable[[Dict[str, Any]], None]  # fills in derived values, checks choices
    check: str                          # "module:function": checks init and init_options, no run
    # keys added after records existed whose protocol values differ from what those runs did: a
    # stored config without one gets this value (fill_legacy), so it keeps its meaning and its id
    legacy: Mapping[str, Any] = field(default_factory=dict)


TASKS: Dict[str, Task] = {
    "image": Task("emergeinit.bench.image:run", IMAGE, IMAGE_PROTOCOLS,
                  ("data_dir", "download", "cpu_threads", *IMAGE_SPEED_KEYS), _finish_image,
                  "emergeinit.bench.image:check_init", {"base_init": None}),
    "translation": Task("emergeinit.bench.translation.train:run", TRANSLATION, TRANSLATION_PROTOCOLS,
                        ("data_dir", "cache_dir", "cpu_threads", "optimizer_impl", "decode_max_tokens"),
                        _finish_translation, "emergeinit.bench.translation.train:check_init"),
}


def task_spec(name: str) -> Task:
    """The :class:`Task` called ``name``: a built-in one (:data:`TASKS`), or your own written
    ``"module:attribute"`` (a :class:`Task` in an importable module; imported wherever a run of it
    resolves, so a cluster worker finds it too). Its defaults start from :data:`SHARED` and hold
    ``task`` (that same string) and ``protocol``."""
    if name in TASKS:
        return TASKS[name]
    module, colon, attribute = str(name).partition(":")
    if not colon:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}, or module:attribute of your own")
    task = getattr(importlib.import_module(module), attribute, None)
    if not isinstance(task, Task):
        raise ValueError(f"task {name!r} is not a emergeinit.bench.config.Task")
    return task


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


def canonical_keys(config: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of ``config`` with old key names renamed (:data:`ALIASES`) and dotted keys expanded
    into nested dicts. An old and a new name for one key with different values is an error."""
    out: Dict[str, Any] = {}
    for key, value in config.items():
        head, dot, rest = key.partition(".")
        new = ALIASES.get(head, head)
        if new != head and new in config and config[new] != value:
            raise ValueError(f"config sets both {head!r} and its new name {new!r}, to different values")
        set_dotted(out, new + dot + rest, copy.deepcopy(value))
    return out


def resolve_config(config: Mapping[str, Any], *, task: Optional[str] = None) -> Dict[str, Any]:
    """The full run config (see the module doc). The task is ``config["task"]``, else ``task``,
    else ``"image"``; passing ``task`` also rejects a config of another task. Unknown keys,
    protocols and choices are errors, so a typo cannot pass silently. Idempotent."""
    flat = canonical_keys(config)
    name = flat.get("task") or task or "image"
    if task is not None and name != task:
        raise ValueError(f"a {task} run got a config of task {name!r}")
    spec = task_spec(name)
    protocol = flat.get("protocol", spec.defaults["protocol"])
    if protocol not in spec.protocols:
        raise ValueError(f"unknown protocol {protocol!r} for task {name}; known: {', '.join(spec.protocols)}")
    unknown = sorted(set(flat) - set(spec.defaults))
    if unknown:
        raise ValueError(f"unknown config keys {unknown} for task {name}; known: {', '.join(sorted(spec.defaults))}")
    resolved = copy.deepcopy(dict(spec.defaults))
    resolved.update(copy.deepcopy(dict(spec.protocols[protocol])))
    resolved.update(task=name, protocol=protocol)
    for key, value in flat.items():
        if isinstance(value, Mapping) and isinstance(resolved.get(key), Mapping):
            resolved[key] = {**resolved[key], **value}
        else:
            resolved[key] = value
    if not resolved["clip_grad_norm"]:  # 0 and None both mean no clipping: store one of them
        resolved["clip_grad_norm"] = None
    _check_choice(resolved, "optimizer_impl", OPTIMIZER_IMPLS)
    spec.finish(resolved)
    return resolved


def run_id(config: Mapping[str, Any]) -> str:
    """Short sha1 of the canonical JSON of ``config`` less its task's ``id_ignored`` keys (data
    location, CPU threads...), so an id names what a run computes, not where or how fast."""
    flat = canonical_keys(config)
    ignored = task_spec(flat.get("task", "image")).id_ignored
    kept = {k: v for k, v in flat.items() if k not in ignored}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]
