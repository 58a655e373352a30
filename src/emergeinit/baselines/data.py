"""Batches, losses and failure diagnosis shared by the data-dependent methods.

``data`` is one batch ``(x, y)`` (or a bare input ``x`` where labels are not needed) or any
iterable of such batches (a DataLoader, a list). Methods cycle through it for as many
iterations as they run; a one-shot iterator is replayed from the batches it already gave.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from emergeinit.trace import forward_hooks, run_model

__all__ = [
    "Batch",
    "LossFn",
    "NonFiniteError",
    "batch_stream",
    "to_device",
    "first_nonfinite_layer",
    "check_finite",
    "bn_batch_stats_mode",
    "default_loss",
]

Batch = Tuple[Any, Optional[torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteError(FloatingPointError):
    """A loss or a layer output is NaN/inf; the message names the first layer that went bad."""


def _is_batch(data: Any) -> bool:
    """One batch: a tensor, a dict of keywords, or (inputs, targets) with tensor/dict inputs."""
    if isinstance(data, (torch.Tensor, dict)):
        return True
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], (torch.Tensor, dict))
        and (data[1] is None or isinstance(data[1], torch.Tensor))
    )


def _split(batch: Any) -> Batch:
    if isinstance(batch, (torch.Tensor, dict)):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"a batch must be (inputs, targets) or a bare input tensor, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors (inside tuples/dicts too) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def batch_stream(data: Any, method: str, *, device: torch.device, need_targets: bool) -> Iterator[Batch]:
    """Endless stream of ``(x, y)`` from one batch or an iterable of batches, checked up front.

    Raises ``ValueError`` at once (before any weight changes) when ``data`` is None, an empty
    iterable, or a batch without the targets the method needs.
    """
    if data is None:
        raise ValueError(
            f"{method} is data-dependent: pass data=(inputs, targets) or an iterable of batches"
        )
    if _is_batch(data):
        first = _split(data)
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
            first = _split(next(source))
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
                current = _split(next(source))
            except StopIteration:
                current = None
        if replay:
            while True:
                for x, y in seen:
                    yield to_device(x, device), to_device(y, device)
        source = iter(data)
        try:
            current = _split(next(source))
        except StopIteration:  # a re-iterable that came back empty
            raise ValueError("data gave no batch on its second pass") from None


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return any(_has_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    return False


def first_nonfinite_layer(model: nn.Module, x: Any) -> Optional[str]:
    """Name of the first leaf module (in execution order) whose output holds NaN/inf on ``x``;
    ``"<input>"`` when the input already does; None when none does."""
    if _has_nonfinite(x):
        return "<input>"
    names = {id(m): n for n, m in model.named_modules()}
    found: List[str] = []

    def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not found and _has_nonfinite(output):
            found.append(names[id(module)] or type(module).__name__)

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    with forward_hooks(leaves, post=hook), torch.no_grad():
        run_model(model, x)
    return found[0] if found else None


def check_finite(value: torch.Tensor, what: str, method: str, model: nn.Module, x: Any) -> None:
    """Raise :class:`NonFiniteError` naming the first bad layer when ``value`` is not finite."""
    if bool(torch.isfinite(value.detach()).all()):
        return
    layer = first_nonfinite_layer(model, x)
    where = (
        "the input batch is not finite" if layer == "<input>"
        else f"first non-finite output: layer {layer!r}" if layer
        else "every layer output is finite: the loss function itself returned it"
    )
    raise NonFiniteError(f"{method}: {what} is {value.detach().flatten()[0].item()} ({where})")


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, the loss of every baseline's paper."""
    return F.cross_entropy(output, target)


class bn_batch_stats_mode:
    """Eval mode (no dropout) except batch-norm layers, which normalize with batch statistics.

    GradInit's convention for its search (and ours for LSUV); the running statistics the BN
    layers update meanwhile are restored by :class:`emergeinit.layers.preserve_state`.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.model.eval()
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()

    def __exit__(self, *exc: Any) -> None:
        return None
