"""The predictor table: each ``config.Predictor`` mapped to the function that turns a task's kernel into predicted
curves. ``predict_trajectory`` is the one entry point (``predict``, ``validate``, ``sweep`` and the benchmark call it);
the named presets (``adaptive``, ``linear``, ``paper``, ``relinearized3``) are ``config.PRESETS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .batches import BatchPlan
from .config import Predictor, Reanchor, RunConfig
from .errors import ConfigError
from .dynamics import Problem, Trajectory, simulate, simulate_head, simulate_ode, simulate_sde
from .network import BatchNormMode, linear_head
from .spectrum import sharpness

if TYPE_CHECKING:
    from .first_steps import FirstSteps
    from .predict import Task

__all__ = ["PREDICTORS", "predict_trajectory", "stability_ratio", "default_generator", "real_run_generator"]


def default_generator(config: RunConfig) -> torch.Generator:
    """The source of simulated batch orders of a prediction (the real run's is ``real_run_generator``)."""
    return torch.Generator().manual_seed(config.task.seed + 1)


def real_run_generator(config: RunConfig) -> torch.Generator:
    """The source of the batch order of the real run ``validate`` (and the benchmarks) fine-tune: ``seed + 2``, apart
    from the predictions' own orders."""
    return torch.Generator().manual_seed(config.task.seed + 2)


def stability_ratio(problem: Problem, config: RunConfig) -> float:
    """Peak learning rate over the linearized model's stable limit at the start (``lr / (2 (1 + m) / sharpness)``
    for SGD)."""
    opt = config.optimizer
    return opt.peak_lr(config.steps) / opt.stable_lr(sharpness(problem.theta, problem.f0, problem.loss))


def _head(task, config):
    """A frozen backbone's linear head and its features on the training then test samples, when the head alone is
    trained with running BatchNorm statistics; else ``None``."""
    if task is None or not config.task.freeze_backbone or config.task.bn is not BatchNormMode.FROZEN:
        return None
    d = task.data
    x = d.x if d.x_test is None else torch.cat([d.x, d.x_test.to(d.x.dtype)])
    return linear_head(task.model, task.trained, x)


def _linear(problem, config, task, generator, plan) -> Trajectory:
    opt = config.optimizer
    head = _head(task, config) if opt.preconditioned else None
    if head is not None:  # Adam on a linear model: exact in weight space, where the function-space rule is not
        module, features = head
        return simulate_head(problem, features, module.weight, module.bias, opt, config.steps, runs=config.runs,
                             generator=generator, plan=plan)
    return simulate(problem, opt, config.steps, runs=config.runs, generator=generator, plan=plan)


def _paper(problem, config, task, generator, plan) -> Trajectory:
    if plan is not None:
        raise ValueError("the paper's ODE/SDE cannot replay a batch order")
    opt = config.optimizer
    if opt.name != "sgd":
        raise ConfigError(f"the paper's ODE/SDE predicts SGD only; use --predictor linear or adaptive for {opt.name}")
    if opt.max_grad_norm is not None:
        raise ConfigError("the paper's ODE/SDE does not model gradient clipping (--max-grad-norm); use --predictor "
                          "linear or adaptive")
    if opt.is_full_batch(problem.n):
        return simulate_ode(problem, opt, config.steps)
    return simulate_sde(problem, opt, config.steps, runs=config.runs, generator=generator)


def _relinearized(problem, config, task, generator, plan) -> Trajectory:
    # SGD's weight decay or no checkpoint asked for: the one kernel at w0; Adam on a linear head: exact there
    if not config.relinearizes or (config.optimizer.preconditioned and _head(task, config) is not None):
        return _linear(problem, config, task, generator, plan)
    from .predict import network_of
    from .relinearize import checkpoint_schedule, first_checkpoint, relinearized
    from .subset import balanced_indices, refresh_sample_count

    if task is None:
        raise ValueError("re-linearization needs the task (model and data)")
    p = config.predictor
    # re-anchoring needs the network's outputs on every sample: auto refreshes the whole kernel there
    setting = "all" if p.refresh_samples == "auto" and p.reanchor is not Reanchor.NONE else p.refresh_samples
    m = refresh_sample_count(setting, problem.n, problem.c)
    samples = balanced_indices(problem.y.cpu(), problem.c, m) if m < problem.n else None  # indices into CPU data
    how, min_growth = p.interpolation_for(config.optimizer)
    traj, info = relinearized(problem, config.optimizer, config.steps, network_of(task),
                              checkpoints=checkpoint_schedule(config.steps, p.relinearize,
                                                              first=first_checkpoint(config.steps)),
                              reanchor=p.reanchor, linearity_tol=p.tolerance(config.optimizer), runs=config.runs,
                              generator=generator, plan=plan, refresh_samples=samples,
                              interpolate=p.interpolates(config.optimizer), interpolation=how, min_growth=min_growth,
                              max_memory=config.kernel.max_memory_bytes, end_tol=p.end_tol,
                              stability_cap=p.stability_cap)
    traj.info = info.to_dict()
    return traj


PREDICTORS: dict[Predictor, Callable[..., Trajectory]] = {
    Predictor.LINEAR: _linear,
    Predictor.PAPER: _paper,
    Predictor.RELINEARIZED: _relinearized,
}
"""``Predictor`` -> ``fn(problem, config, task, generator, plan) -> Trajectory``."""


def predict_trajectory(problem: Problem, config: RunConfig, task: "Task | None" = None, *,
                       generator: torch.Generator | None = None, plan: BatchPlan | None = None,
                       first_steps: "FirstSteps | None" = None) -> Trajectory:
    """Predicted curves of ``config`` from the kernel in ``problem`` by the configured predictor. ``task`` (model and
    data) is needed by the re-linearizing predictor and by the first real steps (``config.first_steps()``, run here;
    without the task there are none). ``first_steps`` hands over steps a prediction already measured: the curves are
    fitted to them whatever this trajectory's own check says (a replay keeps the prediction's decision). ``plan``
    replays an explicit batch order (one run)."""
    from .first_steps import apply_first_steps, run_first_steps

    gen = generator if generator is not None else default_generator(config)
    traj = PREDICTORS[config.predictor.kind](problem, config, task, gen, plan)
    if first_steps is not None:
        return apply_first_steps(traj, first_steps.copy())
    gaps = (traj.info or {}).get("loss_gaps")
    k = config.first_steps(gaps[0] if gaps else None)
    if k and task is not None:
        traj = apply_first_steps(traj, run_first_steps(task, config, k))
    return traj
