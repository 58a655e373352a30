"""Batched data augmentation on the training device: random crop (zero padding), horizontal flip
and cutout, each one tensor operation over the whole batch (no per-sample Python).

Each sample keeps its place in the batch, so labels stay aligned. Randomness comes from an
explicit ``torch.Generator`` on the batch's device, so a seeded run is reproducible.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_flip", "cutout"]


def random_crop(x: torch.Tensor, padding: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero-pad (N, C, H, W) by ``padding`` on each side, then take one random H×W window per
    sample (offsets uniform in 0..2·padding, as torchvision's RandomCrop(padding=p))."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, n), device=x.device, generator=generator)
    rows = off[0].view(n, 1) + torch.arange(h, device=x.device)  # (N, H)
    cols = off[1].view(n, 1) + torch.arange(w, device=x.device)  # (N, W)
    # gather rows, then columns, as two batched index_selects via take_along_dim
    out = padded.take_along_dim(rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding), dim=2)
    return out.take_along_dim(cols.view(n, 1, 1, w).expand(n, c, h, w), dim=3)


def random_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each sample left-right with probability ``p``."""
    mask = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero one size×size square per sample, its centre uniform over the image and the square
    clipped at the border (DeVries & Taylor 2017). Apply after normalization: zero is the mean."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator)
    half = size // 2
    ys = torch.arange(h, device=x.device).view(1, h)
    xs = torch.arange(w, device=x.device).view(1, w)
    in_y = (ys >= cy - half) & (ys < cy - half + size)  # (N, H)
    in_x = (xs >= cx - half) & (xs < cx - half + size)  # (N, W)
    hole = in_y.view(n, 1, h, 1) & in_x.view(n, 1, 1, w)
    return x.masked_fill(hole, 0)
