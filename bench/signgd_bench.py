"""The SignGD-kernel baseline (Malladi et al. 2023) on the stored Adam and AdamW cells.

    .venv/bin/python bench/signgd_bench.py [--results text,adamw]   # adds predictor "signgd" to the results files
    .venv/bin/python bench/report.py bench/results/text.jsonl       # the tables, beside finetime's predictors

Malladi et al. describe early Adam as sign descent, and sign descent near the pretrained weights as kernel dynamics on
the asymmetric SignGD kernel ``<df_c(x_j)/dw, sign(df_c'(x_i)/dw)>`` (``finetime.dynamics.sign``). For every task
(model, data, samples per class, seed) of the Adam / AdamW cells of each results file, on 2 threads with nothing else
running: that kernel by brute force (``finetime.kernel.sign_gradient_kernel``, timed), then for every cell sign
descent at the cell's learning rates and schedule over the same simulated batch orders as the stored predictions
(``runs`` of them, the predictions' generator). Stored in each cell as ``predictors.signgd`` with the kernel's own
seconds; the real runs are kept as they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="text,adamw", help="comma list of suites: bench/results/<NAME>.jsonl")
    args = ap.parse_args(argv)
    from finetime.config import RunConfig
    from finetime.dynamics import Problem, simulate_sign_descent
    from finetime.kernel import sign_gradient_kernel
    from finetime.predict import prepare, tolist, training_times
    from finetime.predictors import default_generator
    from finetime.runtime import tune_allocator
    from report import load
    from suite import write_results

    tune_allocator()
    torch.set_num_threads(2)
    for suite in args.results.split(","):
        path = ROOT / f"bench/results/{suite}.jsonl"
        cells = load([path])
        tasks: dict = {}
        for c in cells:
            cfg = RunConfig.from_dict(c["config"])
            if cfg.optimizer.preconditioned:
                tasks.setdefault(cfg.task, []).append(c)
        for i, group in enumerate(tasks.values()):
            task = prepare(RunConfig.from_dict(group[0]["config"]))
            t0 = time.perf_counter()
            k, f0 = sign_gradient_kernel(task.model, task.data.x, task.trained, block=32)
            kernel_seconds = round(time.perf_counter() - t0, 3)
            problem = Problem(k, f0, task.data.y, task.config.objective)
            for c in group:
                cfg = RunConfig.from_dict(c["config"])
                t1 = time.perf_counter()
                traj = simulate_sign_descent(problem, cfg.optimizer, cfg.steps, runs=cfg.runs,
                                             generator=default_generator(cfg))
                c["predictors"]["signgd"] = {
                    "loss": tolist(traj.loss.double().nanmean(0)),
                    "training_time": training_times(traj.loss, cfg),
                    "diverged_fraction": traj.diverged_fraction,
                    "seconds": round(time.perf_counter() - t1, 3),
                    "kernel_seconds": kernel_seconds,
                }
            print(f"[{suite} {i + 1}/{len(tasks)}] {task.config.task.data} n={task.data.x.shape[0]} seed "
                  f"{task.config.task.seed}: kernel {kernel_seconds:.1f} s, {len(group)} cells", file=sys.stderr,
                  flush=True)
        write_results(path, cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
