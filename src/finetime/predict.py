"""The prediction pipeline: data and model -> kernel -> function-space dynamics -> training time and seconds.

Each stage is a function of the previous one's result, so ``validate``, ``sweep`` and the benchmark reuse them.
``predict`` returns a typed ``Prediction``; its ``to_dict()`` is the documented JSON.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch

from .config import RunConfig, TaskConfig
from .device import model_device, resolve_device
from .dynamics import Problem, Trajectory, mse_curve, spectral_projections
from .dynamics.exact import expected_gradient_square
from .errors import ConfigError, ModelError
from .kernel import (Kernel, compute_kernel, factored_inverse_root_scale, fingerprint_data, fingerprint_model,
                     gradient_moments, inverse_root_scale, parameter_preconditioner, summed_outputs_kernel)
from .intervals import model_interval, open_loop_margin, prediction_bin
from .kernel.distributed import broadcast_value, is_main
from .losses import residual
from .network import BatchNormMode, batch_statistics_outputs, check_logits, eval_mode, network_outputs, on_model
from .predictors import predict_trajectory
from .relinearize import Network
from .runtime import preload_optimizers
from .spectrum import sharpness
from .subset import class_balanced_subset, kernel_sample_count, to_full_set
from .training_time import Threshold, TimeEstimate, steps_to_threshold, summarize_times
from .wallclock import seconds_per_step
from .zoo import Dataset, build_model, freeze_backbone, load_raw, sample_task

__all__ = ["Task", "Prediction", "prepare", "kernel_for", "preconditioner_name", "preconditioner_scales",
           "scales_from_moments", "network_of", "problem_from", "thresholds", "training_times", "curve_summary",
           "runs_record", "alive_mean", "predict", "tolist"]


@dataclasses.dataclass
class Task:
    """A prepared run: settings, sampled data, the model with its new head, and the names of trained parameters."""

    config: RunConfig
    data: Dataset
    model: torch.nn.Module
    trained: list[str]
    full_data: Dataset | None = None
    """The whole training set when the kernel sees a subset of it (``--kernel-samples``, ``finetime.subset``); ``None``
    when ``data`` is the whole set."""
    scales: dict | None = dataclasses.field(default=None, repr=False)
    """A preconditioned optimizer's ``sqrt(P)`` at the pretrained weights, kept by ``kernel_for`` once computed (the
    refreshes of re-linearization reuse it)."""
    moments: object | None = dataclasses.field(default=None, repr=False)
    """The per-sample gradient moments at the pretrained weights those ``scales`` came from (``GradientMoments``):
    re-linearizing Adam averages them with the moments along the path."""

    @property
    def train_data(self) -> Dataset:
        """The data the real run trains on (step timing, ``validate``'s fine-tuning)."""
        return self.full_data if self.full_data is not None else self.data


def prepare(config: RunConfig) -> Task:
    """Sample the task's data and build the model (paper protocol: random classes, N images per class)."""
    t = config.task
    raw = load_raw(t.data, t.image_size)
    classes = len(np.unique(raw.train_y)) if t.classes == "all" else t.classes
    model = build_model(t.model, num_classes=classes, image_size=t.image_size, seed=t.seed)
    encode = getattr(model, "encode_text", None)
    if raw.inputs == "tensors" and hasattr(model, "normalize"):
        model.normalize = False  # a torch dataset's tensors are the model's inputs as they are
    if raw.is_text != (encode is not None):
        raise ConfigError(f"--data {t.data} holds {raw.inputs} but --model {t.model} is "
                          f"{'a text' if encode is not None else 'not a text'} model")
    data = sample_task(raw, classes=t.classes, per_class=t.per_class, test_per_class=t.test_per_class,
                       image_size=t.image_size, seed=t.seed,
                       encode_text=(lambda texts: encode(texts, t.max_length)) if encode is not None else None,
                       lazy=True)  # inputs made below: a kernel subset's only, where it takes one
    n = data.x.shape[0]
    config.optimizer.check_dataset(n)
    if config.extrapolate_to and config.extrapolate_to <= n:
        raise ConfigError(f"--extrapolate-to {config.extrapolate_to} must be larger than the training set ({n} "
                          "samples): it predicts the training time on more data of the same classes")
    if t.freeze_backbone:
        trained = freeze_backbone(model)
    else:
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
    m = kernel_sample_count(config.kernel_samples, n, data.num_classes, config.optimizer.batch_size)
    full = None
    if m < n:
        full, data = data, class_balanced_subset(data, m)  # the full set's inputs made when the step timing draws them
    else:
        data = materialized(data)
    model = model.to(resolve_device(config.device))
    check_model_takes_data(model, data, t)
    return Task(config, data, model, trained, full)


def materialized(data: Dataset) -> Dataset:
    """``data`` with every training input made (``zoo.LazyInputs``); ``data`` itself where they are."""
    if isinstance(data.x, torch.Tensor):
        return data
    return dataclasses.replace(data, x=data.x.materialize())


def check_model_takes_data(model: torch.nn.Module, data: Dataset, t: TaskConfig) -> None:
    """One forward pass on two training samples: a model that cannot take the data's inputs, or returns other than
    ``(batch, classes)`` logits for the task's classes, is named here (``ModelError``), not deep in the kernel."""
    x = data.x[:2]
    what = (f"--model {t.model} on --data {t.data} (a batch of inputs of shape {tuple(x.shape)}, "
            f"{data.num_classes} classes)")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(on_model(model, x))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: the model cannot take these inputs ({first})") from exc
    try:
        check_logits(out, x.shape[0])
    except ModelError as exc:
        raise ModelError(f"{what}: {exc}") from None
    if out.shape[1] != data.num_classes:
        raise ModelError(f"{what}: the model returns {out.shape[1]} logits per sample for {data.num_classes} "
                         "classes; its head must have one output per class (a factory is given num_classes)")


def kernel_for(task: Task, *, model: torch.nn.Module | None = None, kernel_in=None, kernel_out=None,
               progress: Callable[[int, int], None] | None = None, samples: torch.Tensor | None = None,
               scales: dict | None = None) -> Kernel:
    """The kernel of ``model`` (default: the task's pretrained model) on the task's data, computed with the task's
    kernel settings, or loaded from ``kernel_in`` if that file was computed for this very model, data and method.

    With ``--bn batch`` the kernel is the running-statistics one and ``f0`` the outputs with batch statistics over the
    training set (where such a run starts): the batch function couples samples, and the per-sample network with the
    training set's statistics has a far larger kernel that predicts divergence where none happens (BENCHMARKS.md).

    ``samples``: the kernel on those training samples only (no test set, ``f0`` the outputs in eval mode there), for a
    refresh on a subset; it cannot be loaded or saved. ``scales``: a preconditioned optimizer's ``sqrt(P)`` to use
    instead of measuring it at ``model`` (re-linearization passes the ``P`` it keeps along the path); required with
    ``samples``.
    """
    cfg = task.config
    model = model if model is not None else task.model
    d = task.data
    kc = cfg.kernel
    if samples is not None:
        if kernel_in is not None or kernel_out is not None:
            raise ValueError("a kernel on a subset of samples is neither loaded nor saved")
        if cfg.optimizer.preconditioned and scales is None:
            raise ValueError("a preconditioned kernel on a subset of samples needs the scales")
        return _engine(kc)(model, d.x[samples], method=kc.method, projection_dim=kc.projection_dim,
                           seed=cfg.task.seed, params=task.trained, max_memory=kc.max_memory_bytes,
                           scales=scales if cfg.optimizer.preconditioned else None)
    opt = cfg.optimizer
    need_jw0 = opt.weight_decay > 0
    precond = preconditioner_name(opt)
    start = None  # outputs where the run starts: computed here only for a preconditioned kernel
    if kernel_in is not None:
        k = Kernel.load(kernel_in, model_fingerprint=fingerprint_model(model),
                        data_fingerprint=fingerprint_data(d.x, d.x_test),
                        expect={"method": kc.method.value, "projection_dim": kc.projection_dim, "seed": cfg.task.seed,
                                "preconditioner": precond, "outputs": "sum" if kc.outputs == "sum" else None})
        if need_jw0 and k.jw0 is None:
            raise ConfigError(f"{kernel_in} was saved without J w0; recompute it for --weight-decay")
    else:
        t0 = time.perf_counter()
        if opt.preconditioned and scales is None:
            start = _start_outputs(task, model)
            scales = preconditioner_scales(task, model, outputs=start)
            if model is task.model and task.scales is None:
                task.scales = scales
        elif not opt.preconditioned:
            scales = None
        t_moments = time.perf_counter() - t0
        k = _engine(kc)(model, d.x, x_test=d.x_test, method=kc.method, projection_dim=kc.projection_dim,
                        seed=cfg.task.seed, params=task.trained, max_memory=kc.max_memory_bytes,
                        with_jw0=need_jw0, progress=progress, scales=scales)
        k.meta["preconditioner"] = precond
        if start is not None:  # the moments were measured here
            k.meta["seconds"] += t_moments
            k.meta["phase_seconds"]["moments"] = round(t_moments, 3)
    if cfg.task.bn is BatchNormMode.BATCH:
        k.f0 = start if start is not None else batch_statistics_outputs(model, d.x)
        k.meta["f0"] = "batch statistics over the training set"
    if kernel_out is not None:
        k.save(kernel_out)
    return k


def _engine(kc):
    """``compute_kernel``, or ``summed_outputs_kernel`` for ``--kernel-outputs sum``."""
    return summed_outputs_kernel if kc.outputs == "sum" else compute_kernel


def preconditioner_name(opt) -> str | None:
    """What the kernel's preconditioner depends on (``None``: the plain ``J J^T``); kernels are reused only when
    these match."""
    if not opt.preconditioned:
        return None
    return (f"{opt.name} second moments at w0, batch {opt.batch_size or 'full'} ({opt.sampling.value}), "
            f"eps {opt.adam_eps:g}, row x column for linear maps")


def _start_outputs(task: Task, model: torch.nn.Module) -> torch.Tensor:
    """Outputs where the run starts (eval mode, or batch statistics over the training set for ``--bn batch``)."""
    x = task.data.x
    if task.config.task.bn is BatchNormMode.BATCH:
        return batch_statistics_outputs(model, x)
    with torch.no_grad(), eval_mode(model):
        return network_outputs(model, x)


def preconditioner_scales(task: Task, model: torch.nn.Module | None = None, *,
                          outputs: torch.Tensor | None = None) -> dict:
    """``sqrt(P)`` per trained parameter for an optimizer that runs on ``J P J^T`` (Adam): the per-sample loss
    gradients' moments at the start (``kernel.gradient_moments``), the optimizer's minibatch second moments from them,
    and their inverse root (``kernel.inverse_root_scale``). ``outputs``: the training outputs where the run starts,
    if already computed."""
    model = model if model is not None else task.model
    mom = loss_gradient_moments(task, model, outputs=outputs)
    if model is task.model:
        task.moments = mom
    return scales_from_moments(task.config.optimizer, mom)


def loss_gradient_moments(task: Task, model: torch.nn.Module, *, outputs: torch.Tensor | None = None,
                          samples: torch.Tensor | None = None):
    """``kernel.gradient_moments`` of the per-sample loss gradients of ``model`` on the task's training samples (or on
    ``samples`` of them), at the outputs where a run from ``model`` starts (``outputs``, if already computed)."""
    d = task.data
    f = outputs if outputs is not None else _start_outputs(task, model)
    r = residual(f.double(), d.y, task.config.objective).to(f.dtype)
    x = d.x
    if samples is not None:
        x, r = x[samples], r[samples]
    return gradient_moments(model, x, r, params=task.trained)


def second_moments(opt, mom, n: int | None = None) -> dict:
    """The optimizer's minibatch second moments ``v = (1 - noise) mean^2 + noise sq`` per parameter from the per-sample
    gradient moments (``kernel.GradientMoments``): ``v`` itself for a dense parameter, its row and column sums for a
    factored one (what the row x column fit needs, whether or not the squares were formed). Linear in the moments, so
    a weighted average of these is the second moment of the mixed gradients. ``n``: the training set's size when
    ``mom`` was measured on a subset of it (the minibatch noise is the run's)."""
    n = mom.n if n is None else n
    noise = opt.minibatch_noise(n)
    out = {}
    for name, mean in mom.mean.items():
        lay = mom.layout[name]
        if lay is None:
            out[name] = (opt.second_moments(mean, mom.sq[name], n),)
            continue
        # v = (1 - noise) mean^2 + noise sq is linear in both: its row and column sums are theirs
        m2 = (mean.double() ** 2).view(lay[0] * lay[1], lay[2])
        rows = (1 - noise) * m2.sum(1) + noise * mom.sq_rows[name].double()
        cols = (1 - noise) * m2.sum(0) + noise * mom.sq_cols[name].double()
        out[name] = (rows.to(mean.dtype), cols.to(mean.dtype))
    return out


def scales_from_second_moments(opt, v: dict, mom) -> dict:
    """``sqrt(P)`` per parameter from ``second_moments`` ``v`` (the layouts and dead taps from ``mom``): the inverse
    root, row x column for factored parameters."""
    out = {}
    for name, parts in v.items():
        lay = mom.layout[name]
        out[name] = (inverse_root_scale(parts[0], None, opt.adam_eps) if lay is None
                     else factored_inverse_root_scale(parts[0], parts[1], lay, opt.adam_eps))
    for name, taps in mom.taps.items():  # where the layout leaves out dead convolution taps
        out[name] = dataclasses.replace(out[name], taps=taps)
    return out


def scales_from_moments(opt, mom) -> dict:
    """``sqrt(P)`` per parameter from the per-sample gradient moments (``kernel.GradientMoments``): the optimizer's
    minibatch second moments (``second_moments``) and their inverse root (row x column for factored parameters)."""
    return scales_from_second_moments(opt, second_moments(opt, mom), mom)


def network_of(task: Task) -> Network:
    """The task's network as re-linearization sees it: moved along ``task.trained``, its kernel by ``kernel_for``,
    evaluated with batch statistics for ``--bn batch`` runs. A preconditioned optimizer starts from its ``P`` of
    ``w0`` (``task.scales``, measured here if the kernel was loaded from a file) and re-estimates it along the path
    (``adapt``)."""
    x = task.data.x
    outputs = ((lambda m: batch_statistics_outputs(m, x)) if task.config.task.bn is BatchNormMode.BATCH
               else None)
    precondition = adapt = None
    held = {}  # Adam's running second moments "v", those at the last refresh "v_last", the scales the kernels use
    if task.config.optimizer.preconditioned:
        if task.scales is None:
            task.scales = preconditioner_scales(task)
        held["scales"] = task.scales
        shapes = dict(task.model.named_parameters())
        precondition = {name: parameter_preconditioner(task.scales[name], shapes[name].shape) for name in task.trained}
        opt, n = task.config.optimizer, task.data.x.shape[0]

        def adapt(model: torch.nn.Module, weight: float, samples: torch.Tensor | None = None) -> dict:
            """Adam's ``v`` along the path: the running average of the second moments over the steps so far (at
            first those of ``w0``) takes in the interval since the last refresh with weight ``weight`` (its share of
            the steps), at the mean of the second moments at its two ends (the trapezoid rule; at ``model``: on
            ``samples`` of the training set, or all); the kernels from here on use its ``P``, which is returned in
            parameter shape."""
            if task.moments is None:
                task.scales = preconditioner_scales(task)
            new = second_moments(opt, loss_gradient_moments(task, model, samples=samples), n)
            if "v" not in held:  # the path so far is w0 alone
                held["v"] = held["v_last"] = second_moments(opt, task.moments)
            old, last = held["v"], held["v_last"]
            held["v"] = {k: tuple((1 - weight) * avg + weight * (start + end) / 2
                                  for avg, start, end in zip(old[k], last[k], new[k])) for k in new}
            held["v_last"] = new
            held["scales"] = scales_from_second_moments(opt, held["v"], task.moments)
            return {name: parameter_preconditioner(held["scales"][name], shapes[name].shape) for name in task.trained}

    return Network(task.model, x, task.trained, kernel=lambda m: kernel_for(task, model=m, scales=held.get("scales")),
                   outputs=outputs,
                   subset_kernel=lambda m, idx: kernel_for(task, model=m, samples=idx, scales=held.get("scales")),
                   precondition=precondition, adapt=adapt)


SIMULATOR_DEVICE_OUTPUTS = 2000
"""Beyond this many training outputs (``N*C``) the simulator runs in float32, and on the network's device when that
is a GPU (one step is then a few ``(R, N*C) x (N*C, N*C)`` products); up to it, in float64 on the CPU, where a step is
too small for a GPU to pay off."""


def simulation_device(task: Task, outputs: int) -> torch.device:
    """Where the simulator runs for a kernel of ``outputs`` training outputs (``SIMULATOR_DEVICE_OUTPUTS``)."""
    dev = model_device(task.model)
    return dev if dev.type == "cuda" and outputs > SIMULATOR_DEVICE_OUTPUTS else torch.device("cpu")


def problem_from(kernel: Kernel, task: Task, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> Problem:
    """The function-space problem; float64 for small kernels, float32 beyond ``SIMULATOR_DEVICE_OUTPUTS`` outputs
    (twice as fast), on ``device`` (default: ``simulation_device``; trajectories come back on the CPU)."""
    d = task.data
    nc = kernel.theta.shape[0]
    if dtype is None:
        dtype = torch.float64 if nc <= SIMULATOR_DEVICE_OUTPUTS else torch.float32
    device = simulation_device(task, nc) if device is None else torch.device(device)
    cvt = lambda t: None if t is None else t.detach().to(device, dtype)  # noqa: E731
    lab = lambda t: None if t is None else t.to(device)  # noqa: E731
    problem = Problem(cvt(kernel.theta), cvt(kernel.f0), lab(d.y), task.config.objective, cvt(kernel.theta_test),
                      cvt(kernel.f0_test), lab(d.y_test), cvt(kernel.jw0), cvt(kernel.jw0_test))
    opt = task.config.optimizer
    if opt.max_grad_norm is None or not opt.preconditioned:
        return problem
    return dataclasses.replace(problem, norm_scale=clip_norm_scale(task, problem))


def clip_norm_scale(task: Task, problem: Problem) -> float:
    """``Problem.norm_scale`` of a preconditioned kernel ``J P J^T`` (Adam), for gradient clipping: the expected
    squared norm of a batch gradient at ``w0`` (the sum of the minibatch second moments ``v0`` over the trained
    weights) over its expected ``g^T P g`` under the kernel."""
    opt = task.config.optimizer
    if task.moments is None:
        task.scales = preconditioner_scales(task)
    v = second_moments(opt, task.moments, problem.n)
    total = sum(float(parts[0].double().sum()) for parts in v.values())  # a factored one's row sums add up to it
    q = start_gradient_norm(problem, opt) ** 2  # norm_scale 1 here: the expected g^T P g
    return total / q if q > 0 and total > 0 else 1.0


def start_gradient_norm(problem: Problem, opt) -> float:
    """The root-mean-square norm of a batch gradient at the pretrained weights, over the batches the run may draw
    (``sqrt(norm_scale E[c^T Theta c])``): what gradient clipping compares with ``max_grad_norm`` at the start."""
    noise = 0.0 if opt.is_full_batch(problem.n) else opt.minibatch_noise(problem.n)
    q = float(expected_gradient_square(problem, problem.f0.reshape(1, -1), noise=noise))
    return math.sqrt(max(q, 0.0) * problem.norm_scale)


def thresholds(config: RunConfig) -> list[Threshold]:
    """The thresholds a result reports: every ``--epsilon``, then every ``--target-loss``."""
    return [Threshold.eps(e) for e in config.epsilon] + [Threshold.target(t) for t in config.target_loss]


def training_times(curves: torch.Tensor, config: RunConfig) -> dict[str, dict]:
    """Training time per threshold, keyed ``Threshold.key`` (``"eps=0.1"``, ``"target=0.5"``; steps, ``None`` =
    not reached), as JSON-ready dicts."""
    return {th.key: summarize_times(steps_to_threshold(curves, th)).to_dict() for th in thresholds(config)}


def tolist(t: torch.Tensor | None, digits: int = 8):
    """Tensor -> JSON list (``digits`` significant digits) with ``None`` for NaN."""
    if t is None:
        return None
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in t.tolist()]


def alive_mean(curves: torch.Tensor) -> torch.Tensor:
    """Mean over the runs ``(R, T+1)`` still alive at each step (diverged runs are NaN there); NaN where none is."""
    alive = torch.isfinite(curves)
    mean = torch.where(alive, curves, torch.zeros_like(curves)).sum(0) / alive.sum(0).clamp_min(1)
    mean[alive.sum(0) == 0] = math.nan
    return mean


def _band(curves: torch.Tensor):
    mean = alive_mean(curves)
    lo = torch.nanquantile(curves, 0.05, dim=0)
    hi = torch.nanquantile(curves, 0.95, dim=0)
    return mean, lo, hi


RUNS_JSON_BUDGET = 200_000
"""Most loss values of the simulated runs (``loss_runs``) a prediction's JSON holds: runs are thinned evenly to fit."""


def runs_record(curves: torch.Tensor) -> list | None:
    """The simulated runs' loss curves ``(R, T+1)`` for the JSON (6 significant digits, ``None`` from a run's
    divergence on), thinned evenly to ``RUNS_JSON_BUDGET`` values; ``None`` for a single run (full-batch GD: the
    curve itself) or when fewer than two runs fit."""
    R, L = curves.shape
    keep = min(R, RUNS_JSON_BUDGET // max(L, 1))
    if R < 2 or keep < 2:
        return None
    rows = curves[torch.linspace(0, R - 1, keep).round().long()] if keep < R else curves
    return [tolist(row, 6) for row in rows.double()]


def curve_summary(traj: Trajectory) -> dict:
    """Mean curve and 5-95% band over the ensemble (diverged runs drop out after they diverge), and the runs
    themselves (``loss_runs``, ``runs_record``) where there are several."""
    out = {}
    for key, curves in (("loss", traj.loss), ("accuracy", traj.accuracy), ("test_loss", traj.test_loss),
                        ("test_accuracy", traj.test_accuracy)):
        if curves is None:
            continue
        mean, lo, hi = _band(curves.double())
        out[key], out[f"{key}_low"], out[f"{key}_high"] = tolist(mean), tolist(lo), tolist(hi)
    runs = runs_record(traj.loss)
    if runs is not None:
        out["loss_runs"] = runs
    return out


def extrapolated_times(problem: Problem, config: RunConfig, times_here: dict) -> dict:
    """Training time on ``config.extrapolate_to`` samples from this kernel's spectrum (``finetime.extrapolate``)."""
    from .extrapolate import extrapolate_spectrum, mse_loss_at

    n_target = config.extrapolate_to
    opt = config.optimizer
    momentum = getattr(opt, "momentum", 0.0)
    lrs = opt.lr_table(config.steps)
    lam, proj = spectral_projections(problem.theta.double(), problem.f0.double(), problem.y)
    spec = extrapolate_spectrum(problem.theta, problem.f0, problem.y, n_target, spectrum=(lam, proj))
    here = mse_curve(lam, proj, lrs, config.steps, momentum=momentum).unsqueeze(0)
    there = mse_loss_at(spec, lrs, config.steps, momentum).unsqueeze(0)
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


def _median_divergence(traj: Trajectory) -> int:
    """Median step at which the runs diverged (runs that did not count as diverging after the last step)."""
    at = traj.diverged_at.double()
    at[at < 0] = math.inf
    v = torch.quantile(at, 0.5, interpolation="lower").item()
    return int(v) if math.isfinite(v) else traj.steps + 1


@dataclasses.dataclass
class Prediction:
    """What ``predict`` returns: the live objects and the numbers; ``to_dict()`` is the documented JSON."""

    config: RunConfig
    task: Task
    kernel: Kernel
    problem: Problem
    trajectory: Trajectory
    times: dict[str, TimeEstimate]  # keyed by Threshold.key
    seconds_per_step: float
    sharpness: float
    cost: dict[str, float]
    extrapolated: dict | None = None
    subset: dict | None = None  # the kernel on a subset (--kernel-samples): finetime.subset.to_full_set's record
    diagnostics: dict | None = None
    runtime: dict | None = None
    gradient_norm: float | None = None  # with clipping: a batch gradient's root-mean-square norm at w0

    @property
    def relinearization(self) -> dict | None:
        return self.trajectory.info

    @property
    def diverged(self) -> bool:
        return self.trajectory.diverged_fraction > 0.5

    def to_dict(self) -> dict:
        sps = self.seconds_per_step
        info = dict(self.trajectory.info or {})
        first = info.pop("first_steps", None)
        gap = info["loss_gaps"][0] if info.get("loss_gaps") else None
        fitted = first is not None and first.get("speed") is not None
        batch = self.config.task.bn is BatchNormMode.BATCH
        margin = open_loop_margin(gap, first_steps=fitted, batch_statistics=batch)
        interval_bin = prediction_bin(gap, fitted, batch)
        times = {}
        for k, est in self.times.items():
            v = est.to_dict()
            v["seconds"] = None if v["step"] is None else round(v["step"] * sps, 3)
            v["interval"] = None if self.diverged else model_interval(v["step"], margin, self.config.steps,
                                                                      band=(v["low"], v["high"]))
            times[k] = v
        traj, cfg = self.trajectory, self.config
        predicted = curve_summary(traj)
        predicted.update({
            "training_time": times,
            "seconds_per_step": round(sps, 5),
            "seconds": {k: v["seconds"] for k, v in times.items()},
            "total_seconds": round(cfg.steps * sps, 3),
            "diverged_fraction": traj.diverged_fraction,
            "diverged": self.diverged,
            "diverged_step": _median_divergence(traj) if self.diverged else None,
            "sharpness": self.sharpness,
            "max_stable_lr": cfg.optimizer.stable_lr(self.sharpness),
            "interval_bin": interval_bin,
            "interval_note": "90% model-error interval, " + ("" if fitted else "linearity-check ")
                             + f"bin {interval_bin} (finetime.intervals)",
            "method": traj.method,
            "predictor": cfg.predictor_name,
            "preconditioned": cfg.optimizer.preconditioned,
        })
        if self.gradient_norm is not None:
            predicted["gradient_norm_start"] = round(self.gradient_norm, 6)
        if info:
            predicted["relinearization"] = info
        if first is not None:
            predicted["first_steps"] = first
        if self.extrapolated is not None:
            predicted["extrapolated"] = self.extrapolated
        if self.subset is not None:
            predicted["kernel_samples"] = self.subset
        out = {"config": _config_record(self.task, self.kernel), "predicted": predicted}
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics
        out["cost_seconds"] = dict(self.cost)
        if self.runtime is not None:
            out["runtime"] = dict(self.runtime)
        return out


def predict(config: RunConfig, *, kernel_in=None, kernel_out=None, task: Task | None = None,
            progress: Callable[[str, int, int], None] | None = None, diagnostics: bool = False) -> Prediction:
    """Predict the loss curves, training times and seconds of ``config``. ``diagnostics`` adds the kernel spectrum,
    the gradient map and per-sample convergence times (what ``finetime report`` draws)."""
    task = task or prepare(config)
    preload_optimizers()
    t0 = time.perf_counter()
    kernel = kernel_for(task, kernel_in=kernel_in, kernel_out=kernel_out,
                        progress=(lambda d, n: progress("kernel", d, n)) if progress else None)
    t_kernel = time.perf_counter() - t0
    t1 = time.perf_counter()
    problem = problem_from(kernel, task)
    grad_norm = start_gradient_norm(problem, config.optimizer) if config.optimizer.max_grad_norm is not None else None
    traj = predict_trajectory(problem, config, task)
    problem = problem.to(device="cpu")  # what follows reads the kernel beside the curves, which are on the CPU
    subset = None
    if task.full_data is not None:
        traj, subset = to_full_set(traj, problem, config.optimizer, config.steps, task.full_data.x.shape[0])
    sharp = sharpness(problem.theta, problem.f0, problem.loss)
    t_sim = time.perf_counter() - t1
    t2 = time.perf_counter()
    sps = None
    if is_main():  # with several ranks, rank 0 times the step while the others wait
        d = task.train_data
        sps = seconds_per_step(task.model, d.x, d.y, config.optimizer, loss=config.objective,
                               params=task.trained, bn=config.task.bn, precision=config.precision)
    sps = broadcast_value(sps)
    t_step = time.perf_counter() - t2
    times = {th.key: summarize_times(steps_to_threshold(traj.loss, th)) for th in thresholds(config)}
    info = traj.info or {}
    t_relin = info.get("kernel_seconds", 0.0) + info.get("network_seconds", 0.0)
    t_first = info["first_steps"]["seconds"] if "first_steps" in info else 0.0
    cost = {"kernel": round(t_kernel, 3), "simulation": round(t_sim - t_relin - t_first, 3),
            "relinearization": round(t_relin, 3), "first_steps": round(t_first, 3), "step_timing": round(t_step, 3),
            "total": round(t_kernel + t_sim + t_step, 3)}
    result = Prediction(config, task, kernel, problem, traj, times, sps, sharp, cost, subset=subset,
                        gradient_norm=grad_norm)
    if config.extrapolate_to:
        result.extrapolated = extrapolated_times(problem, config, {k: v.to_dict() for k, v in times.items()})
    if diagnostics:
        from .diagnostics import gradient_map, per_sample_times, spectrum_summary

        result.diagnostics = {"spectrum": spectrum_summary(problem.theta, problem.n),
                              "gradients": {**gradient_map(problem, seed=config.task.seed),
                                            "convergence_step": per_sample_times(problem, config.optimizer,
                                                                                 config.steps)}}
    return result


def _config_record(task: Task, kernel: Kernel) -> dict:
    d = task.train_data
    rec = task.config.to_dict()
    rec.update({
        "chosen_classes": d.class_names,
        "data_source": d.source,
        "inputs": d.inputs,
        "input_shape": list(d.x.shape[1:]),
        "data_notes": list(d.notes),
        "sample_seed": task.config.task.seed,
        "train_indices": d.train_index,
        "test_indices": d.test_index,
        "trained_parameters": len(task.trained),
        "trained_weights": sum(p.numel() for n, p in task.model.named_parameters() if n in set(task.trained)),
        "kernel": {k: v for k, v in kernel.meta.items()},
        "network_mode": "BatchNorm running statistics, dropout and drop-connect off (kernel and curves)"
        if task.config.task.bn is BatchNormMode.FROZEN else "BatchNorm batch statistics in training; curves with "
        "batch statistics over the whole training set; kernel with the running statistics, initial outputs with "
        "batch statistics",
    })
    return rec
