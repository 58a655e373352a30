"""The image-classification task: one run config in, the task part of a record out.

``run(config)`` loads the dataset onto the device, builds the model, initializes it by name
through :func:`emergeinit.initialize`, measures E at init (:func:`emergeinit.measure_emergence`),
then trains: the optional extra epoch ("+1 epoch" baselines), then ``epochs`` measured epochs,
each followed by a test evaluation in eval mode (Acc_1 is the first measured epoch's), until
``max_steps`` optimizer steps if that is set. The steps themselves are :mod:`emergeinit.bench.loop`'s.
A NaN/inf training loss stops the run with ``diverged=True``; the epochs finished so far are kept.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import emergeinit as ei
from emergeinit.baselines import DATA_METHODS
from emergeinit.bench import augment, ddp
from emergeinit.bench.config import check_base_use, has_batch_norm, is_base_row, resolve_config
from emergeinit.bench.data import ImageData, load_dataset
from emergeinit.bench.env import device_name
from emergeinit.bench.loop import (autocast, compiled, optimizer_options, pick_device, run_settings, step_budget,
                                   train_steps, uses_cudagraphs)
from emergeinit.distributed import initialize_
from emergeinit.models import build_model
from emergeinit.schedules import positive_number

__all__ = ["run", "train_epoch", "evaluate", "make_optimizer", "lr_batch", "prepare_batch", "lr_lambda",
           "epoch_steps", "build_image_model", "subset", "DATA_INITS", "apply_base_", "redraw_classifier_",
           "init_generator", "init_model"]

DATA_INITS = tuple(sorted(DATA_METHODS))  # inits that look at a batch of data
_INIT_STREAM = 0x9E3779B97F4A7C15  # offset of the init batches' seed from the training seed
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ITERATIONS_OPTION = {"metainit": "steps", "gradinit": "iters"}  # what ``init_iterations`` sets


def make_optimizer(model: nn.Module, config: Mapping[str, Any],
                   lr_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.optim.Optimizer:
    """The configured optimizer, with normalization parameters in a group without weight decay
    unless ``decay_norm``. With ``layerwise_lr`` every weight layer gets its own group whose
    ``lr_scale`` is :func:`emergeinit.layerwise_lr_groups`'s rate over ``lr`` on ``lr_batch``
    (the training loop multiplies the scheduled lr by it)."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    wd = float(config["weight_decay"])
    lr = float(config["lr"])
    norm_wd = wd if config["decay_norm"] else 0.0
    if config.get("layerwise_lr"):
        if lr_batch is None:
            raise ValueError("layerwise_lr needs a batch to read the input gradients on (lr_batch)")
        groups = []
        for g in ei.layerwise_lr_groups(model, F.cross_entropy, lr_batch, base_lr=lr):
            params = [p for p in g["params"] if p.requires_grad]
            for kept, decay in (([p for p in params if id(p) not in norm_ids], wd),
                                ([p for p in params if id(p) in norm_ids], norm_wd)):
                if kept:
                    groups.append({"params": kept, "weight_decay": decay, "lr": g["lr"],
                                   "lr_scale": g["lr"] / lr, "name": g["name"]})
    else:
        decay = [p for p in model.parameters() if p.requires_grad and id(p) not in norm_ids]
        no_decay = [p for p in model.parameters() if p.requires_grad and id(p) in norm_ids]
        groups = [{"params": decay, "weight_decay": wd}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": norm_wd})
    name = config["optimizer"]
    impl = optimizer_options(config.get("optimizer_impl"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(config["momentum"]),
                               nesterov=bool(config["nesterov"]), **impl)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **impl)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **impl)
    raise ValueError(f"unknown optimizer {name!r}")


