"""The paper's approximations (Zancato et al., NeurIPS 2020, eq. 1 and section 3.1), kept for comparison.

* ``simulate_ode``: gradient flow ``df/dt = -lr_hat * Theta * grad_f L`` (the deterministic part of eq. 1) with the
  effective learning rate ``lr_hat = lr / (1 - momentum)``, integrated with classical RK4 (``substeps`` per optimizer
  step, chosen from the kernel's top eigenvalue so the integrator is stable).
* ``simulate_sde``: eq. 1 with its noise term, Euler-Maruyama with one step per optimizer step. The paper
  approximates the weight-space gradient covariance by its diagonal at initialization; the projected kernel does not
  keep D-dimensional statistics, so we use the function-space covariance of the per-sample updates at
  initialization, ``Sigma_f = Cov_j(Theta[:, j] r_j)`` (exact at t = 0, computed from Theta alone), and rescale it
  over time by ``|grad_f L_t| / |grad_f L_0|`` as the paper does. Noise variance scales as ``lr_hat^2 / |B|``, times the
  finite-population factor ``(N - |B|) / (N - 1)`` for sampling without replacement.

Learning-rate schedules multiply ``lr_hat`` per step. Weight decay is not modelled here (use ``exact.simulate``).
"""

from __future__ import annotations

import math

import torch

from ..losses import residual
from ..optim import SGD, Sampling, lr_factors
from ._problem import Problem
from ._trajectory import Recorder, Trajectory, full_table, initial_outputs

__all__ = ["simulate_ode", "simulate_sde"]


def _top_eig(theta: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(theta.double())[-1])


def _curvature_bound(problem: Problem) -> float:
    # Largest eigenvalue of the loss Hessian in f: <= 1/2 for softmax CE, 2/C for our MSE.
    return 0.5 if problem.loss.value == "ce" else 2.0 / problem.c


def _drift(problem, fa, n, c, full_table):
    ftr = fa[:, : n * c].view(fa.shape[0], n, c)
    coeff = residual(ftr, problem.y, problem.loss).reshape(fa.shape[0], n * c) / n
    return -(coeff @ full_table), coeff


def simulate_ode(problem: Problem, sgd: SGD, steps: int, *, substeps: int | None = None) -> Trajectory:
    """Gradient flow of the linearized model with the effective learning rate (paper, deterministic part of eq. 1).

    Returns a one-run ``Trajectory`` sampled at integer steps ``0..T``.
    """
    n, c = problem.n, problem.c
    table = full_table(problem)
    lrs = (lr_factors(sgd.schedule, steps) * sgd.effective_lr).tolist()
    if substeps is None:
        stiff = max(lrs) * _top_eig(problem.theta) * _curvature_bound(problem) / n
        substeps = max(1, math.ceil(stiff / 1.0))
    h = 1.0 / substeps
    fa = initial_outputs(problem).unsqueeze(0).clone()
    rec = Recorder(problem, 1, steps, table.dtype)
    rec(fa, 0)
    for t in range(steps):
        lr = lrs[t]
        for _ in range(substeps):
            k1 = lr * _drift(problem, fa, n, c, table)[0]
            k2 = lr * _drift(problem, fa + 0.5 * h * k1, n, c, table)[0]
            k3 = lr * _drift(problem, fa + 0.5 * h * k2, n, c, table)[0]
            k4 = lr * _drift(problem, fa + h * k3, n, c, table)[0]
            fa = fa + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        if not rec(fa, t + 1):
            break
    return rec.result(fa, "ode")


def noise_factor(problem: Problem, sgd: SGD) -> torch.Tensor:
    """``L`` with ``L L^T = Sigma_f``: covariance of the per-sample function-space updates at t = 0, ``(N*C + M*C, N)``."""
    n, c = problem.n, problem.c
    table = full_table(problem)
    r0 = residual(problem.f0, problem.y, problem.loss)  # (N, C)
    # Column j: Theta[:, j-block] r_j, the change of all outputs caused by sample j's gradient.
    per_sample = torch.einsum("kjc,jc->kj", table.T.reshape(-1, n, c), r0)  # (NC+MC, N)
    centred = per_sample - per_sample.mean(1, keepdim=True)
    return centred / math.sqrt(n)


def simulate_sde(
    problem: Problem, sgd: SGD, steps: int, *, runs: int, generator: torch.Generator
) -> Trajectory:
    """Euler-Maruyama ensemble of the paper's SDE (eq. 1) with the effective learning rate.

    Full-batch runs have no noise and reduce to the discrete deterministic drift.
    """
    n, c = problem.n, problem.c
    table = full_table(problem)
    full = sgd.is_full_batch(n)
    runs = 1 if full else runs
    lrs = (lr_factors(sgd.schedule, steps) * sgd.effective_lr).tolist()
    fa = initial_outputs(problem).expand(runs, -1).clone()
    rec = Recorder(problem, runs, steps, table.dtype)
    rec(fa, 0)
    if not full:
        b = sgd.batch_size
        fpc = (n - b) / (n - 1) if sgd.sampling is Sampling.SHUFFLE and n > 1 else 1.0
        lfac = noise_factor(problem, sgd) * math.sqrt(fpc / b)
        g0 = residual(problem.f0, problem.y, problem.loss).norm()
    for t in range(steps):
        drift, coeff = _drift(problem, fa, n, c, table)
        fa = fa + lrs[t] * drift
        if not full:
            scale = coeff.norm(dim=1) * n / g0  # |grad_f L_t| / |grad_f L_0|, per run
            xi = torch.randn(runs, n, generator=generator, dtype=fa.dtype)
            fa = fa + lrs[t] * scale.unsqueeze(1) * (xi @ lfac.T)
        if not rec(fa, t + 1):
            break
    return rec.result(fa, "sde")
