"""Kaiming (He et al., 2015) initialization of every weight layer, with the harness's conventions.

Options cover what the paper's models need: ``mode`` fan_in / fan_out, the ReLU gain (any
``nonlinearity`` of ``torch.nn.init.calculate_gain``), normal or uniform draws, zero biases, and
the N(0, 0.01) classifier of the VGG in GradInit's code (``classifier_std=0.01``). It spends no
passes through the network: layers are found in registration order.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from emergeinit.baselines.record import InitRecord, run_recorded
from emergeinit.layers import WeightLayer, find_weight_layers

__all__ = ["kaiming_init_", "classifier_layer", "reset_biases_"]


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


def redraw_(model: nn.Module, draw: Callable[[torch.Tensor], Any], *, zero_bias: bool,
            classifier_std: Optional[float], classifier: Optional[str]) -> Dict[str, Any]:
    """Redraw every weight layer (registration order, no forward pass) with ``draw``, or the
    classifier from N(0, classifier_std²); zero the biases. Returns the record's details."""
    layers = find_weight_layers(model, order="registration")
    head = classifier_layer(layers, classifier) if classifier_std is not None else None
    with torch.no_grad():
        for layer in layers:
            if head is not None and layer.key == head.key:
                nn.init.normal_(layer.weight, 0.0, classifier_std)
            else:
                draw(layer.weight)
    if zero_bias:
        reset_biases_(layers)
    return {"layers": len(layers), "classifier": head.key if head is not None else None}


def reset_biases_(layers: List[WeightLayer]) -> None:
    """Zero every weight layer's bias (the He and Glorot papers start biases at 0)."""
    with torch.no_grad():
        for layer in layers:
            if layer.bias is not None:
                layer.bias.zero_()


def kaiming_init_(
    model: nn.Module,
    *,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    a: float = 0.0,
    distribution: str = "normal",
    zero_bias: bool = True,
    classifier_std: Optional[float] = None,
    classifier: Optional[str] = None,
) -> InitRecord:
    """Redraw every weight layer from He et al.'s distribution, in place; biases to zero.

    ``classifier_std``: draw the classifier (``classifier``, default the last Linear) from
    N(0, classifier_std²) instead (0.01 for the VGG of GradInit's code).
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    options = dict(mode=mode, nonlinearity=nonlinearity, a=a, distribution=distribution,
                   zero_bias=zero_bias, classifier_std=classifier_std, classifier=classifier)

    draw = nn.init.kaiming_normal_ if distribution == "normal" else nn.init.kaiming_uniform_

    def body(meter) -> dict:
        return redraw_(model, lambda w: draw(w, a=a, mode=mode, nonlinearity=nonlinearity),
                       zero_bias=zero_bias, classifier_std=classifier_std, classifier=classifier)

    return run_recorded(model, "kaiming", options, body)
