"""Every initialization of the paper's tables behind one call, each with what it cost.

``initialize(model, "gradinit", data=batch)`` runs a method by name, in place, and returns an
:class:`InitRecord`: its options, the forward / backward / Hessian-vector passes it spent, wall
seconds, and each weight layer's norm at the end relative to the start. Each method also stands
alone with a torch-style in-place name (``kaiming_init_``, ``xavier_init_``, ``metainit_``,
``gradinit_``, ``lsuv_init_``), returning the same record. A failed call leaves the weights as
they were.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Mapping, Union

from torch import nn

from emergeinit.baselines import gradinit, kaiming, lsuv, metainit, xavier
from emergeinit.baselines.gradinit import GRADINIT_LR, gradinit_, gradinit_objective
from emergeinit.baselines.kaiming import kaiming_init_
from emergeinit.baselines.lsuv import lsuv_init_
from emergeinit.baselines.metainit import gradient_quotient, metainit_
from emergeinit.baselines.record import CostMeter, InitRecord, run_recorded
from emergeinit.baselines.xavier import xavier_init_
from emergeinit.auto import auto_init_, check_auto_options
from emergeinit.init import (
    TRANSFORMER_RULES, check_emergence_options, emergence_init_, encoder_decoder_init_, tfixup_init_,
)
from emergeinit.options import Rule, bind_options, check_values
from emergeinit.trace import NonFiniteError

__all__ = [
    "initialize",
    "check_options",
    "InitRecord",
    "METHODS",
    "DATA_METHODS",
    "method_key",
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
    @functools.wraps(init_)  # its signature: check_options binds options against it
    def run(model: nn.Module, **options: Any) -> InitRecord:
        def body(meter: CostMeter) -> Dict[str, Any]:
            return {"plan": init_(model, **options).to_dict()}

        return run_recorded(model, method, options, body)

    run.__doc__ = f"``emergeinit.init.{init_.__name__}`` run as a baseline and recorded."
    return run


_emergence_fixed = _recorded_plan("emergence", emergence_init_)


def emergence_method(model: nn.Module, **options: Any) -> InitRecord:
    """The emergence init as a baseline: ``alpha`` a number (:func:`emergeinit.emergence_init_`),
    or ``alpha="auto"``: :func:`emergeinit.auto.auto_init_` chooses α, schedule and scope by short
    probes on ``data`` (required; ``loss_fn`` and its other options pass through) and applies the
    choice. The record's details hold the plan and, for "auto", the choice with its evidence; its
    backward passes are the probe's steps (its forward passes are counted by the record's hook,
    which the probe's deep copies carry)."""
    if options.get("alpha") != "auto":
        return _emergence_fixed(model, **options)
    auto = {k: v for k, v in options.items() if k != "alpha"}
    data = auto.pop("data", None)
    if data is None:
        raise ValueError("emergence with alpha='auto' is data-dependent: pass data=(inputs, targets) "
                         "or an iterable of batches")

    def body(meter: CostMeter) -> Dict[str, Any]:
        choice = auto_init_(model, data, **auto)
        meter.count_backward(choice.steps_run)
        return {"plan": choice.plan.to_dict() if choice.plan else None, "auto": choice.to_dict()}

    return run_recorded(model, "emergence", options, body)


#: method name -> function(model, **options) -> InitRecord
METHODS: Dict[str, Callable[..., InitRecord]] = {
    "kaiming": kaiming_init_,
    "xavier": xavier_init_,
    "emergence": emergence_method,
    "tfixup": _recorded_plan("tfixup", tfixup_init_),
    "metainit": metainit_,
    "gradinit": gradinit_,
    "lsuv": lsuv_init_,
}


def _checker(method: str, rules: Mapping[str, Rule]) -> Callable[[Mapping[str, Any]], None]:
    return lambda options: check_values(method, options, rules)


#: method name -> the check of its option values, without a model (each method runs it first)
VALUE_CHECKS: Dict[str, Callable[[Mapping[str, Any]], None]] = {
    "kaiming": _checker("kaiming", kaiming.RULES),
    "xavier": _checker("xavier", xavier.RULES),
    "emergence": lambda options: (check_auto_options(options) if options.get("alpha") == "auto" else
                                  check_emergence_options(bind_options(emergence_init_, options, "emergence"))),
    "tfixup": _checker("tfixup", TRANSFORMER_RULES),
    "metainit": _checker("metainit", metainit.RULES),
    "gradinit": _checker("gradinit", gradinit.RULES),
    "lsuv": _checker("lsuv", lsuv.RULES),
}

#: the core's in-place inits -> the check of their option values
FUNCTION_CHECKS: Dict[Callable[..., Any], Callable[[Mapping[str, Any]], None]] = {
    emergence_init_: check_emergence_options,
    tfixup_init_: _checker("tfixup_init_", TRANSFORMER_RULES),
    encoder_decoder_init_: _checker("encoder_decoder_init_", TRANSFORMER_RULES),
}


#: the methods that look at data: their result depends on the batches they see, not on the seed
#: alone (a multi-process run computes them on one rank and broadcasts them)
DATA_METHODS = frozenset({"metainit", "gradinit", "lsuv"})


def method_key(method: str) -> str:
    """A method's name as :data:`METHODS` spells it (case, "-" and "_" ignored); unknown: ValueError."""
    key = str(method).lower().replace("-", "").replace("_", "")
    if key not in METHODS:
        raise ValueError(f"unknown init method {method!r}; known: {', '.join(METHODS)}")
    return key


def initialize(model: nn.Module, method: str, **options: Any) -> InitRecord:
    """Initialize ``model`` in place with ``method`` (a name of :data:`METHODS`; case, "-" and
    "_" ignored) and its options; return the :class:`InitRecord` of the call."""
    return METHODS[method_key(method)](model, **options)


def check_options(method: Union[str, Callable[..., Any]], options: Mapping[str, Any]) -> None:
    """Check ``options`` without a model or data, as the method would before any change: an unknown
    method or a bad value is a ValueError, an unknown or missing option name a TypeError. What only
    a model can tell (a block pattern, a classifier name) waits for the run. ``method`` is a name of
    :data:`METHODS`, or one of the core's in-place inits (``encoder_decoder_init_``). A grid of runs
    calls this for every config before its first run."""
    if callable(method):
        if method not in FUNCTION_CHECKS:
            raise ValueError(f"no option check for {getattr(method, '__name__', method)!r}")
        function, check, name = method, FUNCTION_CHECKS[method], method.__name__
    else:
        name = method_key(method)
        function, check = METHODS[name], VALUE_CHECKS[name]
    check(bind_options(function, options, name))
