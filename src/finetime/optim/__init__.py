"""Optimizers of the fine-tuning run being predicted: one typed object for the real run and the simulator.

* ``_base.Optimizer``: the protocol (learning-rate table, ``torch.optim`` optimizer, function-space rule) and the
  shared settings (learning rate, weight decay, batching, schedule).
* ``sgd.SGD``: ``torch.optim.SGD`` with momentum, Nesterov and weight decay.
* ``_schedule``: constant, step and cosine schedules with linear warm-up.
"""

from ._base import FunctionSpaceRule, FunctionState, Optimizer, Sampling
from ._schedule import SCHEDULES, Constant, Cosine, Schedule, StepDecay, lr_factors
from .sgd import SGD

OPTIMIZERS: dict[str, type[Optimizer]] = {SGD.name: SGD}
"""Optimizer names (``--optimizer``) -> classes."""

__all__ = ["Optimizer", "FunctionSpaceRule", "FunctionState", "Sampling", "SGD", "OPTIMIZERS", "Constant",
           "StepDecay", "Cosine", "Schedule", "SCHEDULES", "lr_factors"]
