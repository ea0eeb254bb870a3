"""Seconds per optimizer step of the user's configuration, measured by running a few real steps on a copy."""

from __future__ import annotations

import copy
import time

import torch

from .device import Precision, grad_scaler, model_device, synchronize
from .finetune import train_step
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
    precision: Precision | str = Precision.FP32,
    steps: int | None = None,
    warmup: int = 1,
    generator: torch.Generator | None = None,
) -> float:
    """Mean wall-clock seconds of one forward + backward + update on a batch of ``optimizer.batch_size`` samples
    (all samples for full-batch GD) over ``steps`` steps after ``warmup`` untimed ones, on a copy of the model, on its
    device (CUDA work synchronized before the clock is read) and in ``precision`` (``torch.autocast``).
    ``steps`` defaults to 1 for batches of 64 samples or more (slow, steady steps) and 3 otherwise."""
    m = copy.deepcopy(model)
    named = dict(m.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else params
    opt = optimizer.torch_optimizer([named[n] for n in names])
    n = x.shape[0]
    b = n if optimizer.is_full_batch(n) else optimizer.batch_size
    gen = generator or torch.Generator().manual_seed(0)
    steps = steps if steps is not None else (1 if b >= 64 else 3)
    dev = model_device(m)
    scaler = grad_scaler(dev, precision)
    times = []
    for i in range(warmup + steps):
        idx = torch.randperm(n, generator=gen)[:b]
        synchronize(dev)
        t0 = time.perf_counter()
        xb, yb = x[idx].to(dev), y[idx].to(dev)  # the batch's transfer counts, as a DataLoader's would
        set_train_mode(m, bn, dropout)
        train_step(m, xb, yb, opt, loss, precision, scaler)
        synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)
