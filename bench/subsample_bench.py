"""The kernel on a subset (``--kernel-samples``) on a workload where training is long, against real fine-tuning.

    .venv/bin/python bench/subsample_bench.py      # writes bench/results/subsample.json (about 50 minutes)

The real curves are whole-set losses after every step, which is most of the real runs' wall time.

EfficientNet-Lite0, Fashion-MNIST, 5 classes x 400 images (N = 2000, seed 1), 32 px, cross-entropy. Cells: SGD batch
32 for 5 epochs (315 steps) at lr 1e-3 with momentum 0 and 0.9, and full-batch GD (lr 1e-2, momentum 0.9, 40 steps).
Each cell is fine-tuned for real once (batch order of ``validate``: seed + 2) and predicted by ``finetime.predict``
(default predictor, every cost included: kernel, re-linearization, simulation, step timing) with the kernel on all
2000 samples and on class-balanced subsets of 500 and 200. Errors are relative training-time errors at eps 0.1 and 0.4
(README, "Definitions"); cost ratio = real training seconds / prediction seconds, both on the same two threads, one
job at a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CELLS = [
    dict(batch_size=32, lr=1e-3, momentum=0.9, steps=315),
    dict(batch_size=32, lr=1e-3, momentum=0.0, steps=315),
    dict(batch_size=0, lr=1e-2, momentum=0.9, steps=40),
]
SAMPLES = ("all", 500, 200)
EPS = ("eps=0.1", "eps=0.4")


def main(argv=None) -> int:
    from finetime.batches import batch_plan
    from finetime.config import RunConfig
    from finetime.finetune import finetune
    from finetime.predict import predict, prepare, training_times
    from finetime.predictors import real_run_generator
    from finetime.runtime import tune_allocator
    from finetime.training_time import relative_error

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/subsample.json")
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--cells", type=int, default=len(CELLS), help="run only the first K cells")
    ap.add_argument("--repredict", help="comma list of kernel-sample settings (e.g. 500,200) to predict again on the "
                    "cells already in --out; their real runs are kept as they are")
    args = ap.parse_args(argv)
    stored = json.loads(args.out.read_text())["cells"] if args.repredict else []
    redo = args.repredict.split(",") if args.repredict else None
    torch.set_num_threads(2)
    tune_allocator()
    rows = []
    for spec in CELLS[: args.cells]:
        cfg = RunConfig.from_dict(dict(data="fashion-mnist", classes=5, per_class=args.per_class, image_size=32, seed=1,
                                       epsilon=(0.1, 0.4), runs=16, **spec))
        task = prepare(cfg.replace(kernel_samples="all"))
        d, opt = task.data, cfg.optimizer
        n = d.x.shape[0]
        row = next((r for r in stored if r["config"] == json.loads(json.dumps(cfg.to_dict()))), None)
        if row is None:
            plan = batch_plan(n, opt, cfg.steps, 1, real_run_generator(cfg))
            real = finetune(task.model, d.x, d.y, opt, cfg.steps, plan, loss=cfg.objective, params=task.trained,
                            bn=cfg.task.bn)
            real_tt = training_times(real.loss.unsqueeze(0), cfg)
            row = {"config": cfg.to_dict(), "n": n,
                   "real": {"tt": {k: real_tt[k]["step"] for k in EPS}, "train_seconds": round(real.train_seconds, 2),
                            "loss": [round(float(v), 4) for v in real.loss[:: max(1, cfg.steps // 30)]],
                            "diverged": real.diverged},
                   "predicted": {}}
        real_s, real_div = row["real"]["train_seconds"], row["real"]["diverged"]
        print(f"{spec}: real {row['real']['tt']} in {real_s:.1f} s", flush=True)
        for m in SAMPLES:
            if redo is not None and str(m) not in redo:
                continue
            c = cfg.replace(kernel_samples=m)
            t0 = time.perf_counter()
            res = predict(c).to_dict()
            wall = time.perf_counter() - t0
            pr = res["predicted"]
            tt = {k: pr["training_time"][k]["step"] for k in EPS}
            err = {k: relative_error(tt[k], row["real"]["tt"][k], predicted_diverged=pr["diverged"],
                                     actual_diverged=real_div) for k in EPS}
            row["predicted"][str(m)] = {
                "samples": (pr.get("kernel_samples") or {}).get("samples", n), "tt": tt,
                "error": {k: round(v, 4) for k, v in err.items()}, "cost": res["cost_seconds"],
                "wall_seconds": round(wall, 2), "cost_ratio": round(real_s / res["cost_seconds"]["total"], 2),
                "predictor": pr["predictor"], "relinearized": bool(pr.get("relinearization")),
                "diverged": pr["diverged"], "seconds_per_step": pr["seconds_per_step"],
                "subset_steps_at_end": (pr.get("kernel_samples") or {}).get("subset_steps_at_end"),
            }
            print(f"  kernel samples {m}: {tt} err {err} cost {res['cost_seconds']['total']:.1f} s "
                  f"(ratio {row['predicted'][str(m)]['cost_ratio']})", flush=True)
        rows.append(row)
        args.out.write_text(json.dumps({"threads": 2, "cells": rows + stored[len(rows):]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
