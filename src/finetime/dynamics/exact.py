"""Exact discrete dynamics of the linearized model in function space (the default simulator).

For the linearized network ``f_t = f_0 + J (w_t - w_0)`` a gradient step on a batch ``B`` changes the outputs on
every training (and test) sample by ``J g`` with ``g = J_B^T r_B / |B|``, i.e. by ``Theta[:, B] r_B / |B|``. The
optimizer's own rule (``finetime.optim``: momentum, Nesterov, weight decay through ``J w_t = J w_0 + f_t - f_0``)
then acts on these function-space gradients, so real training of the linearized model is reproduced exactly, batch
by batch, without touching the weights. An ensemble of ``R`` batch orders runs vectorized: each step is one
``embedding_bag`` over the kernel's rows. Gradient clipping is exact too: the batch gradient's squared norm is
``|J^T c|^2 = c^T Theta c`` for its coefficient vector ``c``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batches import BatchPlan, batch_plan
from ..losses import residual
from ..optim import FunctionState, Optimizer
from ._driver import solve
from ._problem import Problem
from ._trajectory import Trajectory, full_table, initial_outputs

__all__ = ["simulate", "ExactStepper", "resolve_plan", "expected_gradient_square", "clip_factor", "CLIP_EPS"]

CLIP_EPS = 1e-6
"""What ``torch.nn.utils.clip_grad_norm_`` adds to the norm: the factor is ``min(1, max_norm / (|g| + 1e-6))``."""


def clip_factor(sq_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The factor ``clip_grad_norm_`` scales a gradient of squared norm ``sq_norm`` by (per run, ``<= 1``)."""
    return (max_norm / (sq_norm.clamp_min(0).sqrt() + CLIP_EPS)).clamp(max=1.0)


class ExactStepper:
    """One update of ``optimizer`` on the linearized model ``problem`` (a stepper for ``solve``).

    ``plan`` is ``None`` for full-batch GD. ``track`` keeps the coefficient vectors (``w_t - w_s = J^T a``) that
    re-linearization needs (not with weight decay).
    """

    def __init__(self, problem: Problem, optimizer: Optimizer, steps: int, plan: BatchPlan | None,
                 track: bool = False, lrs: list[float] | None = None):
        self.problem, self.optimizer, self.track = problem, optimizer, track
        self.plan = None if plan is None else plan.to(problem.device)
        self.rule = optimizer.function_space()
        self.lrs = lrs if lrs is not None else optimizer.lr_table(steps).tolist()
        self.table = full_table(problem)
        self.f0a = initial_outputs(problem)
        self.jw0a = None
        if optimizer.weight_decay:
            if problem.jw0 is None or (problem.has_test and problem.jw0_test is None):
                raise ValueError("weight decay needs J w0 (problem.jw0) for the linearized model")
            self.jw0a = problem.jw0.reshape(-1)
            if problem.has_test:
                self.jw0a = torch.cat([self.jw0a, problem.jw0_test.reshape(-1)])
        self.cls = torch.arange(problem.c, device=problem.device)
        self.max_norm = optimizer.max_grad_norm

    def with_problem(self, problem: Problem) -> "ExactStepper":
        """The same optimizer, batch order and learning rates on another kernel (re-linearization)."""
        return ExactStepper(problem, self.optimizer, len(self.lrs), self.plan, self.track, self.lrs)

    def init(self, runs: int) -> FunctionState:
        fa = initial_outputs(self.problem).expand(runs, -1).clone()
        return self.rule.init(fa, self.problem.n * self.problem.c, self.track)

    def step(self, state: FunctionState, t: int) -> FunctionState:
        p = self.problem
        n, c = p.n, p.c
        nc = n * c
        fa = state.f
        r_runs = fa.shape[0]
        ftr = fa[:, :nc].view(r_runs, n, c)
        if self.plan is None:
            coeff = residual(ftr, p.y, p.loss).reshape(r_runs, nc) / n
            grad = coeff @ self.table
            rows = None
        else:
            idx = self.plan.indices[:, t]  # (R, b)
            w = self.plan.weights[:, t].to(fa.dtype)  # (R, b)
            rows = (idx.unsqueeze(-1) * c + self.cls).reshape(r_runs, -1)  # (R, b*C)
            fb = torch.gather(ftr, 1, idx.unsqueeze(-1).expand(-1, -1, c))
            coeff = (residual(fb, p.y[idx], p.loss) * w.unsqueeze(-1)).reshape(r_runs, -1)
            grad = F.embedding_bag(rows, self.table, per_sample_weights=coeff, mode="sum")
        clip = None
        if self.max_norm is not None:  # |g|^2 = c^T Theta c (times norm_scale for a preconditioned kernel)
            sq = (grad[:, :nc] * coeff).sum(1) if rows is None else (torch.gather(grad, 1, rows) * coeff).sum(1)
            clip = clip_factor(sq * p.norm_scale, self.max_norm)
            grad, coeff = grad * clip.unsqueeze(1), coeff * clip.unsqueeze(1)
        e = None
        if state.a is not None or self.rule.needs_coeff:  # coefficient vector of this step's gradient (R, N*C)
            e = coeff if rows is None else fa.new_zeros(r_runs, nc).scatter_add_(1, rows, coeff)
        weights = lambda: self.jw0a + fa - self.f0a  # noqa: E731  (J w_t of the linear model)
        return self.rule.step(state, grad, e, self.lrs[t], weights, clip)

    def expected_gradient_square(self, state: FunctionState) -> torch.Tensor:
        """Each run's expected ``c^T Theta c`` over the batches it may draw next (``expected_gradient_square``) at
        its current outputs. ``(R,)``."""
        return expected_gradient_square(self.problem, state.f, self.table,
                                        0.0 if self.plan is None else self.optimizer.minibatch_noise(self.problem.n))


