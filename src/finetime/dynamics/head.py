"""Exact simulation of a trained linear head on frozen features, in weight space, for any optimizer.

With a frozen backbone the network is ``f = phi W^T + b`` in its trained weights: linear, so function-space SGD on
its kernel is already exact. Adam is not linear in the gradient, but the head is small (``C x d`` weights), so an
ensemble of ``R`` runs is simulated directly: the weights of all runs are one ``(R, C, d)`` tensor trained by the
optimizer's own ``torch.optim`` twin on the sum of the runs' batch losses (every ``torch.optim`` rule here acts weight
by weight, so the runs stay independent), with the run's learning-rate schedule and each run's gradient clipped on its
own. This reproduces real training of the head to float precision (tests), at ``R (|B| + N) C d`` flops per step.
"""

from __future__ import annotations

import torch

from ..batches import BatchPlan
from ..losses import per_sample_loss
from ..optim import FunctionState, Optimizer
from ._driver import solve
from ._problem import Problem
from ._trajectory import Trajectory
from .exact import clip_factor, resolve_plan

__all__ = ["HeadStepper", "simulate_head"]


class HeadStepper:
    """A stepper for ``solve``: ``problem`` supplies labels, loss and test set; ``features`` ``(N + M, d)`` are the
    head's inputs on the training then test samples, ``weight`` ``(C, d)`` and ``bias`` ``(C,)`` its start."""

    def __init__(self, problem: Problem, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 optimizer: Optimizer, steps: int, plan: BatchPlan | None):
        dt = problem.theta.dtype
        dev = problem.device
        self.problem, self.optimizer, self.steps = problem, optimizer, steps
        self.plan = None if plan is None else plan.to(dev)
        self.features = features.to(dev, dt)
        self.w0 = weight.detach().to(dev, dt)
        self.b0 = None if bias is None else bias.detach().to(dev, dt)
        if self.features.shape[0] != problem.n + (problem.f0_test.shape[0] if problem.has_test else 0):
            raise ValueError("head features do not match the problem's samples")

    def _outputs(self, w, b):
        f = torch.einsum("md,rcd->rmc", self.features, w)
        if b is not None:
            f = f + b.unsqueeze(1)
        return f.reshape(w.shape[0], -1)

    def init(self, runs: int) -> FunctionState:
        w = self.w0.expand(runs, -1, -1).clone().requires_grad_(True)
        b = None if self.b0 is None else self.b0.expand(runs, -1).clone().requires_grad_(True)
        params = [w] + ([b] if b is not None else [])
        opt = self.optimizer.torch_optimizer(params)
        sched = self.optimizer.scheduler(opt, self.steps)
        with torch.no_grad():
            f = self._outputs(w, b)
        return FunctionState(f, {"w": w, "b": b, "opt": opt, "sched": sched})

    def step(self, state: FunctionState, t: int) -> FunctionState:
        s, p = state.slots, self.problem
        w, b = s["w"], s["b"]
        runs = w.shape[0]
        if self.plan is None:
            idx = torch.arange(p.n, device=w.device).expand(runs, -1)
            weights = torch.full(idx.shape, 1.0 / p.n, dtype=w.dtype, device=w.device)
        else:
            idx, weights = self.plan.indices[:, t], self.plan.weights[:, t].to(w.dtype)
        logits = torch.einsum("rbd,rcd->rbc", self.features[idx], w)
        if b is not None:
            logits = logits + b.unsqueeze(1)
        losses = per_sample_loss(logits, p.y[idx], p.loss)  # (R, b)
        s["opt"].zero_grad(set_to_none=True)
        (losses * weights).sum().backward()
        if self.optimizer.max_grad_norm is not None:  # each run's own gradient clipped, as clip_grad_norm_ does
            grads = [param.grad for param in (w, b) if param is not None]
            sq = sum(g.reshape(runs, -1).pow(2).sum(1) for g in grads)
            clip = clip_factor(sq, self.optimizer.max_grad_norm)
            for g in grads:
                g.mul_(clip.view(-1, *([1] * (g.dim() - 1))))
        s["opt"].step()
        s["sched"].step()
        with torch.no_grad():
            state.f = self._outputs(w, b)
        return state


def simulate_head(problem: Problem, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  optimizer: Optimizer, steps: int, *, runs: int = 1, generator: torch.Generator | None = None,
                  plan: BatchPlan | None = None) -> Trajectory:
    """Train the head ``f = features W^T + b`` with ``optimizer`` for ``steps`` updates, ``runs`` batch orders at
    once (see the module docstring); curves as ``simulate`` gives them."""
    plan, r_runs = resolve_plan(problem.n, optimizer, steps, runs, generator, plan)
    stepper = HeadStepper(problem, features, weight, bias, optimizer, steps, plan)
    return solve(stepper, steps, runs=r_runs, method="head")[0]
