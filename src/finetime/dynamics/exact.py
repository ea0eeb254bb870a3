"""Exact discrete dynamics of the linearized model in function space (the default predictor).

For the linearized network ``f_t = f_0 + J (w_t - w_0)`` one optimizer step on a batch ``B`` changes the outputs on
every training (and test) sample by ``J g`` with ``g = J_B^T r_B / |B|``, i.e. by ``Theta[:, B] r_B / |B|``. Momentum,
Nesterov and weight decay act on ``J v`` and ``J w`` in the same way (``J w_t = J w_0 + f_t - f_0``), so real SGD on
the linearized model is reproduced exactly, batch by batch, without touching the weights:

    u <- m u + (Theta[:, B] r_B / |B| + lambda (J w_0 + f - f_0))
    f <- f - lr_t * (delta + m u if nesterov else u)

An ensemble of ``R`` batch orders runs vectorized: each step is one ``embedding_bag`` over the kernel's rows.

Without weight decay the weights stay in the span of the gradients: ``w_t - w_0 = J^T a_t`` and the momentum buffer is
``v_t = J^T alpha_t`` for coefficient vectors ``a, alpha`` (``(R, N*C)``) that ``run_segment`` can track; this is what
re-linearization (``finetime.relinearize``) needs to move the real network along a predicted trajectory.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..batches import BatchPlan, batch_plan
from ..losses import residual
from ..optim import SGD, lr_factors
from ._problem import Problem
from ._trajectory import Recorder, Trajectory, full_table, initial_outputs

__all__ = ["simulate", "SimState", "initial_state", "run_segment", "KernelDrift"]


@dataclasses.dataclass
class KernelDrift:
    """A kernel that moves along the trajectory: ``Theta(t) = Theta + lam(t) * delta`` per run, with
    ``lam = clip(<a_t, a_ref> / |a_ref|^2, 0, cap)`` the run's progress along the coefficient path ``a_ref`` at which
    the second kernel ``Theta + delta`` was measured (``delta``: ``(N*C, N*C)``; ``delta_test``: ``(M*C, N*C)``)."""

    delta: torch.Tensor
    a_ref: torch.Tensor
    delta_test: torch.Tensor | None = None
    cap: float = 2.0

    def table(self) -> torch.Tensor:
        if self.delta_test is None:
            return self.delta
        return torch.cat([self.delta, self.delta_test.T], dim=1).contiguous()

    def progress(self, a: torch.Tensor) -> torch.Tensor:
        return ((a @ self.a_ref) / (self.a_ref @ self.a_ref)).clamp(0.0, self.cap)


@dataclasses.dataclass
class SimState:
    """Where an ensemble of ``R`` runs stands: outputs ``f`` (``(R, N*C + M*C)``, training then test), the
    function-space momentum ``u = J v`` (same shape, or None without momentum), and, when tracked, the coefficient
    vectors of the momentum (``alpha``) and of the weight displacement since tracking started (``a``)."""

    f: torch.Tensor
    u: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    a: torch.Tensor | None = None


def initial_state(problem: Problem, sgd: SGD, runs: int, track: bool = False) -> SimState:
    fa = initial_outputs(problem).expand(runs, -1).clone()
    nc = problem.n * problem.c
    u = torch.zeros_like(fa) if sgd.momentum else None
    alpha = torch.zeros(runs, nc, dtype=fa.dtype) if (track and sgd.momentum) else None
    a = torch.zeros(runs, nc, dtype=fa.dtype) if track else None
    return SimState(fa, u, alpha, a)


def run_segment(problem: Problem, sgd: SGD, state: SimState, t_start: int, t_stop: int, lrs: list[float],
                plan: BatchPlan | None, recorder: Recorder, drift: KernelDrift | None = None) -> SimState:
    """Advance ``state`` from step ``t_start`` to ``t_stop`` with ``problem.theta`` as the kernel (plus ``drift``,
    which needs ``state.a`` tracked).

    ``plan`` is ``None`` for full-batch GD. ``recorder`` receives the curves at steps ``t_start+1 .. t_stop``.
    Returns the new state (the input state is not modified); stops early once every run has diverged.
    """
    n, c = problem.n, problem.c
    nc = n * c
    dt = problem.theta.dtype
    table = full_table(problem)
    f0a = initial_outputs(problem)
    r_runs = state.f.shape[0]
    fa = state.f.clone()
    u = state.u.clone() if state.u is not None else (torch.zeros_like(fa) if sgd.momentum else None)
    alpha = state.alpha.clone() if state.alpha is not None else None
    a = state.a.clone() if state.a is not None else None
    wd = sgd.weight_decay
    if wd:
        if problem.jw0 is None or (problem.has_test and problem.jw0_test is None):
            raise ValueError("weight decay needs J w0 (problem.jw0) for the linearized model")
        if a is not None:
            raise ValueError("coefficient tracking (re-linearization) does not support weight decay")
        jw0a = problem.jw0.reshape(-1)
        if problem.has_test:
            jw0a = torch.cat([jw0a, problem.jw0_test.reshape(-1)])
    cls = torch.arange(c)
    dtable = drift.table() if drift is not None else None
    if drift is not None and a is None:
        raise ValueError("a drifting kernel needs the coefficient path (initial_state(..., track=True))")
    for t in range(t_start, t_stop):
        ftr = fa[:, :nc].view(r_runs, n, c)
        if plan is None:
            coeff = residual(ftr, problem.y, problem.loss).reshape(r_runs, nc) / n
            delta = coeff @ table
            if dtable is not None:
                delta = delta + drift.progress(a).unsqueeze(1) * (coeff @ dtable)
            rows = None
        else:
            idx = plan.indices[:, t]  # (R, b)
            w = plan.weights[:, t].to(dt)  # (R, b)
            rows = (idx.unsqueeze(-1) * c + cls).reshape(r_runs, -1)  # (R, b*C)
            fb = torch.gather(ftr, 1, idx.unsqueeze(-1).expand(-1, -1, c))
            coeff = (residual(fb, problem.y[idx], problem.loss) * w.unsqueeze(-1)).reshape(r_runs, -1)
            delta = F.embedding_bag(rows, table, per_sample_weights=coeff, mode="sum")
            if dtable is not None:
                delta = delta + drift.progress(a).unsqueeze(1) * F.embedding_bag(rows, dtable, per_sample_weights=coeff,
                                                                              mode="sum")
        if wd:
            delta = delta + wd * (jw0a + fa - f0a)
        if a is not None:  # coefficient vector of this step's gradient, e (R, N*C)
            e = coeff if rows is None else torch.zeros(r_runs, nc, dtype=dt).scatter_add_(1, rows, coeff)
        if u is not None:
            u.mul_(sgd.momentum).add_(delta)
            step = delta + sgd.momentum * u if sgd.nesterov else u
            if alpha is not None:
                alpha.mul_(sgd.momentum).add_(e)
                a -= lrs[t] * (e + sgd.momentum * alpha if sgd.nesterov else alpha)
        else:
            step = delta
            if a is not None:
                a -= lrs[t] * e
        fa = fa - lrs[t] * step
        if not recorder(fa, t + 1):
            break
    return SimState(fa, u, alpha, a)


def simulate(
    problem: Problem,
    sgd: SGD,
    steps: int,
    *,
    runs: int = 1,
    generator: torch.Generator | None = None,
    plan: BatchPlan | None = None,
) -> Trajectory:
    """Run ``sgd`` for ``steps`` updates on the linearized model, ``runs`` batch orders at once.

    Args:
        problem: kernel, initial outputs and labels (test set optional).
        sgd: optimizer settings (``torch.optim.SGD`` semantics).
        steps: number of updates ``T``; curves have ``T + 1`` points.
        runs: ensemble size ``R`` (ignored for full-batch GD, which is deterministic: ``R = 1``).
        generator: source of the batch orders (required unless ``plan`` is given or the run is full-batch).
        plan: explicit batch order, e.g. the one a real run used.

    Returns:
        ``Trajectory`` with ``(R, T+1)`` training (and test) loss and accuracy curves.
    """
    plan, r_runs = resolve_plan(problem.n, sgd, steps, runs, generator, plan)
    lrs = (lr_factors(sgd.schedule, steps) * sgd.lr).tolist()
    state = initial_state(problem, sgd, r_runs)
    rec = Recorder(problem, r_runs, steps, problem.theta.dtype)
    rec(state.f, 0)
    state = run_segment(problem, sgd, state, 0, steps, lrs, plan, rec)
    return rec.result(state.f, "exact")


def resolve_plan(n: int, sgd: SGD, steps: int, runs: int, generator, plan):
    """``(plan or None for full-batch GD, number of runs)``; draws the batch orders when needed."""
    if plan is None and sgd.is_full_batch(n):
        return None, 1
    if plan is None:
        if generator is None:
            raise ValueError("a generator (or an explicit plan) is needed to draw minibatches")
        plan = batch_plan(n, sgd, steps, runs, generator)
    if plan.steps < steps:
        raise ValueError(f"batch plan has {plan.steps} steps, {steps} requested")
    return plan, plan.runs
