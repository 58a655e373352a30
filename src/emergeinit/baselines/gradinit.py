"""GradInit (Zhu et al., NeurIPS 2021): learn one scale per parameter tensor so that the loss
after one optimizer step is small, subject to a bound γ on the gradient norm.

Each iteration takes a batch S: with θ(s) = s ⊙ θ₀ it computes g = ∇L(S; θ(s)). If ‖g‖ > γ the
scales take a step that lowers ‖g‖ (the constraint: a Hessian-vector product); otherwise they
take a step that lowers L(S̃; θ(s) − η g/‖g‖) / η, where S̃ shares its first half with S. As in
the authors' code the anticipated step η g/‖g‖ is held constant when that objective is
differentiated (``second_order=True`` differentiates through it too). Scales move by Adam (on their
clipped gradients, with separate moments for the two kinds of step) and never drop below
``min_scale`` (0 for biases). Defaults are those of the authors' CIFAR-10 runs
(``launch/run_gradinit.sh``): 390 iterations, γ = 1, η = 0.1, SGD direction with normalized
gradient, min-scale 0.01, per-scale gradient clip 1; the Adam step size depends on the
architecture (:data:`GRADINIT_LR`). The search runs through ``torch.func.functional_call``: the
model's tensors change once, at the end.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from emergeinit.baselines._common import (
    LOSS_RULE, LossFn, batch_on, batch_stream, bn_batch_stats_mode, call_with, default_loss,
    differentiating_twice, free_params, frozen_parameters, placement, rescale_, scaled_params, search_leaves,
)
from emergeinit.baselines.record import CostMeter, InitRecord, run_recorded
from emergeinit.options import (
    FLAG, FRACTION, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Rule, at_least, check_values, one_of, optional,
)
from emergeinit.trace import Batch, NonFiniteError, check_finite, preserve_state

__all__ = ["gradinit_", "gradinit_objective", "GRADINIT_LR", "GRADINIT_DEFAULT_LR", "RULES"]

#: Adam step size on the scales in the authors' CIFAR-10 runs, by architecture (our model names).
GRADINIT_LR: Dict[str, float] = {
    "vgg19": 1e-2,         # VGG-19 without BN (trained with gradient clip 1)
    "vgg19_bn": 1e-1,      # VGG-19 with BN
    "resnet110": 5e-2,     # ResNet-110 without BN (trained with gradient clip 1)
    "resnet110_bn": 1e-3,  # ResNet-110 with BN
}
#: The step size of ``train_cifar.py`` when none is given (its ``--gradinit-lr`` default).
GRADINIT_DEFAULT_LR = 1e-3

RULES: Dict[str, Rule] = {
    "loss_fn": LOSS_RULE,
    "iters": at_least(1),
    "lr": optional(POSITIVE),
    "arch": optional(one_of(*GRADINIT_LR)),
    "gamma": (lambda g: isinstance(g, numbers.Real) and not isinstance(g, bool) and g >= 0,
              "a number >= 0 (0: only constraint steps; inf: none)"),
    "eta": POSITIVE,
    "min_scale": UNIT_INTERVAL,
    "grad_clip": NON_NEGATIVE,
    "alg": one_of("sgd", "adam"),
    "normalize_grad": FLAG,
    "betas": (lambda b: isinstance(b, (tuple, list)) and len(b) == 2 and all(FRACTION[0](v) for v in b),
              "a pair of numbers in [0, 1)"),
    "eps": POSITIVE,
    "second_order": FLAG,
    "include_frozen": FLAG,
}


def _step_direction(grads: List[torch.Tensor], alg: str, normalize: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """(gradient norm, step direction) for the optimizer GradInit anticipates."""
    if alg == "adam":  # Adam's first step is the sign of the gradient; its size is the L1 norm
        return sum(g.abs().sum() for g in grads), [g.sign() for g in grads]
    gnorm = torch.sqrt(sum((g * g).sum() for g in grads))
    return gnorm, [g / gnorm for g in grads] if normalize else grads


def _overlap(cur: Batch, nxt: Batch) -> Batch:
    """S̃: the first half of S and the second half of the next batch (S itself for one batch)."""
    (x, y), (x2, y2) = cur, nxt
    if x2 is x or not (isinstance(x, torch.Tensor) and isinstance(x2, torch.Tensor)) or x.shape != x2.shape:
        return cur
    h = x.shape[0] // 2
    return torch.cat([x[:h], x2[h:]]), torch.cat([y[:h], y2[h:]])


def _grads(loss: torch.Tensor, params: Dict[str, torch.Tensor], create_graph: bool = True) -> List[torch.Tensor]:
    """∇ loss for every tensor of ``params`` (zeros where unused); ``create_graph`` keeps the graph a
    second derivative needs."""
    values = list(params.values())
    grads = torch.autograd.grad(loss, values, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(values, grads)]


def gradinit_objective(
    model: nn.Module,
    batch: Any,
    *,
    loss_fn: Optional[LossFn] = None,
    eta: float = 0.1,
    alg: str = "sgd",
    normalize_grad: bool = True,
) -> Tuple[float, float]:
    """(L(S; θ − η·d), ‖g‖) on one batch S = S̃: the loss after GradInit's anticipated step and
    the gradient norm its constraint bounds. BN uses batch statistics, as in the search."""
    loss_fn = loss_fn or default_loss
    x, y = batch_on(model, batch)
    with preserve_state(model), bn_batch_stats_mode(model):
        params = free_params(model)
        grads = _grads(loss_fn(call_with(model, params, x), y), params)
        gnorm, direction = _step_direction(grads, alg, normalize_grad)
        with torch.no_grad():
            moved = {n: p - eta * d for (n, p), d in zip(params.items(), direction)}
            after = loss_fn(call_with(model, moved, x), y)
    return float(after), float(gnorm.detach())


class _ScaleAdam:
    """Adam on a vector of scales with per-coordinate clipping and a floor (GradInit's optimizer)."""

    def __init__(self, n: int, lr: float, betas: Tuple[float, float], eps: float, clip: float):
        self.lr, self.betas, self.eps, self.clip = lr, betas, eps, clip
        self.m = torch.zeros(n, dtype=torch.float64)
        self.v = torch.zeros(n, dtype=torch.float64)
        self.t = 0

    def step(self, s: torch.Tensor, grad: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        g = grad.to(torch.float64)
        if self.clip > 0:
            g = g.clamp(-self.clip, self.clip)
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        denom = torch.sqrt(self.v / (1 - b2 ** self.t)) + self.eps
        return torch.maximum(s - self.lr / (1 - b1 ** self.t) * self.m / denom, floor)


def _resolve_lr(lr: Optional[float], arch: Optional[str]) -> float:
    if lr is not None:
        return float(lr)
    if arch is None:
        return GRADINIT_DEFAULT_LR
    try:
        return GRADINIT_LR[arch]
    except KeyError:
        raise ValueError(f"no GradInit step size known for arch {arch!r}; known: "
                         f"{', '.join(GRADINIT_LR)} (or pass lr=)") from None


def gradinit_(
    model: nn.Module,
    data: Any = None,
    *,
    loss_fn: Optional[LossFn] = None,
    iters: int = 390,
    lr: Optional[float] = None,
    arch: Optional[str] = None,
    gamma: float = 1.0,
    eta: float = 0.1,
    min_scale: float = 0.01,
    grad_clip: float = 1.0,
    alg: str = "sgd",
    normalize_grad: bool = True,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    second_order: bool = False,
    include_frozen: bool = False,
) -> InitRecord:
    """GradInit, in place. Returns the :class:`InitRecord` (details: steps of each kind, the
    gradient norm and objective per iteration, the final scales).

    ``data``: a batch ``(x, y)`` or an iterable of batches (the authors use 128 samples).
    ``lr``: Adam's step size on the scales; when None, :data:`GRADINIT_LR` ``[arch]``, else
    :data:`GRADINIT_DEFAULT_LR`. ``alg``: "sgd" or "adam", the optimizer whose first step is
    anticipated. Tensors that start at zero (biases) keep no scale, nor do frozen ones (unless
    ``include_frozen``; listed in ``details["frozen"]``, with a warning). ``second_order``:
    differentiate the objective through the anticipated step (one Hessian-vector product per
    objective step; the authors' code holds the step constant).
    """
    options = dict(loss_fn=loss_fn, iters=iters, lr=lr, arch=arch, gamma=gamma, eta=eta,
                   min_scale=min_scale, grad_clip=grad_clip, alg=alg,
                   normalize_grad=normalize_grad, betas=betas, eps=eps, second_order=second_order,
                   include_frozen=include_frozen)
    check_values("gradinit", options, RULES)
    step_lr = options["lr"] = _resolve_lr(lr, arch)
    loss_fn = options["loss_fn"] = loss_fn or default_loss

    def body(meter: CostMeter) -> Dict[str, Any]:
        device, dtype = placement(model)
        stream = batch_stream(data, "gradinit", device=device, need_targets=True)
        base = {n: p.detach() for n, p in model.named_parameters()}
        frozen = frozen_parameters(model, include_frozen, "gradinit")
        scaled = [n for n, t in base.items() if float(t.norm()) > 0 and n not in frozen]
        floor = torch.tensor([0.0 if n.rsplit(".", 1)[-1].endswith("bias") else min_scale
                              for n in scaled], dtype=torch.float64)
        s = torch.ones(len(scaled), dtype=torch.float64)
        objective_opt = _ScaleAdam(len(scaled), step_lr, betas, eps, grad_clip)
        constraint_opt = _ScaleAdam(len(scaled), step_lr, betas, eps, grad_clip)
        gnorms: List[float] = []
        objectives: List[Optional[float]] = []
        leaves = search_leaves(base)  # once: no copy of the network per iteration
        # the graph of g is needed by a constraint step (gamma finite) or a second-order objective
        keep_graph = second_order or math.isfinite(gamma)
        with preserve_state(model), bn_batch_stats_mode(model):
            cur = next(stream)
            for it in range(iters):
                nxt = next(stream)
                x, y = cur
                s_ = s.to(device=device, dtype=dtype).requires_grad_()
                with differentiating_twice(model, x, "gradinit"):
                    params = scaled_params(leaves, base, scaled, s_)
                    loss = loss_fn(call_with(model, params, x), y)
                    if it == 0:
                        check_finite(loss, "gradinit: the loss at the start", model, x)
                    grads = _grads(loss, params, create_graph=keep_graph)
                    meter.count_backward()
                    gnorm, direction = _step_direction(grads, alg, normalize_grad)
                    gnorms.append(float(gnorm.detach()))
                    if gnorms[-1] > gamma:  # the constraint is violated: lower the gradient norm
                        (grad_s,) = torch.autograd.grad(gnorm, s_)
                        meter.count_hvp()
                        opt, value = constraint_opt, None
                    else:  # lower the loss after one anticipated step, on the overlapping batch S̃
                        x2, y2 = _overlap(cur, nxt)
                        moved = {n: p - eta * (d if second_order else d.detach())
                                 for (n, p), d in zip(params.items(), direction)}
                        objective = loss_fn(call_with(model, moved, x2), y2) / eta
                        (grad_s,) = torch.autograd.grad(objective, s_)
                        if second_order:
                            meter.count_hvp()
                        else:
                            meter.count_backward()
                        opt, value = objective_opt, float(objective.detach())
                objectives.append(value)
                if not bool(torch.isfinite(grad_s).all()) or (value is not None and not math.isfinite(value)):
                    raise NonFiniteError(f"gradinit: non-finite objective or scale gradient at iteration {it}")
                s = opt.step(s, grad_s.detach().cpu(), floor)
                cur = nxt
        rescale_(model, {n: float(s[i]) for i, n in enumerate(scaled)})
        return {
            "iters": iters,
            "frozen": frozen,
            "objective_steps": objective_opt.t,
            "constraint_steps": constraint_opt.t,
            "grad_norm": gnorms,
            "objective": objectives,
            "tensor_scales": {n: float(v) for n, v in zip(scaled, s)},
        }

    return run_recorded(model, "gradinit", options, body)
