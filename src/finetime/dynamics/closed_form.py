"""Closed-form MSE loss curves of the linearized model from the kernel's spectrum (paper, eq. 4-5).

With our MSE convention ``L = mean_{i,c} (f_ic - y_ic)^2`` over ``K = N*C`` outputs, full-batch GD on the
linearized model moves the residual ``delta = f - y`` by ``delta <- (I - (2 lr / K) Theta) delta``. In the
eigenbasis ``Theta = sum_k lambda_k v_k v_k^T`` with projections ``p_k = (v_k . delta_0)^2``:

* discrete GD:  ``L_t = (1/K) sum_k (1 - 2 lr lambda_k / K)^(2t) p_k``
* gradient flow (paper, eq. 4-5 up to the loss normalization): ``L(t) = (1/K) sum_k exp(-4 lr lambda_k t / K) p_k``
* heavy-ball momentum ``m``: each mode follows the 2x2 recurrence of ``torch.optim.SGD`` exactly.

These need only ``(lambda_k, p_k)``, which is what dataset-size extrapolation predicts.
"""

from __future__ import annotations

import torch

from ..losses import one_hot

__all__ = ["spectral_projections", "mse_curve"]


def spectral_projections(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and residual projections ``p_k = (v_k . (f0 - onehot(y)))^2`` of a ``(K, K)`` kernel."""
    evals, evecs = torch.linalg.eigh(theta)
    delta = (f0 - one_hot(y, f0.shape[1], f0.dtype)).reshape(-1)
    proj = (evecs.T @ delta) ** 2
    return evals.flip(0), proj.flip(0)


def mse_curve(
    eigenvalues: torch.Tensor,
    projections: torch.Tensor,
    lr: float | torch.Tensor,
    steps: int,
    *,
    n_outputs: int | None = None,
    momentum: float = 0.0,
    continuous: bool = False,
) -> torch.Tensor:
    """MSE training loss at steps ``0..steps`` (``(steps + 1,)``) from the spectrum.

    Args:
        eigenvalues: ``lambda_k`` of ``Theta`` (any order), shape ``(K',)``.
        projections: ``p_k``, same shape.
        lr: learning rate, or the learning rate of every update (``(steps,)``, e.g. ``Optimizer.lr_table``).
        steps: number of GD updates ``T``.
        n_outputs: ``K = N*C`` (defaults to ``len(eigenvalues)``; differs when the spectrum is extrapolated).
        momentum: heavy-ball coefficient (discrete only).
        continuous: gradient flow instead of discrete GD.
    """
    k = n_outputs if n_outputs is not None else eigenvalues.numel()
    kappa = 2.0 * eigenvalues.clamp_min(0) / k
    if isinstance(lr, torch.Tensor):
        if lr.numel() != steps:
            raise ValueError(f"learning-rate table has {lr.numel()} entries for {steps} steps")
        if steps == 0 or bool((lr == lr[0]).all()):
            lr = float(lr[0]) if steps else 1.0  # constant: the closed form below
        else:
            return _mse_scheduled(kappa, projections, lr.to(eigenvalues.dtype), k, momentum, continuous)
    t = torch.arange(steps + 1, dtype=eigenvalues.dtype)
    if continuous:
        return (torch.exp(-2.0 * lr * kappa[None, :] * t[:, None]) * projections[None, :]).sum(1) / k
    if momentum == 0.0:
        decay = (1.0 - lr * kappa)[None, :] ** (2 * t[:, None])
        return (decay * projections[None, :]).sum(1) / k
    return _mse_scheduled(kappa, projections, torch.full((steps,), lr, dtype=eigenvalues.dtype), k, momentum, False)


def _mse_scheduled(kappa, projections, lrs, k, momentum, continuous):
    """Mode by mode, update by update: ``u <- m u + kappa delta ; delta <- delta - lr_t u`` (amplitudes from 1)."""
    if continuous:
        elapsed = torch.cat([lrs.new_zeros(1), lrs.cumsum(0)])
        return (torch.exp(-2.0 * kappa[None, :] * elapsed[:, None]) * projections[None, :]).sum(1) / k
    d = torch.ones_like(kappa)
    u = torch.zeros_like(kappa)
    out = [projections.sum() / k]
    for lr in lrs.tolist():
        u = momentum * u + kappa * d
        d = d - lr * u
        out.append((d**2 * projections).sum() / k)
    return torch.stack(out)
