"""What a valid option is, in one place: rules that every method checks its options against before
it changes anything (pure; no torch).

A :data:`Rule` is a test and the words that say what passes it. :func:`check_values` checks the
options present in a mapping, so a method checks its own arguments and a grid checks a config's
``init_options`` with the same table, before the first run; :func:`bind_options` checks their
names against the method's signature.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Dict, Mapping, Tuple

__all__ = [
    "Rule",
    "POSITIVE",
    "NON_NEGATIVE",
    "FINITE",
    "FRACTION",
    "UNIT_INTERVAL",
    "FLAG",
    "at_least",
    "one_of",
    "optional",
    "check_values",
    "bind_options",
]

Rule = Tuple[Callable[[Any], bool], str]


def _finite(x: Any) -> bool:
    """A real number (int, float, numpy scalar), not a bool or a string, and finite."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


POSITIVE: Rule = (lambda x: _finite(x) and x > 0, "a positive finite number")
NON_NEGATIVE: Rule = (lambda x: _finite(x) and x >= 0, "a finite number >= 0")
FINITE: Rule = (_finite, "a finite number")
FRACTION: Rule = (lambda x: _finite(x) and 0 <= x < 1, "a number in [0, 1)")
UNIT_INTERVAL: Rule = (lambda x: _finite(x) and 0 <= x <= 1, "a number in [0, 1]")
FLAG: Rule = (lambda x: isinstance(x, bool), "True or False (a string such as 'false' is not)")


def at_least(minimum: int) -> Rule:
    """An int (not a bool, not a float such as 2.5) of at least ``minimum``."""
    return (lambda x: isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= minimum,
            f"an integer >= {minimum}")


def one_of(*choices: Any) -> Rule:
    return (lambda x: isinstance(x, type(choices[0])) and x in choices,
            "one of " + ", ".join(repr(c) for c in choices))


def optional(rule: Rule) -> Rule:
    """None, or what ``rule`` accepts."""
    test, what = rule
    return (lambda x: x is None or test(x), f"None or {what}")


def check_values(method: str, options: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """A ValueError naming the first option of ``options`` that breaks its rule in ``rules``
    (options without a rule are left to the method)."""
    for name, (test, what) in rules.items():
        if name in options and not test(options[name]):
            raise ValueError(f"{method}: {name} must be {what}, got {options[name]!r}")


def bind_options(function: Callable[..., Any], options: Mapping[str, Any], method: str) -> Dict[str, Any]:
    """``options`` bound to the parameters of ``function`` after its first (the model), defaults
    filled in and ``**kwargs`` flattened: what a call would receive. An unknown or missing option
    is a TypeError that lists the known ones."""
    signature = inspect.signature(function)
    try:
        bound = signature.bind(None, **options)  # None stands for the model
    except TypeError as err:
        known = ", ".join(list(signature.parameters)[1:])
        raise TypeError(f"{method}: {err} (its options: {known})") from None
    bound.apply_defaults()
    values: Dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        is_rest = signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD
        values.update(value if is_rest else {name: value})
    return values
