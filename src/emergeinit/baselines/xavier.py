"""Xavier / Glorot (Glorot & Bengio, 2010) initialization of every weight layer.

``gain`` is a number or a nonlinearity name for ``torch.nn.init.calculate_gain``; uniform draws
by default (the paper's and fairseq's transformer default), zero biases, and the same optional
N(0, std²) classifier as :func:`kaiming_init_`. No passes through the network.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from emergeinit.baselines.kaiming import classifier_layer, reset_biases_
from emergeinit.baselines.record import InitRecord, run_recorded
from emergeinit.layers import find_weight_layers

__all__ = ["xavier_init_"]


def xavier_init_(
    model: nn.Module,
    *,
    gain: Union[float, str] = 1.0,
    distribution: str = "uniform",
    zero_bias: bool = True,
    classifier_std: Optional[float] = None,
    classifier: Optional[str] = None,
) -> InitRecord:
    """Redraw every weight layer from Glorot's distribution (Var = gain²·2/(fan_in+fan_out))."""
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    g = nn.init.calculate_gain(gain) if isinstance(gain, str) else float(gain)
    options = dict(gain=gain, distribution=distribution, zero_bias=zero_bias,
                   classifier_std=classifier_std, classifier=classifier)

    def body(meter) -> dict:
        layers = find_weight_layers(model, order="registration")
        head = classifier_layer(layers, classifier) if classifier_std is not None else None
        draw = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_
        with torch.no_grad():
            for layer in layers:
                if head is not None and layer.key == head.key:
                    nn.init.normal_(layer.weight, 0.0, classifier_std)
                else:
                    draw(layer.weight, gain=g)
        if zero_bias:
            reset_biases_(layers)
        return {"layers": len(layers), "gain": g, "classifier": head.key if head is not None else None}

    return run_recorded(model, "xavier", options, body)
