"""Model-error intervals of a prediction made before training (``training_time[key]["interval"]``).

The 5-95% band of a prediction covers the linear model's batch-order noise only. How far the real run lands from the
prediction depends on what the prediction can tell about itself: the loss gap of the ``adaptive`` predictor's
linearity check (the network moved to the linear model's weights at step T/15 against the linear model there), and,
with minibatches, how much its simulated batch orders disagree (a wide band marks a run that is hard to predict).
The interval is that band, its log half-widths about the predicted step scaled by ``band_scale``, widened on each
side by the margin of the prediction's gap bin (of predictions without the check: ``--predictor linear``, SGD's
weight decay; and of predictions fitted to their first real steps, ``finetime.first_steps``). Full-batch GD has no
band: its interval is the step widened by the margin. The margins
are the split-conformal 90% quantiles of the log steps by which the scaled band misses the real training time
(``log(TT + 1)``, 0 inside it) over the benchmark suites, and ``band_scale`` the scale whose intervals are narrowest
at that coverage held out by group; both are written by ``bench/online_bench.py --calibrate`` into
``finetime/online/calibration.json`` (``open_loop``; a calibration without ``band_scale`` is the symmetric interval
about the step). Held-out coverage: BENCHMARKS.md, section 8.
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["open_loop_margin", "band_scale", "model_interval", "gap_bin", "first_steps_bin", "prediction_bin"]


@lru_cache(maxsize=1)
def _table() -> dict | None:
    from .online.refiner import load_calibration

    cal = load_calibration()
    return cal.open_loop if cal else None


def gap_bin(gap: float | None, bins=(0.01, 0.1)) -> str:
    """The calibration bin of a linearity-check loss gap (``None``: no check was made)."""
    if gap is None or not math.isfinite(gap):
        return "no check"
    lo = 0.0
    for hi in bins:
        if gap < hi:
            return f"{lo:g}-{hi:g}"
        lo = hi
    return f">= {lo:g}"


def first_steps_bin(batch_statistics: bool) -> str:
    """The calibration bin of predictions time-warped to their first real steps (``finetime.first_steps``): with
    BatchNorm batch statistics, or (frozen statistics) because the linearity check found the network far from
    linear."""
    return "first steps, " + ("batch statistics" if batch_statistics else "far from linear")


def prediction_bin(gap: float | None, first_steps: bool = False, batch_statistics: bool = False,
                   bins=(0.01, 0.1)) -> str:
    """The calibration bin of a prediction: fitted to its first real steps (``first_steps``; ``batch_statistics``:
    with ``--bn batch``), else its linearity check's gap bin."""
    return first_steps_bin(batch_statistics) if first_steps else gap_bin(gap, bins)


def open_loop_margin(gap: float | None, first_steps: bool = False, batch_statistics: bool = False) -> float | None:
    """The calibrated half-width (log steps) for a prediction with this linearity-check gap, or of one fitted to its
    first real steps (``first_steps``; ``batch_statistics``: with ``--bn batch``); ``None`` when finetime has no
    calibration for it."""
    t = _table()
    if not t:
        return None
    return t["margins"].get(prediction_bin(gap, first_steps, batch_statistics, tuple(t.get("gap_bins", (0.01, 0.1)))))


def band_scale() -> float:
    """How many times its log half-widths the 5-95% band over simulated batch orders is widened in the interval
    (the calibration's ``band_scale``; 0 without one: the interval is symmetric about the step)."""
    t = _table()
    return float(t.get("band_scale") or 0.0) if t else 0.0


def model_interval(step: int | None, margin: float | None, steps: int, band: tuple | None = None,
                   scale: float | None = None) -> list | None:
    """``[low, high]`` around a predicted training time (``high`` ``None``: beyond the run's ``steps``). ``band``:
    the prediction's ``(low, high)`` over simulated batch orders (``high`` ``None``: some orders never reach the
    threshold), its log half-widths about ``step`` scaled by ``scale`` (default: the calibration's ``band_scale``)
    before the ``margin`` is added on each side."""
    if step is None or margin is None:
        return None
    k = band_scale() if scale is None else scale
    below = above = 0.0  # the scaled band's log half-widths about the step
    if band is not None and k > 0:
        b_lo, b_hi = band
        if b_lo is not None:
            below = k * max(math.log((step + 1) / (b_lo + 1)), 0.0)
        if b_hi is None:
            above = math.inf
        else:
            above = k * max(math.log((b_hi + 1) / (step + 1)), 0.0)
    low = max(int(math.floor((step + 1) * math.exp(-(below + margin)) - 1)), 0)
    if math.isinf(above):
        return [low, None]
    high = int(math.ceil((step + 1) * math.exp(above + margin) - 1))
    return [low, None if high > steps else high]
