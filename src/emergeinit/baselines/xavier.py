"""Xavier / Glorot (Glorot & Bengio, 2010) initialization of every weight layer.

``gain`` is a number or a nonlinearity name for ``torch.nn.init.calculate_gain``; uniform draws
by default (the paper's and fairseq's transformer default), zero biases, and the same optional
N(0, std²) classifier as :func:`kaiming_init_`. No passes through the network.
"""

from __future__ import annotations

from typing import Dict, Optional, Union

from torch import nn

from emergeinit.baselines._common import CLASSIFIER_RULES, NONLINEARITIES, redraw_
from emergeinit.baselines.record import InitRecord, run_recorded
from emergeinit.options import POSITIVE, Rule, check_values, one_of

__all__ = ["xavier_init_", "RULES"]

RULES: Dict[str, Rule] = {
    "gain": (lambda g: POSITIVE[0](g) or one_of(*NONLINEARITIES)[0](g),
             f"a positive finite number or a nonlinearity name ({', '.join(NONLINEARITIES)})"),
    "distribution": one_of("normal", "uniform"),
    **CLASSIFIER_RULES,
}


def xavier_init_(
    model: nn.Module,
    *,
    gain: Union[float, str] = 1.0,
    distribution: str = "uniform",
    zero_bias: bool = True,
    classifier_std: Optional[float] = None,
    classifier: Optional[str] = None,
    include_frozen: bool = False,
) -> InitRecord:
    """Redraw every weight layer from Glorot's distribution (Var = gain²·2/(fan_in+fan_out)); frozen
    layers only with ``include_frozen``, as :func:`~emergeinit.baselines.kaiming_init_`."""
    options = dict(gain=gain, distribution=distribution, zero_bias=zero_bias, classifier_std=classifier_std,
                   classifier=classifier, include_frozen=include_frozen)
    check_values("xavier", options, RULES)
    g = nn.init.calculate_gain(gain) if isinstance(gain, str) else float(gain)

    draw = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_

    def body(meter) -> dict:
        details = redraw_(model, lambda w: draw(w, gain=g), "xavier", options)
        return {**details, "gain": g}

    return run_recorded(model, "xavier", options, body)
