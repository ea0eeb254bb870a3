"""Refining a predicted loss curve with the losses a run has logged so far (pure functions over tensors).

The predicted curve ``p(t)``, ``t = 0..T``, is the prior. A real run that is ``a`` times faster than predicted (the
kernel is ``a`` times larger than the one at ``w0``, the usual way the linear model is off) follows ``p(a t)``. So the
refined curve is a **time-warp** of the prediction, with a posterior over the speed ``a``:

* prior ``log a ~ N(0, tau^2)`` (at ``a = 1`` the prediction is kept: with nothing observed the refiner is the
  open-loop prediction);
* likelihood from the log-loss residuals ``log y_i - log p(a t_i)`` of the observed points, with their scale
  profiled out (``(RSS/k)^(-k_eff/2)`` over the ``k`` observed steps after 0), so no noise level needs to be known and
  logged minibatch losses work as well as whole-training-set ones. The ``k`` steps count as ``k_eff = sqrt(k)``
  independent observations (``evidence_points``): consecutive losses of one run share their deviation from any warp
  of the prediction (the run changes speed, the prediction's shape is off), so they are far from independent, and
  counting them all made the posterior overconfident in the first tens of steps;
* up to the last observed step ``s`` the refined curve is the observed one; beyond it each warped curve is scaled to
  the level the run has reached (the geometric mean of the observed-to-warped ratios over the last
  ``LEVEL_POINTS`` observations; the warp gives the shape from there on);
* the speed seen so far carries on past ``s`` only in part: the rest of the run follows ``p(a s + a^rho (t - s))``,
  ``rho = SPEED_PERSISTENCE``. Where the kernel grows along the run (large effective learning rates, momentum 0.9,
  AdamW), the first tens of steps run slower than the prediction, which already holds the growth from its refreshes,
  and then the run speeds up; a whole-run warp (``rho = 1``) carried that early slowness to the end.

The prediction beyond its last step (needed where ``a > 1``) continues with the geometric decay of its last
quarter (an exponential tail).

The prior may be the prediction's simulated runs ``(R, T+1)``, one per batch order, rather than their mean: the
posterior is then over (run, speed) pairs, each run equally likely a priori, so the observations pick the runs the
real one resembles (at large learning rates the simulated runs spike and recover at different steps, and their
mean carries a smeared spike that none of them has).

Where the prediction (or one of its runs) diverges at step ``d``, its curve stands above the divergence line from
``d`` on and is warped like any other: warps under which the run would already have diverged lose their weight, and
the estimate is divergence when the curves that still diverge within the run weigh more than half. Without a
prediction (or one that diverged at once) the refiner falls back to the kernel-free fit of an exponential
``c + b exp(-k t)``. Where the run itself has diverged (non-finite, or above ``DIVERGENCE_FACTOR * loss[0]``), the
refined estimate is divergence.

``fit_exponential`` and ``fit_power_law`` (``c + b (t + s)^-d``) are also the kernel-free baselines of
``bench/online_bench.py``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from ..training_time import DIVERGENCE_FACTOR

__all__ = ["Refined", "extend_curve", "interpolate", "observed_curve", "warp_posterior", "fit_exponential", "fit_power_law", "refine_curve",
           "divergence_step", "weighted_quantile", "LOG_SPEEDS", "SPEED_PRIOR_SD", "SPEED_PERSISTENCE", "evidence_points"]

LOG_SPEEDS = torch.linspace(-3.0, 3.0, 301, dtype=torch.float64)
"""Grid of ``log a``: runs from 20x slower to 20x faster than predicted."""

def evidence_points(k: int) -> float:
    """How many independent observations ``k`` observed steps are worth to the warp posterior: ``sqrt(k)``. Chosen on
    the benchmark suite (``bench/online_bench.py``) among ``k``, ``k / 4``, ``1 + log k``, ``min(k, 3)`` and
    ``sqrt(k)``, each with prior sds 0.25 / 0.5 / 1 (``SPEED_PRIOR_SD`` stays 0.5): selected on all dataset groups but
    one and scored on the one left out, a rule that discounts ``k`` was picked for every group, and the pooled
    held-out p95 fell at every observed fraction (BENCHMARKS.md, section 8)."""
    return math.sqrt(k)


SPEED_PRIOR_SD = 0.5
"""``tau``, the prior's standard deviation of ``log a``. Chosen on the benchmark suite among 0.5, 1 and 2 (the
intervals are calibrated after this choice, on held-out cells; ``bench/online_bench.py``)."""

SPEED_PERSISTENCE = 0.0
"""``rho``: how much of the observed speed ``a`` carries on past the last observation (the rest of the run goes at
``a^rho`` times the prediction's speed; 1 is a warp of the whole run, 0 the prediction's own speed from the level
reached). Chosen with ``SPEED_PRIOR_SD`` by leave-one-group-out on the benchmark suite among 0, 0.25, 0.5, 0.75 and
1 (``bench/online_bench.py``, BENCHMARKS.md section 8)."""

_TINY = 1e-12

LEVEL_POINTS = 3
"""How many of the last observations set the level the refined curves go on from (geometric mean of the ratios
of observed to warped losses over them). Chosen with the ensemble prior by leave-one-group-out on the benchmark
suite among 1, 3, 5 and 10 (five of the eight groups picked 3, two 1, one 5; ``bench/online_bench.py``,
BENCHMARKS.md section 8)."""


@dataclasses.dataclass
class Refined:
    """Refined loss curves ``(K, H+1)`` with posterior weights ``(K,)`` (sum 1); ``method`` names how they were
    obtained (``"prior"``, ``"warp"``, ``"exponential"``, ``"diverged"``); ``speed`` is the posterior-median warp
    factor ``a`` (``None`` without a warp); ``diverged_weight`` the posterior weight of curves that diverge (their
    values are NaN from the divergence on)."""

    curves: torch.Tensor
    weights: torch.Tensor
    method: str
    speed: float | None = None
    diverged_weight: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.method == "diverged"

    def median_curve(self) -> torch.Tensor:
        """Pointwise weighted median over the curves."""
        order = torch.argsort(self.curves, dim=0)
        cw = torch.cumsum(self.weights[order], dim=0)
        idx = torch.searchsorted(cw.T.contiguous(), torch.full((cw.shape[1], 1), 0.5, dtype=cw.dtype)).squeeze(1)
        idx = idx.clamp_max(self.curves.shape[0] - 1)
        rows = order.gather(0, idx.unsqueeze(0)).squeeze(0)
        return self.curves[rows, torch.arange(self.curves.shape[1])]


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of ``values`` under ``weights`` (the smallest value whose cumulative weight reaches it)."""
    order = torch.argsort(values)
    cw = torch.cumsum(weights[order], 0)
    i = int(torch.searchsorted(cw, torch.tensor([q * float(cw[-1])], dtype=cw.dtype)).clamp_max(len(cw) - 1))
    return float(values[order][i])


