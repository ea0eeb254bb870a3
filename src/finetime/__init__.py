"""finetime: predict how long fine-tuning a pretrained network takes, before training it.

Numerical core (tensors in, tensors out): ``finetime.kernel`` (the empirical NTK), ``finetime.dynamics`` (function-space
dynamics of the linearized model), ``finetime.optim`` (optimizers: the real run's and the simulator's update),
``finetime.training_time``, ``finetime.spectrum``. On top: ``finetime.zoo`` (models and data), ``finetime.network``,
``finetime.finetune`` (real fine-tuning), ``finetime.predict`` / ``validate`` / ``sweep`` (the pipelines) and the
CLI.
"""

from .config import PRESETS, KernelConfig, Predictor, PredictorConfig, RunConfig, TaskConfig
from .dynamics import Problem, Trajectory, simulate, simulate_ode, simulate_sde
from .errors import ConfigError, DataError, FinetimeError, KernelError, MemoryBudgetError, ModelError
from .kernel import Kernel, KernelMethod, compute_kernel
from .losses import Loss
from .network import BatchNormMode
from .optim import SGD, Constant, Cosine, Optimizer, Sampling, StepDecay
from .predict import Prediction, predict
from .sweep import sweep
from .validate import Validation, validate

__version__ = "0.1.0"

__all__ = [
    "predict", "validate", "sweep", "Prediction", "Validation", "RunConfig", "TaskConfig", "KernelConfig",
    "PredictorConfig", "Predictor", "PRESETS", "BatchNormMode", "Optimizer", "Problem", "Trajectory", "simulate",
    "simulate_ode", "simulate_sde", "Kernel", "KernelMethod",
    "compute_kernel", "Loss", "SGD", "Constant", "Cosine", "StepDecay", "Sampling", "FinetimeError", "ConfigError",
    "DataError", "ModelError", "KernelError", "MemoryBudgetError",
]