def prepare_batch(data: ImageData, x: torch.Tensor, config: Mapping[str, Any],
                  generator: Optional[torch.Generator], train: bool = True) -> torch.Tensor:
    """uint8 images -> the network's float input: crop and flip (training), normalize, cutout
    (training), channels_last when configured."""
    if train:
        x = augment.random_crop(x, int(config["crop_padding"]), generator)
        if config["flip"]:
            x = augment.random_flip(x, generator)
    x = data.normalize(x)
    if train:
        x = augment.cutout(x, int(config["cutout"]), generator)
    if config.get("channels_last") and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


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


def epoch_steps(config: Mapping[str, Any], train_size: int) -> int:
    """Optimizer steps in a full epoch (the lr schedule's unit): a pass over the training set, at
    most ``max_epoch_steps``."""
    return step_budget(math.ceil(train_size / int(config["batch_size"])), max_epoch_steps=config["max_epoch_steps"])


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss; module-level so torch.compile's code for it serves every run."""
    return F.cross_entropy(model(x), y)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _maybe_compiled(fn: Callable[..., torch.Tensor], config: Mapping[str, Any]) -> Callable[..., torch.Tensor]:
    """``fn`` compiled as ``config["compile"]`` asks (static shapes: a batch size compiles once),
    else ``fn`` itself."""
    mode = config.get("compile")
    return compiled(fn, mode, False) if mode else fn


def train_epoch(model: nn.Module, data: ImageData, optimizer: torch.optim.Optimizer,
                config: Mapping[str, Any], *, lr_factor: Callable[[int], float], step0: int,
                generator: Optional[torch.Generator], steps: Optional[int] = None,
                progress: Optional[str] = None) -> Dict[str, Any]:
    """One pass over the (shuffled) training set, or its first ``steps`` batches (default
    :func:`epoch_steps`), at lr ``config["lr"] × lr_factor(global step)``. Returns mean loss, a
    short loss curve, steps taken, the step that went non-finite (or None) and the last lr."""
    model.train()
    x_all, y_all = data.train_x, data.train_y
    bs = int(config["batch_size"])
    total = epoch_steps(config, x_all.shape[0]) if steps is None else steps
    perm = torch.randperm(x_all.shape[0], device=x_all.device, generator=generator)
    ranks = ddp.current()  # under DDP every rank prepares the global batch and trains on its slice
    batches = ranks.shard((prepare_batch(data, x_all[idx], config, generator), y_all[idx])
                          for idx in perm.split(bs))

    step_loss = _maybe_compiled(_loss, config)
    graphs = uses_cudagraphs(config.get("compile"), x_all.device)

    def loss_fn(batch: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        loss = step_loss(model, batch[0], batch[1])
        return loss, (loss.detach().clone() if graphs else loss.detach())  # the next replay overwrites it

    base_lr = float(config["lr"])
    out = train_steps(optimizer, batches, ranks.loss(loss_fn), total=total,
                      lr_at=lambda s: base_lr * lr_factor(s), step0=step0,
                      clip_grad_norm=config.get("clip_grad_norm"), amp=bool(config.get("amp")),
                      device=x_all.device, check_every=config.get("nan_check_every") or 1, progress=progress,
                      mark_steps=graphs)
    kept = out.values[:out.diverged_at] if out.diverged_at is not None else out.values
    points = max(1, int(config.get("loss_points") or 1))
    chunks = torch.tensor_split(kept.float().cpu(), min(points, max(1, kept.numel()))) if kept.numel() else []
    return {
        "train_loss": float(kept.mean()) if kept.numel() else None,
        "first_loss": float(kept.reshape(kept.shape[0], -1)[0, 0]) if kept.numel() else None,
        "loss_curve": [float(c.mean()) for c in chunks if c.numel()],
        "steps": out.steps,
        "diverged_at_step": out.diverged_at,
        "lr_end": out.lr,
    }


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, config: Mapping[str, Any]) -> Tuple[float, float]:
    """Test accuracy (percent) and mean test loss, in eval mode."""
    model.eval()
    device = data.test_x.device
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    n = data.test_x.shape[0]
    bs = int(config["eval_batch_size"])
    forward = _maybe_compiled(_logits, config)
    graphs = uses_cudagraphs(config.get("compile"), device)
    for i in range(0, n, bs):
        x = prepare_batch(data, data.test_x[i:i + bs], config, None, train=False)
        y = data.test_y[i:i + bs]
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(bool(config.get("amp")), device):
            out = forward(model, x).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    return 100.0 * correct.item() / n, loss_sum.item() / n


