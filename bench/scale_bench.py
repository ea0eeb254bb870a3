"""N = 10,000 training images on this machine: the default prediction's time and peak memory, against real fine-tuning.

    .venv/bin/python bench/scale_bench.py      # writes bench/results/scale.json (about 40 minutes)

EfficientNet-Lite0, Fashion-MNIST, 5 classes x 2000 images (N = 10,000, seed 1), 32 px, cross-entropy, SGD batch 32,
lr 1e-3, 1560 steps (5 epochs), momentum 0 and 0.9. The full kernel would be (N C)^2 = 50,000^2 floats (10 GB in
float32); the default ``--kernel-samples auto`` computes it on 500 samples and carries the curves to all 10,000
(README, "Large training sets").

Each prediction is ``finetime predict`` in a child process of its own (default predictor, every cost included), so its
peak resident memory (``ru_maxrss``) is the prediction's alone. The real run then fine-tunes for real in this process,
on the same two threads, nothing else running. Its whole-set loss is evaluated every 10 steps rather than after every
step (one evaluation is 10,000 forward passes, some 6 s here; after every step the run would take hours): the real
training time is the first evaluated step at or below the threshold, so it is late by at most 9 steps, which is stated
beside the errors. Training seconds count only the updates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CELLS = [dict(momentum=0.0), dict(momentum=0.9)]
BASE = dict(data="fashion-mnist", classes=5, per_class=2000, image_size=32, seed=1, batch_size=32, lr=1e-3, steps=1560,
            epsilon=(0.1, 0.4))
EVAL_EVERY = 10
EPS = ("eps=0.1", "eps=0.4")


def child(cfg_json: str) -> None:
    """Predict in this process and print the prediction's JSON with this process's peak RSS and wall seconds."""
    from finetime.config import RunConfig
    from finetime.predict import predict
    from finetime.runtime import tune_allocator

    torch.set_num_threads(2)
    tune_allocator()
    t0 = time.perf_counter()
    res = predict(RunConfig.from_dict(json.loads(cfg_json))).to_dict()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"prediction": res, "wall_seconds": wall, "peak_rss_bytes": peak}))


def grid_times(curve: torch.Tensor, k: int) -> dict[str, int | None]:
    """Training time at each eps from a curve evaluated at steps 0, k, 2k, ..., T (NaN elsewhere)."""
    from finetime.training_time import first_crossing, normalized_threshold

    idx = torch.arange(0, curve.shape[0], k)
    if idx[-1] != curve.shape[0] - 1:
        idx = torch.cat([idx, torch.tensor([curve.shape[0] - 1])])
    g = curve[idx]
    out = {}
    for key in EPS:
        i = int(first_crossing(g, normalized_threshold(g, float(key.split("=")[1]))))
        out[key] = int(idx[i]) if i >= 0 else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/scale.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cells", type=int, default=len(CELLS), help="run only the first K cells")
    ap.add_argument("--per-class", type=int, default=BASE["per_class"], help="smaller for a quick check of the script")
    ap.add_argument("--steps", type=int, default=BASE["steps"])
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    from finetime.batches import batch_plan
    from finetime.config import RunConfig
    from finetime.finetune import finetune
    from finetime.predict import prepare
    from finetime.predictors import real_run_generator
    from finetime.runtime import tune_allocator
    from finetime.training_time import relative_error

    torch.set_num_threads(2)
    tune_allocator()
    rows = []
    for spec in CELLS[: args.cells]:
        cfg = RunConfig.from_dict({**BASE, **spec, "per_class": args.per_class, "steps": args.steps})
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg.to_dict())], capture_output=True,
                              text=True, env=env, check=True)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        res, pr = got["prediction"], got["prediction"]["predicted"]
        pred_tt = {k: pr["training_time"][k]["step"] for k in EPS}
        print(f"{spec}: predicted {pred_tt} in {got['wall_seconds']:.1f} s, peak {got['peak_rss_bytes'] / 2**30:.2f} GiB",
              flush=True)

        task = prepare(cfg.replace(kernel_samples="all"))
        d, opt = task.data, cfg.optimizer
        n = d.x.shape[0]
        plan = batch_plan(n, opt, cfg.steps, 1, real_run_generator(cfg))
        real = finetune(task.model, d.x, d.y, opt, cfg.steps, plan, loss=cfg.objective, params=task.trained,
                        bn=cfg.task.bn, eval_every=EVAL_EVERY)
        real_tt = grid_times(real.loss, EVAL_EVERY)
        err = {k: relative_error(pred_tt[k], real_tt[k], predicted_diverged=pr["diverged"],
                                 actual_diverged=real.diverged) for k in EPS}
        cost = res["cost_seconds"]
        real_sps = real.train_seconds / cfg.steps
        row = {
            "config": cfg.to_dict(), "n": n, "eval_every": EVAL_EVERY,
            "real": {"tt": real_tt, "train_seconds": round(real.train_seconds, 2),
                     "eval_seconds": round(real.eval_seconds, 2), "seconds_per_step": round(real_sps, 5),
                     "diverged": real.diverged,
                     "loss": [None if v != v else round(float(v), 4) for v in real.loss[::EVAL_EVERY * 10]]},
            "predicted": {"tt": pred_tt, "error": {k: round(v, 4) for k, v in err.items()},
                          "kernel_samples": pr.get("kernel_samples"), "diverged": pr["diverged"],
                          "relinearized": bool(pr.get("relinearization")), "cost": cost,
                          "wall_seconds": round(got["wall_seconds"], 2), "peak_rss_bytes": got["peak_rss_bytes"],
                          "seconds_per_step": pr["seconds_per_step"],
                          "step_time_error": round(abs(pr["seconds_per_step"] - real_sps) / real_sps, 4),
                          "cost_ratio": round(real.train_seconds / cost["total"], 2)},
        }
        print(f"  real {real_tt} (every {EVAL_EVERY} steps) in {real.train_seconds:.1f} s train; errors {err}; "
              f"cost ratio {row['predicted']['cost_ratio']}", flush=True)
        rows.append(row)
        args.out.write_text(json.dumps({"threads": 2, "cells": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
