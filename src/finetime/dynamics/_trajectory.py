"""Result of a function-space simulation."""

from __future__ import annotations

import dataclasses

import torch

from ..training_time import DIVERGENCE_FACTOR


__all__ = ["Trajectory", "divergence_mask", "full_table", "initial_outputs"]



def divergence_mask(loss_t: torch.Tensor, loss_0: torch.Tensor) -> torch.Tensor:
    """True where a run's current loss marks it as diverged."""
    return ~torch.isfinite(loss_t) | (loss_t > DIVERGENCE_FACTOR * loss_0)


@dataclasses.dataclass
class Trajectory:
    """Loss and accuracy curves of ``R`` simulated runs, steps ``0..T`` (``loss[:, t]`` is after ``t`` updates).

    After a run diverges its curve holds NaN; ``diverged_at`` is the first step at which it was flagged (-1: never).
    ``f`` holds the final training outputs ``(R, N, C)``.
    """

    loss: torch.Tensor  # (R, T+1)
    accuracy: torch.Tensor  # (R, T+1)
    diverged_at: torch.Tensor  # (R,) long
    f: torch.Tensor | None = None
    test_loss: torch.Tensor | None = None
    test_accuracy: torch.Tensor | None = None
    method: str = ""
    info: dict | None = None  # what the method measured on the way (e.g. re-linearization checkpoints)

    @property
    def runs(self) -> int:
        return self.loss.shape[0]

    @property
    def steps(self) -> int:
        return self.loss.shape[1] - 1

    @property
    def diverged(self) -> torch.Tensor:
        return self.diverged_at >= 0

    @property
    def diverged_fraction(self) -> float:
        return float(self.diverged.double().mean())

    def prefix(self, steps: int) -> "Trajectory":
        """The first ``steps`` updates of this trajectory (what a run with budget ``steps`` records, when the
        learning rates of those updates do not depend on the budget). Final outputs are not kept."""
        if not 0 <= steps <= self.steps:
            raise ValueError(f"prefix of {steps} steps from a trajectory of {self.steps}")
        cut = lambda t: None if t is None else t[:, : steps + 1].clone()  # noqa: E731
        return Trajectory(cut(self.loss), cut(self.accuracy),
                          torch.where(self.diverged_at <= steps, self.diverged_at, torch.full_like(self.diverged_at, -1)),
                          None, cut(self.test_loss), cut(self.test_accuracy), self.method)


def full_table(problem):
    """Rows indexed by training output (j, c): ``[Theta | Theta_test^T]``, shape ``(N*C, N*C + M*C)``."""
    if problem.has_test:
        return torch.cat([problem.theta, problem.theta_test.T], dim=1).contiguous()
    return problem.theta


def initial_outputs(problem):
    """Flat ``[f0 | f0_test]`` of length ``N*C + M*C``."""
    f0a = problem.f0.reshape(-1)
    if problem.has_test:
        f0a = torch.cat([f0a, problem.f0_test.reshape(-1)])
    return f0a
