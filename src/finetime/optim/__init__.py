"""Optimizers of the fine-tuning run being predicted: one typed object for the real run and the simulator.

* ``_base.Optimizer``: the protocol (learning-rate table, ``torch.optim`` optimizer, function-space rule) and the
  shared settings (learning rate, weight decay, batching, schedule).
* ``sgd.SGD``: ``torch.optim.SGD`` with momentum, Nesterov and weight decay.
* ``adam.Adam`` / ``adam.AdamW``: ``torch.optim.Adam`` / ``AdamW``, simulated on a preconditioned kernel.
* ``_schedule``: constant, step, cosine and linear-decay schedules with linear warm-up.
"""

from ._base import FunctionSpaceRule, FunctionState, Optimizer, Sampling
from ._schedule import SCHEDULES, Constant, Cosine, Linear, Schedule, StepDecay, lr_factors
from .adam import Adam, AdamW
from .sgd import SGD

OPTIMIZERS: dict[str, type[Optimizer]] = {SGD.name: SGD, Adam.name: Adam, AdamW.name: AdamW}
"""Optimizer names (``--optimizer``) -> classes."""


def describe(c: dict, short: bool = False) -> str:
    """One line for an optimizer given by its flat settings (a result's ``config``): ``SGD batch 32 (shuffle), lr
    0.001, momentum 0.9`` or ``AdamW batch 16, lr 3e-05, betas 0.9/0.999``; ``short`` for plot titles."""
    name = c.get("optimizer", "sgd")
    b = c.get("batch_size")
    if name == "sgd":
        kind = ("GD" if short else "full-batch GD") if not b else "SGD"
    else:
        kind = {"adam": "Adam", "adamw": "AdamW"}.get(name, name)
    if b:
        batch = f" b={b}" if short else f" batch {b} ({c.get('sampling', 'shuffle')})"
    else:
        batch = "" if name == "sgd" else (" full" if short else " full batch")
    parts = [f"{kind}{batch}", f"lr {c['lr']:g}"]
    if c.get("momentum"):
        parts.append(f"momentum {c['momentum']:g}" + (" (Nesterov)" if c.get("nesterov") else ""))
    if "betas" in c:
        parts.append("betas " + "/".join(f"{x:g}" for x in c["betas"]))
    if c.get("weight_decay"):
        parts.append(f"weight decay {c['weight_decay']:g}")
    if c.get("max_grad_norm") is not None:
        parts.append(f"gradients clipped to norm {c['max_grad_norm']:g}")
    return ", ".join(parts)


__all__ = ["Optimizer", "FunctionSpaceRule", "FunctionState", "Sampling", "SGD", "Adam", "AdamW", "OPTIMIZERS",
           "describe", "Constant", "StepDecay", "Cosine", "Linear", "Schedule", "SCHEDULES", "lr_factors"]
