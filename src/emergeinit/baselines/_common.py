"""What the baselines share: batch streams, searches through
``torch.func.functional_call`` on scaled copies of the parameters, and redraws of every weight layer.

``data`` is one batch ``(x, y)`` (or a bare input ``x`` where labels are not needed) or any
iterable of such batches (a DataLoader, a list): the library's one convention,
:func:`emergeinit.trace.is_batch`. Methods cycle through it for as many iterations as they run; a
one-shot iterator is replayed from the batches it already gave.
"""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from emergeinit.layers import (
    Storage, WeightLayer, draw_weight_, find_weight_layers, is_frozen, warn_frozen, weight_storage,
)
from emergeinit.options import FLAG, NON_NEGATIVE, Rule, optional
from emergeinit.trace import Batch, is_batch, modules_running, split_batch, to_device, warn_if_two_inputs

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: no fused attention kernels to avoid
    SDPBackend = sdpa_kernel = None

__all__ = [
    "LossFn",
    "LOSS_RULE",
    "batch_stream",
    "to_device",
    "default_loss",
    "bn_batch_stats_mode",
    "placement",
    "batch_on",
    "frozen_parameters",
    "free_params",
    "search_leaves",
    "scaled_params",
    "call_with",
    "rescale_",
    "NONLINEARITIES",
    "CLASSIFIER_RULES",
    "classifier_layer",
    "writable_layers",
    "redraw_",
    "reset_biases_",
    "differentiating_twice",
]

# ------------------------------------------------------------------------------------- batches

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSS_RULE: Rule = optional((callable, "a callable (output, targets) -> loss"))


def batch_stream(data: Any, method: str, *, device: torch.device, need_targets: bool) -> Iterator[Batch]:
    """Endless stream of ``(x, y)`` from one batch or an iterable of batches, checked up front.

    Raises ``ValueError`` at once (before any weight changes) when ``data`` is None, an empty
    iterable, or a batch without the targets the method needs.
    """
    if data is None:
        raise ValueError(
            f"{method} is data-dependent: pass data=(inputs, targets) or an iterable of batches"
        )
    if not need_targets:  # targets are ignored: a pair that looks like two input batches is said
        warn_if_two_inputs(data, method)
    if is_batch(data):
        first = split_batch(data)
        source = None
    else:
        try:
            source = iter(data)
        except TypeError:
            raise ValueError(
                f"{method}: data must be a batch (inputs, targets) or an iterable of batches, "
                f"got {type(data).__name__}"
            ) from None
        try:
            first = split_batch(next(source))
        except StopIteration:
            raise ValueError(f"{method}: data is an empty iterable (no batch to initialize on)") from None
    if need_targets and first[1] is None:
        raise ValueError(f"{method} needs targets: pass batches as (inputs, targets)")
    return _cycle(data, source, first, device)


def _cycle(data: Any, source: Optional[Iterator], first: Batch, device: torch.device) -> Iterator[Batch]:
    if source is None:
        batch = (to_device(first[0], device), to_device(first[1], device))
        while True:
            yield batch
    replay = source is data  # a one-shot iterator: keep what it gave
    seen: List[Batch] = []
    current: Optional[Batch] = first
    while True:
        while current is not None:
            if replay:
                seen.append(current)
            yield to_device(current[0], device), to_device(current[1], device)
            try:
                current = split_batch(next(source))
            except StopIteration:
                current = None
        if replay:
            while True:
                for x, y in seen:
                    yield to_device(x, device), to_device(y, device)
        source = iter(data)
        try:
            current = split_batch(next(source))
        except StopIteration:  # a re-iterable that came back empty
            raise ValueError("data gave no batch on its second pass") from None


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, the loss of every baseline's paper."""
    return F.cross_entropy(output, target)


@contextmanager
def bn_batch_stats_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) except batch-norm layers, which normalize with batch statistics:
    GradInit's convention for its search, and ours for LSUV. Modes and the running statistics the
    BN layers update meanwhile are restored by :func:`emergeinit.trace.preserve_state`, not here."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    yield


# ----------------------------------------------------------- searches on copies of the parameters

