"""Per-sample losses and their gradients in function space.

Conventions (used everywhere, real training included):

* ``f`` holds network outputs (logits) with shape ``(..., N, C)``; ``y`` holds integer labels ``(N,)``.
* The training loss is the mean of the per-sample losses: ``L = mean_i l(f_i, y_i)``.
* ``ce``: ``l = -log softmax(f_i)[y_i]`` (``torch.nn.functional.cross_entropy``).
* ``mse``: ``l = mean_c (f_ic - onehot(y_i)_c)^2`` so that the mean over samples equals
  ``torch.nn.functional.mse_loss(f, onehot(y))``.
* ``residual`` returns ``r_i = dl(f_i, y_i)/df_i`` (shape ``(..., N, C)``): the gradient of the *per-sample*
  loss. A minibatch ``B`` with mean loss has weight gradient ``J_B^T r_B / |B|``.
"""

from __future__ import annotations

import enum

import torch

__all__ = ["Loss", "per_sample_loss", "residual", "accuracy", "one_hot", "mean_loss_and_accuracy"]


class Loss(str, enum.Enum):
    """Training loss of the fine-tuning run being predicted."""

    CE = "ce"
    """Softmax cross-entropy on the logits."""
    MSE = "mse"
    """Mean squared error between the outputs and one-hot labels (mean over outputs)."""


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Labels ``(N,)`` to a one-hot matrix ``(N, C)`` of ``dtype``."""
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)


def per_sample_loss(f: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Per-sample loss ``l(f_i, y_i)``: ``f (..., N, C)``, ``y (N,)`` -> ``(..., N)``."""
    loss = Loss(loss)
    if loss is Loss.CE:  # logsumexp by hand: much faster than log_softmax over a short last axis
        m = f.amax(-1, keepdim=True)
        lse = m.squeeze(-1) + (f - m).exp().sum(-1).log()
        idx = y.long().expand(f.shape[:-1]).unsqueeze(-1)
        return lse - torch.gather(f, -1, idx).squeeze(-1)
    t = one_hot(y, f.shape[-1], f.dtype)
    return ((f - t) ** 2).mean(-1)


def residual(f: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Gradient of the per-sample loss w.r.t. the outputs: ``(..., N, C)``."""
    loss = Loss(loss)
    t = one_hot(y, f.shape[-1], f.dtype)
    if loss is Loss.CE:
        return torch.softmax(f, dim=-1) - t
    return 2.0 * (f - t) / f.shape[-1]


def accuracy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max output is the label: ``(..., N, C)`` -> ``(...)``."""
    return (f.argmax(-1) == y.long()).to(f.dtype).mean(-1)


def mean_loss_and_accuracy(f: torch.Tensor, y: torch.Tensor, loss: Loss) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss, accuracy)`` over the sample axis of ``f (..., N, C)``, sharing one max over the outputs."""
    m, arg = f.max(-1)
    acc = (arg == y.long()).to(f.dtype).mean(-1)
    if Loss(loss) is Loss.CE:
        lse = m + (f - m.unsqueeze(-1)).exp().sum(-1).log()
        idx = y.long().expand(f.shape[:-1]).unsqueeze(-1)
        return (lse - torch.gather(f, -1, idx).squeeze(-1)).mean(-1), acc
    return per_sample_loss(f, y, loss).mean(-1), acc
