"""Spectral tools on a kernel: top eigenvalue, loss sharpness and the stable learning-rate bound."""

from __future__ import annotations

import math

import torch

from .losses import Loss, loss_spec

__all__ = ["top_eigenvalue", "sharpness", "max_stable_lr", "fit_power_law", "capped_kernel"]


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


CAP_BATCHES = 16
"""Random batches over which a minibatch run's sharpness is averaged (``capped_kernel``)."""

CAP_RANK = 256
"""At most this many of the kernel's top eigenvalues are clipped (``capped_kernel``)."""


def _batch_sharpness(a: torch.Tensor, lam: torch.Tensor, clip: float, rows: list[torch.Tensor],
                     full: list[torch.Tensor], sizes: list[int]) -> float:
    """Mean over the batches (``rows``: their output rows) of ``lambda_max(H_B^1/2 Theta_c H_B^1/2) / |B|`` for the
    kernel ``Theta_c = U min(lam, clip) U^T`` (``a = H^1/2 U``; ``full``: each batch's matrix for the unclipped
    kernel)."""
    top = lam > clip
    out = 0.0
    for r, m, b in zip(rows, full, sizes):
        if bool(top.any()):
            at = a[r][:, top]
            m = m - (at * (lam[top] - clip)) @ at.T
        out += _top(m) / b
    return out / len(rows)


def _top(m: torch.Tensor) -> float:
    """The top eigenvalue of a symmetric matrix (LOBPCG where a full eigendecomposition would be slow)."""
    if m.shape[0] <= 1024:
        return float(torch.linalg.eigvalsh(m)[-1])
    x = torch.randn(m.shape[0], 1, dtype=m.dtype, generator=torch.Generator().manual_seed(0)).to(m.device)
    return float(torch.lobpcg(m, k=1, X=x, largest=True, tol=1e-6)[0][0])


def capped_kernel(theta: torch.Tensor, f: torch.Tensor, loss: Loss, limit: float, batch_size: int | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """``theta`` with its top eigenvalues clipped at the level where the sharpness is ``limit``; and the sharpness
    before, over ``limit``. ``theta`` itself where that ratio is at most 1.

    The sharpness is that of the linearized model's loss at the outputs ``f`` (``(N, C)``): the top eigenvalue of
    ``H^1/2 Theta H^1/2 / N`` for full batches (``batch_size`` ``None`` or ``>= N``), else its mean over
    ``CAP_BATCHES`` random batches of ``batch_size`` samples of the batch's own ``lambda_max(H_B^1/2 Theta_BB H_B^1/2)
    / |B|``. A network whose sharpness grows past the stable limit ``2 (1 + momentum) / lr`` does not leave it:
    training holds it there (the edge of stability; Cohen et al. 2021, and for minibatches the batch sharpness,
    Andreyev and Beneventano 2024), where the linearized model with a kernel past it would oscillate and blow up.
    At most ``CAP_RANK`` eigenvalues are clipped. Outputs that are not finite (runs that blew up) have no sharpness:
    ``theta`` itself and a ratio of NaN."""
    n, c = f.shape
    if not bool(torch.isfinite(f).all()):
        return theta, math.nan
    nc = n * c
    th = theta.double()
    hs = _loss_hessian_sqrt(f.double(), loss)
    raw, u = torch.linalg.eigh(th)
    lam = raw.clamp_min(0)
    a = torch.einsum("nij,njk->nik", hs, u.view(n, c, nc)).reshape(nc, nc)  # H^1/2 U
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if batch_size is None or batch_size >= n:
        samples = [torch.arange(n)]
    else:
        samples = [torch.randperm(n, generator=gen)[:batch_size] for _ in range(CAP_BATCHES)]
    rows = [(s.unsqueeze(-1) * c + torch.arange(c)).reshape(-1).to(theta.device) for s in samples]
    full = [(a[r] * lam) @ a[r].T for r in rows]
    sizes = [s.numel() for s in samples]
    sharp = lambda clip: _batch_sharpness(a, lam, clip, rows, full, sizes)  # noqa: E731
    ratio = sharp(float(lam[-1])) / limit
    if ratio <= 1.0:
        return theta, ratio
    k = min(CAP_RANK, nc)
    hi, lo = float(lam[-1]), float(lam[-k])
    if sharp(lo) > limit:  # clipping CAP_RANK eigenvalues is not enough: clip them all at the lowest
        hi = lo
    else:
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if sharp(mid) > limit:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-2 * hi:
                break
        hi = lo
    top = raw > hi
    capped = th - (u[:, top] * (raw[top] - hi)) @ u[:, top].T
    return capped.to(theta.dtype), ratio
