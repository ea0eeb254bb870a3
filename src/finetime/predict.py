"""The prediction pipeline: data and model -> kernel -> function-space dynamics -> training time and seconds.

Each stage is a function of the previous one's result, so ``validate``, ``sweep`` and the benchmark reuse them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import torch

from .config import RunConfig
from .dynamics import Problem, Trajectory, simulate, simulate_ode, simulate_sde
from .errors import ConfigError
from .finetune import BatchNormMode
from .kernel import Kernel, compute_kernel, fingerprint_data, fingerprint_model
from .losses import Loss
from .spectrum import max_stable_lr, sharpness
from .training_time import steps_to_epsilon, steps_to_target, summarize_times
from .wallclock import seconds_per_step
from .zoo import Dataset, build_model, freeze_backbone, load_raw, sample_task

__all__ = ["Task", "prepare", "kernel_for", "batch_statistics_outputs", "problem_from", "run_dynamics", "curve_summary", "training_times",
           "predict", "tolist"]


@dataclasses.dataclass
class Task:
    """A prepared run: settings, sampled data, the model with its new head, and the names of trained parameters."""

    config: RunConfig
    data: Dataset
    model: torch.nn.Module
    trained: list[str]


def prepare(config: RunConfig) -> Task:
    """Sample the task's data and build the model (paper protocol: random classes, N images per class)."""
    data = sample_task(load_raw(config.data), classes=config.classes, per_class=config.per_class,
                       test_per_class=config.test_per_class, image_size=config.image_size, seed=config.seed)
    config.sgd().check_dataset(data.x.shape[0])
    model = build_model(config.model, num_classes=config.classes, image_size=config.image_size, seed=config.seed)
    if config.freeze_backbone:
        trained = freeze_backbone(model)
    else:
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
    return Task(config, data, model, trained)


def kernel_for(task: Task, *, kernel_in=None, kernel_out=None,
               progress: Callable[[int, int], None] | None = None) -> Kernel:
    """Compute the kernel (or load a saved one computed for this very model, data and method)."""
    cfg = task.config
    need_jw0 = cfg.weight_decay > 0
    model = task.model
    if kernel_in is not None:
        k = Kernel.load(kernel_in, model_fingerprint=fingerprint_model(model),
                        data_fingerprint=fingerprint_data(task.data.x, task.data.x_test),
                        expect={"method": cfg.kernel_method, "projection_dim": cfg.projection_dim, "seed": cfg.seed})
        if need_jw0 and k.jw0 is None:
            raise ConfigError(f"{kernel_in} was saved without J w0; recompute it for --weight-decay")
        if cfg.bn == "batch":
            k.f0 = batch_statistics_outputs(task)
        return k
    k = compute_kernel(model, task.data.x, x_test=task.data.x_test, method=cfg.kernel_method,
                       projection_dim=cfg.projection_dim, seed=cfg.seed, params=task.trained,
                       max_memory=cfg.max_memory_bytes, with_jw0=need_jw0, progress=progress)
    if cfg.bn == "batch":
        k.f0 = batch_statistics_outputs(task)
        k.meta["f0"] = "batch statistics over the training set"
    if kernel_out is not None:
        k.save(kernel_out)
    return k


def batch_statistics_outputs(task: Task) -> torch.Tensor:
    """Training-set outputs at ``w0`` with BatchNorm using the batch's statistics, where a ``--bn batch`` run starts.

    The kernel of such runs is the frozen-statistics one: the batch function couples samples, and the per-sample
    network with the training set's statistics has a far larger kernel (it keeps the mean/scale directions that batch
    normalization removes) and predicts divergence where none happens (see BENCHMARKS.md).
    """
    return _batch_statistics_outputs(task.model, task.data.x)


def _batch_statistics_outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from .finetune import recalibrate_batchnorm

    model = recalibrate_batchnorm(copy.deepcopy(model), x)
    with torch.no_grad():
        return model(x)


def relinearize_first(steps: int) -> int:
    """First re-linearization checkpoint: ``T / 15`` (step 10 of 150), then ``3 T / 15``, ``7 T / 15``, ..."""
    return max(1, round(steps / 15))


def problem_from(kernel: Kernel, task: Task, dtype: torch.dtype | None = None) -> Problem:
    """The function-space problem; float64 for small kernels, float32 from 2000 outputs on (twice as fast)."""
    d = task.data
    if dtype is None:
        dtype = torch.float64 if kernel.theta.shape[0] <= 2000 else torch.float32
    cvt = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
    return Problem(cvt(kernel.theta), cvt(kernel.f0), d.y, Loss(task.config.loss), cvt(kernel.theta_test),
                   cvt(kernel.f0_test), d.y_test, cvt(kernel.jw0), cvt(kernel.jw0_test))


