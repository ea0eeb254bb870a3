"""Seconds per optimizer step of the user's configuration, measured by running a few real steps on a copy."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch

from .device import Precision, grad_scaler, model_device, synchronize
from .finetune import train_step
from .losses import Loss
from .network import BatchNormMode, set_train_mode
from .optim import Optimizer, Sampling

__all__ = ["epoch_batch_sizes", "seconds_per_step", "step_times"]


def step_times(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: Optimizer,
    count: int,
    *,
    loss: Loss = Loss.CE,
    params: list[str] | None = None,
    bn: BatchNormMode = BatchNormMode.FROZEN,
    dropout: bool = False,
    precision: Precision | str = Precision.FP32,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Wall-clock seconds of each of ``count`` consecutive forward + backward + update steps on random batches of
    ``optimizer.batch_size`` samples (all samples for full-batch GD), on a copy of the model, on its device (CUDA work
    synchronized before the clock is read) and in ``precision`` (``torch.autocast``); the first ones include warm-up."""
    m = copy.deepcopy(model)
    named = dict(m.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else params
    opt = optimizer.torch_optimizer([named[n] for n in names])
    n = x.shape[0]
    b = n if optimizer.is_full_batch(n) else optimizer.batch_size
    gen = generator or torch.Generator().manual_seed(0)
    dev = model_device(m)
    scaler = grad_scaler(dev, precision)
    times = []
    for _ in range(count):
        idx = torch.randperm(n, generator=gen)[:b]
        made = None if isinstance(x, torch.Tensor) else x[idx]  # inputs made when drawn (LazyInputs): not timed
        synchronize(dev)
        t0 = time.perf_counter()
        xb, yb = (x[idx] if made is None else made).to(dev), y[idx].to(dev)  # the transfer counts, as a DataLoader's
        set_train_mode(m, bn, dropout)
        train_step(m, xb, yb, opt, loss, precision, scaler, optimizer.max_grad_norm)
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    return times


def epoch_batch_sizes(n: int, optimizer: Optimizer) -> list[tuple[int, int]]:
    """``[(batch size, batches per epoch), ...]`` of the batch plan over ``n`` samples (``finetime.batches``): one batch
    of ``n`` for full-batch GD, ``n // b`` batches of ``b`` and one of the remainder when the last batch of an epoch is
    kept (``drop_last`` off, the default); sampling with replacement draws batches of ``b`` only."""
    if optimizer.is_full_batch(n):
        return [(n, 1)]
    b = optimizer.batch_size
    sizes = [(b, n // b if optimizer.sampling is Sampling.SHUFFLE else 1)]
    if optimizer.sampling is Sampling.SHUFFLE and n % b and not optimizer.drop_last:
        sizes.append((n % b, 1))
    return sizes


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
    warmup: int = 2,
    generator: torch.Generator | None = None,
) -> float:
    """Mean wall-clock seconds of one forward + backward + update over an epoch of the batch plan: every batch size
    of the epoch (``epoch_batch_sizes``: the short last batch too) timed as the median of ``steps`` steps
    (``step_times``) after ``warmup`` untimed ones, weighted by how many batches of that size an epoch has. ``steps``
    defaults to 1 for batches of 64 samples or more (slow, steady steps) and 3 otherwise. The scheme was chosen on
    ``bench/step_timing_bench.py`` (BENCHMARKS.md, section 1)."""
    n = x.shape[0]
    total = count = 0.0
    for b, k in epoch_batch_sizes(n, optimizer):
        timed = steps if steps is not None else (1 if b >= 64 else 3)
        opt = optimizer if b == n or b == optimizer.batch_size else dataclasses.replace(optimizer, batch_size=b)
        times = step_times(model, x, y, opt, warmup + timed, loss=loss, params=params, bn=bn, dropout=dropout,
                           precision=precision, generator=generator)[warmup:]
        total += k * statistics.median(times)
        count += k
    return total / count
