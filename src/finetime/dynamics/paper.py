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
from ..optim import FunctionState, Optimizer, Sampling
from ..spectrum import top_eigenvalue
from ._driver import solve
from ._problem import Problem
from ._trajectory import Trajectory, full_table, initial_outputs

__all__ = ["simulate_ode", "simulate_sde", "OdeStepper", "SdeStepper", "noise_factor"]


def _curvature_bound(problem: Problem) -> float:
    # Largest eigenvalue of the loss Hessian in f: <= 1/2 for softmax CE, 2/C for our MSE.
    return 0.5 if problem.loss.value == "ce" else 2.0 / problem.c


def _drift(problem, fa, n, c, full_table):
    ftr = fa[:, : n * c].view(fa.shape[0], n, c)
    coeff = residual(ftr, problem.y, problem.loss).reshape(fa.shape[0], n * c) / n
    return -(coeff @ full_table), coeff


class OdeStepper:
    """Gradient flow over one optimizer step, integrated by classical RK4 with ``substeps`` sub-steps."""

    def __init__(self, problem: Problem, optimizer: Optimizer, steps: int, substeps: int | None = None):
        self.problem = problem
        self.table = full_table(problem)
        self.lrs = optimizer.lr_table(steps, base=optimizer.effective_lr).tolist()
        if substeps is None:
            stiff = max(self.lrs) * top_eigenvalue(problem.theta) * _curvature_bound(problem) / problem.n
            substeps = max(1, math.ceil(stiff / 1.0))
        self.substeps = substeps

    def init(self, runs: int) -> FunctionState:
        return FunctionState(initial_outputs(self.problem).unsqueeze(0).clone())

    def step(self, state: FunctionState, t: int) -> FunctionState:
        p, table, lr = self.problem, self.table, self.lrs[t]
        n, c = p.n, p.c
        h = 1.0 / self.substeps
        fa = state.f
        for _ in range(self.substeps):
            k1 = lr * _drift(p, fa, n, c, table)[0]
            k2 = lr * _drift(p, fa + 0.5 * h * k1, n, c, table)[0]
            k3 = lr * _drift(p, fa + 0.5 * h * k2, n, c, table)[0]
            k4 = lr * _drift(p, fa + h * k3, n, c, table)[0]
            fa = fa + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return FunctionState(fa)


def simulate_ode(problem: Problem, optimizer: Optimizer, steps: int, *, substeps: int | None = None) -> Trajectory:
    """Gradient flow of the linearized model with the effective learning rate (paper, deterministic part of eq. 1).

    Returns a one-run ``Trajectory`` sampled at integer steps ``0..T``.
    """
    return solve(OdeStepper(problem, optimizer, steps, substeps), steps, runs=1, method="ode")[0]


def noise_factor(problem: Problem) -> torch.Tensor:
    """``L`` with ``L L^T = Sigma_f``: covariance of the per-sample function-space updates at t = 0, ``(N*C + M*C, N)``."""
    n, c = problem.n, problem.c
    table = full_table(problem)
    r0 = residual(problem.f0, problem.y, problem.loss)  # (N, C)
    # Column j: Theta[:, j-block] r_j, the change of all outputs caused by sample j's gradient.
    per_sample = torch.einsum("kjc,jc->kj", table.T.reshape(-1, n, c), r0)  # (NC+MC, N)
    centred = per_sample - per_sample.mean(1, keepdim=True)
    return centred / math.sqrt(n)


class SdeStepper:
    """Euler-Maruyama step of the paper's SDE: the deterministic drift plus batch noise (none for full batch)."""

    def __init__(self, problem: Problem, optimizer: Optimizer, steps: int, generator: torch.Generator | None):
        n = problem.n
        self.problem, self.generator = problem, generator
        self.table = full_table(problem)
        self.full = optimizer.is_full_batch(n)
        self.lrs = optimizer.lr_table(steps, base=optimizer.effective_lr).tolist()
        if not self.full:
            b = optimizer.batch_size
            fpc = (n - b) / (n - 1) if optimizer.sampling is Sampling.SHUFFLE and n > 1 else 1.0
            self.lfac = noise_factor(problem) * math.sqrt(fpc / b)
            self.g0 = residual(problem.f0, problem.y, problem.loss).norm()

    def init(self, runs: int) -> FunctionState:
        return FunctionState(initial_outputs(self.problem).expand(runs, -1).clone())

    def step(self, state: FunctionState, t: int) -> FunctionState:
        p = self.problem
        n, c = p.n, p.c
        fa = state.f
        drift, coeff = _drift(p, fa, n, c, self.table)
        fa = fa + self.lrs[t] * drift
        if not self.full:
            runs = fa.shape[0]
            scale = coeff.norm(dim=1) * n / self.g0  # |grad_f L_t| / |grad_f L_0|, per run
            # drawn on the generator's device (the CPU): the same noise wherever the simulation runs
            xi = torch.randn(runs, n, generator=self.generator, dtype=fa.dtype).to(fa.device)
            fa = fa + self.lrs[t] * scale.unsqueeze(1) * (xi @ self.lfac.T)
        return FunctionState(fa)


def simulate_sde(
    problem: Problem, optimizer: Optimizer, steps: int, *, runs: int, generator: torch.Generator
) -> Trajectory:
    """Euler-Maruyama ensemble of the paper's SDE (eq. 1) with the effective learning rate.

    Full-batch runs have no noise and reduce to the discrete deterministic drift.
    """
    runs = 1 if optimizer.is_full_batch(problem.n) else runs
    return solve(SdeStepper(problem, optimizer, steps, generator), steps, runs=runs, method="sde")[0]
