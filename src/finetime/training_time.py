"""Training time read off loss curves (the definitions in the README, "Definitions").

* Absolute target: ``TT(target)`` = first ``t`` with ``loss[t] <= target``.
* Normalized threshold (paper, section 5): ``TT_eps`` = first ``t`` with
  ``loss[t] <= loss[T] + eps * (loss[0] - loss[T])``, each curve with its own ``loss[0]`` and ``loss[T]``.
* Not reached within ``T`` (or diverged): ``None``.

Works on one curve ``(T+1,)`` or an ensemble ``(R, T+1)``; ensembles are summarized by the median over runs and a
5-95% band.
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["Threshold", "steps_to_threshold", "first_crossing", "normalized_threshold", "steps_to_target", "steps_to_epsilon", "TimeEstimate",
           "summarize_times", "relative_error", "DEFAULT_EPSILONS", "DIVERGENCE_FACTOR"]

DEFAULT_EPSILONS = (0.01, 0.1, 0.4)

DIVERGENCE_FACTOR = 10.0
"""A run has diverged once its loss is non-finite or above ``DIVERGENCE_FACTOR * loss[0]``."""


def first_crossing(curves: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """First index where ``curves <= threshold`` along the last axis; ``-1`` where never (NaN never crosses)."""
    curves = torch.as_tensor(curves)
    thr = torch.as_tensor(threshold, dtype=curves.dtype)
    if thr.dim() < curves.dim():
        thr = thr.unsqueeze(-1)
    hit = curves <= thr
    any_hit = hit.any(-1)
    first = hit.double().argmax(-1)
    return torch.where(any_hit, first, torch.full_like(first, -1))


def normalized_threshold(curves: torch.Tensor, eps: float) -> torch.Tensor:
    """``loss[T] + eps * (loss[0] - loss[T])`` per curve."""
    l0, lt = curves[..., 0], curves[..., -1]
    return lt + eps * (l0 - lt)


def steps_to_target(curves: torch.Tensor, target: float) -> torch.Tensor:
    """Absolute-target training time per curve (``-1``: not reached)."""
    return first_crossing(curves, target)


def steps_to_epsilon(curves: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalized-threshold training time per curve (``-1``: not reached or the curve diverged)."""
    thr = normalized_threshold(curves, eps)
    out = first_crossing(curves, thr)
    bad = ~torch.isfinite(curves[..., -1]) | ~torch.isfinite(curves[..., 0])
    return torch.where(bad, torch.full_like(out, -1), out)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A training-time threshold: the normalized ``eps`` of the paper or an absolute ``target`` loss.
    ``key`` (``"eps=0.1"``, ``"target=0.5"``) names it in results."""

    kind: str  # "eps" | "target"
    value: float

    @classmethod
    def eps(cls, value: float) -> "Threshold":
        return cls("eps", float(value))

    @classmethod
    def target(cls, value: float) -> "Threshold":
        return cls("target", float(value))

    @property
    def key(self) -> str:
        return f"{self.kind}={self.value:g}"

    @classmethod
    def parse(cls, key: str) -> "Threshold":
        kind, _, value = key.partition("=")
        if kind not in ("eps", "target") or not value:
            raise ValueError(f"not a threshold key: {key!r}")
        return cls(kind, float(value))


def steps_to_threshold(curves: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Training time per curve for a ``Threshold`` (``-1``: not reached)."""
    if threshold.kind == "eps":
        return steps_to_epsilon(curves, threshold.value)
    return steps_to_target(curves, threshold.value)


@dataclasses.dataclass(frozen=True)
class TimeEstimate:
    """Training time in steps: the median over runs and a 5-95% band; ``None`` where not reached."""

    step: int | None
    low: int | None
    high: int | None
    reached_fraction: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _q(values: torch.Tensor, q: float) -> int | None:
    v = torch.quantile(values, q, interpolation="nearest").item()
    return None if math.isinf(v) else int(v)


def summarize_times(steps: torch.Tensor) -> TimeEstimate:
    """Summarize per-run training times ``(R,)`` (``-1`` = not reached) as median and 5-95% band."""
    v = steps.double().clone()
    reached = v >= 0
    v[~reached] = math.inf
    return TimeEstimate(_q(v, 0.5), _q(v, 0.05), _q(v, 0.95), float(reached.double().mean()))


def relative_error(predicted: int | None, actual: int | None, *, predicted_diverged: bool = False,
                   actual_diverged: bool = False) -> float:
    """Relative training-time error ``|TT_pred - TT_real| / max(TT_real, 1)`` (README, "Definitions").

    A correctly predicted divergence, or a threshold neither curve reaches, is an error of 0; any other mismatch on
    divergence or on reaching the threshold counts as 1 (100%).
    """
    if predicted_diverged or actual_diverged:
        return 0.0 if predicted_diverged == actual_diverged else 1.0
    if predicted is None or actual is None:
        return 0.0 if predicted is None and actual is None else 1.0
    return abs(predicted - actual) / max(actual, 1)
