"""The first real steps of the run, measured, where the kernel is known not to be the function that trains.

With BatchNorm batch statistics (``--bn batch``, what ``model.train()`` does) every output is a function of the
whole batch, and finetime's kernel is the running-statistics one (``predict.kernel_for``): the exact kernel of the
batch function costs several real runs (BENCHMARKS.md, section 1, "BatchNorm batch statistics"). The real runs train
2 to 7 times slower than that kernel says at 64-128 px, and 1.5 times faster at 32 px, from their very first steps.
So the prediction measures them: ``run_first_steps`` runs the first ``k`` steps of the configured run on a copy of
the model (its own batch order, the configured optimizer, learning-rate schedule and BatchNorm mode, as the step
timing already runs real steps) and evaluates the whole-training-set loss after each, as the real run's curve is
evaluated; ``fit_speed`` finds how much faster or slower than predicted they went (the time-warp posterior of the
online refiner, ``finetime.online.warp_posterior``, with a wider prior: the kernel is known to be off), and
``warp_trajectory`` stretches every predicted curve by that factor and meets the measured loss at step ``k``.

``--first-steps auto`` (the default of the ``adaptive`` predictor) does this with ``FIRST_STEPS`` steps for
``--bn batch``, and wherever the linearity check finds the network far from linear (moved to the linear model's
weights at step ~T/15, its loss is at least twice the linear model's: ``config.FAR_FROM_LINEAR``), where the kernel's
speed is not to be trusted either (the real runs there are mostly slower). Elsewhere the first steps say less than
the kernel does: the warp made the tails worse there (BENCHMARKS.md, section 1, "The first real steps"). With batch
statistics the prediction warped is the one kernel at ``w0`` (``RunConfig.batch_statistics_fitted``: no linearity
check, no refresh); far from linear it is the refreshed one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch

from .batches import batch_plan
from .config import FIRST_STEPS
from .dynamics import Trajectory
from .online._fit import extend_curve, interpolate, warp_posterior

__all__ = ["FIRST_STEPS", "FIRST_STEPS_SPEED_SD", "FirstSteps", "first_steps_generator", "run_first_steps",
           "fit_speed", "warp_curves", "warp_trajectory", "apply_first_steps"]

FIRST_STEPS_SPEED_SD = 1.0
"""Prior standard deviation of the log speed ``log a`` fitted to the first steps (the refiner's is 0.5: there the
prediction is trusted more). Chosen among 0.5, 1, 2 and 3 on the 14 batch-statistics cells of the image suites,
before the far-from-linear cells were measured (BENCHMARKS.md, section 1, "The first real steps")."""


@dataclasses.dataclass
class FirstSteps:
    """What the first real steps showed: ``losses[t]`` is the training loss after ``t`` real steps (``t = 0..steps``)
    over the whole training set, or over ``eval_samples`` of its samples when that is set (a class-balanced subset:
    ``run_first_steps``), ``speed`` the fitted warp factor (real over predicted; ``None`` when no warp was
    applied, ``reason`` says why), ``seconds`` the cost (steps and evaluations)."""

    steps: int
    losses: list[float]
    seconds: float
    diverged_at: int | None = None
    eval_samples: int | None = None
    speed: float | None = None
    reason: str | None = None

    def copy(self) -> "FirstSteps":
        """The measurement alone (no fit), to fit another predicted curve to it."""
        return dataclasses.replace(self, losses=list(self.losses), speed=None, reason=None)

    @classmethod
    def from_dict(cls, d: dict) -> "FirstSteps":
        return cls(d["steps"], [math.nan if v is None else float(v) for v in d["losses"]], d["seconds"],
                   d.get("diverged_at"), d.get("eval_samples"))

    def to_dict(self) -> dict:
        return {"steps": self.steps, "losses": [round(v, 6) if math.isfinite(v) else None for v in self.losses],
                "speed": None if self.speed is None else round(self.speed, 4), "diverged_at": self.diverged_at,
                "eval_samples": self.eval_samples, "reason": self.reason, "seconds": round(self.seconds, 3)}


def first_steps_generator(config) -> torch.Generator:
    """The batch order of the first real steps: ``seed + 3``, apart from the simulated orders (``seed + 1``) and the
    order ``validate`` trains with (``seed + 2``)."""
    return torch.Generator().manual_seed(config.task.seed + 3)


def run_first_steps(task, config, steps: int, eval_samples: int | None = None) -> FirstSteps:
    """Fine-tune a copy of ``task.model`` for the first ``steps`` of ``config``'s run (``finetune`` with
    ``stop_after``) and return the training losses after each step: over every training sample (what ``predict``
    does), or over a class-balanced subset of ``eval_samples`` of them when there are more (their losses are then
    taken relative to their own start). On a large training set the six passes over it cost more than the five
    steps, but a subset loses what the steps tell (BENCHMARKS.md, section 1, "The first real steps": 50 of 150 samples
    took the far-from-linear cells' gain away)."""
    from .finetune import finetune
    from .subset import evaluation_indices

    t0 = time.perf_counter()
    d = task.data
    n = d.x.shape[0]
    plan = batch_plan(n, config.optimizer, config.steps, 1, first_steps_generator(config))
    subset = evaluation_indices(d.y, d.num_classes, eval_samples or None)
    model = copy.deepcopy(task.model)
    run = finetune(model, d.x, d.y, config.optimizer, config.steps, plan, loss=config.objective, params=task.trained,
                   bn=config.task.bn, precision=config.precision, stop_after=steps, eval_samples=subset)
    del model
    losses = [float(v) for v in run.loss[: steps + 1]]
    return FirstSteps(steps, losses, time.perf_counter() - t0, run.diverged_at if run.diverged else None,
                      None if subset is None else int(subset.numel()))


def fit_speed(predicted: torch.Tensor, losses: torch.Tensor, *, sd: float = FIRST_STEPS_SPEED_SD) -> float:
    """Posterior-median warp factor ``a`` of the predicted mean curve ``predicted`` (``T+1``) given the measured
    ``losses`` at steps ``0..k``: the run follows ``predicted(a t)`` (``a < 1``: slower than predicted)."""
    k = losses.shape[0] - 1
    t = torch.arange(k + 1, dtype=torch.float64)
    return float(warp_posterior(predicted, t, losses, predicted.shape[0] - 1, tau=sd).speed)


def warp_curves(curves: torch.Tensor, speed: float) -> torch.Tensor:
    """Each row ``c`` of ``curves`` ``(R, T+1)`` as ``c(speed t)``, ``t = 0..T`` (linear interpolation; beyond its
    last step a finite curve continues with the geometric decay of its last quarter, ``extend_curve``). A row that
    turns non-finite at step ``d`` is non-finite from ``d / speed`` on."""
    R, n = curves.shape
    T = n - 1
    x = speed * torch.arange(T + 1, dtype=torch.float64)
    reach = int(math.ceil(float(x[-1]))) + 1
    out = torch.full((R, T + 1), math.nan, dtype=torch.float64)
    for r in range(R):
        c = curves[r].double()
        bad = torch.nonzero(~torch.isfinite(c))
        end = int(bad[0]) if len(bad) else T + 1  # finite on 0..end-1
        if end == 0:
            continue
        p = c[:end] if end <= T else extend_curve(c, max(reach, T))
        ok = x <= p.shape[0] - 1
        out[r, ok] = interpolate(p, x[ok])
    return out


def warp_trajectory(traj: Trajectory, speed: float, level: float | None = None, at: int = 0) -> Trajectory:
    """``traj`` run ``speed`` times as fast (``warp_curves`` on every curve: loss, accuracy, test curves). ``level``:
    the loss measured at step ``at``; the warped loss curves are scaled to meet it on average there (by ``ratio``
    from step ``at`` on, by ``1 + (ratio - 1) t / at`` before it). Runs that diverge do so at their warped step."""
    warp = lambda c: None if c is None else warp_curves(c, speed).to(c.dtype)  # noqa: E731
    loss = warp_curves(traj.loss, speed)
    if level is not None and at > 0:
        mean = float(torch.nanmean(loss[:, at]))
        if math.isfinite(mean) and mean > 0 and math.isfinite(level):
            ratio = level / mean
            t = torch.arange(loss.shape[1], dtype=torch.float64)
            loss = loss * torch.where(t >= at, torch.full_like(t, ratio), 1 + (ratio - 1) * t / at)
    bad = ~torch.isfinite(loss)
    first = torch.where(bad.any(1), bad.double().argmax(1), torch.full((loss.shape[0],), -1.0)).long()
    return Trajectory(loss.to(traj.loss.dtype), warp(traj.accuracy), first, traj.f, warp(traj.test_loss),
                      warp(traj.test_accuracy), traj.method, traj.info)


def apply_first_steps(traj: Trajectory, measured: FirstSteps, sd: float = FIRST_STEPS_SPEED_SD) -> Trajectory:
    """The prediction ``traj`` fitted to the first real steps ``measured``: diverged where they diverged; warped by
    the fitted speed (prior spread ``sd`` of its log) otherwise (not when most predicted runs diverge: a diverging
    curve has no speed to fit). Records ``measured`` (speed and reason filled in) under ``traj.info["first_steps"]``."""
    k = measured.steps
    if measured.diverged_at is not None:
        d = measured.diverged_at
        cut = lambda c: None if c is None else torch.cat([c[:, :d], torch.full_like(c[:, d:], math.nan)], 1)  # noqa: E731
        out = Trajectory(cut(traj.loss), cut(traj.accuracy), torch.full_like(traj.diverged_at, d), traj.f,
                         cut(traj.test_loss), cut(traj.test_accuracy), traj.method, traj.info)
        measured.reason = f"the real run diverged at step {d} of the first {k}"
    elif traj.diverged_fraction > 0.5:
        out = traj
        measured.reason = "most predicted runs diverge: the prediction is kept"
    else:
        ok = ~traj.diverged
        predicted = traj.loss[ok].double().mean(0)
        losses = torch.tensor(measured.losses, dtype=torch.float64)
        if measured.eval_samples is not None:  # a subset's losses, relative to its own start
            losses = losses * (float(predicted[0]) / float(losses[0]))
        measured.speed = fit_speed(predicted, losses, sd=sd)
        out = warp_trajectory(traj, measured.speed, level=float(losses[k]), at=k)
    out.info = {**(traj.info or {}), "first_steps": measured.to_dict()}
    return out
