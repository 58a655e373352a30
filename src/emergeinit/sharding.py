"""Parameters sharded as DTensors (FSDP2's ``fully_shard``, tensor parallelism), written as if whole.

An init must give the same weights however the model is sharded. A rank cannot draw only its
shard's random numbers (a CPU or CUDA generator cannot skip ahead to them), so a random draw for a
sharded parameter is made whole on every rank, from the same random state, and each rank keeps
its own part: the weights then equal the unsharded init for the same seed, bit for bit. Only one
parameter is whole at a time, so memory peaks at the largest parameter (what FSDP gathers for a
forward anyway), and no rank talks to another for a draw.

- :func:`is_sharded`, :func:`stand_in`: tell a DTensor apart, and a meta tensor of its global shape
  (what shape- and dtype-only code, such as fan computations and range checks, reads);
- :func:`whole_copy` / :func:`empty_whole` and :func:`keep_shard_`: a parameter whole on this
  rank (gathered, or empty to be drawn into), then this rank's part written back;
- :func:`scalar`: a reduction of a sharded tensor (its largest magnitude, a count) as one float,
  the same on every rank;
- :func:`whole`: a module's own sharded tensors shown whole inside a ``with`` block, so any
  per-module init code (``reset_parameters``, ``torch.nn.init`` calls) runs unchanged.

Every rank must call these in the same order (they may gather), with the same random state.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["is_sharded", "stand_in", "on_copy", "whole_copy", "empty_whole", "keep_shard_", "scalar", "whole"]



def _dtensor_type() -> Optional[type]:
    """``DTensor`` when torch's DTensor module is loaded, else None: no tensor can be a DTensor
    before that module is imported, and importing it costs seconds, so it is never imported here."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (its values spread over ranks, or replicated by a mesh)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def stand_in(t: torch.Tensor) -> torch.Tensor:
    """A contiguous meta tensor with ``t``'s global shape and dtype when ``t`` is sharded; ``t``
    itself otherwise. Views of it map onto a whole copy (:func:`on_copy`)."""
    if not is_sharded(t):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def on_copy(view: torch.Tensor, whole_tensor: torch.Tensor) -> torch.Tensor:
    """The view of ``whole_tensor`` that ``view`` is of its :func:`stand_in` (same offset, sizes
    and strides: both are contiguous tensors of one shape)."""
    return whole_tensor.as_strided(view.shape, view.stride(), view.storage_offset())


def _local_device(t: torch.Tensor) -> torch.device:
    return t.to_local().device


def whole_copy(t: torch.Tensor) -> torch.Tensor:
    """All of sharded ``t`` on this rank, a plain contiguous tensor (an all-gather)."""
    return t.detach().full_tensor().contiguous()


def empty_whole(t: torch.Tensor) -> torch.Tensor:
    """An uninitialized plain tensor of sharded ``t``'s global shape on this rank's device."""
    return torch.empty(t.shape, dtype=t.dtype, device=_local_device(t))


def keep_shard_(t: torch.Tensor, whole_tensor: torch.Tensor) -> None:
    """Write this rank's part of ``whole_tensor`` (the same on every rank) into sharded ``t``;
    no communication: each rank cuts its own part."""
    from torch.distributed.tensor import distribute_tensor

    part = distribute_tensor(whole_tensor, t.device_mesh, t.placements, src_data_rank=None)
    with torch.no_grad():
        t.to_local().copy_(part.to_local())


def scalar(t: torch.Tensor) -> float:
    """A one-element tensor as a float; a sharded one (a reduction over a DTensor, pending over
    ranks) is first reduced over every rank, so all ranks read the same number."""
    return float(t.full_tensor() if is_sharded(t) else t)


@contextmanager
def whole(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``module``'s own sharded parameters and buffers (not its children's) are
    whole plain tensors on this rank; on exit each rank keeps its part of the values they hold then.
    With the same random state on every rank, an init run inside gives the unsharded result. A
    module with nothing sharded is yielded as it is."""
    swapped: List[Tuple[Dict[str, Any], str, torch.Tensor, torch.Tensor]] = []
    try:
        for store in (module._parameters, module._buffers):
            for name, t in list(store.items()):
                if t is None or not is_sharded(t):
                    continue
                full = whole_copy(t)
                if isinstance(t, nn.Parameter):
                    full = nn.Parameter(full, requires_grad=t.requires_grad)
                swapped.append((store, name, t, full))
                store[name] = full
        yield module
        for _, _, t, full in swapped:
            keep_shard_(t, full.detach())
    finally:
        for store, name, t, _ in reversed(swapped):
            store[name] = t