def expected_gradient_square(problem: Problem, f: torch.Tensor, table: torch.Tensor | None = None,
                             noise: float = 0.0) -> torch.Tensor:
    """The expected ``c^T Theta c`` of a batch gradient at outputs ``f`` (``(R, N*C [+ M*C])``; ``c`` a batch's
    coefficient vector: the squared norm of a batch gradient in the kernel's metric, Adam's ``g^T P g``):
    ``(1 - noise) |g_mean|^2 + noise * mean_i |g_i|^2``, ``g_i`` the per-sample gradients and ``noise`` the optimizer's
    ``minibatch_noise`` (0 for full batches). ``table``: the kernel's rows (default: ``problem.theta``). ``(R,)``."""
    n, c = problem.n, problem.c
    nc = n * c
    theta = (problem.theta if table is None else table)[:, :nc]
    r = residual(f[:, :nc].reshape(-1, n, c), problem.y, problem.loss)  # (R, n, C)
    flat = r.reshape(-1, nc)
    mean_sq = ((flat @ theta) * flat).sum(1) / (n * n)
    blocks = theta.reshape(n, c, n, c).diagonal(dim1=0, dim2=2)  # (C, C, n): each sample's own block
    per_sample = torch.einsum("rni,ijn,rnj->r", r, blocks, r) / n
    return (1 - noise) * mean_sq + noise * per_sample


def resolve_plan(n: int, optimizer: Optimizer, steps: int, runs: int, generator, plan):
    """``(plan or None for full-batch GD, number of runs)``; draws the batch orders when needed."""
    if plan is None and optimizer.is_full_batch(n):
        return None, 1
    if plan is None:
        if generator is None:
            raise ValueError("a generator (or an explicit plan) is needed to draw minibatches")
        plan = batch_plan(n, optimizer, steps, runs, generator)
    if plan.steps < steps:
        raise ValueError(f"batch plan has {plan.steps} steps, {steps} requested")
    return plan, plan.runs


def simulate(
    problem: Problem,
    optimizer: Optimizer,
    steps: int,
    *,
    runs: int = 1,
    generator: torch.Generator | None = None,
    plan: BatchPlan | None = None,
) -> Trajectory:
    """Run ``optimizer`` for ``steps`` updates on the linearized model, ``runs`` batch orders at once.

    Args:
        problem: kernel, initial outputs and labels (test set optional).
        optimizer: e.g. ``SGD(lr=..., momentum=..., batch_size=...)`` (``torch.optim`` semantics).
        steps: number of updates ``T``; curves have ``T + 1`` points.
        runs: ensemble size ``R`` (ignored for full-batch GD, which is deterministic: ``R = 1``).
        generator: source of the batch orders (required unless ``plan`` is given or the run is full-batch).
        plan: explicit batch order, e.g. the one a real run used.

    Returns:
        ``Trajectory`` with ``(R, T+1)`` training (and test) loss and accuracy curves.
    """
    plan, r_runs = resolve_plan(problem.n, optimizer, steps, runs, generator, plan)
    return solve(ExactStepper(problem, optimizer, steps, plan), steps, runs=r_runs, method="exact")[0]
