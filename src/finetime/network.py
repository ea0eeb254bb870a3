"""Helpers on the user's network: how it runs while fine-tuning (BatchNorm modes), outputs without a graph, and a
context that puts it in eval mode and restores its mode afterwards. Used by the kernel engine, re-linearization,
step timing and real fine-tuning alike."""

from __future__ import annotations

import contextlib
import copy
import enum

import torch
import torch.nn as nn

from .errors import ModelError

__all__ = ["BatchNormMode", "set_train_mode", "eval_mode", "recalibrate_batchnorm", "network_outputs", "on_model",
           "batch_statistics_outputs", "linear_head", "check_logits"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class BatchNormMode(str, enum.Enum):
    """How BatchNorm layers behave while fine-tuning."""

    FROZEN = "frozen"
    """Running statistics from pre-training (``eval`` mode); the network is a per-sample function."""
    BATCH = "batch"
    """Batch statistics (``train`` mode), as ``model.train()`` does; running statistics keep updating."""


def set_train_mode(model: nn.Module, bn: BatchNormMode, dropout: bool = False) -> None:
    """Everything in eval mode (dropout, drop-connect off) except what the run trains with."""
    model.eval()
    if dropout:
        model.train()
        if BatchNormMode(bn) is BatchNormMode.FROZEN:
            for m in model.modules():
                if isinstance(m, _BN):
                    m.eval()
        return
    if BatchNormMode(bn) is BatchNormMode.BATCH:
        for m in model.modules():
            if isinstance(m, _BN):
                m.train()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` inside the block; the model's own train/eval flag is restored afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def check_logits(out, batch: int) -> None:
    """A ``ModelError`` unless ``out`` is a ``(batch, classes)`` tensor of logits."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != batch:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must return logits of shape (batch, classes); got {shape}")


def on_model(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` moved to the device of ``model``'s parameters (data stay on the CPU until a chunk is used)."""
    p = next(model.parameters(), None)
    return x if p is None or x.device == p.device else x.to(p.device)


@torch.no_grad()
def network_outputs(model: nn.Module, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``model(x)`` in chunks of ``chunk`` samples, without a graph, in the model's current mode; on ``x``'s
    device."""
    return torch.cat([model(on_model(model, x[s : s + chunk])).to(x.device) for s in range(0, x.shape[0], chunk)])


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of ``x`` (one pass, whole set at once), then eval.

    With batch statistics over the full training set, the network at ``w0`` equals this per-sample network on that
    set; it is the linearization point used for runs that fine-tune with ``--bn batch``.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    saved = [(m.momentum, m.training) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the exact statistics of x
        m.train()
    counts = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: counts.__setitem__(id(mod), inp[0].numel() //
                                                                             inp[0].shape[1])) for m in bns]
    try:
        model(on_model(model, x))
    finally:
        for h in hooks:
            h.remove()
    for m, (mom, _) in zip(bns, saved):
        m.momentum = mom
        k = counts.get(id(m), 2)
        m.running_var.mul_((k - 1) / k)  # running_var is stored unbiased; normalization uses the biased one
    model.eval()
    return model


def batch_statistics_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Outputs on ``x`` with BatchNorm using the statistics of all of ``x`` (where a ``--bn batch`` run starts, and
    how its curve is evaluated); ``model`` is not modified."""
    m = recalibrate_batchnorm(copy.deepcopy(model), x)
    with torch.no_grad():
        return m(on_model(m, x)).to(x.device)


@torch.no_grad()
def linear_head(model: nn.Module, trained: list[str], x: torch.Tensor, chunk: int = 256):
    """When exactly the weight (and bias) of one ``nn.Linear`` are trained and it sees one feature vector per sample:
    ``(module, features (n, d))`` with the features computed in eval mode; else ``None``."""
    names = set(trained)
    wanted = {id(p) for n, p in model.named_parameters() if n in names}
    owner = next((m for m in model.modules() if isinstance(m, nn.Linear)
                  and {id(p) for p in m.parameters(recurse=False)} == wanted), None)
    if owner is None or len(trained) != len(wanted):
        return None
    seen = []
    handle = owner.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    try:
        with eval_mode(model):
            network_outputs(model, x, chunk)
    finally:
        handle.remove()
    if len(seen) != -(-x.shape[0] // chunk) or any(f.dim() != 2 for f in seen):
        return None  # the head runs more than once per sample, or over positions
    return owner, torch.cat(seen).to(x.device)
