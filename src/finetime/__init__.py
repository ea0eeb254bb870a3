"""finetime: predict how long fine-tuning a pretrained network takes, before training it.

Numerical core (tensors in, tensors out): ``finetime.kernel`` (the empirical NTK), ``finetime.dynamics`` (function-space
dynamics of the linearized model), ``finetime.training_time``, ``finetime.spectrum``. On top: ``finetime.zoo``
(models and data), ``finetime.finetune`` (real fine-tuning), ``finetime.predict`` (the pipeline) and the CLI.
"""

from .config import RunConfig
from .dynamics import Problem, Trajectory, simulate, simulate_ode, simulate_sde
from .errors import ConfigError, DataError, FinetimeError, KernelError, MemoryBudgetError, ModelError
from .kernel import Kernel, KernelMethod, compute_kernel
from .losses import Loss
from .optim import SGD, Constant, Cosine, Sampling, StepDecay

__version__ = "0.1.0"

__all__ = [
    "RunConfig", "Problem", "Trajectory", "simulate", "simulate_ode", "simulate_sde", "Kernel", "KernelMethod",
    "compute_kernel", "Loss", "SGD", "Constant", "Cosine", "StepDecay", "Sampling", "FinetimeError", "ConfigError",
    "DataError", "ModelError", "KernelError", "MemoryBudgetError",
]
