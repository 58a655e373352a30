"""Every initialization of the paper's tables behind one call, each with what it cost.

``initialize(model, "gradinit", data=batch)`` runs a method by name, in place, and returns an
:class:`InitRecord`: its options, the forward / backward / Hessian-vector passes it spent, wall
seconds, and each weight layer's norm at the end relative to the start. Each method also stands
alone with a torch-style in-place name (``kaiming_init_``, ``xavier_init_``, ``metainit_``,
``gradinit_``, ``lsuv_init_``), returning the same record. A failed call leaves the weights as
they were.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

from torch import nn

from emergeinit.baselines.gradinit import GRADINIT_LR, gradinit_, gradinit_objective
from emergeinit.baselines.kaiming import kaiming_init_
from emergeinit.baselines.lsuv import lsuv_init_
from emergeinit.baselines.metainit import gradient_quotient, metainit_
from emergeinit.baselines.record import CostMeter, InitRecord, run_recorded
from emergeinit.baselines.xavier import xavier_init_
from emergeinit.init import emergence_init_, tfixup_init_
from emergeinit.trace import NonFiniteError

__all__ = [
    "initialize",
    "InitRecord",
    "METHODS",
    "NonFiniteError",
    "kaiming_init_",
    "xavier_init_",
    "metainit_",
    "gradinit_",
    "lsuv_init_",
    "gradient_quotient",
    "gradinit_objective",
    "GRADINIT_LR",
]


def _recorded_plan(method: str, init_: Callable[..., Any]) -> Callable[..., InitRecord]:
    """``init_(model, **options)`` run as a baseline: its plan becomes the record's details."""
    def run(model: nn.Module, **options: Any) -> InitRecord:
        def body(meter: CostMeter) -> Dict[str, Any]:
            return {"plan": init_(model, **options).to_dict()}

        return run_recorded(model, method, options, body)

    run.__doc__ = f"``emergeinit.init.{init_.__name__}`` run as a baseline and recorded."
    return run


#: method name -> function(model, **options) -> InitRecord
METHODS: Dict[str, Callable[..., InitRecord]] = {
    "kaiming": kaiming_init_,
    "xavier": xavier_init_,
    "emergence": _recorded_plan("emergence", emergence_init_),
    "tfixup": _recorded_plan("tfixup", tfixup_init_),
    "metainit": metainit_,
    "gradinit": gradinit_,
    "lsuv": lsuv_init_,
}


def initialize(model: nn.Module, method: str, **options: Any) -> InitRecord:
    """Initialize ``model`` in place with ``method`` (a name of :data:`METHODS`; case, "-" and
    "_" ignored) and its options; return the :class:`InitRecord` of the call."""
    key = str(method).lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown init method {method!r}; known: {', '.join(METHODS)}")
    return METHODS[key](model, **options)
