"""Spectral tools on a kernel: top eigenvalue, loss sharpness and the stable learning-rate bound."""

from __future__ import annotations

import torch

from .losses import Loss, loss_spec

__all__ = ["top_eigenvalue", "sharpness", "max_stable_lr", "fit_power_law"]


def top_eigenvalue(theta: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric PSD kernel."""
    return float(torch.linalg.eigvalsh(theta.double())[-1])


def _loss_hessian_sqrt(f: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Block-diagonal square root of the per-sample loss Hessian in f, ``(N, C, C)``."""
    n, c = f.shape
    if loss_spec(loss).kind is Loss.MSE:
        return torch.eye(c, dtype=f.dtype).expand(n, c, c) * (2.0 / c) ** 0.5
    p = torch.softmax(f, -1)
    h = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    ev, vec = torch.linalg.eigh(h)
    return vec @ torch.diag_embed(ev.clamp_min(0).sqrt()) @ vec.transpose(-1, -2)


def sharpness(theta: torch.Tensor, f: torch.Tensor, loss: Loss) -> float:
    """Top eigenvalue of the linearized model's loss Hessian in weight space, ``lambda_max(H^1/2 Theta H^1/2) / N``.

    ``H`` is the per-sample Hessian of the loss in the outputs at ``f`` (``(N, C)``); the mean over ``N`` samples gives
    the ``1/N``. Gradient descent on this quadratic model is stable for ``lr < 2 (1 + momentum) / sharpness``.
    """
    n, c = f.shape
    hs = _loss_hessian_sqrt(f.double(), loss)
    blk = torch.block_diag(*hs) if n * c <= 4096 else None
    if blk is not None:
        m = blk @ theta.double() @ blk
        return float(torch.linalg.eigvalsh(m)[-1]) / n
    # Large kernels: power iteration on v -> H^1/2 Theta H^1/2 v.
    v = torch.randn(n * c, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam = 0.0
    for _ in range(200):
        w = torch.einsum("nij,nj->ni", hs, v.view(n, c)).reshape(-1)
        w = theta.double() @ w
        w = torch.einsum("nij,nj->ni", hs, w.view(n, c)).reshape(-1)
        lam = float(w.norm())
        v = w / lam
    return lam / n


def max_stable_lr(sharpness_value: float, momentum: float = 0.0) -> float:
    """Largest stable learning rate of heavy-ball GD on a quadratic of curvature ``sharpness_value``."""
    return 2.0 * (1.0 + momentum) / sharpness_value


def fit_power_law(values: torch.Tensor, k_min: int = 2, k_max: int | None = None) -> tuple[float, float]:
    """Least-squares fit of ``values[k-1] = c * k^(-s)`` on ranks ``k_min..k_max`` in log-log space.

    ``values`` sorted descending (eigenvalues, or residual projections). Returns ``(c, s)``. Non-positive values
    are left out of the fit.
    """
    v = values.double().flatten()
    k_max = min(k_max or v.numel(), v.numel())
    ks = torch.arange(1, v.numel() + 1, dtype=torch.float64)
    sel = (ks >= k_min) & (ks <= k_max) & (v > 0)
    if int(sel.sum()) < 2:
        raise ValueError("need at least two positive values to fit a power law")
    x, y = ks[sel].log(), v[sel].log()
    a = torch.stack([torch.ones_like(x), x], 1)
    coef = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
    return float(coef[0].exp()), float(-coef[1])
