"""The training-loop mechanics every task shares: where a run computes (device, CPU threads, bf16
autocast, cuDNN autotuning), how fast (torch.compile of a task's forward, the optimizer's
implementation) and the optimizer steps themselves (lr per step, zero_grad / backward / clip /
step, a divergence check that syncs the device only every few steps, a progress bar). A task
supplies its batches and a loss function; everything between them and the optimizer happens here."""

from __future__ import annotations

import contextlib
import functools
import itertools
from dataclasses import dataclass
from typing import (Any, Callable, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple,
                    TypeVar, Union)

import torch

__all__ = ["pick_device", "cpu_threads", "run_settings", "autocast", "compiled", "uses_cudagraphs",
           "optimizer_options", "step_budget", "Steps", "train_steps"]

Batch = TypeVar("Batch")


def pick_device(name: Optional[str] = "auto") -> torch.device:
    """``auto`` (or None): the CUDA device when there is one, else the CPU; any other name as is."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(count: Optional[int]) -> Iterator[None]:
    """torch's CPU thread count set to ``count`` inside the block and restored after it, so a run
    never changes the process it runs in (None or 0: left as it is)."""
    if not count:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextlib.contextmanager
def run_settings(config: Mapping[str, Any]) -> Iterator[None]:
    """The process-wide settings a run asks for, set for the run and restored after it: torch's
    CPU threads (``cpu_threads``) and cuDNN's algorithm autotuning (``cudnn_benchmark``)."""
    saved = torch.backends.cudnn.benchmark
    if config.get("cudnn_benchmark"):
        torch.backends.cudnn.benchmark = True
    try:
        with cpu_threads(config.get("cpu_threads")):
            yield
    finally:
        torch.backends.cudnn.benchmark = saved


def autocast(enabled: bool, device: Union[str, torch.device]) -> ContextManager[Any]:
    """bf16 autocast on CUDA when ``enabled`` (bf16 needs no loss scaling); a no-op otherwise."""
    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def uses_cudagraphs(mode: Any, device: Union[str, torch.device]) -> bool:
    """Whether torch.compile in ``mode`` (a ``compile`` config value) captures CUDA graphs on
    ``device``: then each step must be marked, and its outputs are overwritten by the next one."""
    return mode in ("reduce-overhead", "max-autotune") and torch.device(device).type == "cuda"


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable[..., Any], mode: Any, dynamic: Optional[bool] = None) -> Callable[..., Any]:
    """``torch.compile(fn)`` in ``mode`` (a ``compile`` config value: True or "default" is
    torch's default mode), one wrapper per (fn, mode, dynamic) in a process. ``fn`` should take
    the model as an argument: its compiled code is then reused by every run of the process whose
    model has the same structure, and only a new structure, shape or train/eval mode compiles
    again (the compiler's on-disk cache serves later processes)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))  # a grid's models × shapes × train/eval
    return torch.compile(fn, mode=None if mode in (True, "default") else mode, dynamic=dynamic)


def optimizer_options(impl: Optional[str]) -> Dict[str, bool]:
    """Keyword arguments of a torch optimizer that pick its implementation (``optimizer_impl``):
    None leaves torch's choice (foreach on CUDA), ``fused`` one kernel for all parameters."""
    if impl is None:
        return {}
    return {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]


def step_budget(batches: int, *, max_epoch_steps: Optional[int] = None, max_steps: Optional[int] = None,
                done: int = 0) -> int:
    """Optimizer steps of the next epoch: one per batch, at most ``max_epoch_steps``, and no more
    than what ``done`` steps leave of ``max_steps`` (the run's total; None or 0: no cap)."""
    steps = batches
    if max_epoch_steps:
        steps = min(steps, int(max_epoch_steps))
    if max_steps:
        steps = min(steps, max(0, int(max_steps) - done))
    return steps


@dataclass
class Steps:
    """What :func:`train_steps` did: per-step logged values, how far it got, the last lr."""

    values: torch.Tensor        # [steps, ...] what the loss function logged at each step, on its device
    steps: int                  # optimizer steps taken (up to the check that found a non-finite value)
    diverged_at: Optional[int]  # index of the first step whose logged values are not finite
    lr: float                   # the learning rate of the last step


def train_steps(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_fn: Callable[[Batch], Tuple[torch.Tensor, torch.Tensor]],
    *,
    total: int,
    lr_at: Callable[[int], float],
    step0: int = 0,
    clip_grad_norm: Optional[float] = None,
    amp: bool = False,
    device: Union[str, torch.device] = "cpu",
    check_every: int = 20,
    progress: Optional[str] = None,
    mark_steps: bool = False,
) -> Steps:
    """Up to ``total`` optimizer steps, one per batch. Before step ``i`` every parameter group's
    lr becomes ``lr_at(step0 + i)`` times the group's ``lr_scale`` (1 when it has none); ``loss_fn(batch)`` runs under :func:`autocast` and returns
    the loss to backpropagate and a detached tensor to log. The logged values are checked for
    NaN/inf every ``check_every`` steps and after the last one (each check syncs the device); a
    non-finite value ends the loop with ``diverged_at`` set. ``progress``: a bar with that title.
    ``mark_steps``: tell torch.compile's CUDA graphs where each step begins (see
    :func:`uses_cudagraphs`); the logged values must then be copies, not graph outputs."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    check_every = max(1, int(check_every or 1))
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=progress, leave=False, unit="step")
    logged: List[torch.Tensor] = []
    checked, diverged_at = 0, None
    lr = float(optimizer.param_groups[0]["lr"])

    def check() -> bool:
        nonlocal checked, diverged_at
        rows = torch.stack(logged[checked:]).reshape(len(logged) - checked, -1)
        finite = torch.isfinite(rows).all(1)
        if not bool(finite.all()):
            diverged_at = checked + int(torch.nonzero(~finite)[0].item())
            return False
        if bar is not None:
            bar.update(len(logged) - checked)
            bar.set_postfix(loss=f"{rows[:, 0].mean().item():.3f}", refresh=False)
        checked = len(logged)
        return True

    try:
        for i, batch in enumerate(itertools.islice(batches, total)):
            lr = lr_at(step0 + i)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if mark_steps:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(amp, device):
                loss, value = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm))
            optimizer.step()
            logged.append(value)
            if len(logged) - checked >= check_every and not check():
                break
        if diverged_at is None and len(logged) > checked:
            check()
    finally:
        if bar is not None:
            bar.close()
    values = torch.stack(logged) if logged else torch.empty(0)
    return Steps(values, len(logged), diverged_at, lr)
