"""Simulator and sweep speed on a real kernel: EfficientNet-Lite0, Fashion-MNIST, N=750 (150 per class), C=5, 32 px.

    .venv/bin/python bench/dynamics_bench.py            # writes bench/results/dynamics.json

* simulator: T=1000 steps of SGD (batch 32), 32 batch orders, float32, exact function-space simulator.
* sweep: 100 configurations (5 lr x 5 batch sizes x 2 momenta x 2 budgets) predicted from that one kernel, including
  the measured seconds per step of each batch size (the kernel itself is loaded, its cost reported separately).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    from finetime.runtime import tune_allocator
    from finetime.config import RunConfig
    from finetime.dynamics import simulate
    from finetime.optim import SGD
    from finetime.predict import kernel_for, prepare, problem_from
    from finetime.sweep import sweep

    tune_allocator()
    base = RunConfig.from_dict(dict(image_size=32, per_class=150, seed=1, runs=32, predictor="linear"))
    task = prepare(base)
    t0 = time.perf_counter()
    kernel = kernel_for(task)
    t_kernel = time.perf_counter() - t0
    problem = problem_from(kernel, task, dtype=torch.float32)
    sgd = SGD(lr=1e-3, batch_size=32)
    simulate(problem, sgd, 20, runs=32, generator=torch.Generator().manual_seed(0))  # warm-up
    t0 = time.perf_counter()
    traj = simulate(problem, sgd, 1000, runs=32, generator=torch.Generator().manual_seed(0))
    t_sim = time.perf_counter() - t0
    res = {"threads": torch.get_num_threads(), "n": kernel.n, "classes": kernel.c,
           "kernel_seconds": t_kernel, "kernel_plan": kernel.meta["plan"],
           "simulator": {"steps": 1000, "batch_size": 32, "runs": 32, "seconds": t_sim,
                         "final_loss_mean": float(traj.loss[:, -1].mean())}}
    print(json.dumps(res["simulator"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        kpath = Path(tmp) / "k.ftk"
        kernel.save(kpath)
        grid = {"lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "batch_size": [0, 8, 16, 32, 64], "momentum": [0.0, 0.9],
                "steps": [150, 300]}
        t0 = time.perf_counter()
        out = sweep(base.replace(runs=16), grid, kernel_in=kpath)
        t_sweep = time.perf_counter() - t0
    res["sweep"] = {"configurations": len(out["rows"]), "seconds": t_sweep, "runs": 16,
                    "cost_seconds": out["cost_seconds"],
                    "best": out["rows"][0]["settings"], "best_seconds_to_target": out["rows"][0]["seconds_to_target"]}
    print(json.dumps(res["sweep"]), flush=True)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "dynamics.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
