"""LSUV (Mishkin & Matas, 2015: "All you need is a good init"): layer-sequential unit variance.

Start every weight layer orthonormal (Saxe et al.), then, layer by layer in execution order,
measure the variance of the layer's output on a batch and divide its weight by the standard
deviation until the variance is 1 within ``tol`` (the paper's Tol_var = 0.1), at most
``max_iters`` rescales per layer (T_max = 10). Outputs are read before the nonlinearity (the
output of the Linear/Conv module). BN layers normalize with batch statistics meanwhile (their
running statistics are restored). Each measurement is a forward pass stopped right after the
layer it measures; it is counted as a forward pass.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Tuple

import torch
from torch import nn

from emergeinit.baselines._common import batch_stream, bn_batch_stats_mode, writable_layers
from emergeinit.baselines.record import CostMeter, InitRecord, run_recorded
from emergeinit.layers import Storage, WeightLayer, draw_weight_, find_weight_layers, scale_weight_
from emergeinit.options import FLAG, POSITIVE, Rule, at_least, check_values
from emergeinit.trace import check_finite, forward_hooks, preserve_state, run_model

__all__ = ["lsuv_init_", "orthonormal_", "RULES"]

RULES: Dict[str, Rule] = {
    "tol": POSITIVE,
    "max_iters": at_least(0),
    "target_var": POSITIVE,  # 0 once zeroed the first layer and reported it converged
    "orthonormal": FLAG,
    "include_frozen": FLAG,
}


class _Stop(Exception):
    """Raised by the measuring hook: the rest of the forward pass is not needed."""


def orthonormal_(weights: Iterable[Tuple[WeightLayer, Storage]]) -> None:
    """Orthonormal start: each weight, flattened to (out, rest), gets orthonormal rows or columns."""
    for layer, stored in weights:
        draw_weight_(stored, nn.init.orthogonal_, layer.transposed)  # rows are outputs, also for HF Conv1D


def _measure(model: nn.Module, module: nn.Module, x: Any) -> torch.Tensor:
    """Variance of ``module``'s first output on ``x`` (all elements), stopping the pass there."""
    seen: List[torch.Tensor] = []

    def hook(mod: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        seen.append(output if isinstance(output, torch.Tensor) else output[0])
        raise _Stop

    try:
        with forward_hooks([module], post=hook), torch.no_grad():
            run_model(model, x)
    except _Stop:
        pass
    if not seen:
        raise LookupError("the layer's module was not called")
    return seen[0].detach().float().var()


def lsuv_init_(
    model: nn.Module,
    data: Any = None,
    *,
    tol: float = 0.1,
    max_iters: int = 10,
    target_var: float = 1.0,
    orthonormal: bool = True,
    include_frozen: bool = False,
) -> InitRecord:
    """LSUV, in place. Returns the :class:`InitRecord` (details: per layer, the variances it
    measured and whether it converged).

    ``data``: a batch (``x`` or ``(x, y)``; labels are not used) or an iterable of batches,
    each measurement taking the next. Attention projections (whose output no module returns)
    and layers never called get the orthonormal start only; they are listed as skipped. Frozen layers
    are left as they are (listed as frozen, with a warning) unless ``include_frozen``.
    """
    options = dict(tol=tol, max_iters=max_iters, target_var=target_var, orthonormal=orthonormal,
                   include_frozen=include_frozen)
    check_values("lsuv", options, RULES)

    def body(meter: CostMeter) -> Dict[str, Any]:
        params0 = list(model.parameters())
        device = params0[0].device if params0 else torch.device("cpu")
        stream = batch_stream(data, "lsuv", device=device, need_targets=False)
        x0, _ = next(stream)
        in_order = find_weight_layers(model, x0)  # execution order (one forward pass)
        layers, frozen = writable_layers(in_order, include_frozen, "lsuv")
        t0 = time.perf_counter()
        if orthonormal:
            orthonormal_(layers)
        orthonormal_seconds = time.perf_counter() - t0
        report: Dict[str, Dict[str, Any]] = {}
        skipped: List[str] = []
        with preserve_state(model), bn_batch_stats_mode(model):
            for layer, stored in layers:
                if layer.kind == "attention":
                    skipped.append(layer.key)
                    continue
                variances: List[float] = []
                converged = False
                for attempt in range(max_iters + 1):
                    x, _ = next(stream)
                    try:
                        var = _measure(model, layer.module, x)
                    except LookupError:
                        break
                    check_finite(var, f"lsuv: the output variance of {layer.name!r}", model, x)
                    variances.append(float(var))
                    if abs(float(var) - target_var) < tol:
                        converged = True
                        break
                    if attempt == max_iters or float(var) == 0.0:
                        break
                    scale_weight_(stored, float((target_var / var).sqrt()))
                if not variances:
                    skipped.append(layer.key)
                    continue
                report[layer.key] = {"variances": variances, "measurements": len(variances),
                                     "converged": converged}
        return {"layers": report, "skipped": skipped, "frozen": frozen,
                "orthonormal_seconds": orthonormal_seconds,
                "converged": sum(r["converged"] for r in report.values()),
                "measured": len(report)}

    return run_recorded(model, "lsuv", options, body)
