"""Per-sample losses and their gradients in function space.

Conventions (used everywhere, real training included):

* ``f`` holds network outputs (logits) with shape ``(..., N, C)``; ``y`` holds integer labels ``(N,)``.
* The training loss is the mean of the per-sample losses: ``L = mean_i l(f_i, y_i)``.
* ``ce``: ``l = -log softmax(f_i)[y_i]`` (``torch.nn.functional.cross_entropy``).
* ``mse``: ``l = mean_c (f_ic - onehot(y_i)_c)^2`` so that the mean over samples equals
  ``torch.nn.functional.mse_loss(f, onehot(y))``.
* ``ce`` with label smoothing ``a`` (``LossSpec(Loss.CE, a)``): the cross-entropy against the target
  ``(1 - a) onehot(y_i) + a / C``, ``l = logsumexp(f_i) - (1 - a) f_iy - a mean_c f_ic``
  (``cross_entropy(..., label_smoothing=a)``).
* ``residual`` returns ``r_i = dl(f_i, y_i)/df_i`` (shape ``(..., N, C)``): the gradient of the *per-sample*
  loss. A minibatch ``B`` with mean loss has weight gradient ``J_B^T r_B / |B|``.

Every function takes the loss as a ``Loss`` (or its name) or a ``LossSpec`` (a loss with its settings).
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from .errors import ConfigError

__all__ = ["Loss", "LossSpec", "loss_spec", "loss_floor", "per_sample_loss", "residual", "accuracy", "one_hot",
           "mean_loss_and_accuracy"]


class Loss(str, enum.Enum):
    """Training loss of the fine-tuning run being predicted."""

    CE = "ce"
    """Softmax cross-entropy on the logits."""
    MSE = "mse"
    """Mean squared error between the outputs and one-hot labels (mean over outputs)."""


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A training loss with its settings: ``kind`` and, for cross-entropy, ``label_smoothing`` in ``[0, 1)``."""

    kind: Loss = Loss.CE
    label_smoothing: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "kind", Loss(self.kind))
        a = self.label_smoothing
        if not (isinstance(a, (int, float)) and 0.0 <= a < 1.0):
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {a!r}")
        if a and self.kind is not Loss.CE:
            raise ConfigError("--label-smoothing applies to the cross-entropy loss (--loss ce), not to mse")


def loss_spec(loss: "Loss | str | LossSpec") -> LossSpec:
    """``loss`` as a ``LossSpec`` (a plain ``Loss`` has no settings)."""
    return loss if isinstance(loss, LossSpec) else LossSpec(Loss(loss))


def _smoothed_target_dot(f: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    """``sum_c t_c f_c`` for the (smoothed) one-hot target ``t`` of each sample: ``(..., N)``."""
    idx = y.long().expand(f.shape[:-1]).unsqueeze(-1)
    picked = torch.gather(f, -1, idx).squeeze(-1)
    return picked if not a else (1 - a) * picked + a * f.mean(-1)


def loss_floor(loss: "Loss | LossSpec", num_classes: int) -> float:
    """The least per-sample loss any output reaches: 0, but with label smoothing ``a`` the entropy of the smoothed
    target, ``-(1 - a + a/C) log(1 - a + a/C) - (C - 1) (a/C) log(a/C)`` (where the softmax equals the target)."""
    spec = loss_spec(loss)
    a, c = spec.label_smoothing, num_classes
    if spec.kind is not Loss.CE or not a:
        return 0.0
    hit, other = 1 - a + a / c, a / c
    return -(hit * math.log(hit) + (c - 1) * other * math.log(other))


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Labels ``(N,)`` to a one-hot matrix ``(N, C)`` of ``dtype``."""
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)


def per_sample_loss(f: torch.Tensor, y: torch.Tensor, loss: "Loss | LossSpec") -> torch.Tensor:
    """Per-sample loss ``l(f_i, y_i)``: ``f (..., N, C)``, ``y (N,)`` -> ``(..., N)``."""
    spec = loss_spec(loss)
    if spec.kind is Loss.CE:  # logsumexp by hand: much faster than log_softmax over a short last axis
        m = f.amax(-1, keepdim=True)
        lse = m.squeeze(-1) + (f - m).exp().sum(-1).log()
        return lse - _smoothed_target_dot(f, y, spec.label_smoothing)
    t = one_hot(y, f.shape[-1], f.dtype)
    return ((f - t) ** 2).mean(-1)


def residual(f: torch.Tensor, y: torch.Tensor, loss: "Loss | LossSpec") -> torch.Tensor:
    """Gradient of the per-sample loss w.r.t. the outputs: ``(..., N, C)``."""
    spec = loss_spec(loss)
    t = one_hot(y, f.shape[-1], f.dtype)
    if spec.kind is Loss.CE:
        a = spec.label_smoothing
        return torch.softmax(f, dim=-1) - (t if not a else (1 - a) * t + a / f.shape[-1])
    return 2.0 * (f - t) / f.shape[-1]


def accuracy(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose arg-max output is the label: ``(..., N, C)`` -> ``(...)``."""
    return (f.argmax(-1) == y.long()).to(f.dtype).mean(-1)


def mean_loss_and_accuracy(f: torch.Tensor, y: torch.Tensor,
                           loss: "Loss | LossSpec") -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss, accuracy)`` over the sample axis of ``f (..., N, C)``, sharing one max over the outputs."""
    m, arg = f.max(-1)
    acc = (arg == y.long()).to(f.dtype).mean(-1)
    spec = loss_spec(loss)
    if spec.kind is Loss.CE:
        lse = m + (f - m.unsqueeze(-1)).exp().sum(-1).log()
        return (lse - _smoothed_target_dot(f, y, spec.label_smoothing)).mean(-1), acc
    return per_sample_loss(f, y, loss).mean(-1), acc
