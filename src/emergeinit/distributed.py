"""Initializing a model that trains on several processes (DDP, FSDP2): every rank ends up with
the same weights, the ones a single process would draw with the same seed.

- Deterministic inits (Kaiming, Xavier, the emergence init, T-Fixup) run on every rank from the
  same seed, with no communication; :func:`initialize_` then checks that the ranks agree.
- Data-dependent inits (GradInit, MetaInit, LSUV, or any function of a batch such as
  :func:`~emergeinit.tuning.auto_alpha`) run once, on one rank, and that rank's parameters,
  buffers, random state and return value are broadcast (:func:`init_once_`): each rank may hold
  different batches, and the result must still be one model.
- Sharded models (FSDP2's ``fully_shard``): :func:`~emergeinit.init.apply_plan_` writes sharded
  parameters itself (see :mod:`emergeinit.sharding`); :func:`reset_unplanned_` gives the tensors
  a plan leaves alone (norms, embeddings) their modules' own init, sharding-invariantly.

Without a process group (or with one process) everything here is the plain single-process call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn

from emergeinit import sharding
from emergeinit.plan import InitPlan

if TYPE_CHECKING:
    from emergeinit.baselines import InitRecord

__all__ = [
    "rank_and_world",
    "broadcast_state_",
    "broadcast_rng_",
    "init_once_",
    "initialize_",
    "checksum",
    "check_same_",
    "reset_unplanned_",
]

T = TypeVar("T")
Group = Any  # a torch.distributed ProcessGroup, or None for the default group


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def rank_and_world(group: Group = None) -> Tuple[int, int]:
    """This process's rank and the group's size; (0, 1) without an initialized process group."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def _tensors(model: nn.Module) -> List[torch.Tensor]:
    """Every parameter and buffer of ``model``, each once (ties kept), in a fixed order."""
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def broadcast_state_(model: nn.Module, *, src: int = 0, group: Group = None) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s values (in place; ties kept)."""
    if rank_and_world(group)[1] == 1:
        return
    dist = _dist()
    global_src = dist.get_global_rank(group, src) if group is not None else src
    with torch.no_grad():
        for t in _tensors(model):
            if sharding.is_sharded(t):
                raise ValueError("broadcast_state_ needs whole tensors: run a data-dependent init "
                                 "before sharding the model, or on each shard's owner")
            dist.broadcast(t.data, global_src, group=group)


def broadcast_rng_(generators: Iterable[torch.Generator] = (), *, src: int = 0, group: Group = None) -> None:
    """Give every rank rank ``src``'s random state: torch's CPU generator, the current CUDA
    device's (when CUDA is in use) and each of ``generators``."""
    if rank_and_world(group)[1] == 1:
        return
    dist = _dist()
    generators = list(generators)
    states: List[Any] = [[torch.get_rng_state()] + [g.get_state() for g in generators]
                         + ([torch.cuda.get_rng_state()] if torch.cuda.is_initialized() else [])]
    global_src = dist.get_global_rank(group, src) if group is not None else src
    dist.broadcast_object_list(states, global_src, group=group)
    cpu, *rest = states[0]
    torch.set_rng_state(cpu)
    for g, state in zip(generators, rest):
        g.set_state(state)
    if torch.cuda.is_initialized() and len(rest) > len(generators):
        torch.cuda.set_rng_state(rest[len(generators)])


def init_once_(model: nn.Module, init: Callable[[nn.Module], T], *, src: int = 0, group: Group = None,
               generators: Sequence[torch.Generator] = ()) -> T:
    """Run ``init(model)`` on rank ``src`` only, then give every rank its parameters, buffers,
    random state (torch's and ``generators``') and return value: one model however many ranks,
    even when each rank holds different data. An exception on ``src`` is raised on every rank."""
    rank, world = rank_and_world(group)
    if world == 1:
        return init(model)
    dist = _dist()
    outcome: List[Any] = [None]
    if rank == src:
        try:
            outcome[0] = ("ok", init(model))
        except Exception as err:  # every rank must leave the collective calls below together
            outcome[0] = ("error", err)
    global_src = dist.get_global_rank(group, src) if group is not None else src
    dist.broadcast_object_list(outcome, global_src, group=group)
    status, value = outcome[0]
    if status == "error":
        raise value
    broadcast_state_(model, src=src, group=group)
    broadcast_rng_(generators, src=src, group=group)
    return value


