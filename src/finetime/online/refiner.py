"""``Refiner``: the prediction made before training, sharpened by every loss the run logs.

    refiner = Refiner.from_prediction(prediction)        # a Prediction, or the JSON `finetime predict` wrote
    for step, batch in enumerate(loader, 1):
        ...; optimizer.step()
        refiner.observe(step, loss.item())
    print(refiner.estimate().summary())                  # remaining steps and seconds, with a 90% interval

The method is ``finetime.online._fit`` (time-warp posterior of the predicted curve); the 90% intervals are that
posterior's spread widened by a margin calibrated on the benchmark suite for the fraction of the run observed
(``calibration.json``, written by ``bench/online_bench.py --calibrate``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from importlib import resources
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..network import BatchNormMode
from ..training_time import DEFAULT_EPSILONS, Threshold, steps_to_threshold
from ._fit import SPEED_PERSISTENCE, Refined, observed_curve, refine_curve, weighted_quantile

__all__ = ["Refiner", "Estimate", "ThresholdEstimate", "Calibration", "refine", "load_calibration", "time_interval"]

LEVEL = 0.9


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Extra half-width (in log steps) added to the posterior's 5-95% band, by observed fraction of the run
    (interpolated), and by the prediction's calibration bin where the suite had enough rows of it (``bins``; else the
    pooled ``margins``); once a step is observed the band's log half-widths about its median are first scaled by
    ``band_scale`` (1: the band as it is; before any step the band is the speed prior's and is not scaled)."""

    fractions: tuple[float, ...]
    margins: tuple[float, ...]
    level: float = LEVEL
    source: str = ""
    open_loop: dict | None = None  # margins of predictions before training, by linearity-check bin
    bins: dict | None = None  # {bin: margins by fraction (None where that bin had too few rows)}
    band_scale: float = 1.0

    def margin(self, fraction: float, bin_name: str | None = None) -> float:
        """The margin after ``fraction`` of the run, for a prediction of calibration bin ``bin_name``
        (``finetime.intervals.prediction_bin``; ``None`` or a bin without enough rows: the pooled margin)."""
        x = min(max(fraction, self.fractions[0]), self.fractions[-1])
        pooled = float(_lerp(self.fractions, self.margins, x))
        by_bin = (self.bins or {}).get(bin_name) if bin_name is not None else None
        if not by_bin:
            return pooled
        return float(_lerp(self.fractions, [pooled_f if m is None else m for m, pooled_f in
                                            zip(by_bin, self.margins)], x))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _lerp(xs, ys, x):
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            w = (x - xs[i]) / (xs[i + 1] - xs[i]) if xs[i + 1] > xs[i] else 0.0
            return ys[i] * (1 - w) + ys[i + 1] * w
    return ys[-1]


def load_calibration(path: str | Path | None = None) -> Calibration | None:
    """The calibration shipped with finetime (or the one at ``path``); ``None`` when there is none."""
    try:
        text = Path(path).read_text() if path else \
            resources.files("finetime.online").joinpath("calibration.json").read_text()
    except FileNotFoundError:
        return None
    d = json.loads(text)
    return Calibration(tuple(d["fractions"]), tuple(d["margins"]), d.get("level", LEVEL), d.get("source", ""),
                       d.get("open_loop"), d.get("bins"), float(d.get("band_scale", 1.0)))


