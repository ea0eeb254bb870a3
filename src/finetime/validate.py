"""Prediction against real fine-tuning of the same configuration (``finetime validate``).

The real run uses its own batch order (drawn from ``seed + 2``); besides the ensemble prediction, the simulator is
also replayed on that very order (``replay``), which separates batch-order noise from the linearization's error.
"""

from __future__ import annotations

from typing import Callable

import torch

from .batches import batch_plan
from .config import RunConfig
from .finetune import BatchNormMode, finetune
from .losses import Loss
from .predict import curve_summary, predict, run_dynamics, tolist, training_times
from .training_time import relative_error

__all__ = ["validate", "compare_times", "test_curve_errors"]


def compare_times(predicted: dict, actual: dict, *, predicted_diverged: bool, actual_diverged: bool) -> dict:
    """Per threshold: predicted and actual steps, their difference and the relative error (PROTOCOL.md)."""
    out = {}
    for key, p in predicted.items():
        a = actual[key]["step"]
        ps = p["step"]
        out[key] = {
            "predicted": ps,
            "actual": a,
            "difference": None if ps is None or a is None else ps - a,
            "relative": relative_error(ps, a, predicted_diverged=predicted_diverged, actual_diverged=actual_diverged),
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


def validate(config: RunConfig, *, kernel_in=None, kernel_out=None,
             progress: Callable[[str, int, int], None] | None = None, diagnostics: bool = False) -> dict:
    """Predict, then really fine-tune, and report both with their errors."""
    result = predict(config, kernel_in=kernel_in, kernel_out=kernel_out, progress=progress, diagnostics=diagnostics)
    obj = result["_objects"]
    task, problem = obj["task"], obj["problem"]
    sgd = config.sgd()
    n = task.data.x.shape[0]
    plan = batch_plan(n, sgd, config.steps, 1, torch.Generator().manual_seed(config.seed + 2))
    if config.dynamics == "exact":  # the same predictor on the real run's batch order
        if config.relinearizes and sgd.is_full_batch(n):
            replay = obj["trajectory"]  # deterministic: the prediction itself
        else:
            replay = run_dynamics(problem, config, task=task, plan=plan)
        rep = curve_summary(replay)
        result["predicted"]["replay"] = {"loss": rep["loss"], "accuracy": rep["accuracy"],
                                         "training_time": training_times(replay.loss, config)}
    real = finetune(task.model, task.data.x, task.data.y, sgd, config.steps, plan, loss=Loss(config.loss),
                    params=task.trained, x_test=task.data.x_test, y_test=task.data.y_test, bn=BatchNormMode(config.bn),
                    progress=(lambda d, t: progress("fine-tuning", d, t)) if progress else None)
    times = training_times(real.loss.unsqueeze(0), config)
    actual = {
        "loss": tolist(real.loss),
        "accuracy": tolist(real.accuracy),
        "training_time": times,
        "train_seconds": round(real.train_seconds, 3),
        "eval_seconds": round(real.eval_seconds, 3),
        "seconds_per_step": round(real.train_seconds / max(1, config.steps if not real.diverged else real.diverged_at),
                                  5),
        "diverged": real.diverged,
    }
    if real.test_loss is not None:
        actual["test_loss"], actual["test_accuracy"] = tolist(real.test_loss), tolist(real.test_accuracy)
    result["actual"] = actual
    pred = result["predicted"]
    result["error"] = compare_times(pred["training_time"], times, predicted_diverged=pred["diverged"],
                                    actual_diverged=real.diverged)
    if "replay" in pred:
        result["error_replay"] = compare_times(pred["replay"]["training_time"], times,
                                               predicted_diverged=pred["diverged"], actual_diverged=real.diverged)
    if real.test_loss is not None and "test_loss" in pred:
        result["test_error"] = test_curve_errors(pred, actual)
    result["cost_ratio"] = round(real.train_seconds / max(result["cost_seconds"]["total"], 1e-9), 3)
    result["_objects"]["real"] = real
    return result
