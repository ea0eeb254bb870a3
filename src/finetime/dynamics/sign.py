"""Sign descent in function space on the asymmetric SignGD kernel: the kernel view of early Adam of Malladi et al.
(2023), a baseline for the Adam predictions.

In its first steps Adam moves every weight by about ``lr`` in the direction of its gradient's sign. Malladi et al.
describe that as kernel dynamics: a sample ``i`` moves the weights by ``-lr sign(r_ic) sign(df_c(x_i)/dw)`` for each
output ``c`` (``r_i`` the per-sample loss gradient in the outputs), so the outputs move through the asymmetric SignGD
kernel ``K[(j, c), (i, c')] = <df_c(x_j)/dw, sign(df_c'(x_i)/dw)>`` (``finetime.kernel.sign_gradient_kernel``):

    f_{t+1} = f_t - lr_t sum_{i in B_t} w_i sum_c' K[:, (i, c')] sign(r_ic'(f_t))

with the batch weights ``w_i = 1/|B_t|`` of the mean loss (a minibatch step is its samples' steps, each of size
``lr / |B|``, as a kernel description of SGD has it). For a linear model whose outputs have weights of their own (a
linear head) ``sum_c sign(r_ic) sign(df_c/dw)`` is ``sign(dl_i/dw)``: the rule is per-sample sign descent there,
exactly. Momentum, the second moment's scale and weight decay are not in it.
"""

from __future__ import annotations

import torch

from ..batches import BatchPlan
from ..losses import residual
from ..optim import FunctionState, Optimizer
from ._driver import solve
from ._problem import Problem
from ._trajectory import Trajectory
from .exact import resolve_plan

__all__ = ["SignStepper", "simulate_sign_descent"]


class SignStepper:
    """A stepper for ``solve``: ``problem.theta`` is the asymmetric SignGD kernel, ``lr`` the learning rate of every
    update ``(T,)``, ``plan`` the batch orders (``None``: full batch)."""

    def __init__(self, problem: Problem, lr: torch.Tensor, plan: BatchPlan | None):
        if problem.has_test:
            raise ValueError("sign descent is simulated on the training set only")
        self.problem, self.lr = problem, lr
        self.plan = None if plan is None else plan.to(problem.device)

    def init(self, runs: int) -> FunctionState:
        return FunctionState(self.problem.f0.reshape(1, -1).expand(runs, -1).clone())

    def step(self, state: FunctionState, t: int) -> FunctionState:
        p = self.problem
        runs, n, c = state.f.shape[0], p.n, p.c
        r = residual(state.f.view(runs, n, c), p.y, p.loss).sign()  # (R, N, C)
        if self.plan is None:
            w = r.new_full((runs, n), 1.0 / n)
        else:  # batch weights scattered onto the samples (a sample drawn twice counts twice)
            w = r.new_zeros(runs, n).scatter_add_(1, self.plan.indices[:, t], self.plan.weights[:, t].to(r.dtype))
        coeff = (r * w.unsqueeze(-1)).reshape(runs, n * c)
        state.f = state.f - float(self.lr[t]) * coeff @ p.theta.T
        return state


def simulate_sign_descent(problem: Problem, optimizer: Optimizer, steps: int, *, runs: int = 1,
                          generator: torch.Generator | None = None, plan: BatchPlan | None = None) -> Trajectory:
    """Sign descent on ``problem`` (its ``theta`` the asymmetric SignGD kernel) for ``steps`` updates at
    ``optimizer``'s learning rates and schedule, with its batching: ``runs`` batch orders from ``generator`` (or the
    explicit ``plan``). Only the learning rate and the batching of ``optimizer`` are used."""
    plan, r_runs = resolve_plan(problem.n, optimizer, steps, runs, generator, plan)
    stepper = SignStepper(problem, optimizer.lr_table(steps), plan)
    return solve(stepper, steps, runs=r_runs, method="signgd")[0]
