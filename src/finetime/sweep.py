"""Sweep planner: one kernel, many optimizer configurations, ranked by predicted wall-clock time to a target.

The kernel depends on the model and the data only, so every learning rate, momentum, batch size, weight decay,
budget and schedule of a grid is predicted from it by the function-space simulator. Seconds per step are measured
once per batch size. Configurations that differ only in their budget (with a constant or step schedule) share one
simulation of the longest budget: batch orders are drawn so that a shorter plan is a prefix of a longer one, and the
shorter trajectories are exact prefixes of the longest.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from typing import Callable

import torch

from .config import Predictor, RunConfig
from .errors import ConfigError
from .kernel.distributed import broadcast_value, is_main
from .losses import per_sample_loss
from .predict import kernel_for, preconditioner_name, prepare, problem_from
from .predictors import predict_trajectory
from .runtime import preload_optimizers
from .training_time import steps_to_epsilon, steps_to_target, summarize_times
from .wallclock import seconds_per_step

__all__ = ["SWEEPABLE", "sweep", "expand_grid"]

SWEEPABLE = ("lr", "momentum", "batch_size", "weight_decay", "steps", "schedule")
"""Settings that may take a list of values in a sweep (flat keys; the kernel does not depend on them). The CLI's
``sweep`` accepts comma lists for exactly these."""

DEFAULT_TARGET_FRACTION = 0.25
"""Without ``--target-loss``, configurations are ranked by the time to reach this fraction of the initial loss."""


def expand_grid(base: RunConfig, grid: dict[str, list]) -> list[RunConfig | tuple[dict, str]]:
    """Every combination of the grid on top of ``base``; invalid ones come back as ``(settings, error)``."""
    bad = set(grid) - set(SWEEPABLE)
    if bad:
        raise ConfigError(f"cannot sweep over {', '.join(sorted(bad))}; sweepable: {', '.join(SWEEPABLE)}")
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, combo))
        try:
            out.append(base.replace(**settings))
        except ConfigError as exc:
            out.append((settings, str(exc)))
    return out


def _budget_groups(configs: list[RunConfig]) -> dict[int, tuple[str, int]]:
    """Exact-simulator configurations that differ only in ``steps`` and whose learning rates for the first updates do
    not depend on the budget (constant and step schedules): ``id(config) -> (group key, longest steps)``."""
    groups: dict[str, list[RunConfig]] = {}
    for c in configs:
        if c.predictor.kind is Predictor.LINEAR:
            settings = {k: v for k, v in c.to_dict().items() if k != "steps"}
            groups.setdefault(json.dumps(settings, sort_keys=True, default=str), []).append(c)
    out = {}
    for key, cs in groups.items():
        t_max = max(c.steps for c in cs)
        full = cs[0].optimizer.lr_table(t_max)
        for c in cs:
            if torch.equal(c.optimizer.lr_table(c.steps), full[: c.steps]):
                out[id(c)] = (key, t_max)
    return out


def _rank(row: dict) -> tuple:
    """Sort key of a sweep row: by seconds to the target; then the settings that do not reach it within their
    budget, lowest final loss first; then those predicted to diverge; last the invalid ones."""
    if "error" in row:
        return (3, 0.0)
    if row["seconds_to_target"] is not None:
        return (0, row["seconds_to_target"])
    if row["status"] == "diverges":
        return (2, 0.0)
    return (1, math.inf if row["final_loss"] is None else row["final_loss"])


def sweep(base: RunConfig, grid: dict[str, list], *, kernel_in=None, kernel_out=None,
          progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Predict every configuration of ``grid`` (on top of ``base``) from one kernel; rows ranked by seconds.

    A sweep uses the one kernel at ``w0`` for every configuration: the ``linear`` predictor, or ``paper`` if asked
    for (re-linearization would cost kernels per configuration); check the chosen setting with ``predict``, whose
    default re-linearizes where the network is far from linear."""
    if base.predictor.kind is not Predictor.PAPER:
        base = base.replace(predictor="linear")
    cells = expand_grid(base, grid)
    valid = [c for c in cells if isinstance(c, RunConfig)]
    if not valid:
        raise ConfigError("no valid configuration in the sweep: " + "; ".join(e for _, e in cells))
    wd = max(c.optimizer.weight_decay for c in valid)
    if base.kernel_samples not in ("auto", "all"):
        raise ConfigError("sweep computes its kernel on every training sample; --kernel-samples is for predict and "
                          "validate")
    base = base.replace(kernel_samples="all")
    task = prepare(base.replace(weight_decay=wd) if wd > 0 else base)
    preload_optimizers()
    kernels: dict = {}  # one per preconditioner: the plain J J^T, or Adam's J P J^T per batch size
    keys = {preconditioner_name(c.optimizer) for c in valid}
    if len(keys) > 1 and (kernel_in is not None or kernel_out is not None):
        raise ConfigError("--kernel-in/--kernel-out hold one kernel; this sweep needs one per batch size (Adam's "
                          "preconditioner depends on it): sweep one batch size at a time to save or reuse it")
    t_kernel = 0.0

    def problem_for(cfg: RunConfig):
        nonlocal t_kernel
        key = preconditioner_name(cfg.optimizer)
        if key not in kernels:
            t0 = time.perf_counter()
            sub = dataclasses.replace(task, config=task.config.replace(batch_size=cfg.to_dict()["batch_size"]))
            k = kernel_for(sub, kernel_in=kernel_in, kernel_out=kernel_out,
                           progress=(lambda d, n: progress("kernel", d, n)) if progress else None)
            t_kernel += time.perf_counter() - t0
            kernels[key] = (k, problem_from(k, task))
        return kernels[key]

    kernel, problem = problem_for(valid[0])
    loss0 = float(per_sample_loss(problem.f0, problem.y, base.loss).mean())
    target = base.target_loss[0] if base.target_loss else DEFAULT_TARGET_FRACTION * loss0
    n = task.data.x.shape[0]
    sps_by_batch: dict = {}
    t_step = 0.0
    rows = []
    t_sim = 0.0
    shared = _budget_groups(valid)
    longest: dict[str, object] = {}
    for i, cfg in enumerate(cells):
        if not isinstance(cfg, RunConfig):
            rows.append({"settings": cfg[0], "error": cfg[1]})
            continue
        opt = cfg.optimizer
        flat = cfg.to_dict()
        settings = {k: flat[k] for k in grid}
        try:
            opt.check_dataset(n)
        except ConfigError as exc:
            rows.append({"settings": settings, "error": str(exc)})
            continue
        b = n if opt.is_full_batch(n) else opt.batch_size
        if b not in sps_by_batch:
            t1 = time.perf_counter()
            sps = None
            if is_main():  # with several ranks, rank 0 times the step while the others wait
                sps = seconds_per_step(task.model, task.data.x, task.data.y, opt, loss=cfg.objective,
                                       params=task.trained, bn=cfg.task.bn, precision=cfg.precision)
            sps_by_batch[b] = broadcast_value(sps)
            t_step += time.perf_counter() - t1
        t1 = time.perf_counter()
        key = shared.get(id(cfg))
        problem = problem_for(cfg)[1]
        if key is None:
            traj = predict_trajectory(problem, cfg)
        else:  # a shorter budget is an exact prefix of the longest one's trajectory
            if key[0] not in longest:
                longest[key[0]] = predict_trajectory(problem, cfg.replace(steps=key[1]))
            traj = longest[key[0]].prefix(cfg.steps)
        t_sim += time.perf_counter() - t1
        tt = summarize_times(steps_to_target(traj.loss, target))
        tt_eps = summarize_times(steps_to_epsilon(traj.loss, 0.1))
        sps = sps_by_batch[b]
        final = traj.loss[:, -1]
        rows.append({
            "settings": settings,
            "steps_to_target": tt.to_dict(),
            "seconds_to_target": None if tt.step is None else round(tt.step * sps, 3),
            "steps_eps_0.1": tt_eps.step,
            "final_loss": None if not torch.isfinite(final).any() else float(final[torch.isfinite(final)].mean()),
            "seconds_per_step": round(sps, 5),
            "diverged_fraction": traj.diverged_fraction,
            "status": "diverges" if traj.diverged_fraction > 0.5 else ("not reached" if tt.step is None else "ok"),
        })
        if progress:
            progress("sweep", i + 1, len(cells))
    rows.sort(key=_rank)
    return {
        "config": {**base.to_dict(), "grid": grid, "chosen_classes": task.data.class_names,
                   "data_source": task.data.source, "kernel": kernel.meta},
        "target_loss": target,
        "target_rule": "--target-loss" if base.target_loss else f"{DEFAULT_TARGET_FRACTION} x initial loss {loss0:.4f}",
        "rows": rows,
        "cost_seconds": {"kernel": round(t_kernel, 3), "simulation": round(t_sim, 3), "step_timing": round(t_step, 3),
                         "total": round(t_kernel + t_sim + t_step, 3)},
    }
