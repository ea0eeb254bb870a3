"""Optimizer settings of the fine-tuning run being predicted (PyTorch ``torch.optim.SGD`` semantics).

Frozen dataclasses passed by keyword; the simulator, the paper's ODE/SDE and the real fine-tuning loop all read
the same objects, so a prediction and a validation run can never disagree about the configuration.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import torch

from .errors import ConfigError

__all__ = ["Sampling", "Constant", "StepDecay", "Cosine", "Schedule", "SGD", "lr_factors"]


class Sampling(str, enum.Enum):
    """How minibatches are drawn."""

    SHUFFLE = "shuffle"
    """Reshuffled epochs without replacement (``DataLoader(shuffle=True)``, the PyTorch default)."""
    REPLACEMENT = "replacement"
    """Each batch drawn uniformly with replacement."""


@dataclasses.dataclass(frozen=True)
class Constant:
    """Constant learning rate (after the optional linear warm-up)."""

    warmup_steps: int = 0

    def _main(self, t: int, total: int) -> float:
        return 1.0


@dataclasses.dataclass(frozen=True)
class StepDecay:
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps (``torch.optim.lr_scheduler.StepLR``)."""

    step_size: int = 50
    gamma: float = 0.1
    warmup_steps: int = 0

    def _main(self, t: int, total: int) -> float:
        return self.gamma ** (t // self.step_size)


@dataclasses.dataclass(frozen=True)
class Cosine:
    """Cosine decay to zero over the run (``CosineAnnealingLR`` with ``T_max`` = steps after warm-up)."""

    warmup_steps: int = 0

    def _main(self, t: int, total: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * t / max(total, 1)))


Schedule = Constant | StepDecay | Cosine


def lr_factors(schedule: Schedule, steps: int) -> torch.Tensor:
    """Learning-rate multipliers for updates ``t = 0..steps-1`` (float64 tensor of shape ``(steps,)``).

    Linear warm-up: update ``t < w`` uses ``(t + 1) / w``; afterwards the main schedule runs on ``t - w`` over the
    remaining ``steps - w`` updates. Real training uses ``LambdaLR`` over these same numbers.
    """
    w = schedule.warmup_steps
    out = []
    for t in range(steps):
        if t < w:
            out.append((t + 1) / w)
        else:
            out.append(schedule._main(t - w, steps - w))
    return torch.tensor(out, dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent as ``torch.optim.SGD`` runs it (dampening 0).

    ``batch_size=None`` means full-batch gradient descent. The update for a batch ``B`` is
    ``g = grad(mean_{i in B} l_i) + weight_decay * w``; ``v = momentum * v + g``;
    ``w -= lr_t * (g + momentum * v if nesterov else v)``.
    """

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int | None = None
    sampling: Sampling = Sampling.SHUFFLE
    drop_last: bool = False
    schedule: Schedule = Constant()

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if not (0.0 <= self.momentum < 1.0):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs --momentum > 0")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1 (or omitted for full-batch GD), got {self.batch_size!r}")
        object.__setattr__(self, "sampling", Sampling(self.sampling))
        w = self.schedule.warmup_steps
        if w < 0:
            raise ConfigError(f"warm-up steps must be >= 0, got {w}")
        if isinstance(self.schedule, StepDecay) and (self.schedule.step_size < 1 or self.schedule.gamma <= 0):
            raise ConfigError("step schedule needs step_size >= 1 and gamma > 0")

    @property
    def effective_lr(self) -> float:
        """The paper's effective learning rate ``lr / (1 - momentum)`` (section 3.1)."""
        return self.lr / (1.0 - self.momentum)

    def is_full_batch(self, n: int) -> bool:
        """True when every step uses all ``n`` samples (deterministic gradient descent)."""
        if self.batch_size is None:
            return True
        return self.sampling is Sampling.SHUFFLE and self.batch_size >= n

    def check_dataset(self, n: int) -> None:
        """Raise a ``ConfigError`` when the batch size cannot be used on ``n`` samples."""
        if self.batch_size is not None and self.batch_size > n:
            raise ConfigError(
                f"batch size {self.batch_size} is larger than the training set ({n} samples); "
                "lower --batch-size or omit it for full-batch GD"
            )