def run_dynamics(problem: Problem, config: RunConfig, generator: torch.Generator | None = None,
                 task: Task | None = None, plan=None) -> Trajectory:
    """Simulate the configured optimizer with the configured dynamics (exact simulator or the paper's ODE/SDE;
    with ``config.relinearize`` the network is re-linearized along the way, which needs the ``task``). ``plan``: an
    explicit batch order for the exact simulator (one run)."""
    sgd = config.sgd()
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed + 1)
    if config.relinearizes:
        from .relinearize import checkpoint_schedule, relinearized

        if task is None:
            raise ValueError("re-linearization needs the task (model and data)")
        d = task.data

        def kernel_fn(model):
            k = compute_kernel(model, d.x, x_test=d.x_test, method=config.kernel_method,
                               projection_dim=config.projection_dim, seed=config.seed, params=task.trained,
                               max_memory=config.max_memory_bytes)
            if config.bn == "batch":
                k.f0 = _batch_statistics_outputs(model, d.x)
            return k

        outputs_fn = (lambda m: _batch_statistics_outputs(m, d.x)) if config.bn == "batch" else None  # noqa: E731
        traj, info = relinearized(task.model, d.x, problem, sgd, config.steps,
                                  checkpoints=checkpoint_schedule(config.steps, config.relinearize,
                                                                  first=relinearize_first(config.steps)),
                                  kernel_fn=kernel_fn, params=task.trained, runs=config.runs, generator=gen,
                                  x_test=d.x_test, reanchor=config.reanchor, linearity_tol=config.linearity_tol,
                                  outputs_fn=outputs_fn, plan=plan)
        traj.info = info.to_dict()
        return traj
    if config.dynamics == "ode":
        return simulate_ode(problem, sgd, config.steps)
    if config.dynamics == "sde":
        return simulate_sde(problem, sgd, config.steps, runs=config.runs, generator=gen)
    return simulate(problem, sgd, config.steps, runs=config.runs, generator=gen, plan=plan)


def tolist(t: torch.Tensor | None):
    """Tensor -> JSON list (8 significant digits) with ``None`` for NaN."""
    if t is None:
        return None
    return [None if not math.isfinite(v) else float(f"{v:.8g}") for v in t.tolist()]


def _band(curves: torch.Tensor):
    alive = torch.isfinite(curves)
    mean = torch.where(alive, curves, torch.zeros_like(curves)).sum(0) / alive.sum(0).clamp_min(1)
    mean[alive.sum(0) == 0] = math.nan
    lo = torch.nanquantile(curves, 0.05, dim=0)
    hi = torch.nanquantile(curves, 0.95, dim=0)
    return mean, lo, hi


def curve_summary(traj: Trajectory) -> dict:
    """Mean curve and 5-95% band over the ensemble (diverged runs drop out after they diverge)."""
    out = {}
    for key, curves in (("loss", traj.loss), ("accuracy", traj.accuracy), ("test_loss", traj.test_loss),
                        ("test_accuracy", traj.test_accuracy)):
        if curves is None:
            continue
        mean, lo, hi = _band(curves.double())
        out[key], out[f"{key}_low"], out[f"{key}_high"] = tolist(mean), tolist(lo), tolist(hi)
    return out


def training_times(curves: torch.Tensor, config: RunConfig) -> dict:
    """Training time per threshold: ``{"eps=0.1": {...}, "target=0.5": {...}}`` (steps; ``None`` = not reached)."""
    out = {}
    for eps in config.epsilon:
        out[f"eps={eps:g}"] = summarize_times(steps_to_epsilon(curves, eps)).to_dict()
    for target in config.target_loss:
        out[f"target={target:g}"] = summarize_times(steps_to_target(curves, target)).to_dict()
    return out


def extrapolated_times(problem: Problem, config: RunConfig, times_here: dict) -> dict:
    """Training time on ``config.extrapolate_to`` samples from this kernel's spectrum (``finetime.extrapolate``)."""
    from .dynamics import mse_curve, spectral_projections
    from .extrapolate import extrapolate_spectrum, mse_loss_at

    n_target = config.extrapolate_to
    spec = extrapolate_spectrum(problem.theta, problem.f0, problem.y, n_target)
    lam, proj = spectral_projections(problem.theta.double(), problem.f0.double(), problem.y)
    here = mse_curve(lam, proj, config.lr, config.steps, momentum=config.momentum).unsqueeze(0)
    there = mse_loss_at(spec, config.lr, config.steps, config.momentum).unsqueeze(0)
    mse_here, mse_there = training_times(here, config), training_times(there, config)
    scaled = {}
    for key, v in times_here.items():
        a, b = mse_here[key]["step"], mse_there[key]["step"]
        scaled[key] = None if v["step"] is None or not a or b is None else round(v["step"] * b / a)
    return {
        "n": n_target,
        "from_n": problem.n,
        "eigenvalue_power_law": {"c": spec.eig_power[0], "s": spec.eig_power[1]},
        "projection_power_law": {"d": spec.proj_power[0], "r": spec.proj_power[1]},
        "mse_closed_form_steps": {k: v["step"] for k, v in mse_there.items()},
        "mse_closed_form_steps_here": {k: v["step"] for k, v in mse_here.items()},
        "steps": scaled,
        "method": "simulated time here x (MSE closed-form time at N / at this N), full-batch GD closed form",
        "mse_loss": tolist(there[0]),
    }


