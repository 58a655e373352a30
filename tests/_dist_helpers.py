"""Run a test function on several gloo processes of this machine (a file store, no ports) and
collect what each rank returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world: int, fn: Callable[..., Any], folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, folder: Path, *args: Any) -> List[Any]:
    """``fn(rank, world, *args)`` on ``world`` processes in one gloo group; their return values,
    by rank. ``fn`` must be importable (a module-level function of a test module)."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world, fn, str(folder), args), nprocs=world, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
