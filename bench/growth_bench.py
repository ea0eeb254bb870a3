"""How much the kernel grows along the real run, against the linear path the default re-linearizes along.

    .venv/bin/python bench/growth_bench.py      # writes bench/results/growth.json (about 10 minutes)

For a few stored cells of the suites where the kernel moves (SGD with momentum 0.9 at lr 1e-3, lr 1e-2, the text
model's SGD): the cell is fine-tuned for real again (batch order of ``validate``: seed + 2; the curve after every
step) and, at the default's re-linearization checkpoints (``T/15, 3T/15, 7T/15``), the kernel of the live network is
computed on every training sample (``on_step`` of ``finetune``; the weights are left as they are). Beside it, the
default's re-linearization is run with the linearity check off and whole-kernel refreshes (``linearity_tol=0``,
``refresh_samples="all"``), which records the trace of the kernel at the network moved to the linear model's weights
at the same checkpoints. Both traces are reported as ratios to the kernel's trace at the pretrained weights, with the
real loss and the linear model's loss there.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

CELLS = [  # (suite, the stored cell's settings)
    ("text", dict(optimizer="sgd", lr=1e-2, seed=1)),
    ("text", dict(optimizer="sgd", lr=1e-3, seed=1)),
    ("paper", dict(image_size=32, per_class=30, batch_size=8, lr=1e-3, momentum=0.9, seed=1, bn="frozen", steps=150)),
    ("paper", dict(image_size=32, per_class=30, batch_size=0, lr=1e-3, momentum=0.9, seed=1, bn="frozen", steps=150)),
    ("paper", dict(image_size=32, per_class=30, batch_size=32, lr=1e-2, momentum=0.0, seed=1, bn="frozen",
                   steps=150)),
    ("paper", dict(image_size=64, per_class=10, batch_size=8, lr=1e-3, momentum=0.9, seed=1, bn="frozen", steps=150)),
]


def _stored(suite: str, where: dict) -> dict:
    for line in (HERE / "results" / f"{suite}.jsonl").read_text().splitlines():
        c = json.loads(line)
        if all(c["config"].get(k) == v or (k == "batch_size" and v == 0 and not c["config"].get(k))
               for k, v in where.items()):
            return c
    raise SystemExit(f"no stored {suite} cell with {where}")


def main() -> int:
    from finetime.batches import batch_plan
    from finetime.config import PRESETS, RunConfig
    from finetime.finetune import finetune
    from finetime.predict import kernel_for, prepare, problem_from
    from finetime.predictors import predict_trajectory, real_run_generator
    from finetime.relinearize import checkpoint_schedule, first_checkpoint
    from finetime.runtime import tune_allocator

    torch.set_num_threads(2)
    tune_allocator()
    rows = []
    for suite, where in CELLS:
        stored = _stored(suite, where)
        cfg = RunConfig.from_dict(stored["config"])
        task = prepare(cfg)
        d = task.data
        t0 = time.perf_counter()
        k0 = kernel_for(task)
        trace0 = float(k0.theta.trace())
        points = checkpoint_schedule(cfg.steps, PRESETS["adaptive"].relinearize, first=first_checkpoint(cfg.steps))
        real_traces: dict[int, float] = {}

        def on_step(t, model, _opt):
            if t in points:
                real_traces[t] = float(kernel_for(task, model=model).theta.trace()) / trace0

        plan = batch_plan(d.x.shape[0], cfg.optimizer, cfg.steps, 1, real_run_generator(cfg))
        real = finetune(copy.deepcopy(task.model), d.x, d.y, cfg.optimizer, cfg.steps, plan, loss=cfg.objective,
                        params=task.trained, bn=cfg.task.bn, on_step=on_step)
        forced = dataclasses.replace(PRESETS["adaptive"], linearity_tol=0.0, refresh_samples="all")
        traj = predict_trajectory(problem_from(k0, task), dataclasses.replace(cfg, predictor=forced), task)
        info = traj.info
        lin = torch.nanmean(traj.loss.double(), 0)
        row = {"suite": suite, "config": stored["config"], "checkpoints": points,
               "real_trace_ratio": [round(real_traces[t], 3) for t in points],
               "linear_path_trace_ratio": info["trace_ratios"],
               "linear_path_loss_gap": info["loss_gaps"],
               "real_loss": [round(float(real.loss[t]), 4) for t in points],
               "linear_loss": [round(float(lin[t]), 4) for t in points],
               "real_diverged": real.diverged, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (HERE / "results" / "growth.json").write_text(json.dumps({"threads": 2, "cells": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
