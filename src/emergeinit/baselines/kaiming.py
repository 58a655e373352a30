"""Kaiming (He et al., 2015) initialization of every weight layer, with the harness's conventions.

Options cover what the paper's models need: ``mode`` fan_in / fan_out, the ReLU gain (any
``nonlinearity`` of ``torch.nn.init.calculate_gain``), normal or uniform draws, zero biases, and
the N(0, 0.01) classifier of the VGG in GradInit's code (``classifier_std=0.01``). It spends no
passes through the network: layers are found in registration order.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from emergeinit.baselines._common import CLASSIFIER_RULES, NONLINEARITIES, redraw_
from emergeinit.baselines.record import InitRecord, run_recorded
from emergeinit.options import FINITE, Rule, check_values, one_of

__all__ = ["kaiming_init_", "RULES"]

RULES: Dict[str, Rule] = {
    "mode": one_of("fan_in", "fan_out"),
    "nonlinearity": one_of(*NONLINEARITIES),
    "a": FINITE,
    "distribution": one_of("normal", "uniform"),
    **CLASSIFIER_RULES,
}


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
    include_frozen: bool = False,
) -> InitRecord:
    """Redraw every weight layer from He et al.'s distribution, in place; biases to zero.

    ``classifier_std``: draw the classifier (``classifier``, default the last Linear) from
    N(0, classifier_std²) instead (0.01 for the VGG of GradInit's code).
    Frozen layers (``requires_grad=False``) are left as they are, with a warning, unless
    ``include_frozen``; a weight-normed weight is drawn exactly (see docs/baselines.md).
    """
    options = dict(mode=mode, nonlinearity=nonlinearity, a=a, distribution=distribution, zero_bias=zero_bias,
                   classifier_std=classifier_std, classifier=classifier, include_frozen=include_frozen)
    check_values("kaiming", options, RULES)

    draw = nn.init.kaiming_normal_ if distribution == "normal" else nn.init.kaiming_uniform_

    def body(meter) -> dict:
        return redraw_(model, lambda w: draw(w, a=a, mode=mode, nonlinearity=nonlinearity), "kaiming",
                       options)

    return run_recorded(model, "kaiming", options, body)
