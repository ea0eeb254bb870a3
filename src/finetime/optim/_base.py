"""The optimizer protocol: one typed object serves the real run (``torch.optim``) and the simulator's update rule.

An optimizer is a frozen dataclass holding its hyper-parameters, the batching of the run and the learning-rate
schedule. It knows

* ``lr_table(steps)``: the learning rate of every update (the only place the base rate and the schedule meet);
* ``torch_optimizer(params)``: the ``torch.optim`` optimizer a real fine-tuning run uses;
* ``function_space()``: its update rule on the linearized model in function space (a ``FunctionSpaceRule``), which
  the simulator's driver (``finetime.dynamics``) applies step by step.

A new optimizer is one new module here with those three methods; the pipeline does not change.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import ClassVar, Protocol

import torch

from ..errors import ConfigError
from ..spectrum import max_stable_lr
from ._schedule import Constant, Schedule, StepDecay, lr_factors

__all__ = ["Sampling", "Optimizer", "FunctionState", "FunctionSpaceRule"]


class Sampling(str, enum.Enum):
    """How minibatches are drawn."""

    SHUFFLE = "shuffle"
    """Reshuffled epochs without replacement (``DataLoader(shuffle=True)``, the PyTorch default)."""
    REPLACEMENT = "replacement"
    """Each batch drawn uniformly with replacement."""


@dataclasses.dataclass
class FunctionState:
    """Where an ensemble of ``R`` simulated runs stands.

    * ``f``: outputs ``(R, N*C + M*C)``, training then test (flat index ``i * C + c``).
    * ``slots``: the optimizer's own state in function space (SGD: the momentum ``u = J v`` and, when tracked, its
      coefficient vector ``alpha`` with ``v = J^T alpha``).
    * ``a``: when tracked, the coefficient vector ``(R, N*C)`` of the weight displacement since tracking started,
      ``w_t - w_s = J^T a_t`` (what re-linearization needs to move the real network).
    """

    f: torch.Tensor
    slots: dict = dataclasses.field(default_factory=dict)
    a: torch.Tensor | None = None

    def clone(self) -> "FunctionState":
        return FunctionState(self.f.clone(),
                             {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.slots.items()},
                             None if self.a is None else self.a.clone())


class FunctionSpaceRule(Protocol):
    """An optimizer's update of the linearized model, in function space.

    ``grad`` is the change of all outputs that a plain gradient step of size 1 makes, ``J g`` (``(R, N*C + M*C)``),
    ``coeff`` its coefficient vector (``g = J^T coeff``, ``(R, N*C)``; only given when ``state.a`` is tracked), and
    ``weights`` a callable returning ``J w`` (the function-space image of the current weights; weight decay needs it).
    A rule with ``needs_coeff = True`` is given ``coeff`` at every step.
    """

    needs_coeff: bool

    def init(self, f: torch.Tensor, nc: int, track: bool) -> FunctionState: ...

    def step(self, state: FunctionState, grad: torch.Tensor, coeff: torch.Tensor | None, lr: float,
             weights, clip: torch.Tensor | None = None) -> FunctionState:
        """``clip``: with gradient clipping, the factor ``(R,)`` each run's gradient was scaled by (``<= 1``), already
        applied to ``grad`` and ``coeff``."""
        ...

    def rebase(self, state: FunctionState, table: torch.Tensor) -> FunctionState:
        """The same weight-space optimizer state, expressed through a new kernel (``table``: the rows
        ``[Theta | Theta_test^T]`` of the new kernel, ``(N*C, N*C + M*C)``); needs tracked coefficients."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimizer:
    """Settings every optimizer shares: learning rate, decoupled-or-not weight decay, batching, schedule, gradient
    clipping.

    ``batch_size=None`` means full-batch gradient descent.
    """

    name: ClassVar[str] = ""

    lr: float
    weight_decay: float = 0.0
    batch_size: int | None = None
    sampling: Sampling = Sampling.SHUFFLE
    drop_last: bool = False
    schedule: Schedule = Constant()
    max_grad_norm: float | None = None
    """Gradient clipping: each step's loss gradient (all trained weights together) is scaled to this norm when it is
    larger (``torch.nn.utils.clip_grad_norm_`` before ``step()``, the Hugging Face Trainer's ``max_grad_norm``);
    ``None``: no clipping."""

    def __post_init__(self):
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1 (or omitted for full-batch GD), got {self.batch_size!r}")
        object.__setattr__(self, "sampling", Sampling(self.sampling))
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"--max-grad-norm must be a positive number, got {self.max_grad_norm!r}")
        w = self.schedule.warmup_steps
        if w < 0:
            raise ConfigError(f"warm-up steps must be >= 0, got {w}")
        if isinstance(self.schedule, StepDecay) and (self.schedule.step_size < 1 or self.schedule.gamma <= 0):
            raise ConfigError("step schedule needs step_size >= 1 and gamma > 0")

    def lr_table(self, steps: int, base: float | None = None) -> torch.Tensor:
        """Learning rate of updates ``t = 0..steps-1`` (float64 ``(steps,)``): ``base`` (default: ``lr``) times the
        schedule's multipliers. Every consumer of the learning rate (simulators, real runs, closed forms) reads it
        here, so schedules and warm-up apply everywhere."""
        return lr_factors(self.schedule, steps) * (self.lr if base is None else base)

    def peak_lr(self, steps: int) -> float:
        """The largest learning rate of a ``steps``-update run (what stability depends on)."""
        return float(self.lr_table(steps).max()) if steps else self.lr

    @property
    def effective_lr(self) -> float:
        """The step size a gradient flow with the same long-run speed would take (plain ``lr`` here)."""
        return self.lr

    def stable_lr(self, sharpness: float) -> float:
        """Largest learning rate for which gradient descent on a quadratic of this sharpness is stable."""
        return max_stable_lr(sharpness)

    def is_full_batch(self, n: int) -> bool:
        """True when every step uses all ``n`` samples (deterministic gradient descent)."""
        if self.batch_size is None:
            return True
        return self.sampling is Sampling.SHUFFLE and self.batch_size >= n

    def minibatch_noise(self, n: int) -> float:
        """The variance of a minibatch's mean gradient over the per-sample variance, for batches drawn from ``n``
        samples as the run draws them (0 for full batches)."""
        b = n if self.batch_size is None else min(self.batch_size, n)
        if self.sampling is Sampling.REPLACEMENT:
            return 1.0 / b
        return (n - b) / (b * max(n - 1, 1))

    def check_dataset(self, n: int) -> None:
        """Raise a ``ConfigError`` when the batch size cannot be used on ``n`` samples."""
        if self.batch_size is not None and self.batch_size > n:
            raise ConfigError(
                f"batch size {self.batch_size} is larger than the training set ({n} samples); "
                "lower --batch-size or omit it for full-batch GD"
            )

    @property
    def preconditioned(self) -> bool:
        """True when the simulator runs on a preconditioned kernel ``J P J^T`` whose ``P`` the optimizer builds from
        the per-weight gradient moments at ``w0`` (``second_moments``; Adam) instead of on ``J J^T``."""
        return False

    @property
    def relinearizable(self) -> bool:
        """Whether the simulator can track the linear model's weights from coefficient vectors, which re-linearization
        needs: not with L2 weight decay, whose ``w`` term lies outside the range of ``J^T``."""
        return not self.weight_decay

    def second_moments(self, mean: torch.Tensor, sq: torch.Tensor, n: int) -> torch.Tensor:
        """For preconditioned optimizers: the per-weight statistic ``P`` is built from (see ``adam.Adam``)."""
        raise NotImplementedError

    def torch_optimizer(self, params) -> torch.optim.Optimizer:
        raise NotImplementedError

    def function_space(self) -> FunctionSpaceRule:
        raise NotImplementedError

    def scheduler(self, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The schedule for a real run: ``LambdaLR`` over the same multipliers the simulator uses."""
        factors = lr_factors(self.schedule, steps).tolist()
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factors[t] if t < len(factors) else factors[-1])
