"""Result of a function-space simulation."""

from __future__ import annotations

import dataclasses

import torch

from ..losses import mean_loss_and_accuracy

__all__ = ["Trajectory", "Recorder", "divergence_mask", "full_table", "initial_outputs"]

DIVERGENCE_FACTOR = 10.0
"""A run has diverged once its loss is non-finite or above ``DIVERGENCE_FACTOR * loss[0]`` (PROTOCOL.md)."""


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


class Recorder:
    """Fills loss/accuracy curves step by step and flags diverged runs (their curves turn NaN)."""

    def __init__(self, problem, runs, steps, dt):
        self.p = problem
        self.loss = torch.full((runs, steps + 1), float("nan"), dtype=dt)
        self.acc = torch.full_like(self.loss, float("nan"))
        self.tloss = torch.full_like(self.loss, float("nan")) if problem.has_test else None
        self.tacc = torch.full_like(self.loss, float("nan")) if problem.has_test else None
        self.diverged_at = torch.full((runs,), -1, dtype=torch.long)

    def __call__(self, fa, t):
        p, n, c = self.p, self.p.n, self.p.c
        r = fa.shape[0]
        ftr = fa[:, : n * c].view(r, n, c)
        lt, at = mean_loss_and_accuracy(ftr, p.y, p.loss)
        alive = self.diverged_at < 0
        self.loss[alive, t] = lt[alive]
        self.acc[alive, t] = at[alive]
        if p.has_test:
            fte = fa[:, n * c :].view(r, -1, c)
            tl, ta = mean_loss_and_accuracy(fte, p.y_test, p.loss)
            self.tloss[alive, t] = tl[alive]
            self.tacc[alive, t] = ta[alive]
        if t > 0:
            newly = alive & divergence_mask(lt, self.loss[:, 0])
            self.diverged_at[newly] = t
            self.loss[newly, t] = float("nan")
            self.acc[newly, t] = float("nan")
        return bool((self.diverged_at < 0).any())

    def result(self, fa, method):
        n, c = self.p.n, self.p.c
        f = fa[:, : n * c].view(fa.shape[0], n, c).clone()
        return Trajectory(self.loss, self.acc, self.diverged_at, f, self.tloss, self.tacc, method=method)
