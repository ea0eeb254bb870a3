"""Named predictors: ways to turn a task's kernel into predicted curves, compared side by side by the benchmark.

* ``linear``: the exact simulator of SGD on the linearized model (one kernel at the pretrained weights).
* ``paper``: the paper's method: gradient-flow ODE for full-batch GD, its SDE for SGD, with the effective
  learning rate ``lr / (1 - momentum)`` and the diagonal-noise approximation (see ``dynamics.paper``).
* ``relinearized3``: the linear predictor re-anchored on the real network at three checkpoints (``relinearize``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .config import RunConfig
from .dynamics import Problem, Trajectory

__all__ = ["Prediction", "PREDICTORS", "register"]


@dataclasses.dataclass
class Prediction:
    trajectory: Trajectory
    extra_seconds: float = 0.0  # cost beyond the shared kernel and the simulation (e.g. extra network passes)
    info: dict = dataclasses.field(default_factory=dict)


PREDICTORS: dict[str, Callable[..., Prediction]] = {}


def register(name: str):
    def deco(fn):
        PREDICTORS[name] = fn
        return fn

    return deco


def _gen(cfg: RunConfig) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed + 1)


def stability_ratio(problem: Problem, cfg: RunConfig) -> float:
    """Learning rate over the linearized model's stable limit at the start, ``lr / (2 (1 + m) / sharpness)``."""
    from .spectrum import max_stable_lr, sharpness

    return cfg.lr / max_stable_lr(sharpness(problem.theta, problem.f0, problem.loss), cfg.momentum)


@register("linear")
def linear(problem: Problem, cfg: RunConfig, **_) -> Prediction:
    from .dynamics import simulate

    traj = simulate(problem, cfg.sgd(), cfg.steps, runs=cfg.runs, generator=_gen(cfg))
    return Prediction(traj, info={"stability_ratio": stability_ratio(problem, cfg)})


@register("paper")
def paper(problem: Problem, cfg: RunConfig, **_) -> Prediction:
    from .dynamics import simulate_ode, simulate_sde

    sgd = cfg.sgd()
    if sgd.is_full_batch(problem.n):
        return Prediction(simulate_ode(problem, sgd, cfg.steps))
    return Prediction(simulate_sde(problem, sgd, cfg.steps, runs=cfg.runs, generator=_gen(cfg)))


@register("relinearized3")
def relinearized3(problem: Problem, cfg: RunConfig, task=None, **_) -> Prediction:
    """Three re-linearizations of the real network along the prediction (steps ~T/15, 3T/15, 7T/15)."""
    import time

    from .predict import run_dynamics

    t0 = time.perf_counter()
    traj = run_dynamics(problem, cfg.replace(relinearize=3), task=task)
    return Prediction(traj, extra_seconds=0.0, info={"seconds": time.perf_counter() - t0})
