"""Seconds per optimizer step of the user's configuration, measured by running a few real steps on a copy."""

from __future__ import annotations

import copy
import time

import torch

from .finetune import batch_loss
from .losses import Loss
from .network import BatchNormMode, set_train_mode
from .optim import Optimizer

__all__ = ["seconds_per_step"]


def seconds_per_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: Optimizer,
    *,
    loss: Loss = Loss.CE,
    params: list[str] | None = None,
    bn: BatchNormMode = BatchNormMode.FROZEN,
    dropout: bool = False,
    steps: int | None = None,
    warmup: int = 1,
    generator: torch.Generator | None = None,
) -> float:
    """Mean wall-clock seconds of one forward + backward + update on a batch of ``optimizer.batch_size`` samples
    (all samples for full-batch GD) over ``steps`` steps after ``warmup`` untimed ones, on a copy of the model.
    ``steps`` defaults to 1 for batches of 64 samples or more (slow, steady steps) and 3 otherwise."""
    m = copy.deepcopy(model)
    named = dict(m.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else params
    opt = optimizer.torch_optimizer([named[n] for n in names])
    n = x.shape[0]
    b = n if optimizer.is_full_batch(n) else optimizer.batch_size
    gen = generator or torch.Generator().manual_seed(0)
    steps = steps if steps is not None else (1 if b >= 64 else 3)
    times = []
    for i in range(warmup + steps):
        idx = torch.randperm(n, generator=gen)[:b]
        t0 = time.perf_counter()
        set_train_mode(m, bn, dropout)
        opt.zero_grad(set_to_none=True)
        batch_loss(m(x[idx]), y[idx], loss).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)
