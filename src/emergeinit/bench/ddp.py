"""One image run trained data-parallel on several processes: torch.distributed and DDP.

Launched by ``emergeinit train ... --nproc N`` (torchrun's launcher, started from this process)
or by ``torchrun --nproc-per-node N -m emergeinit.cli train ...`` (several nodes too). Every rank
runs the same config with the same seed, so every rank draws the same data order and the same
augmentations. What makes N processes one run of the global batch:

- each rank prepares the whole batch of ``batch_size`` images and trains on its contiguous slice
  of it (:meth:`Ranks.shard`); a last batch with fewer images than ranks is skipped on every rank;
- each slice's mean loss is weighted by ``N × its share of the batch``, so DDP's average of the
  ranks' gradients is the gradient of the whole batch's mean loss, uneven slices included;
- the logged loss is summed over ranks (:meth:`Ranks.loss`), so every rank logs the global-batch
  loss and the divergence check stops all ranks at the same step;
- the init is the same on every rank (:func:`emergeinit.distributed.initialize_`: seeded on every
  rank, or computed on rank 0 and broadcast when it looks at data).

Evaluation and E at init run on every rank on the unwrapped model (no collectives); rank 0's record
is the run's and only rank 0 appends it. BatchNorm normalizes with each rank's own slice, as DDP
does (SyncBatchNorm has no CPU kernels), so BN nets differ from a one-process run in their batch
statistics; nets without BN match it up to float summation order (tests/test_scale_ddp.py).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn

from emergeinit.bench.loop import pick_device
from emergeinit.bench.records import PathLike
from emergeinit.distributed import rank_and_world

__all__ = ["Ranks", "current", "process_group", "run_ranked", "launch"]

LossFn = Callable[[Any], Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Ranks:
    """The process group a run trains in; one process (``world == 1``) changes nothing."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, shows progress and writes the record."""
        return self.rank == 0

    def bounds(self, n: int) -> Tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a batch of ``n`` (the first ``n % world`` ranks get one
        row more, as ``torch.tensor_split``)."""
        q, r = divmod(n, self.world)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (1 if self.rank < r else 0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks), or as it is."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def shard(self, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Iterable[Any]:
        """Each global batch ``(x, y)`` cut to this rank's rows, as ``(x, y, weight)`` with
        ``weight = world × rows / n`` (for :meth:`loss`); ``batches`` itself with one process."""
        if self.world == 1:
            return batches
        return self._shard(batches)

    def _shard(self, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Iterator[Any]:
        for x, y in batches:
            n = int(y.shape[0])
            if n < self.world:  # a rank would get no image: skipped on every rank alike
                continue
            lo, hi = self.bounds(n)
            yield x[lo:hi], y[lo:hi], self.world * (hi - lo) / n

    def loss(self, loss_fn: LossFn) -> LossFn:
        """``loss_fn`` on a slice from :meth:`shard`: the loss to backpropagate weighted by the
        slice's weight, and the logged value summed over ranks (the global-batch value)."""
        if self.world == 1:
            return loss_fn

        def weighted(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
            x, y, weight = batch
            loss, value = loss_fn((x, y))
            logged = value.detach() * (weight / self.world)
            torch.distributed.all_reduce(logged)
            return loss * weight, logged

        return weighted


def current() -> Ranks:
    """The ranks of the initialized default process group (one process when there is none)."""
    return Ranks(*rank_and_world())


@contextmanager
def process_group(device: Optional[str] = "auto") -> Iterator[Ranks]:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``...): NCCL with each rank on its own GPU when ``device``
    resolves to CUDA, gloo otherwise; leave it on exit. Outside torchrun (or inside a group that
    is already up) nothing is joined or left."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield current()
        return
    picked = pick_device(device)
    cuda = picked.type == "cuda"
    if cuda and picked.index is not None:
        raise ValueError(f"device {device!r}: under DDP each rank takes its own GPU (LOCAL_RANK); use cuda or auto")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def run_ranked(config: Mapping[str, Any], results: PathLike, progress: bool = True) -> Optional[Dict[str, Any]]:
    """Run one config on this rank (inside torchrun's process group, or alone) and, on rank 0,
    append its record to ``results`` and return it; other ranks return None."""
    from emergeinit.bench.records import append_record
    from emergeinit.bench.runner import execute

    with process_group(str(config.get("device") or "auto")) as ranks:
        record = execute(config, progress=progress and ranks.main)
        if not ranks.main:
            return None
        if ranks.world > 1:
            record["distributed"] = {"world_size": ranks.world, "backend": torch.distributed.get_backend()}
        append_record(results, record)
        return record


def launch(config: Mapping[str, Any], results: PathLike, nproc: int, *, progress: bool = True) -> Dict[str, Any]:
    """Train ``config`` on ``nproc`` processes of this machine (one per GPU with CUDA, gloo
    processes on the CPU), started by torchrun's launcher (``torch.distributed.launcher``),
    rendezvous on a free local port; returns rank 0's record, which rank 0 has appended."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if pick_device(str(config.get("device") or "auto")).type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"--nproc {nproc} on CUDA needs {nproc} GPUs; this machine has {torch.cuda.device_count()}")
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=int(nproc), run_id=f"emergeinit-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
    )
    returned = elastic_launch(launch_config, run_ranked)(dict(config), str(results), progress)
    return returned[0]
