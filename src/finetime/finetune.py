"""Real fine-tuning, the measuring stick: the optimizer's ``torch.optim`` twin on the network itself, with a given
batch order.

Used by ``finetime validate`` and by the exactness tests. The loss curve follows the README's definitions: ``loss[t]`` is the mean
loss over the whole training set after ``t`` updates, evaluated with dropout off. Training and evaluation are timed
separately (``train_seconds`` counts only the updates).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch
import torch.nn as nn

from .batches import BatchPlan
from .device import Precision, autocast, grad_scaler, model_device, synchronize
from .errors import ConfigError
from .losses import Loss, LossSpec, accuracy, loss_spec, one_hot
from .network import BatchNormMode, network_outputs, set_train_mode
from .optim import Optimizer
from .training_time import DIVERGENCE_FACTOR

__all__ = ["RealRun", "finetune", "batch_loss", "train_step"]

def batch_loss(logits: torch.Tensor, y: torch.Tensor, loss: "Loss | LossSpec") -> torch.Tensor:
    """Mean loss over a batch (the same definition as ``losses.per_sample_loss``)."""
    spec = loss_spec(loss)
    if spec.kind is Loss.CE:
        return nn.functional.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
    return nn.functional.mse_loss(logits, one_hot(y, logits.shape[1], logits.dtype))


def train_step(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, opt: torch.optim.Optimizer, loss: Loss,
               precision: Precision | str = Precision.FP32, scaler=None,
               max_grad_norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One real update on a batch already on the model's device: forward (under ``torch.autocast`` for bf16 / fp16;
    the loss in the weights' dtype), backward (scaled by ``scaler`` for fp16), the gradient of the optimizer's
    parameters clipped to norm ``max_grad_norm`` (``clip_grad_norm_``, unscaled first for fp16), step. Returns
    ``(logits, loss)``."""
    opt.zero_grad(set_to_none=True)
    with autocast(xb.device, precision):
        logits = model(xb)
    if Precision(precision) is not Precision.FP32:
        logits = logits.to(next(model.parameters()).dtype)
    lval = batch_loss(logits, yb, loss)
    params = [p for g in opt.param_groups for p in g["params"]] if max_grad_norm is not None else None
    if scaler is not None:
        scaler.scale(lval).backward()
        if params is not None:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        scaler.step(opt)
        scaler.update()
    else:
        lval.backward()
        if params is not None:
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
    return logits, lval


@dataclasses.dataclass
class RealRun:
    """Curves of a real fine-tuning run, steps ``0..T`` (NaN after divergence)."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    test_loss: torch.Tensor | None
    test_accuracy: torch.Tensor | None
    diverged_at: int
    train_seconds: float
    eval_seconds: float

    @property
    def diverged(self) -> bool:
        return self.diverged_at >= 0


def _evaluate(model, x, y, loss, chunk):
    f = network_outputs(model, x, chunk)
    return float(batch_loss(f, y, loss)), float(accuracy(f, y))


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: Optimizer,
    steps: int,
    plan: BatchPlan,
    *,
    loss: Loss = Loss.CE,
    params: list[str] | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    bn: BatchNormMode = BatchNormMode.FROZEN,
    dropout: bool = False,
    precision: Precision | str = Precision.FP32,
    eval_chunk: int = 256,
    eval_every: int = 1,
    progress: Callable[[int, int], None] | None = None,
    on_step: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    stop_after: int | None = None,
    eval_samples: torch.Tensor | None = None,
) -> RealRun:
    """Fine-tune ``model`` in place for ``steps`` updates with the first run of ``plan``.

    ``params``: names of the trained parameters (default: all with ``requires_grad``). Curves are evaluated in the
    training mode's BatchNorm setting with dropout off; with ``bn=BATCH`` the curve uses batch statistics over the
    whole training set (recorded as such by the caller). ``on_step(t, model, torch_optimizer)`` runs after update
    ``t``, e.g. to refine a prediction from the live weights; it must leave them as it found them. The model runs on
    its own device (batches move there); ``precision`` bf16 / fp16 runs the forward pass under ``torch.autocast``
    (fp16 with a ``GradScaler``). ``eval_every=k`` evaluates the curves only at steps ``0, k, 2k, ...`` and ``T``
    (NaN at the others, and divergence is noticed only there): for long runs on large sets, where one whole-set pass
    per step would cost more than the training. ``stop_after=k`` stops after update ``k`` of the ``steps`` (the
    learning-rate schedule stays that of ``steps``; the curves beyond ``k`` are NaN): the first steps of a run.
    ``eval_samples``: indices of the training samples the curves are evaluated on (default: all of them).
    """
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    last = steps if stop_after is None else stop_after
    if not 0 <= last <= steps:
        raise ConfigError(f"stop_after must be in 0..{steps}, got {stop_after}")
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else params
    trained = [named[n] for n in names]
    if not trained:
        raise ConfigError("no trainable parameters")
    opt = optimizer.torch_optimizer(trained)
    sched = optimizer.scheduler(opt, steps)
    dev = model_device(model)
    scaler = grad_scaler(dev, precision)
    curve = torch.full((steps + 1,), math.nan, dtype=torch.float64)
    acc = torch.full_like(curve, math.nan)
    tcurve = torch.full_like(curve, math.nan) if x_test is not None else None
    tacc = torch.full_like(curve, math.nan) if x_test is not None else None
    diverged_at = -1
    train_s = eval_s = 0.0

    def evaluate(t):
        nonlocal eval_s
        t0 = time.perf_counter()
        set_train_mode(model, bn, dropout=False)
        xe, ye = (x, y) if eval_samples is None else (x[eval_samples], y[eval_samples])
        curve[t], acc[t] = _evaluate(model, xe, ye, loss, eval_chunk)
        if x_test is not None:
            model.eval()  # held-out data is evaluated as at test time: running statistics
            tcurve[t], tacc[t] = _evaluate(model, x_test, y_test, loss, eval_chunk)
        eval_s += time.perf_counter() - t0

    # Full-batch steps without dropout see the whole training set as the curve does: their forward pass is loss[t].
    reuse = optimizer.is_full_batch(x.shape[0]) and not dropout and x_test is None and eval_every == 1 \
        and eval_samples is None

    def check(t) -> bool:
        nonlocal diverged_at
        if t > 0 and (not math.isfinite(curve[t]) or curve[t] > DIVERGENCE_FACTOR * curve[0]):
            diverged_at = t
            curve[t:] = math.nan
            acc[t:] = math.nan
            return True
        return False

    if not reuse or last == 0:
        evaluate(0)
    for t in range(last):
        idx = plan.batch(0, t)
        t0 = time.perf_counter()
        set_train_mode(model, bn, dropout)
        logits, lval = train_step(model, x[idx].to(dev), y[idx].to(dev), opt, loss, precision, scaler,
                                  optimizer.max_grad_norm)
        sched.step()
        synchronize(dev)
        train_s += time.perf_counter() - t0
        if progress is not None:
            progress(t + 1, steps)
        if reuse:  # the full batch is in sample order
            curve[t], acc[t] = float(lval.detach()), float(accuracy(logits.detach().cpu(), y[idx]))
            if check(t):
                break
        if (not reuse and (t + 1) % eval_every == 0) or t + 1 == last:
            evaluate(t + 1)
            if check(t + 1):
                break
        if on_step is not None:
            on_step(t + 1, model, opt)
    model.eval()
    return RealRun(curve, acc, tcurve, tacc, diverged_at, train_s, eval_s)