def checksum(model: nn.Module) -> float:
    """A float64 digest of every parameter and buffer (values and their positions): equal
    digests on two ranks mean, for any practical purpose, equal models. Sharded tensors count
    their local shard only."""
    total = 0.0
    with torch.no_grad():
        for i, t in enumerate(_tensors(model)):
            x = (t.to_local() if sharding.is_sharded(t) else t).detach().reshape(-1).double()
            if x.numel() == 0:
                continue
            position = 1.0 + torch.arange(x.numel(), device=x.device, dtype=torch.float64).remainder(13) / 13
            total += (i + 1) * float((x * position).sum())
    return total


def check_same_(model: nn.Module, *, group: Group = None, what: str = "model") -> None:
    """Raise on every rank unless every rank holds the same parameters and buffers
    (:func:`checksum`; one float per rank is exchanged)."""
    rank, world = rank_and_world(group)
    if world == 1:
        return
    sums: List[Optional[float]] = [None] * world
    _dist().all_gather_object(sums, checksum(model), group=group)
    if len(set(sums)) > 1:
        raise RuntimeError(f"the ranks hold different {what}s after its init (checksums {sums}): "
                           "seed every rank alike (torch.manual_seed(seed) on each) before it")


def initialize_(model: nn.Module, method: str, *, src: int = 0, group: Group = None,
                generators: Sequence[torch.Generator] = (), check: bool = True,
                **options: Any) -> "InitRecord":
    """:func:`emergeinit.initialize` on every rank of a process group, identically: a
    data-dependent method (:data:`~emergeinit.baselines.DATA_METHODS`) runs on rank ``src`` and is
    broadcast (:func:`init_once_`); a deterministic one runs on every rank from its own (equal)
    random state and, with ``check``, the ranks compare checksums. The emergence init with
    ``alpha="auto"`` probes on data, so it too runs on rank ``src`` alone. Returns the ``InitRecord``."""
    from emergeinit.baselines import DATA_METHODS, initialize, method_key

    if rank_and_world(group)[1] == 1:
        return initialize(model, method, **options)
    if method_key(method) in DATA_METHODS or options.get("alpha") == "auto":  # auto probes on data
        return init_once_(model, lambda m: initialize(m, method, **options), src=src, group=group,
                          generators=generators)
    record = initialize(model, method, **options)
    if check:
        check_same_(model, group=group, what=f"{method} init")
    return record


def _drawn_by(plan: InitPlan) -> set:
    """Keys of the tensors ``apply_plan_(model, plan, base=...)`` draws or zeroes: the weight
    layers' weights and biases (norm and embedding entries are scaled, not drawn)."""
    keys = set()
    for l in plan.layers:
        if l.kind in ("linear", "conv", "attention"):
            keys.update(k for k in (l.key, l.bias_key) if k)
    return keys


def reset_unplanned_(model: nn.Module, plan: InitPlan) -> List[str]:
    """Materializing a model (after ``to_empty``), before ``apply_plan_(model, plan, base=...)``:
    call ``reset_parameters()`` of every module that owns a parameter the plan's base draw will
    not set (norms, embeddings, layers outside the plan; a plan's norm or embedding entries then
    scale these values), each with its sharded tensors whole (:func:`emergeinit.sharding.whole`),
    so a sharded model gets the values an unsharded one gets from the same random state. Returns
    the names of the modules reset. A module with such a parameter and no ``reset_parameters`` is
    an error that names it: set it yourself inside ``sharding.whole(module)``. Buffers are left
    alone: ones a constructor computes (position tables) must be computed again."""
    drawn = _drawn_by(plan)
    todo, missing = [], []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, t in module._parameters.items() if t is not None]
        if all(k in drawn for k in own):
            continue
        (todo if callable(getattr(module, "reset_parameters", None)) else missing).append((name, module))
    if missing:
        raise ValueError("no reset_parameters() for parameters outside the plan in "
                         f"{', '.join(n or '<root>' for n, _ in missing)}")
    with torch.no_grad():
        for _, module in todo:
            with sharding.whole(module):
                module.reset_parameters()
    return [n for n, _ in todo]