def subset(data: ImageData, config: Mapping[str, Any]) -> ImageData:
    """The first ``train_limit`` training and ``test_limit`` test images (quick looks, tests)."""
    tl, vl = config.get("train_limit"), config.get("test_limit")
    if not tl and not vl:
        return data
    cut = lambda t, k: t[:k] if k else t  # noqa: E731
    return ImageData(data.name, cut(data.train_x, tl), cut(data.train_y, tl), cut(data.test_x, vl),
                     cut(data.test_y, vl), data.mean, data.std, data.num_classes)


def build_image_model(config: Mapping[str, Any], data: ImageData) -> nn.Module:
    """The configured model, its input and class counts taken from the data."""
    options = dict(config.get("model_options") or {})
    if config["model"] == "mlp":
        options.setdefault("in_features", int(math.prod(data.train_x.shape[1:])))
    else:
        options.setdefault("in_channels", int(data.train_x.shape[1]))
    options.setdefault("num_classes", data.num_classes)
    return build_model(config["model"], **options)


def _init_batches(data: ImageData, config: Mapping[str, Any],
                  generator: Optional[torch.Generator]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled training batches (augmented as in training) for data-dependent inits."""
    n, k = data.train_x.shape[0], int(config["init_batch_size"])
    while True:
        perm = torch.randperm(n, device=data.train_x.device, generator=generator)
        for i in range(0, n - k + 1 if n >= k else 1, k):
            idx = perm[i:i + k]
            yield prepare_batch(data, data.train_x[idx], config, generator), data.train_y[idx]


def _method_options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The options the init method is called with: ``init_options``, and on a protocol base the
    emergence init's ``base="keep"`` (it scales the base instead of drawing one)."""
    options = dict(config.get("init_options") or {})
    if config.get("base_init") is not None and config["init"] == "emergence":
        options["base"] = "keep"
    return options


def _side_generator(config: Mapping[str, Any], device: torch.device, salt: int) -> torch.Generator:
    """A generator of its own for batches the init or the optimizer look at, so that reading them
    leaves the training order of the run as it is (same seed, same batches, whatever the init)."""
    return torch.Generator(device=device).manual_seed(int(config["seed"]) * 1_000_003 + salt)


def lr_batch(config: Mapping[str, Any], data: ImageData) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The training batch ``layerwise_lr`` reads its input gradients on (None when it is off)."""
    if not config.get("layerwise_lr"):
        return None
    return next(_init_batches(data, config, _side_generator(config, data.train_x.device, 2)))


def _alpha_rule(options: Dict[str, Any]) -> Dict[str, Any]:
    """``alpha_from_lr`` taken out of ``options`` and checked: ``{alpha0, lr0}``, both positive, and
    no ``alpha`` beside it."""
    rule = options.pop("alpha_from_lr")
    if "alpha" in options:
        raise ValueError("init_options sets both alpha and alpha_from_lr: give one")
    if not isinstance(rule, Mapping) or set(rule) != {"alpha0", "lr0"}:
        raise ValueError(f"alpha_from_lr takes alpha0 and lr0, got {rule!r}")
    for key in ("alpha0", "lr0"):
        positive_number(rule[key], f"alpha_from_lr.{key}")
    return dict(rule)


def _emergence_options(model: nn.Module, config: Mapping[str, Any], data: ImageData,
                       options: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The emergence init's options with ``alpha_from_lr`` resolved (eq 11, depth = the number of
    weight layers) and, for ``alpha: auto``, the probe's data, optimizer, clipping and epoch;
    and what the record should say about them."""
    noted: Dict[str, Any] = {}
    if options.get("alpha_from_lr") is not None:
        rule = _alpha_rule(options)
        depth = len(ei.find_weight_layers(model, prepare_batch(data, data.train_x[:2], config, None, False)))
        options["alpha"] = ei.alpha_for_lr(rule["alpha0"], rule["lr0"], float(config["lr"]), depth)
        noted["alpha_from_lr"] = {**rule, "lr": float(config["lr"]), "depth": depth, "alpha": options["alpha"]}
    if options.get("alpha") == "auto":
        steps_per_epoch = epoch_steps(config, data.train_x.shape[0])
        side = _side_generator(config, data.train_x.device, 1)
        options.setdefault("data", _init_batches(data, config, side))
        options.setdefault("epoch_steps", steps_per_epoch)
        options.setdefault("clip_grad_norm", config.get("clip_grad_norm"))
        start_lr = lr_lambda(config, steps_per_epoch)(0)
        batch = lr_batch(config, data)

        def probe_optimizer(twin: nn.Module) -> torch.optim.Optimizer:
            opt = make_optimizer(twin, config, batch)
            for group in opt.param_groups:  # the lr of the run's first step
                group["lr"] = float(config["lr"]) * start_lr * group.get("lr_scale", 1.0)
            return opt

        options.setdefault("optimizer", probe_optimizer)
    return options, noted


def check_init(config: Mapping[str, Any]) -> None:
    """The config's init and its options, checked as :func:`emergeinit.initialize` would, without a
    model, and against its base (:func:`~emergeinit.bench.config.check_base_use`); a grid runs this
    for every config before its first run, and every run before its init."""
    check_base_use(config)
    if not is_base_row(config):
        options = _method_options(config)
        if config["init"] == "emergence" and options.get("alpha_from_lr") is not None:
            rule = _alpha_rule(options)
            options["alpha"] = rule["alpha0"]  # eq 11 scales a positive α0 to a positive α
        ei.check_options(config["init"], options)


def _method(model: nn.Module, config: Mapping[str, Any], options: Dict[str, Any], data: ImageData,
            generator: Optional[torch.Generator]) -> Dict[str, Any]:
    """``config["init"]`` with ``options`` through :func:`emergeinit.initialize` (the same on
    every rank of a DDP run); data-dependent inits get training batches drawn with ``generator``."""
    noted: Dict[str, Any] = {}
    if config["init"] == "emergence":
        options, noted = _emergence_options(model, config, data, options)
    if config["init"] in DATA_INITS:
        options.setdefault("data", _init_batches(data, config, generator))
        if config["init"] != "lsuv":
            options.setdefault("loss_fn", nn.CrossEntropyLoss())
    if config.get("init_iterations") is not None and config["init"] in _ITERATIONS_OPTION:
        options.setdefault(_ITERATIONS_OPTION[config["init"]], int(config["init_iterations"]))
    if config["init"] == "gradinit" and "lr" not in options and "arch" not in options:
        from emergeinit.baselines import GRADINIT_LR

        if config["model"] in GRADINIT_LR:  # GradInit's own step size for this architecture
            options["arch"] = config["model"]
    # the same on every rank of a DDP run: data-dependent inits computed on rank 0 and broadcast
    generators = (generator,) if generator is not None else ()
    record = initialize_(model, config["init"], generators=generators, **options).to_dict()
    record["details"].update(noted)
    return record


def _classifier(model: nn.Module) -> nn.Linear:
    """The classifier: the last ``nn.Linear`` in registration order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"classifier_init: {type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def redraw_classifier_(model: nn.Module, how: Union[str, float]) -> Dict[str, Any]:
    """Redraw the classifier's weight, bias to 0: ``"kaiming"`` (normal, fan_in, ReLU gain: what a
    fan_in Kaiming base gives it), ``"torch"`` (``nn.Linear``'s default U(±1/√fan_in), as GradInit's
    ResNet keeps it) or a std (N(0, std²), as GradInit's VGG draws it with 0.01)."""
    head = _classifier(model)
    with torch.no_grad():
        if how == "kaiming":
            nn.init.kaiming_normal_(head.weight, mode="fan_in", nonlinearity="relu")
        elif how == "torch":
            nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5))
        else:
            nn.init.normal_(head.weight, 0.0, float(how))
        if head.bias is not None:
            head.bias.zero_()
    return {"classifier_init": how, "std": float(head.weight.detach().std())}


