"""Re-linearizing at the run's real weights: the prediction of the rest of a run from where it really is.

Before training the kernel is the one at ``w0`` and re-linearization (the ``adaptive`` predictor) can only move the
network along the *predicted* path. During training the weights are known. At real step ``s``:

* the kernel at the current weights and the network's outputs there (``predict.kernel_for`` with the live model):
  the linearization is exact at this point;
* the learning rates of steps ``s..T-1`` (the schedule goes on where the run is);
* for SGD with momentum, given the run's ``torch.optim`` optimizer, the momentum's image in function space
  ``u = J buf`` (a forward-mode Jacobian-vector product with each parameter's momentum buffer), so the simulated
  velocity is the real one. Adam's state is not carried over: its function-space rule restarts (first moment 0,
  bias correction from 1) on the preconditioned kernel at the current weights.

The simulated curve then becomes the refiner's prior from step ``s`` on (``Refiner.relinearize``). With BatchNorm
batch statistics (``--bn batch``) the kernel is the running-statistics one, as everywhere in finetime, and the
benchmark (BENCHMARKS.md, section 8) shows the re-linearized estimate worse than the curve-only refiner there.
"""

from __future__ import annotations

import torch

from ..dynamics._driver import solve
from ..dynamics.exact import ExactStepper, resolve_plan
from ..errors import ConfigError
from ..kernel import jacobian_vector_product
from ..optim import FunctionState
from ..predictors import default_generator

__all__ = ["continuation", "momentum_image"]


def momentum_image(model: torch.nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer,
                   names: list[str]) -> torch.Tensor | None:
    """``J buf`` ``(N, C)`` over the trained parameters ``names`` from a ``torch.optim.SGD``'s momentum buffers
    (``None`` when the optimizer holds none yet)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    tangents = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            name = by_id.get(id(p))
            if buf is not None and name in names:
                tangents[name] = buf
    if not tangents:
        return None
    named = dict(model.named_parameters())
    for n in names:  # parameters without a buffer (never stepped) move with zero velocity
        tangents.setdefault(n, torch.zeros_like(named[n]))
    return jacobian_vector_product(model, x, tangents)


class _Started(ExactStepper):
    """An exact stepper whose momentum starts from a given function-space velocity."""

    def __init__(self, *args, velocity: torch.Tensor | None = None, **kw):
        super().__init__(*args, **kw)
        self.velocity = velocity

    def init(self, runs: int) -> FunctionState:
        state = super().init(runs)
        if self.velocity is not None and "u" in state.slots:
            state.slots["u"] = self.velocity.reshape(1, -1).to(state.f.device, state.f.dtype).expand_as(state.f).clone()
        return state


def continuation(prediction, model: torch.nn.Module, step: int, *,
                 optimizer: torch.optim.Optimizer | None = None, runs: int | None = None,
                 generator: torch.Generator | None = None):
    """Predicted curves ``(R, T - step + 1)`` of the rest of the run, from the real ``model`` after ``step`` updates
    (``prediction``: the live ``finetime.Prediction`` of this run; ``model``: the same architecture, trained along
    the prediction's task's parameters). Returns ``(trajectory, kernel)``."""
    from ..predict import kernel_for, problem_from

    task, cfg = prediction.task, prediction.config
    if task.full_data is not None:
        raise ConfigError(f"re-linearization continues the run on every training sample, but this prediction's kernel "
                          f"saw {task.data.x.shape[0]} of {task.full_data.x.shape[0]} (--kernel-samples); predict "
                          "with --kernel-samples all to re-linearize during training")
    T = cfg.steps
    if not 0 < step < T:
        raise ConfigError(f"re-linearization step must be inside the run (0 < step < {T}); got {step}")
    opt = cfg.optimizer
    kernel = kernel_for(task, model=model)
    problem = problem_from(kernel, task)
    left = T - step
    lrs = opt.lr_table(T).tolist()[step:]
    gen = generator if generator is not None else default_generator(cfg)
    plan, r = resolve_plan(problem.n, opt, left, runs or cfg.runs, gen, None)
    velocity = None
    if optimizer is not None and getattr(opt, "momentum", 0.0) and opt.name == "sgd":
        x = task.data.x if task.data.x_test is None else torch.cat([task.data.x, task.data.x_test.to(task.data.x.dtype)])
        u = momentum_image(model, x, optimizer, task.trained)
        if u is not None:
            velocity = u.to(problem.device, problem.theta.dtype)
    stepper = _Started(problem, opt, left, plan, lrs=lrs, velocity=velocity)
    traj, _ = solve(stepper, left, runs=r, method="exact")
    return traj, kernel
