"""What an initialization cost: passes through the network, wall seconds, and the scale it left.

Every method of :mod:`emergeinit.baselines` runs inside :func:`run_recorded`, which counts the
model's forward passes with a hook on the root module (so ``torch.func.functional_call`` and
partial passes count too), takes the backward passes the method reports to its :class:`CostMeter`,
times the call, and restores every parameter and buffer if the method raises.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping

import torch
from torch import nn

from emergeinit.layers import check_writable, find_weight_layers
from emergeinit.trace import forward_hooks, refuse_meta

__all__ = ["InitRecord", "CostMeter", "run_recorded", "jsonable"]


@dataclass
class InitRecord:
    """One initialization call: the method, its options, what it spent and the scale it left.

    ``backward_passes`` counts first-order reverse passes through the network; ``hvp_passes``
    counts the higher-order ones (a reverse pass through a graph that holds a gradient: a
    Hessian-vector product, or the gradient of a function of one). The two are disjoint.
    ``scales`` maps each weight layer's key to ``‖W_end‖ / ‖W_start‖`` (nan when it started at 0).
    """

    method: str
    options: Dict[str, Any]
    forward_passes: int = 0
    backward_passes: int = 0
    hvp_passes: int = 0
    wall_seconds: float = 0.0
    scales: Dict[str, float] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (options and details converted; nan scales become None)."""
        return {
            "method": self.method,
            "options": jsonable(self.options),
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "hvp_passes": self.hvp_passes,
            "wall_seconds": self.wall_seconds,
            "scales": {k: (None if math.isnan(v) else v) for k, v in self.scales.items()},
            "details": jsonable(self.details),
        }

    def __str__(self) -> str:
        finite = {k: v for k, v in self.scales.items() if not math.isnan(v)}
        lines = [
            f"{self.method}: {self.forward_passes} forward, {self.backward_passes} backward, "
            f"{self.hvp_passes} HVP passes, {self.wall_seconds:.3f} s",
        ]
        if finite:
            lo = min(finite, key=finite.get)
            hi = max(finite, key=finite.get)
            lines.append(
                f"  layer scale end/start over {len(self.scales)} layers: "
                f"min {finite[lo]:.4g} ({lo}), max {finite[hi]:.4g} ({hi})"
            )
        shown = {k: v for k, v in jsonable(self.options).items()}
        if shown:
            lines.append("  options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


class CostMeter:
    """Counters a method bumps as it spends passes; forward passes are counted by a hook."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.hvp = 0

    def count_backward(self, n: int = 1) -> None:
        self.backward += n

    def count_hvp(self, n: int = 1) -> None:
        self.hvp += n

    def count_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        """A forward pre-hook on the root module: every pass through the model counts."""
        self.forward += 1


def jsonable(value: Any) -> Any:
    """Options and details as JSON values: tensors by shape, callables by name, the rest by repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return jsonable(value.item())
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if callable(value):
        return getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or repr(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return repr(value)


def _norms(keys: List[str], tensors: List[torch.Tensor]) -> Dict[str, float]:
    with torch.no_grad():
        return {k: float(t.detach().float().norm()) for k, t in zip(keys, tensors)}


def run_recorded(
    model: nn.Module,
    method: str,
    options: Dict[str, Any],
    body: Callable[[CostMeter], Dict[str, Any]],
) -> InitRecord:
    """Run ``body(meter)`` on ``model`` and return its :class:`InitRecord`.

    The weight layers are listed first (registration order, no forward pass): a model without
    any, one on the meta device, or one whose weights cannot be written exactly (parametrized other
    than by weight_norm), raises ``ValueError`` before anything changes. If ``body`` raises, every
    parameter and buffer is put back as it was and the error propagates. ``body`` returns the
    record's details.
    """
    refuse_meta(model, f"initialize(..., {method!r})")
    layers = find_weight_layers(model, order="registration")
    check_writable(layers)  # before any weight is read
    keys = [l.key for l in layers]
    start = _norms(keys, [l.weight for l in layers])
    saved = [(t, t.detach().clone()) for t in list(model.parameters()) + list(model.buffers())]
    meter = CostMeter()
    t0 = time.perf_counter()
    try:
        with forward_hooks([model], pre=meter.count_forward):
            details = body(meter) or {}
    except BaseException:
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)
        raise
    wall = time.perf_counter() - t0
    end = _norms(keys, [l.weight for l in layers])
    scales = {k: (end[k] / start[k] if start[k] > 0 else float("nan")) for k in keys}
    return InitRecord(
        method=method,
        options=dict(options),
        forward_passes=meter.forward,
        backward_passes=meter.backward,
        hvp_passes=meter.hvp,
        wall_seconds=wall,
        scales=scales,
        details=details,
    )