def apply_base_(model: nn.Module, config: Mapping[str, Any]) -> Dict[str, Any]:
    """The protocol's base, in place: ``base_init`` (``model`` keeps the builder's init) and then
    ``classifier_init``. Returns what it did, for the record."""
    base = config["base_init"]
    out: Dict[str, Any] = {"base_init": base}
    if base in ("kaiming", "xavier"):  # seeded: the same draw on every rank of a DDP run (checked)
        out["record"] = initialize_(model, base).to_dict()
    if config.get("classifier_init") is not None:
        out["classifier"] = redraw_classifier_(model, config["classifier_init"])
    return out


def _initialize(model: nn.Module, config: Mapping[str, Any], data: ImageData,
                generator: Optional[torch.Generator]) -> Dict[str, Any]:
    """The init of a run. With a ``base_init``: the base, then the method on top of it (the base
    row is the base alone; emergence scales the base, ``base="keep"``; GradInit and MetaInit start
    from it; Xavier and LSUV draw their own). Without one (older records): the method alone."""
    check_init(config)
    if config["base_init"] is None:
        return _method(model, config, _method_options(config), data, generator)
    base = apply_base_(model, config)
    if is_base_row(config):
        record = ei.InitRecord(method=config["init"], options={}, details={"base_row": True}).to_dict()
    else:
        record = _method(model, config, _method_options(config), data, generator)
    record["base"] = base
    return record


