"""SGD with momentum, Nesterov and L2 weight decay, as ``torch.optim.SGD`` runs it (dampening 0).

Weight space, for a batch ``B``: ``g = grad(mean_{i in B} l_i) + weight_decay * w``; ``v = momentum * v + g``;
``w -= lr_t * (g + momentum * v if nesterov else v)``.

Function space (the linearized model ``f = f0 + J (w - w0)``): every term is mapped through ``J``. With
``delta = J g`` and ``u = J v`` the update is exactly ``u <- m u + delta``, ``f <- f - lr_t (delta + m u | u)``, and
weight decay adds ``lambda J w = lambda (J w0 + f - f0)`` to ``delta``. Without weight decay the momentum buffer is
``v = J^T alpha`` and the displacement ``w - w0 = J^T a`` for coefficient vectors the rule can track.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..spectrum import max_stable_lr
from ._base import FunctionState, Optimizer

__all__ = ["SGD"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGD(Optimizer):
    """Stochastic gradient descent (``torch.optim.SGD`` semantics; full batch when ``batch_size`` is None)."""

    name = "sgd"

    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not (0.0 <= self.momentum < 1.0):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("Nesterov momentum needs --momentum > 0")

    @property
    def effective_lr(self) -> float:
        """The paper's effective learning rate ``lr / (1 - momentum)`` (section 3.1)."""
        return self.lr / (1.0 - self.momentum)

    def stable_lr(self, sharpness: float) -> float:
        """Heavy-ball GD on a quadratic of curvature ``s`` is stable for ``lr < 2 (1 + momentum) / s``."""
        return max_stable_lr(sharpness, self.momentum)

    def torch_optimizer(self, params) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay)

    def function_space(self) -> "_SGDRule":
        return _SGDRule(self)


class _SGDRule:
    """SGD's update in function space (see the module docstring); in place on the state it is given."""

    needs_coeff = False

    def __init__(self, opt: SGD):
        self.m = opt.momentum
        self.nesterov = opt.nesterov
        self.wd = opt.weight_decay

    def init(self, f: torch.Tensor, nc: int, track: bool) -> FunctionState:
        runs = f.shape[0]
        slots = {}
        if self.m:
            slots["u"] = torch.zeros_like(f)
            if track:
                slots["alpha"] = f.new_zeros(runs, nc)
        return FunctionState(f, slots, f.new_zeros(runs, nc) if track else None)

    def step(self, state, grad, coeff, lr, weights, clip=None):
        if self.wd:
            if state.a is not None:
                raise ValueError("coefficient tracking (re-linearization) does not support weight decay")
            grad = grad + self.wd * weights()
        a = state.a
        u = state.slots.get("u")
        if u is not None:
            m = self.m
            u.mul_(m).add_(grad)
            step = grad + m * u if self.nesterov else u
            alpha = state.slots.get("alpha")
            if alpha is not None:
                alpha.mul_(m).add_(coeff)
                a -= lr * (coeff + m * alpha if self.nesterov else alpha)
        else:
            step = grad
            if a is not None:
                a -= lr * coeff
        state.f = state.f - lr * step
        return state

    def rebase(self, state, table):
        """``u = J_new v`` with ``v = J^T alpha`` (exact for the weights; the momentum's image moves with J)."""
        if "u" in state.slots:
            state.slots["u"] = state.slots["alpha"] @ table
        if state.a is not None:
            state.a = torch.zeros_like(state.a)
        return state
