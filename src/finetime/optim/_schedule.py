"""Learning-rate schedules: multipliers of the base learning rate, one per update, with an optional linear warm-up."""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Constant", "StepDecay", "Cosine", "Linear", "Schedule", "lr_factors", "SCHEDULES"]


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


@dataclasses.dataclass(frozen=True)
class Linear:
    """Linear decay to zero over the run after the warm-up (Hugging Face's ``get_linear_schedule_with_warmup``,
    the ``Trainer`` default): update ``t`` after warm-up uses ``1 - t / (steps - warmup)``."""

    warmup_steps: int = 0

    def _main(self, t: int, total: int) -> float:
        return 1.0 - t / max(total, 1)


Schedule = Constant | StepDecay | Cosine | Linear

SCHEDULES = {"constant": Constant, "step": StepDecay, "cosine": Cosine, "linear": Linear}
"""Schedule names (``--schedule``) -> classes."""


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