def divergence_step(curve: torch.Tensor, loss0: float | None = None) -> int | None:
    """First index where ``curve`` is non-finite or above ``DIVERGENCE_FACTOR * loss0`` (default ``curve[0]``)."""
    curve = torch.as_tensor(curve, dtype=torch.float64)
    l0 = float(curve[0]) if loss0 is None else loss0
    bad = ~torch.isfinite(curve) | (curve > DIVERGENCE_FACTOR * l0)
    hit = torch.nonzero(bad)
    return int(hit[0]) if len(hit) else None


def extend_curve(curve: torch.Tensor, horizon: int) -> torch.Tensor:
    """``curve`` (``T+1`` points) continued to ``horizon + 1`` points with the geometric decay of the differences of
    its last quarter (flat where it no longer falls)."""
    p = torch.as_tensor(curve, dtype=torch.float64)
    T = p.shape[0] - 1
    if horizon <= T:
        return p[: horizon + 1].clone()
    d = torch.diff(p)
    tail = d[-max(T // 4, 2):]
    den = float((tail[:-1] ** 2).sum())
    r = float((tail[1:] * tail[:-1]).sum()) / den if den > 0 else 0.0
    r = min(max(r, 0.0), 0.995)
    n = torch.arange(1, horizon - T + 1, dtype=torch.float64)
    last = float(d[-1]) if T > 0 else 0.0
    if last < 0 and r > 0:
        ext = p[-1] + last * r * (1 - r ** n) / (1 - r)
    else:
        ext = p[-1].expand(n.shape[0]).clone()
    return torch.cat([p, ext])


def interpolate(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``p`` (values at ``0..len-1``) at real positions ``x`` (clamped to the ends)."""
    return _pairs_at(p.unsqueeze(0), torch.zeros(1, dtype=torch.long), x.reshape(1, -1)).reshape(x.shape)


def observed_curve(t: torch.Tensor, y: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The observed losses at the integer steps ``at`` (linear between observations, the first one before it)."""
    order = torch.argsort(t)
    t, y = t[order], y[order]
    j = torch.searchsorted(t, at).clamp(1, max(t.shape[0] - 1, 1))
    if t.shape[0] == 1:
        return y[0].expand(at.shape[0]).clone()
    t0, t1, y0, y1 = t[j - 1], t[j], y[j - 1], y[j]
    w = ((at - t0) / (t1 - t0).clamp_min(_TINY)).clamp(0, 1)
    return y0 * (1 - w) + y1 * w


ENSEMBLE_LOG_SPEED_STEP = 0.08
"""Step of the speed grid (in ``log a``) for an ensemble prior: every 4th point of ``LOG_SPEEDS`` (0.02); the runs'
own spread fills in between."""

ENSEMBLE_BUDGET = 2_000_000
"""Most values (curves x steps, or x observations) an ensemble prior's posterior may hold: runs are thinned evenly
to stay under it (``_ensemble_grid``)."""

PRUNE_MASS = 1e-6
"""An ensemble's (run, speed) pairs of least posterior weight, together at most this much, are dropped before their
curves are built."""


def _ensemble_grid(runs: int, horizon: int, observed: int, log_speeds: torch.Tensor) -> tuple[int, torch.Tensor]:
    """``(runs kept, log speeds)`` for an ensemble of ``runs`` curves to ``horizon`` with ``observed`` observations:
    the grid thinned to a step of ``ENSEMBLE_LOG_SPEED_STEP`` and as many runs as ``ENSEMBLE_BUDGET`` allows (at
    least one)."""
    K = log_speeds.shape[0]
    step = float(log_speeds[1] - log_speeds[0]) if K > 1 else math.inf
    grid = log_speeds[::max(1, int(round(ENSEMBLE_LOG_SPEED_STEP / step)))]
    keep = max(1, min(runs, ENSEMBLE_BUDGET // (grid.shape[0] * max(horizon + 1, observed))))
    return keep, grid


def _pairs_at(p: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of the rows ``rows`` ``(P,)`` of ``p`` ``(R, L)`` at positions ``x`` ``(P, n)``."""
    L = p.shape[1]
    x = x.clamp(0, L - 1)
    if L == 1:
        return p[rows, :1].expand(-1, x.shape[1]).clone()
    lo = x.floor().long().clamp_max(L - 2)
    frac = x - lo
    rr = rows[:, None]
    return p[rr, lo] * (1 - frac) + p[rr, lo + 1] * frac


def warp_posterior(prior: torch.Tensor, steps: torch.Tensor, losses: torch.Tensor, horizon: int, *,
                   tau: float = SPEED_PRIOR_SD, log_speeds: torch.Tensor = LOG_SPEEDS,
                   evidence: Callable[[int], float] = evidence_points,
                   persistence: float = SPEED_PERSISTENCE, level_points: int = LEVEL_POINTS) -> Refined:
    """Posterior over the time-warps ``p(a t)`` of the ``prior`` curve given observed ``(steps, losses)``; the
    curves run to ``horizon``, are scaled to the level of the last observations (``level_points``) at the last
    one ``s`` and go on from there at ``a^persistence`` times the prediction's speed (see the module docstring).

    ``prior`` may be one curve ``(T+1,)`` or an ensemble ``(R, T+1)`` (the simulated runs of a prediction, one per
    batch order): then the posterior is over (run, speed) pairs, each run equally likely a priori, and the
    observations weigh the runs as well as the speeds (on a coarser speed grid, ``ENSEMBLE_LOG_SPEED_STEP``; pairs
    of negligible weight, ``PRUNE_MASS``, dropped)."""
    prior = torch.as_tensor(prior, dtype=torch.float64)
    if prior.dim() == 1:
        prior = prior.unsqueeze(0)
    t = torch.as_tensor(steps, dtype=torch.float64)
    y = torch.as_tensor(losses, dtype=torch.float64)
    R = prior.shape[0]
    if R > 1:
        keep, log_speeds = _ensemble_grid(R, horizon, t.shape[0], log_speeds)
        if keep < R:
            prior = prior[torch.linspace(0, R - 1, keep).round().long()]
            R = keep
    speeds = log_speeds.exp()
    K = speeds.shape[0]
    reach = int(math.ceil(horizon * float(speeds.max()))) + 2
    p = torch.stack([extend_curve(row, reach) for row in prior]).clamp_min(_TINY)  # (R, reach+1)
    grid = torch.arange(horizon + 1, dtype=torch.float64)
    log_post = (-0.5 * (log_speeds / tau) ** 2).expand(R, K).clone()
    observed = t.shape[0] > 0 and float(t.max()) > 0
    if observed:
        every = torch.arange(R).repeat_interleave(K)
        q = _pairs_at(p, every, speeds.repeat(R)[:, None] * t[None, :]).reshape(R, K, -1)  # at the observed steps
        r = torch.log(y.clamp_min(_TINY)) - torch.log(q)
        informative = t > 0  # step 0 is the shared starting point, not evidence about the speed
        k = int(informative.sum())
        rss = (r[..., informative] ** 2).sum(-1)
        if k > 0:
            log_post = log_post - 0.5 * evidence(k) * torch.log(rss / k + 1e-6)
        tail = torch.argsort(t)[-level_points:]
        tail = tail[t[tail] > 0] if bool((t[tail] > 0).any()) else tail
        ratio = r[..., tail].mean(-1).exp().reshape(-1)  # per pair: the level over the last few observations
    w = torch.softmax(log_post.reshape(-1), 0)
    pairs = torch.arange(R * K)
    if R > 1:  # drop the pairs of least weight, PRUNE_MASS together at most
        order = torch.argsort(w)
        pairs = torch.sort(order[torch.cumsum(w[order], 0) > PRUNE_MASS]).values
        w = w[pairs] / w[pairs].sum()
    rows, ks = pairs // K, pairs % K
    a = speeds[ks][:, None]
    if observed:
        s = t.max()
        after = grid > s
        future = _pairs_at(p, rows, a * s + a ** persistence * (grid[None, after] - s))
        seen = observed_curve(t, y, grid[~after])
        curves = torch.cat([seen.expand(pairs.shape[0], -1), future * ratio[pairs][:, None]], -1)
    else:
        curves = _pairs_at(p, rows, a * grid[None, :])
    med = weighted_quantile(speeds[ks], w, 0.5)
    return Refined(curves, w, "warp" if observed else "prior", med)


def _two_param_fits(y: torch.Tensor, basis: torch.Tensor):
    """Least squares ``y ~ c + b z`` for each row ``z`` of ``basis`` (``(K, m)``), with ``c >= 0``. Returns
    ``(c, b, rss)``."""
    zm = basis.mean(1)
    ym = y.mean()
    zc = basis - zm[:, None]
    var = (zc ** 2).sum(1).clamp_min(_TINY)
    b = (zc * (y - ym)[None, :]).sum(1) / var
    c = ym - b * zm
    neg = c < 0
    b0 = (basis * y[None, :]).sum(1) / (basis ** 2).sum(1).clamp_min(_TINY)
    b = torch.where(neg, b0, b)
    c = torch.where(neg, torch.zeros_like(c), c)
    rss = ((c[:, None] + b[:, None] * basis - y[None, :]) ** 2).sum(1)
    return c, b, rss


def fit_exponential(steps: torch.Tensor, losses: torch.Tensor, horizon: int) -> torch.Tensor:
    """Kernel-free fit ``c + b exp(-k t)`` (``c >= 0``; ``k`` on a log grid 1e-4..2) to the observations; the
    fitted curve at ``0..horizon``."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    y = torch.as_tensor(losses, dtype=torch.float64)
    ks = torch.logspace(-4, math.log10(2.0), 200, dtype=torch.float64)
    c, b, rss = _two_param_fits(y, torch.exp(-ks[:, None] * t[None, :]))
    i = int(torch.argmin(rss))
    grid = torch.arange(horizon + 1, dtype=torch.float64)
    return c[i] + b[i] * torch.exp(-ks[i] * grid)


def fit_power_law(steps: torch.Tensor, losses: torch.Tensor, horizon: int) -> torch.Tensor:
    """Kernel-free fit ``c + b (t + s)^-d`` (``c >= 0``; ``d`` on a log grid 0.05..5, ``s`` in 1, 3, 10, 30)."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    y = torch.as_tensor(losses, dtype=torch.float64)
    ds = torch.logspace(math.log10(0.05), math.log10(5.0), 100, dtype=torch.float64)
    ss = torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=torch.float64)
    d, s = torch.meshgrid(ds, ss, indexing="ij")
    d, s = d.reshape(-1), s.reshape(-1)
    c, b, rss = _two_param_fits(y, (t[None, :] + s[:, None]) ** (-d[:, None]))
    i = int(torch.argmin(rss))
    grid = torch.arange(horizon + 1, dtype=torch.float64)
    return c[i] + b[i] * (grid + s[i]) ** (-d[i])


MIN_POINTS_FOR_FIT = 6
"""Observed points the kernel-free fallback needs."""


def _point(curve: torch.Tensor, method: str) -> Refined:
    return Refined(curve.unsqueeze(0), torch.ones(1, dtype=torch.float64), method)


def refine_curve(prior: torch.Tensor | None, steps: torch.Tensor, losses: torch.Tensor, horizon: int, *,
                 tau: float = SPEED_PRIOR_SD, evidence: Callable[[int], float] = evidence_points,
                 persistence: float = SPEED_PERSISTENCE, level_points: int = LEVEL_POINTS) -> Refined:
    """The refined curves to ``horizon`` from a predicted curve ``(T+1,)`` or ensemble of simulated runs
    ``(R, T+1)`` (``None`` or diverged: no usable prior) and the observations so far (``steps`` ascending,
    ``steps[0] == 0`` when the starting loss is known)."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    y = torch.as_tensor(losses, dtype=torch.float64)
    if prior is not None:
        prior = torch.as_tensor(prior, dtype=torch.float64)
        if prior.dim() == 1:
            prior = prior.unsqueeze(0)
    loss0 = float(y[0]) if t.numel() and float(t[0]) == 0 else (float(prior[0, 0]) if prior is not None else None)
    nan = torch.full((horizon + 1,), math.nan, dtype=torch.float64)
    if y.numel() and divergence_step(y, loss0) is not None:
        return _point(nan, "diverged")
    if prior is not None:
        d = [divergence_step(row) for row in prior]
        if all(x is None for x in d):
            return warp_posterior(prior, t, y, horizon, tau=tau, evidence=evidence, persistence=persistence,
                                  level_points=level_points)
        if any(x is None or x > 1 for x in d):
            return _diverging_warp(prior, d, t, y, horizon, tau, evidence, persistence, level_points)
    if t.numel() >= MIN_POINTS_FOR_FIT:
        return _point(fit_exponential(t, y, horizon), "exponential")
    if prior is None:
        raise ValueError(f"no prediction to refine and {t.numel()} observed losses: the kernel-free fit needs "
                         f"{MIN_POINTS_FOR_FIT}")
    return _point(nan, "diverged")  # the prediction diverged at once and the run has not yet said otherwise


def _diverging_warp(prior: torch.Tensor, d: list, t, y, horizon: int, tau: float,
                    evidence: Callable[[int], float] = evidence_points,
                    persistence: float = SPEED_PERSISTENCE, level_points: int = LEVEL_POINTS) -> Refined:
    """Warp posterior of a prediction (``(R, T+1)``) whose runs diverge at steps ``d`` (``None``: that run does not):
    after its ``d`` a run stands above the divergence line, so warps under which the real run would already have
    diverged are unlikely; each refined curve that crosses the line diverges there (NaN after it), and the estimate
    is divergence when those curves weigh more than half."""
    line = DIVERGENCE_FACTOR * float(prior[0, 0])
    p = prior.clone()
    for i, at in enumerate(d):
        if at is not None:
            p[i, max(at, 1):] = 2 * line
    r = warp_posterior(p, t, y, horizon, tau=tau, evidence=evidence, persistence=persistence,
                       level_points=level_points)
    over = r.curves > line
    crossed = torch.cumsum(over.long(), 1) > 0
    curves = torch.where(crossed, torch.full_like(r.curves, math.nan), r.curves)
    w_div = float(r.weights[crossed[:, -1]].sum())
    return Refined(curves, r.weights, "diverged" if w_div > 0.5 else "warp", r.speed, w_div)