def predict(config: RunConfig, *, kernel_in=None, kernel_out=None, task: Task | None = None,
            progress: Callable[[str, int, int], None] | None = None, diagnostics: bool = False) -> dict:
    """Full prediction as a JSON-ready dict (see the README for its fields). ``diagnostics`` adds the kernel
    spectrum, the gradient map and per-sample convergence times (what ``finetime report`` draws)."""
    task = task or prepare(config)
    t0 = time.perf_counter()
    kernel = kernel_for(task, kernel_in=kernel_in, kernel_out=kernel_out,
                        progress=(lambda d, n: progress("kernel", d, n)) if progress else None)
    t_kernel = time.perf_counter() - t0
    t1 = time.perf_counter()
    problem = problem_from(kernel, task)
    traj = run_dynamics(problem, config, task=task)
    sharp = sharpness(problem.theta, problem.f0, problem.loss)
    t_sim = time.perf_counter() - t1
    t2 = time.perf_counter()
    sps = seconds_per_step(task.model, task.data.x, task.data.y, config.sgd(), loss=Loss(config.loss),
                           params=task.trained, bn=BatchNormMode(config.bn))
    t_step = time.perf_counter() - t2
    times = training_times(traj.loss, config)
    for v in times.values():
        v["seconds"] = None if v["step"] is None else round(v["step"] * sps, 3)
    predicted = curve_summary(traj)
    predicted.update({
        "training_time": times,
        "seconds_per_step": round(sps, 5),
        "seconds": {k: v["seconds"] for k, v in times.items()},
        "total_seconds": round(config.steps * sps, 3),
        "diverged_fraction": traj.diverged_fraction,
        "diverged": traj.diverged_fraction > 0.5,
        "sharpness": sharp,
        "max_stable_lr": max_stable_lr(sharp, config.momentum),
        "method": traj.method,
    })
    if traj.info is not None:
        predicted["relinearization"] = traj.info
    t_relin = (traj.info["kernel_seconds"] + traj.info["network_seconds"]) if traj.info else 0.0
    if config.extrapolate_to:
        predicted["extrapolated"] = extrapolated_times(problem, config, times)
    out_diag = {}
    if diagnostics:
        from .diagnostics import gradient_map, per_sample_times, spectrum_summary

        out_diag = {"diagnostics": {"spectrum": spectrum_summary(problem.theta, problem.n),
                                    "gradients": {**gradient_map(problem, seed=config.seed),
                                                  "convergence_step": per_sample_times(problem, config.sgd(),
                                                                                       config.steps)}}}
    return {
        "config": _config_record(task, kernel),
        "predicted": predicted,
        **out_diag,
        "cost_seconds": {"kernel": round(t_kernel, 3), "simulation": round(t_sim - t_relin, 3),
                         "relinearization": round(t_relin, 3), "step_timing": round(t_step, 3),
                         "total": round(t_kernel + t_sim + t_step, 3)},
        "_objects": {"task": task, "kernel": kernel, "trajectory": traj, "problem": problem},
    }


def _config_record(task: Task, kernel: Kernel) -> dict:
    d = task.data
    rec = task.config.to_dict()
    rec.update({
        "chosen_classes": d.class_names,
        "data_source": d.source,
        "sample_seed": task.config.seed,
        "train_indices": d.train_index,
        "test_indices": d.test_index,
        "trained_parameters": len(task.trained),
        "trained_weights": sum(p.numel() for n, p in task.model.named_parameters() if n in set(task.trained)),
        "kernel": {k: v for k, v in kernel.meta.items()},
        "network_mode": "BatchNorm running statistics, dropout and drop-connect off (kernel and curves)"
        if task.config.bn == "frozen" else "BatchNorm batch statistics in training; curves with batch statistics "
        "over the whole training set; kernel with the running statistics, initial outputs with batch statistics",
    })
    return rec
