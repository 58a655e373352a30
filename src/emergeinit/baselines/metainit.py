"""MetaInit (Dauphin & Schoenholz, NeurIPS 2019): tune each weight tensor's norm so that the
gradient quotient is small.

The gradient quotient of a loss L at θ is GQ = mean_i |(g − Hg)_i / g_i − 1| (g = ∇L, H the
Hessian, a small ε keeps g_i off zero): how much one gradient step would change the gradient,
per parameter. MetaInit minimizes it by sign-SGD with momentum on the norm of every parameter
tensor of dimension ≥ 2, on random N(0, 1) inputs with random labels (the paper), or on real
batches (GradInit's variant). Defaults are the paper's: 500 steps, lr 0.1, momentum 0.9,
ε = 1e-5, model in eval mode. The search runs through ``torch.func.functional_call`` on scaled
copies, so the model's tensors change once, at the end.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from emergeinit.baselines._common import (
    LOSS_RULE, LossFn, batch_on, batch_stream, call_with, default_loss, differentiating_twice, free_params,
    frozen_parameters, placement, rescale_, scaled_params, search_leaves,
)
from emergeinit.baselines.record import CostMeter, InitRecord, run_recorded
from emergeinit.options import FLAG, FRACTION, POSITIVE, UNIT_INTERVAL, Rule, at_least, check_values, optional
from emergeinit.trace import NonFiniteError, check_finite, infer_example_input, preserve_state

__all__ = ["metainit_", "gradient_quotient", "RULES"]

RULES: Dict[str, Rule] = {
    "loss_fn": LOSS_RULE,
    "steps": at_least(1),
    "lr": POSITIVE,
    "momentum": FRACTION,
    "eps": POSITIVE,
    "batch_size": at_least(1),
    "input_shape": optional((lambda shape: isinstance(shape, (tuple, list)) and len(shape) > 0
                             and all(at_least(1)[0](n) for n in shape), "a sequence of positive ints")),
    "min_scale": UNIT_INTERVAL,
    "include_frozen": FLAG,
}


def _quotient(
    loss: torch.Tensor, params: Sequence[torch.Tensor], eps: float, meter: Optional[CostMeter]
) -> torch.Tensor:
    """GQ as a differentiable scalar: one backward for g, one Hessian-vector product for Hg."""
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    if meter is not None:
        meter.count_backward()
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not pairs:
        raise ValueError("the loss does not depend on any parameter")
    half_sq = sum((g * g).sum() for _, g in pairs) / 2
    hvps = torch.autograd.grad(half_sq, [p for p, _ in pairs], create_graph=True, allow_unused=True)
    if meter is not None:
        meter.count_hvp()
    total = loss.new_zeros(())
    plus, minus = loss.new_tensor(eps), loss.new_tensor(-eps)  # eps * (2 [g >= 0] - 1), in two ops fewer
    for (_, g), hg in zip(pairs, hvps):
        away_from_zero = torch.where(g.detach() >= 0, plus, minus)
        total = total + ((g - (0 if hg is None else hg)) / (g + away_from_zero) - 1).abs().sum()
    return total / sum(p.numel() for p in params)


FINITE_CHECK_STEPS = 10
"""MetaInit reads its gradient quotients back every this many steps (and after the last) to stop a
search that went non-finite: a read-back per step would make an accelerator wait for every step."""


def _check_quotients(quotients: List[torch.Tensor], start: int) -> None:
    """A NonFiniteError naming the first step from ``start`` on whose gradient quotient is NaN/inf."""
    recent = torch.stack(quotients[start:])
    finite = torch.isfinite(recent)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteError(f"metainit: the gradient quotient is {recent[first].item()} at step {start + first}")


def gradient_quotient(
    model: nn.Module, batch: Any, *, loss_fn: Optional[LossFn] = None, eps: float = 1e-5
) -> float:
    """GQ of ``model`` (eval mode, as MetaInit measures it) on one batch ``(inputs, targets)``."""
    loss_fn = loss_fn or default_loss
    x, y = batch_on(model, batch)
    with preserve_state(model):
        model.eval()
        params = free_params(model)
        with differentiating_twice(model, x, "gradient_quotient"):
            loss = loss_fn(call_with(model, params, x), y)
            return float(_quotient(loss, list(params.values()), eps, None).detach())


def metainit_(
    model: nn.Module,
    data: Any = None,
    *,
    loss_fn: Optional[LossFn] = None,
    steps: int = 500,
    lr: float = 0.1,
    momentum: float = 0.9,
    eps: float = 1e-5,
    batch_size: int = 128,
    input_shape: Optional[Sequence[int]] = None,
    min_scale: float = 0.01,
    include_frozen: bool = False,
) -> InitRecord:
    """MetaInit, in place. Returns the :class:`InitRecord` (details: the GQ at every step).

    ``data``: None for the paper's random N(0, 1) inputs of shape ``input_shape`` (default:
    ``batch_size`` samples of the shape inferred from the first layer) with labels drawn
    uniformly from the model's output width; or a batch / iterable of batches ``(x, y)``.
    ``min_scale``: a norm never drops below this fraction of its start (a guard the paper's
    code lacks: there, a step past zero flips the tensor's sign). Frozen tensors keep their norm
    (listed in ``details["frozen"]``, with a warning) unless ``include_frozen``.
    """
    options = dict(loss_fn=loss_fn, steps=steps, lr=lr, momentum=momentum, eps=eps, batch_size=batch_size,
                   input_shape=input_shape, min_scale=min_scale, include_frozen=include_frozen)
    check_values("metainit", options, RULES)
    loss_fn = options["loss_fn"] = loss_fn or default_loss
    options = {"data": "random N(0,1)" if data is None else "given", **options}

    def body(meter: CostMeter) -> Dict[str, Any]:
        device, dtype = placement(model)
        if data is None:
            shape = tuple(input_shape) if input_shape is not None else tuple(
                infer_example_input(model, batch=batch_size).shape)
            stream = None
        else:
            stream = batch_stream(data, "metainit", device=device, need_targets=True)
        base = {n: p.detach() for n, p in model.named_parameters()}
        frozen = frozen_parameters(model, include_frozen, "metainit")
        tuned = [n for n, t in base.items() if t.dim() >= 2 and float(t.norm()) > 0 and n not in frozen]
        # the search's state stays on the model's device: a step reads nothing back to the host
        norm0 = torch.tensor([float(base[n].norm()) for n in tuned], dtype=torch.float64, device=device)
        norm = norm0.clone()
        memory = torch.zeros_like(norm0)
        quotients: List[torch.Tensor] = []
        checked = 0  # quotients known to be finite
        leaves = search_leaves(base)  # once: no copy of the network per step
        with preserve_state(model):
            model.eval()
            for step in range(steps):
                if stream is None:
                    x = torch.randn(shape, device=device, dtype=dtype)
                    y = None
                else:
                    x, y = next(stream)
                c = (norm / norm0).to(device=device, dtype=dtype).requires_grad_()
                with differentiating_twice(model, x, "metainit"):
                    params = scaled_params(leaves, base, tuned, c)
                    out = call_with(model, params, x)
                    if y is None:
                        y = torch.randint(0, out.shape[-1], (out.shape[0],), device=device)
                    loss = loss_fn(out, y)
                    if step == 0:
                        check_finite(loss, "metainit: the loss at the start", model, x)
                    gq = _quotient(loss, list(params.values()), eps, meter)
                    (grad_c,) = torch.autograd.grad(gq, c)
                meter.count_hvp()
                quotients.append(gq.detach())
                memory = momentum * memory - lr * grad_c.detach().sign().to(torch.float64)
                norm = torch.maximum(norm + memory, min_scale * norm0)
                if (step + 1) % FINITE_CHECK_STEPS == 0 or step + 1 == steps:
                    _check_quotients(quotients, checked)
                    checked = len(quotients)
        history = torch.stack(quotients).tolist()
        rescale_(model, {n: float(norm[i] / norm0[i]) for i, n in enumerate(tuned)})
        return {
            "steps": steps,
            "frozen": frozen,
            "tuned_tensors": len(tuned),
            "gq_first": history[0],
            "gq_last": history[-1],
            "gq": history,
        }

    return run_recorded(model, "metainit", options, body)
