"""The exact kernel of the batch function (BatchNorm batch statistics) against real ``--bn batch`` fine-tuning.

    .venv/bin/python bench/bn_batch_bench.py      # writes bench/results/bn_batch.json (about 10 minutes)
    .venv/bin/python bench/bn_batch_bench.py --results photos --subset 16   # bn_batch_photos.json (128 px photos)

For each ``--bn batch`` task of the paper suite (``bench/results/paper.jsonl``: EfficientNet-Lite0, 5 classes x 10
images, 32 and 64 px, the whole network trained), the kernel of the network as ``model.train()`` runs it on the whole
training set (``finetime.kernel.batch_function``: exact, one backward pass per output through the batch's graph)
drives the exact simulator (``linear``) on every stored cell; full-batch cells are exactly this batch function, SGD
cells (batch 32 of 50) use it as an approximation. Real runs and the default predictor's stored predictions are read
from the results file, not run again. Beside it: the kernel the default uses (running statistics) and its size.

``--results photos`` reads ``bench/results/photos.jsonl`` instead (writes ``bn_batch_photos.json``). ``--subset B``
adds a cheaper variant: the batch function of one class-balanced batch of ``B`` samples (what SGD with batch ``B``
trains), its kernel carried to every sample through the running-statistics kernel by
``finetime.kernel.update.nystrom_update``, from the whole set's batch-statistics outputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EPS = ("eps=0.1", "eps=0.4")


def _errors(tt: dict, real: dict, diverged: bool) -> dict:
    """Relative errors of predicted training times ``{eps key: step}`` against a stored real run, at each eps."""
    from finetime.training_time import relative_error

    return {k: round(relative_error(tt[k], real["training_time"][k]["step"], predicted_diverged=diverged,
                                    actual_diverged=real["diverged"]), 3) for k in EPS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="paper", help="suite results to read: bench/results/<NAME>.jsonl")
    ap.add_argument("--subset", type=int, help="also the batch function of one balanced batch of this many samples")
    args = ap.parse_args(argv)
    from finetime.config import RunConfig
    from finetime.dynamics import Problem, simulate
    from finetime.kernel.batch_function import batch_function_kernel, batch_statistics_network
    from finetime.kernel.update import nystrom_update, subset_rows
    from finetime.subset import balanced_indices
    from finetime.predict import kernel_for, prepare, training_times
    from finetime.predictors import default_generator
    from finetime.runtime import tune_allocator

    torch.set_num_threads(2)
    tune_allocator()
    path = ROOT / "bench" / "results" / f"{args.results}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells = [r for r in rows if r["config"]["bn"] == "batch"]
    tasks: dict = {}
    for r in cells:
        tasks.setdefault((r["config"]["image_size"], r["config"]["seed"]), []).append(r)
    out = []
    for (px, seed), group in sorted(tasks.items()):
        cfg0 = RunConfig.from_dict(group[0]["config"])
        task = prepare(cfg0)
        running = kernel_for(task)
        t0 = time.perf_counter()
        theta, f0 = batch_function_kernel(task.model, task.data.x, task.trained)
        seconds = time.perf_counter() - t0
        eig = lambda t: float(torch.linalg.eigvalsh(t.double())[-1])  # noqa: E731
        sub = None
        if args.subset:
            t0 = time.perf_counter()
            idx = balanced_indices(task.data.y, task.data.num_classes, args.subset)
            block, _ = batch_function_kernel(task.model, task.data.x[idx], task.trained)
            with torch.no_grad():
                f_all = batch_statistics_network(task.model)(task.data.x).double()
            sub_theta, _, _ = nystrom_update(running.theta.double(), subset_rows(idx, f_all.shape[1]), block)
            sub = {"theta": sub_theta, "f0": f_all, "seconds": round(time.perf_counter() - t0, 1),
                   "samples": int(idx.numel())}
        rec = {"image_size": px, "seed": seed, "n": task.data.x.shape[0], "kernel_seconds": round(seconds, 1),
               "running_kernel_seconds": round(running.meta["seconds"], 1),
               "trace_ratio": round(float(theta.trace() / running.theta.double().trace()), 2),
               "top_eigenvalue": {"batch_function": eig(theta), "running_statistics": eig(running.theta)},
               "cells": []}
        for r in group:
            real = r["real"]
            cfg = RunConfig.from_dict(r["config"])
            traj = simulate(Problem(theta, f0.double(), task.data.y, cfg.objective), cfg.optimizer, cfg.steps,
                            runs=cfg.runs, generator=default_generator(cfg))
            tt = training_times(traj.loss, cfg)
            adaptive = r["predictors"]["adaptive"]
            div = traj.diverged_fraction > 0.5
            row = {"batch_size": cfg.optimizer.batch_size or 0, "lr": cfg.optimizer.lr,
                   "momentum": cfg.optimizer.momentum,
                   "real": {k: real["training_time"][k]["step"] for k in EPS},
                   "real_train_seconds": real["train_seconds"],
                   "batch_function": {k: tt[k]["step"] for k in EPS}, "batch_function_diverged": div,
                   "default": {k: adaptive["training_time"][k]["step"] for k in EPS},
                   "error_batch_function": _errors({k: tt[k]["step"] for k in EPS}, real, div),
                   "error_default": _errors({k: adaptive["training_time"][k]["step"] for k in EPS}, real,
                                            adaptive["diverged_fraction"] > 0.5)}
            if sub is not None:
                st = simulate(Problem(sub["theta"], sub["f0"], task.data.y, cfg.objective), cfg.optimizer, cfg.steps,
                              runs=cfg.runs, generator=default_generator(cfg))
                stt, sdiv = training_times(st.loss, cfg), st.diverged_fraction > 0.5
                row["subset"] = {"samples": sub["samples"], "kernel_seconds": sub["seconds"],
                                 "tt": {k: stt[k]["step"] for k in EPS}, "diverged": sdiv,
                                 "error": _errors({k: stt[k]["step"] for k in EPS}, real, sdiv)}
            rec["cells"].append(row)
            print(px, seed, row, flush=True)
        out.append(rec)
        name = "bn_batch.json" if args.results == "paper" else f"bn_batch_{args.results}.json"
        (ROOT / "bench/results" / name).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
