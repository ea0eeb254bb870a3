"""Exact discrete dynamics of the linearized model in function space (the default predictor).

For the linearized network ``f_t = f_0 + J (w_t - w_0)`` one optimizer step on a batch ``B`` changes the outputs on
every training (and test) sample by ``J g`` with ``g = J_B^T r_B / |B|``, i.e. by ``Theta[:, B] r_B / |B|``. Momentum,
Nesterov and weight decay act on ``J v`` and ``J w`` in the same way (``J w_t = J w_0 + f_t - f_0``), so real SGD on
the linearized model is reproduced exactly, batch by batch, without touching the weights:

    u <- m u + (Theta[:, B] r_B / |B| + lambda (J w_0 + f - f_0))
    f <- f - lr_t * (delta + m u if nesterov else u)

An ensemble of ``R`` batch orders runs vectorized: each step is one ``embedding_bag`` over the kernel's rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batches import BatchPlan, batch_plan
from ..losses import residual
from ..optim import SGD, lr_factors
from ._problem import Problem
from ._trajectory import Recorder, Trajectory, full_table, initial_outputs

__all__ = ["simulate"]


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
    n, c = problem.n, problem.c
    dt = problem.theta.dtype
    full = plan is None and sgd.is_full_batch(n)
    if plan is None and not full:
        if generator is None:
            raise ValueError("a generator (or an explicit plan) is needed to draw minibatches")
        plan = batch_plan(n, sgd, steps, runs, generator)
    r_runs = 1 if full else plan.runs
    if plan is not None and plan.steps < steps:
        raise ValueError(f"batch plan has {plan.steps} steps, {steps} requested")

    lrs = (lr_factors(sgd.schedule, steps) * sgd.lr).tolist()
    table = full_table(problem)
    f0a = initial_outputs(problem)
    fa = f0a.expand(r_runs, -1).clone()
    wd = sgd.weight_decay
    if wd:
        if problem.jw0 is None or (problem.has_test and problem.jw0_test is None):
            raise ValueError("weight decay needs J w0 (problem.jw0) for the linearized model")
        jw0a = problem.jw0.reshape(-1)
        if problem.has_test:
            jw0a = torch.cat([jw0a, problem.jw0_test.reshape(-1)])
    u = torch.zeros_like(fa) if sgd.momentum else None
    cls = torch.arange(c)
    rec = Recorder(problem, r_runs, steps, dt)
    rec(fa, 0)
    for t in range(steps):
        ftr = fa[:, : n * c].view(r_runs, n, c)
        if full:
            coeff = residual(ftr, problem.y, problem.loss).reshape(r_runs, n * c) / n
            delta = coeff @ table
        else:
            idx = plan.indices[:, t]  # (R, b)
            w = plan.weights[:, t].to(dt)  # (R, b)
            rows = (idx.unsqueeze(-1) * c + cls).reshape(r_runs, -1)  # (R, b*C)
            fb = torch.gather(ftr, 1, idx.unsqueeze(-1).expand(-1, -1, c))
            coeff = (residual(fb, problem.y[idx], problem.loss) * w.unsqueeze(-1)).reshape(r_runs, -1)
            delta = F.embedding_bag(rows, table, per_sample_weights=coeff, mode="sum")
        if wd:
            delta = delta + wd * (jw0a + fa - f0a)
        if u is not None:
            u.mul_(sgd.momentum).add_(delta)
            step = delta + sgd.momentum * u if sgd.nesterov else u
        else:
            step = delta
        fa = fa - lrs[t] * step
        if not rec(fa, t + 1):
            break
    return rec.result(fa, "exact")