def _measure(model: nn.Module, config: Mapping[str, Any], data: ImageData) -> Dict[str, Any]:
    k = int(config["emergence_batch_size"])
    x = prepare_batch(data, data.train_x[:k], config, None, train=False)
    kwargs = {} if config.get("emergence_threshold") is None else {"threshold": config["emergence_threshold"]}
    training = config.get("emergence_training")
    if training is None:  # BN nets train on batch statistics: read E as the first steps see it
        training = has_batch_norm(config["model"])
    report = ei.measure_emergence(model, x, training=bool(training), **kwargs).to_dict()
    return {**report, "training": bool(training)}


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def run(config: Mapping[str, Any], *, progress: bool = True) -> Dict[str, Any]:
    """Train one image configuration; return the task part of its record (see module doc)."""
    config = resolve_config(config, task="image")
    with run_settings(config):
        return _run(config, progress)


def init_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator of the batches a data-dependent init sees: its own stream, so that the runs of
    one seed train on the same batches whatever their init (seed pairing)."""
    return torch.Generator(device=device).manual_seed((int(seed) + _INIT_STREAM) % (1 << 63))


def init_model(config: Mapping[str, Any], data: ImageData,
               generator: Optional[torch.Generator] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model a run starts training from, and its init's record: seeded by ``config["seed"]``,
    built, initialized (base, then method). ``generator``: the training batches' stream, which
    data-dependent inits shared before ``base_init`` existed (those configs still do)."""
    config = resolve_config(config, task="image")
    device = data.train_x.device
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the model's own init draws from here: the same tensors for every row of a seed
    model = build_image_model(config, data).to(device)
    own_stream = config["base_init"] is not None or generator is None
    return model, _initialize(model, config, data, init_generator(seed, device) if own_stream else generator)


# compiled runs train one module per structure in a process (see _training_module)
_TRAINING_MODULES: Dict[str, nn.Module] = {}


