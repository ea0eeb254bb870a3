"""The few numbers a training loop's logger gets from an ``Estimate`` (shared by the HF and Lightning callbacks)."""

from __future__ import annotations

from .refiner import Estimate

__all__ = ["log_values"]


def log_values(estimate: Estimate, key: str | None = None) -> dict[str, float]:
    """``finetime/remaining_steps``, ``finetime/eta_seconds`` and its 90% interval (``..._low``, ``..._high``) for
    the threshold ``key`` (default: the first one), plus ``finetime/speed`` and ``finetime/diverged``. Values that
    are unknown (not reached, diverged, no step time) are left out."""
    e = estimate.thresholds[key] if key else next(iter(estimate.thresholds.values()))
    out = {"finetime/diverged": float(estimate.diverged)}
    for name, v in (("remaining_steps", e.remaining_steps), ("eta_seconds", e.remaining_seconds),
                    ("eta_seconds_low", e.remaining_seconds_low), ("eta_seconds_high", e.remaining_seconds_high),
                    ("step", e.step), ("speed", estimate.speed)):
        if v is not None:
            out[f"finetime/{name}"] = float(v)
    return out
