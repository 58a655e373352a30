"""Tuning from one probe batch: α chosen by a rule (``auto_alpha``) and layer-wise learning rates
(the paper's "On learning rates": η_l ∝ 1/sqrt(E‖∇_{x_l} L‖²)).

Both run the model on a batch, so they sit above the initialization: this module imports
:mod:`emergeinit.init`, never the reverse. x_l is the input of weight layer l; its gradient is
measured once, at initialization, and the rates are normalized so their geometric mean is
``base_lr``. The result is a list of optimizer parameter groups any ``torch.optim`` optimizer takes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from emergeinit.init import emergence_init_
from emergeinit.layers import WeightLayer, find_weight_layers, trained_parameters
from emergeinit.probe import measure_emergence
from emergeinit.schedules import positive_number
from emergeinit.trace import (
    NonFiniteError, check_finite, fork_rng, forward_hooks, has_nonfinite, nonfinite_error, preserve_state,
    refuse_meta, run_model, split_batch,
)

__all__ = ["auto_alpha", "DEFAULT_GRID", "layerwise_lr_groups", "input_grad_norms"]


# ------------------------------------------------------------------------------------- auto alpha

DEFAULT_GRID: Tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


def _probe(model: nn.Module, inputs: Any, targets: Any,
           loss_fn: Optional[Callable]) -> Tuple[float, float, torch.Tensor]:
    """(output RMS, gradient norm over all parameters, loss) of one forward/backward."""
    out = run_model(model, inputs)
    if loss_fn is None:
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = 0.5 * out.float().pow(2).mean()
    else:
        loss = loss_fn(out, targets)
        out = out[0] if isinstance(out, (tuple, list)) else out
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    gnorm = math.sqrt(sum(float(g.detach().double().pow(2).sum()) for g in grads if g is not None))
    rms = float(out.detach().double().pow(2).mean().sqrt())
    return rms, gnorm, loss.detach()


def auto_alpha(
    model: nn.Module,
    batch: Any,
    *,
    loss_fn: Optional[Callable[[Any, Any], torch.Tensor]] = None,
    grid: Sequence[float] = DEFAULT_GRID,
    tolerance: float = 10.0,
    criterion: str = "largest",
    threshold: Optional[float] = None,
    measure: Optional[Callable[..., Any]] = None,
    return_trials: bool = False,
    **init_kwargs: Any,
) -> Union[float, Tuple[float, List[Dict[str, float]]]]:
    """Choose α from one probe batch, on deep copies (the user's model is untouched).

    Rule: for each α of ``grid`` apply :func:`emergeinit.emergence_init_` (``init_kwargs``, default
    ``base=None``: scale the current weights) to a copy, run one forward/backward, and call α
    *admissible* when the output RMS and the total gradient norm both stay within a factor
    ``tolerance`` of those at α = 1. ``criterion="largest"`` returns the largest admissible α;
    The old screening rule, kept for its callers: it returned α = 1 on every real image model we
    tried, so :func:`emergeinit.choose_init` (probes that train) is the one to use. An α whose
    factors would leave the dtype's range is inadmissible (its trial says why), never an error.
    ``"emergence"`` returns the admissible α with the largest measured emergence
    (``measure``, default ``emergeinit.measure_emergence``: called as ``measure(model, inputs,
    threshold=...)``, its result's ``.log10`` is compared). α = 1 is always admissible.
    ``batch`` is one batch (:func:`emergeinit.trace.is_batch`): the model input, or ``(inputs,
    targets)``; ``loss_fn(output, targets)`` needs the targets (without it the loss is
    ½·mean(output²)). ``return_trials=True`` also returns one dict per α. NaN/inf at α = 1 (in the
    batch, the output, the loss or the gradient) is a :class:`~emergeinit.trace.NonFiniteError`
    naming the first bad layer; at other α it only makes that α inadmissible.
    """
    if criterion not in ("largest", "emergence"):
        raise ValueError(f"unknown criterion {criterion!r}: use 'largest' or 'emergence'")
    tolerance = positive_number(tolerance, "tolerance")
    if tolerance < 1:
        raise ValueError(f"tolerance must be >= 1, got {tolerance}")
    alphas = sorted({positive_number(a, "grid value") for a in grid} | {1.0})
    init_kwargs.setdefault("base", None)
    example, targets = split_batch(batch)
    if loss_fn is not None and targets is None:
        raise ValueError("auto_alpha: loss_fn needs targets: pass batch=(inputs, targets)")
    refuse_meta(model, "auto_alpha")
    if has_nonfinite(example):
        raise NonFiniteError("auto_alpha: the input batch is not finite")
    trials: List[Dict[str, float]] = []
    with fork_rng(model):
        for a in alphas:
            torch.manual_seed(0)  # every trial starts from the same random state
            twin = copy.deepcopy(model)
            try:
                emergence_init_(twin, alpha=a, example_input=example, **init_kwargs)
            except ValueError as err:  # factors outside the dtype's range: this α is out, not an error
                if a == 1.0:
                    raise
                trials.append({"alpha": a, "output_rms": math.nan, "grad_norm": math.nan, "skipped": str(err)})
                continue
            with preserve_state(twin):
                rms, gnorm, loss = _probe(twin, example, targets, loss_fn)
                if a == 1.0 and not all(map(math.isfinite, (rms, gnorm, float(loss)))):
                    raise nonfinite_error(
                        f"auto_alpha: at alpha = 1 the output RMS, the loss or the gradient norm is not "
                        f"finite (RMS {rms}, loss {float(loss)}, gradient norm {gnorm})", twin, example)
            trial = {"alpha": a, "output_rms": rms, "grad_norm": gnorm}
            if criterion == "emergence":
                kw = {} if threshold is None else {"threshold": threshold}
                try:
                    with torch.no_grad():
                        report = (measure or measure_emergence)(twin, example, **kw)
                    trial["log10_emergence"] = float(report.log10)
                except NonFiniteError:
                    if a == 1.0:
                        raise
                    trial["log10_emergence"] = -math.inf  # a layer overflowed: this α is ranked last
            trials.append(trial)
    ref = next(t for t in trials if t["alpha"] == 1.0)

    def within(x: float, x0: float) -> bool:
        if not (math.isfinite(x) and math.isfinite(x0)):
            return False
        if x0 == 0:
            return x == 0
        return 1 / tolerance <= x / x0 <= tolerance

    for t in trials:
        t["admissible"] = float(within(t["output_rms"], ref["output_rms"])
                                and within(t["grad_norm"], ref["grad_norm"]))
    ok = [t for t in trials if t["admissible"]] or [ref]
    if criterion == "largest":
        best = max(ok, key=lambda t: t["alpha"])
    else:
        best = max(ok, key=lambda t: (t["log10_emergence"], -t["alpha"]))
    return (best["alpha"], trials) if return_trials else best["alpha"]


# ------------------------------------------------------------------------ layer-wise learning rates

def _first_tensor(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    for a in list(args) + [kwargs.get(k) for k in ("input", "query", "x")]:
        if isinstance(a, torch.Tensor):
            return a
    return None


def _with_targets(batch: Any, what: str) -> Tuple[Any, torch.Tensor]:
    inputs, targets = split_batch(batch)
    if targets is None:
        raise ValueError(f"{what} needs targets: pass batch=(inputs, targets)")
    return inputs, targets


def input_grad_norms(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    *,
    layers: Optional[List[WeightLayer]] = None,
    train: bool = True,
) -> Dict[str, Optional[float]]:
    """Weight-layer key -> ‖∇_{x_l} L‖ (summed over calls of a shared module) on one batch, or None
    where the input was not observed (a layer applied functionally, or an input without gradient).

    ``batch`` is ``(inputs, targets)``; the loss is ``loss_fn(model(inputs), targets)``. The model's
    parameters, ``.grad`` fields, buffers, modes and the global random state are left as they were.
    A non-finite loss or input gradient is a :class:`~emergeinit.trace.NonFiniteError`.
    """
    inputs, targets = _with_targets(batch, "input_grad_norms")
    refuse_meta(model, "input_grad_norms")
    if layers is None:
        layers = find_weight_layers(model, inputs)
    by_module: Dict[int, List[str]] = {}
    for l in layers:
        for m in [l.module] + [model.get_submodule(a) for a in l.aliases]:
            by_module.setdefault(id(m), []).append(l.key)
    seen: Dict[str, List[torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = _first_tensor(args, kwargs)
        if x is not None and x.requires_grad:
            for key in by_module[id(module)]:
                seen.setdefault(key, []).append(x)


    def grad_ready(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().requires_grad_(True)
        if isinstance(x, (tuple, list)):
            return type(x)(grad_ready(v) for v in x)
        if isinstance(x, dict):
            return {k: grad_ready(v) for k, v in x.items()}
        return x

    hooked = [m for m in model.modules() if id(m) in by_module]
    with preserve_state(model), fork_rng(model), torch.enable_grad(), forward_hooks(hooked, pre=hook):
        model.train(train)
        loss = loss_fn(run_model(model, grad_ready(inputs)), targets)
        check_finite(loss, "input_grad_norms: the loss", model, inputs)
        flat = [(k, x) for k, xs in seen.items() for x in xs]
        grads = torch.autograd.grad(loss, [x for _, x in flat], allow_unused=True) if flat else ()
    sq: Dict[str, float] = {}
    for (key, _), g in zip(flat, grads):
        if g is not None:
            sq[key] = sq.get(key, 0.0) + float(g.detach().double().pow(2).sum())
    bad = [f"{l.key} ({math.sqrt(sq[l.key])})" for l in layers if l.key in sq and not math.isfinite(sq[l.key])]
    if bad:
        raise NonFiniteError(f"input_grad_norms: the input gradient of {', '.join(bad)} is not finite "
                             "(the loss is finite)")
    return {l.key: (math.sqrt(sq[l.key]) if l.key in sq else None) for l in layers}


def layerwise_lr_groups(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    base_lr: float,
    *,
    example_input: Any = None,
    train: bool = True,
    **group_options: Any,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups with lr_l = base_lr · G / ‖∇_{x_l} L‖ (G: the geometric mean of
    the norms over the weight layers, so those layers' rates have geometric mean ``base_lr``).

    One group per weight layer (its weight and bias; named ``"name": key``), in execution order,
    then one ``"other"`` group at ``base_lr`` for every remaining parameter (norms, embeddings).
    Every parameter is in exactly one group. A layer whose input gradient could not be observed
    (``nn.MultiheadAttention.out_proj`` runs functionally) or is zero takes the rate of the layer
    executed before it (or after it, for the first). ``group_options`` (e.g. ``weight_decay``) go into
    every group. ``batch`` is ``(inputs, targets)``; the model is left unchanged.
    """
    base_lr = positive_number(base_lr, "base_lr")
    inputs, _ = _with_targets(batch, "layerwise_lr_groups")
    layers = find_weight_layers(model, inputs if example_input is None else example_input)
    norms = input_grad_norms(model, loss_fn, batch, layers=layers, train=train)
    inv: Dict[str, float] = {}  # 1/‖∇x_l L‖, unobserved layers copying the layer before
    last: Optional[float] = None
    for l in layers:
        v = norms[l.key]
        if v is not None and 0 < v < math.inf:
            last = 1.0 / v
        inv[l.key] = last  # type: ignore[assignment]
    first = next((x for x in inv.values() if x is not None), 1.0)
    inv = {k: (first if x is None else x) for k, x in inv.items()}
    log_mean = sum(math.log(x) for x in inv.values()) / len(inv)
    groups: List[Dict[str, Any]] = []
    assigned: set = set()
    for l in layers:
        bias = [l.bias] if l.bias_key else []
        params = [p for p in trained_parameters(l) + bias if id(p) not in assigned]
        assigned.update(id(p) for p in params)
        if params:
            lr = base_lr * math.exp(math.log(inv[l.key]) - log_mean)
            groups.append({"params": params, "lr": lr, "name": l.key,
                           "grad_norm": norms[l.key], **group_options})
    rest = [p for p in model.parameters() if id(p) not in assigned]
    if rest:
        groups.append({"params": rest, "lr": base_lr, "name": "other", "grad_norm": None, **group_options})
    return groups
