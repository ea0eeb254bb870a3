"""Piecewise re-linearization: the linearized model, re-anchored on the real network along its own prediction.

The linear model's weights are known at every step without training: ``w_t - w_s = J_s^T a_t`` for the coefficient
vector ``a`` the simulator tracks. At a checkpoint the network is moved there by one backward pass
(``J(w_s)^T a``), its true outputs and kernel are computed at the new weights, and the simulation continues from
there. With a checkpoint at every step this *is* real gradient descent; with none it is the paper's method. Between
the two it trades kernels for accuracy (issue: the kernel moves during fine-tuning).

For SGD ensembles the network follows the runs' mean coefficients, each run keeps its own deviation from the mean,
and the function-space momentum is carried over as ``Theta_new alpha`` (exact for plain GD, an approximation with
momentum). Weight decay is not supported here.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable

import torch

from .batches import BatchPlan
from .config import REANCHOR
from .dynamics import Problem, Trajectory
from .dynamics._trajectory import Recorder
from .dynamics.exact import SimState, initial_state, resolve_plan, run_segment
from .errors import ConfigError
from .finetune import network_outputs
from .kernel import Kernel
from .losses import mean_loss_and_accuracy
from .optim import SGD, lr_factors

__all__ = ["apply_coefficients", "relinearized", "checkpoint_schedule", "RelinearizationInfo"]


@dataclasses.dataclass
class RelinearizationInfo:
    """What happened at the checkpoints: ``loss_gaps[i]`` is ``|L(network) - L(linear)| / L(linear)`` at checkpoint
    ``i`` (the network moved to the linear model's weights, against the linear model's own outputs there);
    ``trace_ratios[i]`` the kernel's trace there over the initial one; ``linear_regime`` is set when the linearity
    check kept the one-kernel prediction."""

    checkpoints: list[int]
    kernel_seconds: float = 0.0
    network_seconds: float = 0.0
    kernel_traces: list[float] = dataclasses.field(default_factory=list)
    loss_gaps: list[float] = dataclasses.field(default_factory=list)
    trace_ratios: list[float] = dataclasses.field(default_factory=list)
    linear_regime: bool = False
    kernels: int = 0

    def to_dict(self) -> dict:
        return {"checkpoints": self.checkpoints, "kernels": self.kernels, "linear_regime": self.linear_regime,
                "loss_gaps": [round(g, 4) for g in self.loss_gaps],
                "trace_ratios": [round(r, 3) for r in self.trace_ratios],
                "kernel_seconds": round(self.kernel_seconds, 3), "network_seconds": round(self.network_seconds, 3)}


def checkpoint_schedule(steps: int, count: int, first: int | None = None) -> list[int]:
    """``count`` re-linearization steps in ``(0, steps)``, spaced geometrically (the kernel moves fastest early):
    ``first, 3 first, 7 first, ...`` scaled to end before ``steps``. ``count=3, steps=150`` gives 10, 30, 70."""
    if count <= 0:
        return []
    first = first or max(1, round(steps / (2 ** (count + 1) - 1)))
    pts = sorted({min(steps - 1, first * (2 ** (k + 1) - 1)) for k in range(count)})
    return [p for p in pts if 0 < p < steps]


def apply_coefficients(model: torch.nn.Module, x: torch.Tensor, a: torch.Tensor, params: list[str],
                       chunk: int = 64) -> None:
    """``w <- w + J(w)^T a`` in place for the named parameters (``a``: ``(N, C)``; model in eval mode)."""
    named = dict(model.named_parameters())
    trained = [named[n] for n in params]
    grads = [torch.zeros_like(p) for p in trained]
    was = model.training
    model.eval()
    try:
        for s in range(0, x.shape[0], chunk):
            out = model(x[s : s + chunk])
            gs = torch.autograd.grad((out * a[s : s + chunk].to(out.dtype)).sum(), trained, allow_unused=True)
            for acc, g in zip(grads, gs):
                if g is not None:
                    acc += g
        with torch.no_grad():
            for p, g in zip(trained, grads):
                p += g
    finally:
        model.train(was)


def relinearized(
    model: torch.nn.Module,
    x: torch.Tensor,
    problem: Problem,
    sgd: SGD,
    steps: int,
    *,
    checkpoints: list[int],
    kernel_fn: Callable[[torch.nn.Module], Kernel],
    params: list[str],
    runs: int = 1,
    generator: torch.Generator | None = None,
    x_test: torch.Tensor | None = None,
    reanchor: str = "all",
    linearity_tol: float = 0.0,
    outputs_fn: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    plan: BatchPlan | None = None,
) -> tuple[Trajectory, RelinearizationInfo]:
    """Simulate ``sgd`` on the linearization at ``w0`` (``problem``), re-linearizing the real network at
    ``checkpoints``. ``kernel_fn(model)`` returns the kernel (and outputs) of the moved network on ``x``
    (and ``x_test``), e.g. ``lambda m: compute_kernel(m, x, x_test=x_test)``; its ``f0`` are the network's outputs.
    ``reanchor``: at which checkpoints the curve restarts from the network's true outputs (``all``, ``first``,
    ``none``); elsewhere only the kernel is refreshed. ``linearity_tol > 0`` turns on the linearity check at the first
    checkpoint, which evaluates the moved network with ``outputs_fn(model) -> (N, C)`` (default: the model in eval
    mode). ``plan``: an explicit batch order (e.g. a real run's) instead of ``runs`` drawn from ``generator``.
    ``model`` is not modified."""
    if sgd.weight_decay:
        raise ConfigError("re-linearization does not support weight decay; use the linear predictor")
    if reanchor not in REANCHOR:
        raise ConfigError(f"reanchor must be one of {', '.join(REANCHOR)}, got {reanchor!r}")
    n, c = problem.n, problem.c
    nc = n * c
    plan, r_runs = resolve_plan(n, sgd, steps, runs, generator, plan)
    lrs = (lr_factors(sgd.schedule, steps) * sgd.lr).tolist()
    state = initial_state(problem, sgd, r_runs, track=True)
    rec = Recorder(problem, r_runs, steps, problem.theta.dtype)
    rec(state.f, 0)
    info = RelinearizationInfo(sorted(checkpoints))
    work = copy.deepcopy(model)
    bounds = [0] + [t for t in info.checkpoints if 0 < t < steps] + [steps]
    current = problem
    dtype = problem.theta.dtype
    trace0 = float(problem.theta.trace())
    for i, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:])):
        state = run_segment(current, sgd, state, t0, t1, lrs, plan, rec)
        if t1 == steps or not bool((rec.diverged_at < 0).any()):
            break
        alive = rec.diverged_at < 0
        mean = state.f[alive].mean(0)
        check = i == 0 and linearity_tol > 0
        t_net = time.perf_counter()
        a_mean = state.a[alive].mean(0).view(n, c)
        apply_coefficients(work, x, a_mean, params)
        if check:
            with torch.no_grad():
                f_net = outputs_fn(work) if outputs_fn is not None else _eval_outputs(work, x)
        info.network_seconds += time.perf_counter() - t_net
        if check:
            gap = _loss_gap(f_net.to(dtype), mean[: n * c].view(n, c), problem)
            info.loss_gaps.append(gap)
            if gap < linearity_tol:
                info.linear_regime = True
                state = run_segment(current, sgd, state, t1, steps, lrs, plan, rec)
                break
        t_k = time.perf_counter()
        k = kernel_fn(work)
        info.kernel_seconds += time.perf_counter() - t_k
        info.kernels += 1
        info.kernel_traces.append(float(k.theta.trace()))
        info.trace_ratios.append(info.kernel_traces[-1] / trace0)
        theta = k.theta.to(dtype)
        f_new = k.f0.to(dtype).reshape(-1)
        if not check:
            info.loss_gaps.append(_loss_gap(k.f0.to(dtype), mean[: n * c].view(n, c), problem))
        theta_test = k.theta_test.to(dtype) if k.theta_test is not None else None
        if theta_test is not None:
            f_new = torch.cat([f_new, k.f0_test.to(dtype).reshape(-1)])
        anchor = reanchor == "all" or (reanchor == "first" and i == 0)
        # each run keeps its deviation from the ensemble mean
        f = state.f - mean + f_new if anchor else state.f
        u = None
        if state.u is not None:
            u = state.alpha @ theta  # J_new v with v = J_new^T alpha (the momentum buffer, re-expressed)
            if theta_test is not None:
                u = torch.cat([u, state.alpha @ theta_test.T], 1)
        current = dataclasses.replace(problem, theta=theta, f0=k.f0.to(dtype), theta_test=theta_test,
                                      f0_test=k.f0_test.to(dtype) if k.f0_test is not None else None)
        state = SimState(f, u, state.alpha, torch.zeros(r_runs, nc, dtype=dtype))
        if anchor:
            rec(state.f, t1)  # the checkpoint's curve value is the re-anchored (true network) one
    traj = rec.result(state.f, "relinearized")
    return traj, info


def _eval_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return network_outputs(model, x)
    finally:
        model.train(was)


def _loss_gap(f_net: torch.Tensor, f_lin: torch.Tensor, problem: Problem) -> float:
    """``|L(f_net) - L(f_lin)| / L(f_lin)``: how far the network at the linear model's weights is from the linear
    model's outputs, in training loss (0 for a network that is its own linearization)."""
    (l_net, l_lin), _ = mean_loss_and_accuracy(torch.stack([f_net, f_lin]), problem.y, problem.loss)
    return float((l_net - l_lin).abs() / l_lin.clamp_min(1e-12))
