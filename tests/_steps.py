"""A few optimizer steps, the check every model test ends with."""

from typing import Callable, List

import torch
from torch import nn


def train_steps(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], steps: int = 3,
                lr: float = 0.01, optimizer: type = torch.optim.SGD) -> List[float]:
    """``steps`` optimizer steps in train mode on ``loss_of(model)``; the losses, as floats."""
    opt = optimizer(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
