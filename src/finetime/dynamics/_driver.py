"""The one simulation loop: a stepper advances an explicit state, a recorder writes the curves, and checkpoint hooks
may swap the stepper (a new kernel) or the state between steps.

A stepper (``exact.ExactStepper``, ``paper.OdeStepper``, ``paper.SdeStepper``) has ``init(runs) -> FunctionState``
and ``step(state, t) -> FunctionState`` (update ``t`` takes the curves from step ``t`` to ``t + 1``). ``solve`` is the
only place that loops over steps; re-linearization (``finetime.relinearize``) and diagnostics plug in as hooks and
recorders.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

import torch

from ..losses import mean_loss_and_accuracy
from ..optim import FunctionState
from ._problem import Problem
from ._trajectory import Trajectory, divergence_mask

__all__ = ["Stepper", "Recorder", "Hook", "solve"]


class Stepper(Protocol):
    problem: Problem

    def init(self, runs: int) -> FunctionState: ...

    def step(self, state: FunctionState, t: int) -> FunctionState: ...


Hook = Callable[[int, Stepper, FunctionState], "tuple[Stepper, FunctionState]"]
"""Called after step ``t`` is recorded (and while some run is alive): returns the stepper and state to go on with."""


class Recorder:
    """Fills loss/accuracy curves step by step and flags diverged runs (their curves turn NaN)."""

    def __init__(self, problem: Problem, runs: int, steps: int, dt: torch.dtype):
        self.p = problem
        dev = problem.device
        self.loss = torch.full((runs, steps + 1), float("nan"), dtype=dt, device=dev)
        self.acc = torch.full_like(self.loss, float("nan"))
        self.tloss = torch.full_like(self.loss, float("nan")) if problem.has_test else None
        self.tacc = torch.full_like(self.loss, float("nan")) if problem.has_test else None
        self.diverged_at = torch.full((runs,), -1, dtype=torch.long, device=dev)

    @property
    def alive(self) -> torch.Tensor:
        return self.diverged_at < 0

    def __call__(self, fa: torch.Tensor, t: int) -> bool:
        """Record outputs ``fa`` (``(R, N*C + M*C)``) as step ``t``; False once every run has diverged."""
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

    def result(self, fa: torch.Tensor, method: str) -> Trajectory:
        """The curves and final outputs, on the CPU whatever device the simulation ran on."""
        n, c = self.p.n, self.p.c
        f = fa[:, : n * c].view(fa.shape[0], n, c).clone()
        cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
        return Trajectory(cpu(self.loss), cpu(self.acc), cpu(self.diverged_at), cpu(f), cpu(self.tloss),
                          cpu(self.tacc), method=method)


def solve(stepper: Stepper, steps: int, *, runs: int, recorder: Recorder | None = None, method: str = "",
          checkpoints: Iterable[int] = (), hook: Hook | None = None) -> tuple[Trajectory, FunctionState]:
    """Run ``stepper`` for ``steps`` updates from its initial state, recording every step.

    ``hook(t, stepper, state)`` runs after step ``t`` for each ``t`` in ``checkpoints`` (``0 < t < steps``) while
    some run is alive. Stops early once every run has diverged. Returns the trajectory and the final state.
    """
    rec = recorder if recorder is not None else Recorder(stepper.problem, runs, steps, stepper.problem.theta.dtype)
    state = stepper.init(runs)
    rec(state.f, 0)
    stops = set(checkpoints) if hook is not None else set()
    for t in range(steps):
        state = stepper.step(state, t)
        if not rec(state.f, t + 1):
            break
        if t + 1 in stops and t + 1 < steps:
            stepper, state = hook(t + 1, stepper, state)
    return rec.result(state.f, method), state