def _training_module(model: nn.Module, config: Mapping[str, Any]) -> nn.Module:
    """The module a run trains. Eager: ``model``. Compiled: this process's module of the same
    structure, given ``model``'s parameters and buffers, so its compiled code and CUDA graphs
    (which hold parameter addresses) are reused by every run of that shape instead of recorded
    again; the first run of a shape keeps its own ``model`` for that."""
    if not config.get("compile"):
        return model
    shapes = [(k, tuple(v.shape), str(v.dtype), str(v.device), v.is_contiguous(memory_format=torch.channels_last))
              for k, v in model.state_dict().items()]
    key = repr((type(model).__qualname__, shapes))
    kept = _TRAINING_MODULES.setdefault(key, model)
    if kept is not model:
        kept.load_state_dict(model.state_dict())
        for p in kept.parameters():
            p.grad = None
    return kept


def _run(config: Dict[str, Any], progress: bool) -> Dict[str, Any]:
    device = pick_device(config["device"])
    generator = torch.Generator(device=device).manual_seed(int(config["seed"]))
    data = subset(load_dataset(config["dataset"], config["data_dir"], download=config["download"],
                               device=device), config)
    t0 = time.perf_counter()
    model, init_record = init_model(config, data, generator)
    extra: Dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()),
                             "train_size": int(data.train_x.shape[0]), "test_size": int(data.test_x.shape[0]),
                             "num_classes": int(data.num_classes), "init_wall_s": time.perf_counter() - t0}
    if config.get("channels_last") and config["model"] != "mlp":
        model = model.to(memory_format=torch.channels_last)
    try:
        emergence = _measure(model, config, data)
    except Exception as err:  # E is a measurement: a failure must not cost the run
        emergence = None
        extra["emergence_error"] = f"{type(err).__name__}: {err}"

    model = _training_module(model, config)
    optimizer = make_optimizer(model, config, lr_batch(config, data))
    if config.get("layerwise_lr"):
        extra["lr_scales"] = {g["name"]: g["lr_scale"] for g in optimizer.param_groups}
    trained = ddp.current().wrap(model)  # DDP in a process group (emergeinit train --nproc N)
    steps_per_epoch = epoch_steps(config, data.train_x.shape[0])
    extra["steps_per_epoch"] = steps_per_epoch
    factor = lr_lambda(config, steps_per_epoch)
    phases = [(0, "extra")] if config["extra_epoch"] else []
    phases += [(e, "main") for e in range(1, int(config["epochs"]) + 1)]

    epochs: List[Dict[str, Any]] = []
    diverged = False
    step = 0
    for epoch, phase in phases:
        steps = step_budget(steps_per_epoch, max_steps=config["max_steps"], done=step)
        t_epoch = time.perf_counter()
        title = f"{config['model']} {config['init']} epoch {epoch}" if progress else None
        stats = train_epoch(trained, data, optimizer, config, lr_factor=factor, step0=step,
                            generator=generator, steps=steps, progress=title)
        step += stats["steps"]
        if stats["diverged_at_step"] is not None:
            diverged = True
            extra["diverged_at"] = {"epoch": epoch, "step": stats["diverged_at_step"]}
            break
        acc, test_loss = evaluate(model, data, config)
        if "first_loss" not in extra:
            extra["first_loss"] = _finite(stats["first_loss"])  # the run's first step (failure check)
        epochs.append({"epoch": epoch, "phase": phase, "train_loss": _finite(stats["train_loss"]),
                       "test_acc": acc, "test_loss": _finite(test_loss), "lr_end": stats["lr_end"],
                       "steps": stats["steps"], "time_s": time.perf_counter() - t_epoch,
                       "loss_curve": stats["loss_curve"]})
        if config["max_steps"] and step >= config["max_steps"]:
            break
    main = [e["test_acc"] for e in epochs if e["phase"] == "main"]
    extra["acc_1"] = main[0] if main else None
    extra["acc_best"] = max(main) if main else None
    return {"epochs": epochs, "emergence_at_init": emergence, "init_record": init_record,
            "diverged": diverged, "device": device_name(device), "extra": extra}
