"""Dataset-size extrapolation (paper, section 4 "Larger datasets"): training time on N samples from a subset N' < N.

The mean loss is driven by ``Theta / N``, whose eigenvalues ``mu_k = lambda_k / N`` converge as N grows, and the
residual projections ``q_k = (v_k . delta_0)^2 / N`` likewise. Both follow power laws ``c k^-s`` in the rank. From the
subset's kernel: the measured ``mu_k, q_k`` are kept for the well-resolved ranks (up to ``k_fit``), power laws fitted
on the middle ranks supply the rest up to ``N * C``, and the MSE closed form gives the loss curve at N:

    L_t = (1/C) sum_k (1 - 2 lr mu_k / C)^(2t) q_k

For cross-entropy, which has no closed form, the training time at N is the subset's simulated CE time scaled by the
ratio of the MSE times at N and N' (a heuristic, labelled as such in the output).
"""

from __future__ import annotations

import dataclasses

import torch

from .dynamics.closed_form import mse_curve, spectral_projections
from .spectrum import fit_power_law

__all__ = ["ExtrapolatedSpectrum", "extrapolate_spectrum", "mse_loss_at"]


@dataclasses.dataclass(frozen=True)
class ExtrapolatedSpectrum:
    """Normalized spectrum ``mu`` (``Theta / N`` eigenvalues) and projections ``q`` for ``n`` samples x ``c`` outputs."""

    mu: torch.Tensor
    q: torch.Tensor
    n: int
    c: int
    eig_power: tuple[float, float]  # (c, s) of mu_k = c k^-s
    proj_power: tuple[float, float]  # (d, r) of q_k = d k^-r
    k_fit: int


