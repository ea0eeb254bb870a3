"""Dataset-size extrapolation against real fine-tuning (issue: one kernel, many answers).

    .venv/bin/python bench/extrapolation_bench.py        # writes bench/results/extrapolation.json

EfficientNet-Lite0, Fashion-MNIST, 5 classes (seed 1), 32 px, MSE loss, full-batch GD, lr 0.02 (0.05 is past the
linearized model's stable limit here), T=150. For each target
size N in {500, 1000}: the training time predicted from subsets N' in {100, 250} (spectral extrapolation), from the
kernel computed at N itself (linear simulator), and the real fine-tuning at N. The subsets are the first N' images of
the N-image task (same classes). Errors are relative training-time errors (README, "Definitions").
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    from finetime.batches import batch_plan
    from finetime.runtime import tune_allocator
    from finetime.config import RunConfig
    from finetime.finetune import finetune
    from finetime.losses import Loss
    from finetime.predict import Task, kernel_for, predict, prepare, problem_from, training_times
    from finetime.predictors import predict_trajectory
    from finetime.training_time import relative_error
    from finetime.zoo.data import Dataset

    tune_allocator()
    base = RunConfig.from_dict(dict(image_size=32, seed=1, loss="mse", lr=0.02, steps=150, epsilon=(0.01, 0.1, 0.4),
                                   predictor="linear"))
    out = {"config": base.to_dict(), "targets": []}
    for n_target in (500, 1000):
        cfg = base.replace(per_class=n_target // 5)
        task = prepare(cfg)
        row = {"n": n_target, "from_subset": {}}
        t0 = time.perf_counter()
        kernel = kernel_for(task)
        t_kernel = time.perf_counter() - t0
        traj = predict_trajectory(problem_from(kernel, task), cfg)
        row["kernel_at_n"] = {"tt": {k: v["step"] for k, v in training_times(traj.loss, cfg).items()},
                              "kernel_seconds": round(t_kernel, 2)}
        for n_sub in (100, 250):
            # the first n_sub images of the task, class-balanced (the task is ordered class by class)
            per = n_sub // 5
            idx = torch.cat([torch.arange(c * (n_target // 5), c * (n_target // 5) + per) for c in range(5)])
            d = task.data
            sub = Task(cfg.replace(per_class=per, extrapolate_to=n_target),
                       Dataset(d.x[idx], d.y[idx], None, None, d.class_names, d.source,
                               [d.train_index[i] for i in idx.tolist()], []), task.model, task.trained)
            t0 = time.perf_counter()
            res = predict(sub.config, task=sub).to_dict()
            ex = res["predicted"]["extrapolated"]
            row["from_subset"][n_sub] = {"tt": ex["steps"], "mse_closed_form": ex["mse_closed_form_steps"],
                                         "seconds": round(time.perf_counter() - t0, 2),
                                         "power_laws": [ex["eigenvalue_power_law"], ex["projection_power_law"]],
                                         "tt_at_subset": {k: v["step"] for k, v in
                                                          res["predicted"]["training_time"].items()}}
        plan = batch_plan(n_target, cfg.optimizer, cfg.steps, 1, torch.Generator())
        real = finetune(task.model, task.data.x, task.data.y, cfg.optimizer, cfg.steps, plan, loss=Loss.MSE)
        row["real"] = {"tt": {k: v["step"] for k, v in training_times(real.loss.unsqueeze(0), cfg).items()},
                       "train_seconds": round(real.train_seconds, 2)}
        for src in [row["kernel_at_n"], *row["from_subset"].values()]:
            src["relative_error"] = {k: relative_error(src["tt"][k], row["real"]["tt"][k]) for k in src["tt"]}
        out["targets"].append(row)
        print(json.dumps(row), flush=True)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "extrapolation.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
