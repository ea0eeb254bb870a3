"""Prediction against real fine-tuning of the same configuration (``finetime validate``).

The real run uses its own batch order (drawn from ``seed + 2``); besides the ensemble prediction, the predictor is
also replayed on that very order (``replay``, the "same order" column), which separates batch-order noise from the
linearization's error. The replay keeps the prediction's linearity-check decision (one kernel, or refreshes at the
same checkpoints) and the first real steps it measured (``finetime.first_steps``): a check re-run on one batch order
can fall on the other side of its tolerance and give another predictor's curve, which is not batch-order noise.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

from .batches import batch_plan
from .config import Predictor, RunConfig
from .dynamics import Trajectory
from .errors import ConfigError
from .finetune import RealRun, finetune
from .predict import Prediction, curve_summary, materialized, predict, tolist, training_times
from .first_steps import FirstSteps
from .predictors import predict_trajectory, real_run_generator
from .relinearize import end_refreshed
from .subset import evaluation_indices
from .training_time import relative_error

__all__ = ["Validation", "validate", "compare_times", "test_curve_errors", "replay_config"]


def compare_times(predicted: dict, actual: dict, *, predicted_diverged: bool, actual_diverged: bool) -> dict:
    """Per threshold: predicted and actual steps, their difference, the relative error (README, definitions) and
    whether the prediction's 90% model-error interval holds the real step (``in_interval``; ``None`` where the
    prediction has no interval or the real run never reached the threshold)."""
    out = {}
    for key, p in predicted.items():
        a = actual[key]["step"]
        ps = p["step"]
        iv = p.get("interval")
        out[key] = {
            "predicted": ps,
            "actual": a,
            "difference": None if ps is None or a is None else ps - a,
            "relative": relative_error(ps, a, predicted_diverged=predicted_diverged, actual_diverged=actual_diverged),
            "in_interval": None if not iv or a is None or actual_diverged else
            iv[0] <= a and (iv[1] is None or a <= iv[1]),
        }
    return out


def test_curve_errors(predicted: dict, actual: dict) -> dict:
    """Held-out curves: the step of the lowest test loss and the final test accuracy, predicted vs real."""
    def argmin(curve):
        vals = [(v, t) for t, v in enumerate(curve) if v is not None]
        return min(vals)[1] if vals else None

    pb, ab = argmin(predicted["test_loss"]), argmin(actual["test_loss"])
    pa, aa = predicted["test_accuracy"][-1], actual["test_accuracy"][-1]
    return {
        "best_test_loss_step": {"predicted": pb, "actual": ab,
                                "relative": None if pb is None or ab is None else abs(pb - ab) / max(ab, 1)},
        "final_test_accuracy": {"predicted": pa, "actual": aa,
                                "difference": None if pa is None or aa is None else pa - aa},
    }


@dataclasses.dataclass
class Validation:
    """A prediction, the real run of the same configuration, and the predictor replayed on the real batch order."""

    prediction: Prediction
    real: RealRun
    replay: Trajectory | None
    eval_every: int = 1  # the real curve evaluated every this many steps (and at T)
    eval_samples: int | None = None  # on this many training samples (None: all)

    @property
    def cost_ratio(self) -> float:
        """Real fine-tuning seconds over total prediction seconds."""
        return self.real.train_seconds / max(self.prediction.cost["total"], 1e-9)

    def to_dict(self) -> dict:
        cfg = self.prediction.config
        result = self.prediction.to_dict()
        pred = result["predicted"]
        real = self.real
        if self.replay is not None:
            rep = curve_summary(self.replay)
            pred["replay"] = {"loss": rep["loss"], "accuracy": rep["accuracy"],
                              "training_time": training_times(self.replay.loss, cfg)}
        times = training_times(real.loss.unsqueeze(0), cfg)
        actual = {
            "loss": tolist(real.loss),
            "accuracy": tolist(real.accuracy),
            "training_time": times,
            "train_seconds": round(real.train_seconds, 3),
            "eval_seconds": round(real.eval_seconds, 3),
            "seconds_per_step": round(real.train_seconds / max(1, cfg.steps if not real.diverged
                                                                else real.diverged_at), 5),
            "diverged": real.diverged,
            "eval_every": self.eval_every,
            "eval_samples": self.eval_samples,
        }
        if real.test_loss is not None:
            actual["test_loss"], actual["test_accuracy"] = tolist(real.test_loss), tolist(real.test_accuracy)
        result["actual"] = actual
        result["error"] = compare_times(pred["training_time"], times, predicted_diverged=pred["diverged"],
                                        actual_diverged=real.diverged)
        if "replay" in pred:
            result["error_replay"] = compare_times(pred["replay"]["training_time"], times,
                                                   predicted_diverged=pred["diverged"], actual_diverged=real.diverged)
        if real.test_loss is not None and "test_loss" in pred:
            result["test_error"] = test_curve_errors(pred, actual)
        result["cost_ratio"] = round(self.cost_ratio, 3)
        return result


def replay_config(config: RunConfig, info: dict | None) -> RunConfig:
    """The configuration that replays a prediction on another batch order with the same linearity-check decisions
    (``info``: the prediction's re-linearization record): its one kernel where the check (and the end check) passed;
    where the check passed and the end check refreshed, a check no gap fails and an end check every gap fails;
    refreshes without a check where the check failed; ``config`` itself for a prediction without a check."""
    p = config.predictor
    if info is None or "linear_regime" not in info or p.kind is not Predictor.RELINEARIZED \
            or p.tolerance(config.optimizer) == 0:
        return config
    if info["linear_regime"]:
        return dataclasses.replace(config, predictor=dataclasses.replace(p, kind=Predictor.LINEAR))
    if end_refreshed(info):
        return dataclasses.replace(config, predictor=dataclasses.replace(
            p, linearity_tol=sys.float_info.max, end_tol=sys.float_info.min))
    return dataclasses.replace(config, predictor=dataclasses.replace(p, linearity_tol=0.0))


def validate(config: RunConfig, *, kernel_in=None, kernel_out=None,
             progress: Callable[[str, int, int], None] | None = None, diagnostics: bool = False,
             eval_every: int = 1, eval_samples: int | str = "all") -> Validation:
    """Predict, then really fine-tune, and report both with their errors.

    The real run's curve is the loss on the whole training set after every step, which on a large set costs more
    than the training: ``eval_every=k`` evaluates it at steps ``0, k, 2k, ...`` and ``T`` only (its training times
    are then late by less than ``k`` steps), ``eval_samples=m`` on ``m`` training samples in the classes' proportions
    (an estimate of the whole set's mean loss)."""
    if not (isinstance(eval_every, int) and eval_every >= 1):
        raise ConfigError(f"--eval-every must be a whole number >= 1, got {eval_every!r}")
    if eval_samples != "all" and not (isinstance(eval_samples, int) and eval_samples >= 1):
        raise ConfigError(f"--eval-samples must be a whole number >= 1 or all, got {eval_samples!r}")
    pred = predict(config, kernel_in=kernel_in, kernel_out=kernel_out, progress=progress, diagnostics=diagnostics)
    task, problem = pred.task, pred.problem
    opt = config.optimizer
    data = materialized(task.train_data)  # real fine-tuning reads every input at every step
    n = data.x.shape[0]
    plan = batch_plan(n, opt, config.steps, 1, real_run_generator(config))
    replay = None
    # the same predictor on the real run's batch order (not when the kernel saw a subset: the order is of all samples)
    if config.predictor.kind is not Predictor.PAPER and task.full_data is None:
        if opt.is_full_batch(n):
            replay = pred.trajectory  # deterministic: the prediction itself
        else:
            info = pred.trajectory.info or {}
            measured = FirstSteps.from_dict(info["first_steps"]) if "first_steps" in info else None
            replay = predict_trajectory(problem, replay_config(config, info or None), task, plan=plan,
                                        first_steps=measured)
    evaluated = evaluation_indices(data.y, data.num_classes, eval_samples)
    real = finetune(task.model, data.x, data.y, opt, config.steps, plan, loss=config.objective,
                    params=task.trained, precision=config.precision, x_test=data.x_test, y_test=data.y_test,
                    bn=config.task.bn, eval_every=eval_every, eval_samples=evaluated,
                    progress=(lambda d, t: progress("fine-tuning", d, t)) if progress else None)
    return Validation(pred, real, replay, eval_every=eval_every,
                      eval_samples=n if evaluated is None else len(evaluated))
