"""Named predictors: ways to turn a task's kernel into predicted curves, compared side by side by the benchmark.

* ``linear``: the exact simulator of SGD on the linearized model (one kernel at the pretrained weights).
* ``paper``: the paper's method: gradient-flow ODE for full-batch GD, its SDE for SGD, with the effective
  learning rate ``lr / (1 - momentum)`` and the diagonal-noise approximation (see ``dynamics.paper``).
* ``relinearized3``: the linear predictor re-anchored on the real network at three checkpoints (``relinearize``).
* ``adaptive``: the default of ``predict``: a linearity check at the first checkpoint; where the network is not
  linear there, its kernel is refreshed at three checkpoints (``relinearize``, ``reanchor``, ``linearity_tol``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .config import PREDICTOR_KEYS, RunConfig
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


def _relinearizing(problem: Problem, cfg: RunConfig, task, **settings) -> Prediction:
    import time

    from .predict import run_dynamics

    t0 = time.perf_counter()
    traj = run_dynamics(problem, cfg.replace(**settings), task=task)
    return Prediction(traj, info={"seconds": time.perf_counter() - t0, **(traj.info or {})})


@register("relinearized3")
def relinearized3(problem: Problem, cfg: RunConfig, task=None, **_) -> Prediction:
    """Three re-linearizations of the real network along the prediction (steps ~T/15, 3T/15, 7T/15), the curve
    re-anchored on the network's true outputs at each."""
    return _relinearizing(problem, cfg, task, relinearize=3, reanchor="all", linearity_tol=0.0)


@register("adaptive")
def adaptive(problem: Problem, cfg: RunConfig, task=None, **_) -> Prediction:
    """The default: a linearity check at ~T/15; where it fails, the kernel is refreshed at ~T/15, 3T/15 and 7T/15
    (``ADAPTIVE``)."""
    return _relinearizing(problem, cfg, task, **ADAPTIVE)


ADAPTIVE = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in PREDICTOR_KEYS}
"""The default predictor's settings (``RunConfig``'s defaults): ``relinearize=3, reanchor='none',
linearity_tol=0.01``."""