def _fit_ranks(k: int) -> tuple[int, int]:
    return max(2, k // 50), max(4, k // 3)


def _binned_power_law(values: torch.Tensor, lo: int, hi: int, bins: int = 12) -> tuple[float, float]:
    """Power law through the means of ``values`` over geometric rank bins (projections are noisy rank by rank)."""
    edges = torch.unique(torch.logspace(torch.log10(torch.tensor(float(lo))), torch.log10(torch.tensor(float(hi + 1))),
                                        bins + 1).round().long())
    ranks, means = [], []
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        seg = values[a - 1 : b - 1]
        if seg.numel() and float(seg.mean()) > 0:
            ranks.append((a * (b - 1)) ** 0.5)
            means.append(float(seg.mean()))
    x = torch.log(torch.tensor(ranks, dtype=torch.float64))
    yv = torch.log(torch.tensor(means, dtype=torch.float64))
    a_mat = torch.stack([torch.ones_like(x), x], 1)
    coef = torch.linalg.lstsq(a_mat, yv.unsqueeze(1)).solution.squeeze(1)
    return float(coef[0].exp()), float(-coef[1])


def extrapolate_spectrum(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, n_target: int, *,
                         conserve: bool = False, spectrum: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> ExtrapolatedSpectrum:
    """Spectrum at ``n_target`` samples from the kernel of ``n' = f0.shape[0]`` samples (MSE residuals).

    ``conserve``: rescale the fitted tail (the ranks past the kept ones) so that ``sum mu`` and ``sum q`` stay the
    subset's. Both sums are per-sample means (the kernel's trace over N, the squared residual over N) whose
    expectation does not depend on N; power-law tails extended to ``n_target * C`` ranks otherwise add mass that is
    not there (``--kernel-samples`` uses it; ``--extrapolate-to`` keeps the plain fits it was benchmarked with).
    ``spectrum``: ``spectral_projections(theta, f0, y)`` when the caller has it already (one eigendecomposition)."""
    n, c = f0.shape
    lam, proj = spectrum if spectrum is not None else spectral_projections(theta.double(), f0.double(), y)
    mu, q = lam.clamp_min(0) / n, proj / n
    lo, hi = _fit_ranks(mu.numel())
    ce, se = fit_power_law(mu, lo, hi)
    d, r = _binned_power_law(q, lo, hi)
    k_total = n_target * c
    ks = torch.arange(1, k_total + 1, dtype=torch.float64)
    mu_n = ce * ks ** (-se)
    q_n = d * ks ** (-r)
    keep = min(hi, mu.numel(), k_total)
    mu_n[:keep] = mu[:keep]
    q_n[:keep] = q[:keep]
    if conserve and k_total > keep:
        mu_n[keep:] *= mu[keep:].sum() / mu_n[keep:].sum().clamp_min(1e-300)
        q_n[keep:] *= q[keep:].sum() / q_n[keep:].sum().clamp_min(1e-300)
    return ExtrapolatedSpectrum(mu_n, q_n, n_target, c, (ce, se), (d, r), keep)


def mse_loss_at(spec: ExtrapolatedSpectrum, lr: float | torch.Tensor, steps: int,
                momentum: float = 0.0) -> torch.Tensor:
    """MSE loss curve ``(steps + 1,)`` of full-batch GD on ``spec.n`` samples (``lr``: a rate or a per-update table)."""
    k = spec.n * spec.c
    return mse_curve(spec.mu * spec.n, spec.q * spec.n, lr, steps, n_outputs=k, momentum=momentum)


def size_time_map(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, n_target: int, lr: float | torch.Tensor,
                  steps: int, momentum: float = 0.0) -> torch.Tensor:
    """Step ``s = 0..steps`` of a run on ``n_target`` samples -> the (fractional) step of the same run on this
    kernel's ``n`` samples that has made the same progress: the MSE closed form of full-batch GD on this spectrum and
    on the spectrum extrapolated to ``n_target`` (mass-conserving tails), each relative to its start, matched level by
    level. Shape ``(steps + 1,)``, nondecreasing, ``map[0] = 0``, capped at ``steps``."""
    lam, proj = spectral_projections(theta.double(), f0.double(), y)
    here = mse_curve(lam, proj, lr, steps, momentum=momentum)
    spec = extrapolate_spectrum(theta, f0, y, n_target, conserve=True, spectrum=(lam, proj))
    there = mse_loss_at(spec, lr, steps, momentum)
    return progress_map(here, there)


def progress_map(here: torch.Tensor, there: torch.Tensor) -> torch.Tensor:
    """For each step ``s`` of curve ``there``, the fractional step at which ``here`` first reaches ``there``'s
    relative level ``there[s] / there[0]`` (linear between steps; running minima, so rising stretches of an
    oscillating or unstable curve count as flat; ``len(here) - 1`` where ``here`` never gets that low)."""
    steps = here.numel() - 1
    h = torch.cummin(here.double() / here[0].double().clamp_min(1e-300), 0).values
    g = torch.cummin(there.double() / there[0].double().clamp_min(1e-300), 0).values
    j = torch.searchsorted(-h, -g)  # first step where here <= the level (steps + 1: never)
    prev = h[(j - 1).clamp(0, steps)]
    nxt = h[j.clamp(max=steps)]
    drop = prev - nxt
    frac = torch.where(drop > 0, (prev - g) / drop.clamp_min(1e-300), torch.ones_like(g))
    out = torch.where(j == 0, torch.zeros_like(g), (j - 1).double() + frac)
    out = torch.where(j > steps, torch.full_like(g, float(steps)), out)
    return torch.cummax(out, 0).values


def warp_curves(curves: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``curves (R, T'+1)`` read at fractional steps ``at (S+1,)``, linear between steps -> ``(R, S+1)``; NaN where
    either neighbouring step is NaN (a diverged run stays diverged)."""
    t = at.to(torch.float64).clamp(0, curves.shape[-1] - 1)
    lo = t.floor().long()
    hi = torch.clamp(lo + 1, max=curves.shape[-1] - 1)
    w = (t - lo).to(curves.dtype)
    a, b = curves[..., lo], curves[..., hi]
    out = a + w * (b - a)
    return torch.where(w == 0, a, out)
