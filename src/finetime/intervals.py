"""Model-error intervals of a prediction made before training (``training_time[key]["interval"]``).

The 5-95% band of a prediction covers batch-order noise only. How far the real run lands from the prediction
depends on what the prediction can tell about itself: the loss gap of the ``adaptive`` predictor's linearity check
(the network moved to the linear model's weights at step T/15 against the linear model there). The margin of each
gap bin (of predictions without the check: ``--predictor linear``, SGD's weight decay; and of predictions fitted to
their first real steps, ``finetime.first_steps``) is the split-conformal
90% quantile of ``|log((TT_real + 1) / (TT_pred + 1))|`` over the benchmark suites, written by
``bench/online_bench.py --calibrate`` into ``finetime/online/calibration.json`` (``open_loop``); its held-out
coverage is in BENCHMARKS.md, section 8.
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["open_loop_margin", "model_interval", "gap_bin", "first_steps_bin", "prediction_bin"]


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


def model_interval(step: int | None, margin: float | None, steps: int) -> list | None:
    """``[low, high]`` around a predicted training time (``high`` ``None``: beyond the run's ``steps``)."""
    if step is None or margin is None:
        return None
    low = max(int(math.floor((step + 1) * math.exp(-margin) - 1)), 0)
    high = int(math.ceil((step + 1) * math.exp(margin) - 1))
    return [low, None if high > steps else high]