def placement(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter; a model without any is a ValueError."""
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no parameters")
    return first.device, first.dtype


def batch_on(model: nn.Module, batch: Any) -> Tuple[Any, Any]:
    """``(inputs, targets)`` of one batch, moved to the model's device."""
    device, _ = placement(model)
    return to_device(batch[0], device), to_device(batch[1], device)


def frozen_parameters(model: nn.Module, include_frozen: bool, method: str) -> List[str]:
    """Names of the parameters with ``requires_grad=False``, which a search leaves as they are (named
    in a warning); none with ``include_frozen``."""
    frozen = [] if include_frozen else [n for n, p in model.named_parameters() if not p.requires_grad]
    warn_frozen(method, frozen)
    return frozen


def free_params(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached copies of every parameter, by name, that autograd can differentiate."""
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def search_leaves(base: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """One tensor per entry of ``base`` that autograd can differentiate, sharing its storage (no
    copy): made once per search, since nothing writes them in place (the model's parameters are
    written after the search ends)."""
    return {n: t.detach().requires_grad_() for n, t in base.items()}


def scaled_params(leaves: Dict[str, torch.Tensor], base: Dict[str, torch.Tensor], names: Sequence[str],
                  scales: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Parameters for :func:`call_with`: ``scales[i] * base[names[i]]`` (differentiable in the
    scales) and, for every other tensor, its leaf from :func:`search_leaves`."""
    params = dict(leaves)
    for i, n in enumerate(names):
        params[n] = scales[i] * base[n]
    return params


def call_with(model: nn.Module, params: Dict[str, torch.Tensor], x: Any) -> Any:
    """``model`` run on ``x`` (a tensor or a dict of keywords) with ``params`` in place of its own."""
    if isinstance(x, dict):
        return functional_call(model, params, (), x)
    return functional_call(model, params, (x,))


def rescale_(model: nn.Module, scales: Dict[str, float]) -> None:
    """Multiply each named parameter by its scale, in place: a search's one write to the model."""
    live = dict(model.named_parameters())
    with torch.no_grad():
        for n, s in scales.items():
            live[n].mul_(s)


# ------------------------------------------------------------------------------------- redraws

NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
"""The names ``torch.nn.init.calculate_gain`` knows."""

CLASSIFIER_RULES: Dict[str, Rule] = {
    "include_frozen": FLAG,
    "zero_bias": FLAG,
    "classifier_std": optional(NON_NEGATIVE),
    "classifier": optional((lambda name: isinstance(name, str), "a module name")),
}
"""The options :func:`redraw_` takes, as Kaiming and Xavier pass them on."""


def classifier_layer(layers: List[WeightLayer], name: Optional[str] = None) -> WeightLayer:
    """The layer named ``name`` (module name), else the last Linear in registration order."""
    if name is not None:
        for layer in layers:
            if layer.name == name or layer.key == name:
                return layer
        raise ValueError(f"classifier {name!r} is not a weight layer; known: {[l.name for l in layers]}")
    linears = [l for l in layers if l.kind == "linear"]
    if not linears:
        raise ValueError("classifier_std needs a Linear classifier layer; none found (name one with classifier=)")
    return linears[-1]


def writable_layers(layers: List[WeightLayer], include_frozen: bool,
                    method: str) -> Tuple[List[Tuple[WeightLayer, Storage]], List[str]]:
    """Each layer with where its weight is stored, and the keys of the frozen ones, left out (and
    named in a warning) unless ``include_frozen``."""
    stored = [(layer, weight_storage(layer.module, layer.param_name, layer.key)) for layer in layers]
    frozen = [] if include_frozen else [layer.key for layer, s in stored if is_frozen(s)]
    warn_frozen(method, frozen)
    return [(layer, s) for layer, s in stored if layer.key not in frozen], frozen


def redraw_(model: nn.Module, draw: Callable[[torch.Tensor], Any], method: str,
            options: Mapping[str, Any]) -> Dict[str, Any]:
    """Redraw every weight layer (registration order, no forward pass) with ``draw``, or the
    classifier from N(0, classifier_std²); zero the biases. Frozen layers are left as they are
    unless ``include_frozen``. ``options`` holds those of :data:`CLASSIFIER_RULES`. Returns the
    record's details."""
    classifier_std, include_frozen = options["classifier_std"], options["include_frozen"]
    layers = find_weight_layers(model, order="registration")
    classifier = options["classifier"]
    head = classifier_layer(layers, classifier) if classifier_std is not None else None
    kept, frozen = writable_layers(layers, include_frozen, method)
    for layer, stored in kept:
        is_head = head is not None and layer.key == head.key
        draw_weight_(stored, (lambda w: nn.init.normal_(w, 0.0, classifier_std)) if is_head else draw,
                     layer.transposed)
    if options["zero_bias"]:
        reset_biases_([layer for layer, _ in kept], include_frozen)
    return {"layers": len(kept), "classifier": head.key if head is not None else None, "frozen": frozen}


def reset_biases_(layers: List[WeightLayer], include_frozen: bool = False) -> None:
    """Zero every weight layer's bias (the He and Glorot papers start biases at 0); a frozen bias
    only with ``include_frozen``."""
    with torch.no_grad():
        for layer in layers:
            bias = layer.bias if layer.bias_key else None  # a parameter, never a computed tensor
            if bias is not None and (include_frozen or bias.requires_grad):
                bias.zero_()


# ------------------------------------------------------------------------- second derivatives

_NO_DERIVATIVE = re.compile(r"derivative for (aten::\w+) is not implemented")


@contextmanager
def differentiating_twice(model: nn.Module, x: Any, method: str) -> Iterator[None]:
    """Where a method differentiates a gradient: attention runs on the math backend (the fused
    kernels have no second derivative), and an op that has none anyway (``hardsigmoid``) becomes a
    ValueError naming it and the modules that run it on ``x``."""
    kernel = sdpa_kernel(SDPBackend.MATH) if sdpa_kernel is not None else nullcontext()
    try:
        with kernel:
            yield
    except RuntimeError as err:
        missing = _NO_DERIVATIVE.search(str(err))
        if missing is None:
            raise
        op = missing.group(1)
        forward_op = op[: -len("_backward")] if op.endswith("_backward") else op
        users = modules_running(model, x, forward_op) or modules_running(model, x, op)
        where = ", ".join(users) if users else "no module found running it"
        raise ValueError(
            f"{method} needs second derivatives, and torch has none for {op} ({forward_op} runs in "
            f"{where}); replace those modules (e.g. nn.Hardsigmoid by x.add(3).clamp(0, 6) / 6) or "
            "use a first-order method. No weight was changed."
        ) from err
