"""Adam and AdamW (``torch.optim.Adam`` / ``AdamW`` semantics), and their approximation in function space.

Weight space, step ``t = 1, 2, ...`` on a batch gradient ``g_t``: ``m = b1 m + (1 - b1) g``,
``v = b2 v + (1 - b2) g^2``, ``w -= lr_t (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``; AdamW first shrinks
``w *= 1 - lr_t weight_decay`` (decoupled decay), Adam adds ``weight_decay * w`` to ``g`` (L2).

Adam is not linear in the gradient, so the kernel alone does not determine it. The approximation used here
(measured against real runs in ``bench/``; README "Adam"):

1. **A fixed diagonal preconditioner, measured at the pretrained weights.** ``sqrt(v_hat)`` of each weight is taken
   proportional to ``sqrt(v0)``, the root mean square of that weight's *minibatch* gradient at ``w0`` (mean squared
   plus the batch-sampling variance, from the per-sample gradients), so the update is ``-lr P m_hat`` with
   ``P = diag(1 / (sqrt(v0) + eps))`` and the function moves through ``Theta_P = J P J^T``. For linear maps ``v0`` is
   replaced by its row x column (Adafactor) fit, which keeps the engine's Kronecker structure
   (``kernel._scales.inverse_root_scale``).
2. **One scalar for how ``v`` evolves.** Along the predicted path the second moments shrink with the gradients.
   The simulator tracks ``q_t = g_t^T P g_t = c_t^T Theta_P c_t`` of each simulated batch (``c_t`` the batch's
   coefficient vector), its bias-corrected average ``q_hat_t`` with ``b2``, and scales ``P`` by
   ``rho_t = sqrt(q_ref / q_hat_t)``, ``q_ref`` the ensemble mean of ``q`` at the first step (``rho_1 = 1``).
3. **The first moment exactly**: ``M = J P m`` is an exponential average of the function-space gradients
   ``Theta_P c_t``, bias-corrected, and ``f -= lr_t rho_t M_hat`` (minus ``lr_t weight_decay J w_t`` for AdamW, with
   ``J w_t = J w0 + f_t - f0`` as for SGD).

Gradient clipping (``max_grad_norm``) scales each batch gradient by ``k_t = min(1, max_norm / |g_t|)`` before
Adam sees it, so ``m`` and ``q`` take in ``k_t g_t`` while ``q_ref`` stays the unclipped level at ``w0`` that ``P``
was measured at. The weight-space norm is not ``g^T P g``: ``|g_t|^2`` is taken as ``g_t^T P g_t`` times the ratio
of the two at ``w0`` (``Problem.norm_scale``: the sum of ``v0`` over the expected ``g^T P g`` of a batch), i.e. the
gradient's norm is assumed to shrink along the path as its ``P``-norm does.

Left out: ``eps`` beside ``sqrt(v)`` beyond its role as a floor, per-weight changes of ``v`` other than one common
factor, and Adam's L2 weight decay (its gradient term ``J P w`` is not available; use AdamW).

Re-linearization (``finetime.relinearize``) needs the linear model's weights: with ``c_t`` the coefficient vector of
step ``t``'s gradient (``g_t = J^T c_t``), the first moment is ``m = J^T mc`` for ``mc`` the same exponential average
of the ``c_t``, so ``w_t = s_t w_s + P J^T a_t`` since the last checkpoint ``s``, with ``a <- (1 - lr wd) a -
lr rho mc_hat`` and the decay ``s_t = prod (1 - lr wd)``, exactly. At a checkpoint the first moment's image moves
with the new kernel (``M = Theta_P mc``). Where ``P`` is kept, ``rho`` follows the new kernel's gradients as before.
Where re-linearization re-estimates ``P`` from the second moments along the path (``relinearize``'s ``adapt``), ``q``
changes units: ``q_hat`` restarts from the next step's ``q`` and ``q_ref`` is the expected ``q`` of a batch under the
new kernel at the current outputs (``ExactStepper.expected_gradient_square``), not the next batch's own ``q``: a
batch that happens to be small (the last, short batch of an epoch) would set ``rho`` for the rest of the interval.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..spectrum import max_stable_lr
from ._base import FunctionState, Optimizer

__all__ = ["Adam", "AdamW"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient)."""

    name = "adam"
    decoupled = False

    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8

    def __post_init__(self):
        super().__post_init__()
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"--betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        if not self.adam_eps > 0:
            raise ConfigError(f"--adam-eps must be positive, got {self.adam_eps!r}")
        if self.weight_decay and not self.decoupled:
            raise ConfigError("Adam's L2 weight decay (--optimizer adam --weight-decay) cannot be predicted in "
                              "function space; use --optimizer adamw (decoupled weight decay)")

    @property
    def preconditioned(self) -> bool:
        return True

    @property
    def relinearizable(self) -> bool:
        """Always: AdamW's decoupled decay shrinks the weights by a tracked factor (Adam's L2 decay is refused)."""
        return True

    def stable_lr(self, sharpness: float) -> float:
        """On a quadratic of curvature ``s`` under ``Theta_P``, Adam's averaged step ``(1 - b1)`` heavy ball with
        momentum ``b1`` is stable for ``lr < 2 (1 + b1) / ((1 - b1) s)``."""
        b1 = self.betas[0]
        return max_stable_lr(sharpness, b1) / (1.0 - b1)

    def second_moments(self, mean: torch.Tensor, sq: torch.Tensor, n: int) -> torch.Tensor:
        """``v0``: the expected square of a minibatch gradient at ``w0``, weight by weight, from the mean ``mean``
        and mean square ``sq`` of the ``n`` per-sample gradients (batches of ``batch_size`` drawn as the run
        draws them)."""
        var = (sq - mean * mean).clamp_min(0)
        return mean * mean + self.minibatch_noise(n) * var

    def torch_optimizer(self, params) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.decoupled else torch.optim.Adam
        return cls(params, lr=self.lr, betas=self.betas, eps=self.adam_eps, weight_decay=self.weight_decay)

    def function_space(self) -> "_AdamRule":
        return _AdamRule(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamW(Adam):
    """``torch.optim.AdamW`` (decoupled weight decay; torch's default ``weight_decay=0.01`` is not assumed)."""

    name = "adamw"
    decoupled = True


class _AdamRule:
    """Adam's update in function space on the preconditioned kernel (see the module docstring)."""

    needs_coeff = True

    def __init__(self, opt: Adam):
        self.b1, self.b2 = opt.betas
        self.wd = opt.weight_decay

    def init(self, f: torch.Tensor, nc: int, track: bool) -> FunctionState:
        runs = f.shape[0]
        slots = {"m": torch.zeros_like(f), "q": f.new_zeros(runs), "t": 0, "tq": 0, "q_ref": None}
        if not track:
            return FunctionState(f, slots)
        slots.update(mc=f.new_zeros(runs, nc), shrink=1.0)
        return FunctionState(f, slots, f.new_zeros(runs, nc))

    def step(self, state, grad, coeff, lr, weights, clip=None):
        s = state.slots
        s["t"] += 1
        s["tq"] += 1
        t = s["t"]
        nc = coeff.shape[1]
        q = (grad[:, :nc] * coeff).sum(1).clamp_min(0)  # g^T P g of each run's batch gradient
        if s["q_ref"] is None:  # the level P was measured at: the unclipped gradients of w0
            q0 = q if clip is None else q / (clip * clip)
            s["q_ref"] = q0.mean().clamp_min(torch.finfo(q.dtype).tiny)
        s["q"].mul_(self.b2).add_(q, alpha=1 - self.b2)
        q_hat = (s["q"] / (1 - self.b2 ** s["tq"])).clamp_min(torch.finfo(q.dtype).tiny)
        rho = (s["q_ref"] / q_hat).sqrt().unsqueeze(1)
        s["m"].mul_(self.b1).add_(grad, alpha=1 - self.b1)
        f = state.f
        if self.wd:
            f = f - lr * self.wd * weights()
        state.f = f - lr * rho * s["m"] / (1 - self.b1**t)
        if state.a is not None:  # w = shrink w_s + P J^T a (module docstring)
            decay = 1.0 - lr * self.wd
            s["mc"].mul_(self.b1).add_(coeff, alpha=1 - self.b1)
            state.a.mul_(decay).sub_(lr * rho * s["mc"] / (1 - self.b1**t))
            s["shrink"] *= decay
        return state

    def rebase(self, state, table):
        """``M = Theta_P,new mc``: the first moment's image through the new kernel; the displacement restarts."""
        if state.a is None:
            raise ValueError("re-linearization needs tracked coefficients")
        s = state.slots
        s["m"] = s["mc"] @ table
        state.a = torch.zeros_like(state.a)
        s["shrink"] = 1.0
        level = s.pop("restart_q", None)
        if level is not None:  # P re-estimated where v now is: rho_t restarts, relative to the expected q there
            s["q_ref"] = level
            s["q"] = torch.zeros_like(s["q"])
            s["tq"] = 0
        return state