@dataclasses.dataclass(frozen=True)
class ThresholdEstimate:
    """Training time to one threshold: the refined step (median), its interval, and what is left of it."""

    key: str
    step: int | None
    low: int | None
    high: int | None
    remaining_steps: int | None
    remaining_seconds: float | None
    remaining_seconds_low: float | None
    remaining_seconds_high: float | None
    reached_probability: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What ``Refiner.estimate()`` returns."""

    observed_step: int
    observed_fraction: float
    steps: int
    method: str
    speed: float | None
    diverged: bool
    seconds_per_step: float | None
    seconds_per_step_source: str
    thresholds: dict[str, ThresholdEstimate]
    loss: list[float | None]
    calibrated: bool

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["thresholds"] = {k: v.to_dict() for k, v in self.thresholds.items()}
        return d

    def summary(self) -> str:
        head = (f"finetime: step {self.observed_step} of {self.steps} observed ({100 * self.observed_fraction:.0f}%), "
                f"{self.method}" + (f" (so far {self.speed:.2g}x the predicted speed)" if self.speed else ""))
        if self.diverged:
            return head + "\n  the run has diverged (or is predicted to): no training time"
        lines = [head]
        pct = int(round(100 * LEVEL))
        for key, e in self.thresholds.items():
            if e.step is None:
                lines.append(f"  {key:<12} not reached within {self.steps} steps "
                             f"(probability reached {e.reached_probability:.0%})")
                continue
            span = f"{e.low}-{e.high}" if e.high is not None else f"{e.low} to >{self.steps}"
            band = f"({pct}%: {span})" if self.calibrated else f"(posterior 5-95%: {span})"
            left = f"{e.remaining_steps} steps left"
            if e.remaining_seconds is not None:
                left += f", about {_fmt_s(e.remaining_seconds)}"
            lines.append(f"  {key:<12} step {e.step}  {band}  {left}")
        return "\n".join(lines)


def _fmt_s(s: float) -> str:
    return f"{s:.3g} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def time_interval(refined: Refined, threshold: Threshold, steps: int, margin: float | None,
                  level: float = LEVEL, scale: float = 1.0) -> tuple[int | None, int | None, int | None, float]:
    """``(median, low, high, reached_probability)`` of the training time to ``threshold`` over the refined curves:
    the posterior's 5-95% band, its log half-widths (of ``step + 1``) about the median scaled by ``scale``, widened by
    ``margin`` (log steps) on each side (``None``: the posterior's band alone, unscaled)."""
    curves = refined.curves[:, : steps + 1]
    tt = steps_to_threshold(curves, threshold).double()
    reached = tt >= 0
    w = refined.weights
    p_reached = float(w[reached].sum())
    tt = torch.where(reached, tt, torch.full_like(tt, math.inf))
    med = weighted_quantile(tt, w, 0.5)
    if not math.isfinite(med):
        return None, None, None, p_reached
    tail = (1 - level) / 2
    lo, hi = weighted_quantile(tt, w, tail), weighted_quantile(tt, w, 1 - tail)
    if margin is not None:
        if scale != 1.0:
            lo = (med + 1) * ((lo + 1) / (med + 1)) ** scale - 1
            hi = (med + 1) * ((hi + 1) / (med + 1)) ** scale - 1 if math.isfinite(hi) else hi
        lo = (lo + 1) * math.exp(-margin) - 1
        hi = (hi + 1) * math.exp(margin) - 1 if math.isfinite(hi) else hi
    low = max(int(math.floor(lo)), 0)
    high = None if not math.isfinite(hi) or hi > steps else int(math.ceil(hi))
    return int(med), low, high, p_reached


def refine(prior: torch.Tensor | None, steps, losses, horizon: int, origin: int = 0,
           persistence: float = SPEED_PERSISTENCE) -> Refined:
    """``refine_curve`` on plain sequences. ``origin > 0``: ``prior`` is the predicted curve from step ``origin`` on
    (a re-linearization there); observations before it make the refined curve's start and only those from
    ``origin`` on inform the warp."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    y = torch.as_tensor(losses, dtype=torch.float64)
    if origin == 0:
        return refine_curve(prior, t, y, horizon, persistence=persistence)
    keep = t >= origin
    tt, yy = t[keep] - origin, y[keep]
    if not (tt.numel() and float(tt[0]) == 0):
        tt = torch.cat([torch.zeros(1, dtype=torch.float64), tt])
        yy = torch.cat([torch.as_tensor(prior, dtype=torch.float64).reshape(-1)[:1], yy])
    r = refine_curve(prior, tt, yy, horizon - origin, persistence=persistence)
    before = observed_curve(t, y, torch.arange(origin, dtype=torch.float64))
    curves = torch.cat([before.expand(r.curves.shape[0], -1), r.curves], 1)
    return Refined(curves, r.weights, r.method, r.speed, r.diverged_weight)


def _interval_bin(prediction: dict) -> str:
    """The calibration bin of a prediction dict (``predicted.interval_bin``; derived from its linearity check and
    first steps for JSON written before the field)."""
    from ..intervals import prediction_bin

    pred = prediction["predicted"]
    if pred.get("interval_bin"):
        return pred["interval_bin"]
    gaps = (pred.get("relinearization") or {}).get("loss_gaps")
    fitted = (pred.get("first_steps") or {}).get("speed") is not None
    batch = (prediction.get("config") or {}).get("bn") == "batch"
    return prediction_bin(gaps[0] if gaps else None, fitted, batch)


def _as_prior(prior) -> torch.Tensor:
    """A predicted curve ``(T+1,)`` or ensemble of simulated runs ``(R, T+1)`` (tensors or lists with ``None`` for a
    diverged value) as a float64 tensor."""
    if isinstance(prior, (list, tuple)):
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        prior = [[nan(v) for v in row] if isinstance(row, (list, tuple)) else nan(row) for row in prior]
    t = torch.as_tensor(prior, dtype=torch.float64)
    if t.dim() not in (1, 2) or t.shape[-1] < 1:
        raise DataError(f"a prediction's loss curve must be (T+1,) or (runs, T+1); got shape {tuple(t.shape)}")
    return t


class Refiner:
    """Online estimate of the remaining training time from a prediction and the losses observed so far.

    ``prior``: the predicted loss curve ``(T+1,)``, or the prediction's simulated runs ``(R, T+1)`` (what
    ``from_prediction`` passes when the prediction has them: the posterior then weighs the runs too), or ``None`` (no
    prediction; curve fits only). ``steps``: the run's planned number of steps ``T``. ``thresholds``: ``Threshold``
    objects or keys (``"eps=0.1"``, ``"target=0.5"``).
    ``seconds_per_step``: the predicted step time; replaced by the run's own once ``observe`` gets wall-clock times.
    Observed losses may be whole-training-set losses (as finetime defines the curve) or logged minibatch losses;
    ``window`` says how many steps a logged loss averages (it is placed at the middle of that window).
    ``persistence``: how much of the speed observed so far (against the prediction) the rest of the run keeps; the
    default ``SPEED_PERSISTENCE`` (0: the run goes on at the prediction's pace from the loss it has reached) was
    chosen on the benchmark suite, where early slowness mostly does not last; 1 stretches the whole prediction by it
    (for a prediction known to be off by a constant factor).
    ``interval_bin``: the prediction's calibration bin (``finetime.intervals.prediction_bin``; ``from_prediction``
    reads it), which picks the interval's margin where the suite calibrated that bin.
    """

    def __init__(self, prior=None, *, steps: int, thresholds=None, seconds_per_step: float | None = None,
                 loss0: float | None = None, calibration: Calibration | None | str = "default",
                 persistence: float = SPEED_PERSISTENCE, interval_bin: str | None = None):
        if steps < 1:
            raise ConfigError(f"steps must be >= 1 (got {steps})")
        if not 0.0 <= persistence <= 1.0:
            raise ConfigError(f"persistence must be between 0 and 1 (got {persistence})")
        self.persistence = float(persistence)
        self.steps = int(steps)
        self.prior = None if prior is None else _as_prior(prior)
        ths = thresholds if thresholds is not None else [Threshold.eps(e) for e in DEFAULT_EPSILONS]
        self.thresholds = [Threshold.parse(t) if isinstance(t, str) else t for t in ths]
        self.predicted_seconds_per_step = seconds_per_step
        self.calibration = load_calibration() if calibration == "default" else calibration
        self.interval_bin = interval_bin
        self._steps: list[float] = []  # where each observation sits (the middle of its window)
        self._now = 0  # the last step observed (the end of the last window)
        self._losses: list[float] = []
        self._clock: list[tuple[float, float]] = []
        self.origin = 0  # the step the prior starts at (> 0 after a re-linearization at the real weights)
        self.prediction = None  # the live Prediction, which re-linearization needs
        # what the prediction printed (``training_time`` and ``loss``; set by from_prediction)
        self.predicted_times: dict | None = None
        self.predicted_loss: list | None = None
        self.predicted_config: dict | None = None  # the prediction's flat settings
        start = loss0 if loss0 is not None else (float(self.prior.reshape(-1)[0]) if self.prior is not None else None)
        if start is not None:
            self.observe(0, start)

    @classmethod
    def from_prediction(cls, prediction, **kw) -> "Refiner":
        """From a ``finetime.Prediction`` or the dict / JSON file ``finetime predict --json`` wrote."""
        if isinstance(prediction, (str, Path)):
            path = Path(prediction)
            try:
                prediction = json.loads(path.read_text())
            except FileNotFoundError:
                raise DataError(f"prediction file not found: {path}") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not a prediction JSON: {e}") from None
        live = None
        if not isinstance(prediction, dict):
            live, prediction = prediction, prediction.to_dict()
        pred = prediction.get("predicted")
        if not isinstance(pred, dict) or "loss" not in pred:
            raise DataError("not a finetime prediction: it has no 'predicted' loss curve "
                            "(write one with `finetime predict --json FILE`)")
        curve = pred["loss"]
        if pred.get("loss_runs"):  # the simulated runs: each carries its own divergence (None from it on)
            curve = pred["loss_runs"]
        elif pred.get("diverged"):
            at = pred.get("diverged_step")
            if at is None:
                at = next((i for i, v in enumerate(curve) if v is None), 0)
            curve = [v if i < at else math.nan for i, v in enumerate(curve)]
        kw.setdefault("steps", len(pred["loss"]) - 1)
        kw.setdefault("thresholds", list(pred.get("training_time", {})) or None)
        kw.setdefault("seconds_per_step", pred.get("seconds_per_step"))
        kw.setdefault("interval_bin", _interval_bin(prediction))
        refiner = cls(curve, **kw)
        refiner.prediction = live
        refiner.predicted_times = pred.get("training_time") or None
        refiner.predicted_loss = pred["loss"]
        refiner.predicted_config = prediction.get("config") or None
        return refiner

    def check_clipping(self, max_grad_norm: float | None) -> str | None:
        """Warn (and return the message) when the run clips its gradients otherwise than the prediction assumed:
        ``max_grad_norm`` is the run's clipping norm (``None`` or ``<= 0``: none; the Hugging Face Trainer clips at
        1.0 unless told otherwise). The refiner still fits the run's own losses; the open-loop prior is off."""
        run = float(max_grad_norm) if max_grad_norm is not None and max_grad_norm > 0 else None
        return self._check_setting("max_grad_norm", run, lambda v: "no clipping" if v is None else
                                   f"gradients clipped to norm {v:g}", "--max-grad-norm")

    def check_label_smoothing(self, label_smoothing: float | None) -> str | None:
        """As ``check_clipping``, for the run's label smoothing (the Trainer's ``label_smoothing_factor``)."""
        run = float(label_smoothing) if label_smoothing else 0.0
        return self._check_setting("label_smoothing", run, lambda v: "no label smoothing" if not v else
                                   f"label smoothing {v:g}", "--label-smoothing", default=0.0)

    def _check_setting(self, key: str, run, words, flag: str, default=None) -> str | None:
        """Warn where the prediction's setting ``key`` (its ``config``) differs from the run's ``run``."""
        if self.predicted_config is None:
            return None
        assumed = self.predicted_config.get(key, default)
        if assumed == run or (assumed is not None and run is not None and math.isclose(assumed, run)):
            return None
        fix = f"without {flag}" if run in (None, default) else f"with {flag} {run:g}"
        msg = (f"this run has {words(run)}, but the prediction assumed {words(assumed)}: predict {fix} for a "
               "prior of this run (the refiner still fits the run's own losses)")
        warnings.warn(msg, stacklevel=3)
        return msg

    def observe(self, step: float, loss: float, *, seconds: float | None = None, window: int = 1) -> None:
        """Record the loss after ``step`` updates (``window`` > 1: a mean over the ``window`` steps ending at
        ``step``), and optionally the wall-clock seconds since training started."""
        try:
            loss, step = float(loss), float(step)
            seconds = None if seconds is None else float(seconds)
        except (TypeError, ValueError):
            raise DataError(f"step, loss and seconds must be numbers (got {step!r}, {loss!r}, {seconds!r})") from None
        at = step - (window - 1) / 2 if window > 1 else step
        if at < 0:
            raise DataError(f"step must be >= 0 (got {step:g})")
        if self._steps and at < self._steps[-1]:
            raise DataError(f"steps must be observed in order: {step:g} after {self._steps[-1]:g}")
        self._now = max(self._now, int(step))
        if self._steps and at == self._steps[-1]:
            self._losses[-1] = loss
        else:
            self._steps.append(at)
            self._losses.append(loss)
        if seconds is not None:
            self._clock.append((step, seconds))

    @property
    def observed_step(self) -> int:
        """The last step observed (the end of the last logged window)."""
        return self._now

    def seconds_per_step(self) -> tuple[float | None, str]:
        """The run's own step time (slope of its wall clock over at least 3 points), else the predicted one."""
        if len(self._clock) >= 3:
            s = torch.tensor(self._clock, dtype=torch.float64)
            x, y = s[:, 0] - s[:, 0].mean(), s[:, 1] - s[:, 1].mean()
            den = float((x * x).sum())
            if den > 0:
                return float((x * y).sum()) / den, "observed"
        return self.predicted_seconds_per_step, "predicted"

    def relinearize(self, model: torch.nn.Module, step: int, *, optimizer: torch.optim.Optimizer | None = None,
                    loss: float | None = None) -> None:
        """Re-linearize at the run's real weights after ``step`` updates: the rest of the run is predicted afresh
        from the kernel and outputs of ``model`` there (``finetime.online.relinearize``; one kernel's cost) and
        becomes the prior from ``step`` on. ``optimizer``: the run's ``torch.optim`` optimizer (SGD momentum is
        carried over). The network's whole-training-set loss there is recorded as an observation (``loss``
        overrides it). Needs a refiner made by ``from_prediction`` from a live ``Prediction``."""
        from ..predict import alive_mean
        from .relinearize import continuation

        if self.prediction is None:
            raise ConfigError("re-linearization needs the live Prediction (Refiner.from_prediction(predict(...))), "
                              "not a curve or a prediction JSON")
        if step < self.observed_step:
            raise DataError(f"re-linearization at step {step} is before the last observed step {self.observed_step}")
        if self.prediction.config.task.bn is BatchNormMode.BATCH:
            warnings.warn("re-linearizing a run with BatchNorm batch statistics: the kernel at the real weights is the "
                          "running-statistics one, and on the benchmark (BENCHMARKS.md, section 8) it made the "
                          "estimate worse than the curve-only refiner there; keep the curve-only refiner",
                          UserWarning, stacklevel=2)
        traj, _ = continuation(self.prediction, model, int(step), optimizer=optimizer)
        curves = traj.loss.double()
        mean = alive_mean(curves)
        mean[torch.isfinite(curves).double().mean(0) < 0.5] = math.nan  # most runs diverged: divergence
        self.prior, self.origin = mean, int(step)
        self.observe(step, float(mean[0]) if loss is None else loss)

    def refined(self) -> Refined:
        if not self._steps and self.prior is None:
            raise DataError("nothing to estimate from: no prediction and no observed loss")
        return refine(self.prior, self._steps, self._losses, self.steps, self.origin, self.persistence)

    def _as_predicted(self, key: str) -> tuple[int | None, int | None, int | None, float] | None:
        """``(step, low, high, reached_probability)`` as the prediction printed them for threshold ``key`` (its
        model-error interval), or ``None`` where it has none for that key."""
        tt = (self.predicted_times or {}).get(key)
        if not isinstance(tt, dict) or "interval" not in tt:
            return None
        lo, hi = tt["interval"] if tt["interval"] else (None, None)
        return tt["step"], lo, hi, float(tt.get("reached_fraction", 1.0 if tt["step"] is not None else 0.0))

    def estimate(self) -> Estimate:
        """Remaining steps and seconds to every threshold, with calibrated intervals. Before any step is observed
        (step 0 alone), a refiner made by ``from_prediction`` says what the prediction said (method ``prediction``):
        its training times and their model-error intervals, where it has them for every threshold."""
        r = self.refined()
        now = self.observed_step
        fraction = min(now / self.steps, 1.0)
        margin = self.calibration.margin(fraction, self.interval_bin) if self.calibration else None
        scale = self.calibration.band_scale if self.calibration and now > 0 else 1.0  # before a step: the prior's band
        sps, source = self.seconds_per_step()
        said = {th.key: self._as_predicted(th.key) for th in self.thresholds} if now == 0 and not self.origin else {}
        said_all = bool(said) and not r.diverged and all(v is not None for v in said.values())
        out = {}
        for th in self.thresholds:
            if r.diverged:
                out[th.key] = ThresholdEstimate(th.key, None, None, None, None, None, None, None, 0.0)
                continue
            med, lo, hi, p = said[th.key] if said_all else time_interval(r, th, self.steps, margin, scale=scale)
            left = None if med is None else max(med - now, 0)
            sec = lambda s: None if s is None or sps is None else round(max(s - now, 0) * sps, 3)  # noqa: E731
            out[th.key] = ThresholdEstimate(th.key, med, lo, hi, left, sec(med), sec(lo), sec(hi), p)
        curve = _as_prior(self.predicted_loss) if said_all and self.predicted_loss else r.median_curve()
        loss = [None if not math.isfinite(v) else float(f"{v:.6g}") for v in curve[: self.steps + 1].tolist()]
        method = "prediction" if said_all else r.method + (f", re-linearized at step {self.origin}" if self.origin
                                                           else "")
        return Estimate(now, fraction, self.steps, method, None if said_all else r.speed, r.diverged, sps, source,
                        out, loss, said_all or margin is not None)
