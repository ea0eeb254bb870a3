"""Re-linearization refreshes on a subset of samples against whole-kernel refreshes, on suite cells that re-linearize,
scored against the suite's stored real runs (`bench/results/paper.jsonl`; nothing is trained again).

    .venv/bin/python bench/refresh_bench.py --group all --stride 4 --variants q8,h16       # one cell in four
    .venv/bin/python bench/refresh_bench.py --group hard --variants q8,q8s,h16           # 30/class, lr 1e-2, 32 px

Each cell: the kernel at the pretrained weights, then the default predictor (`adaptive`) with every refresh a whole
kernel (``full``) and with each variant, from the same kernel and batch orders. Variants ``NAME`` are a subset size
and a carrying rule: ``q8`` a quarter of the samples, at least 8 per class; ``e4`` an eighth, at least 4; ``h16`` a
half, at least 16 (at 30 per class the same 80 of 150 samples as ``--refresh-samples auto``); all carried by
``kernel.update.nystrom_update``; ``q8u`` the same subset with the part of the old kernel the subset does not span left
unscaled; ``q8s`` the old kernel scaled by the subset's trace ratio, no Nystrom extension. Errors at eps 0.1 and 0.4
(README, "Definitions"); seconds are the prediction after the kernel (simulation and refreshes), two threads. Prints a
JSON line per cell and a summary; writes ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EPS = ("eps=0.1", "eps=0.4")
VARIANTS = {"q8": (0.25, 8, "nystrom"), "e4": (0.125, 4, "nystrom"), "h16": (0.5, 16, "nystrom"),
            "q8u": (0.25, 8, "unscaled"), "q8s": (0.25, 8, "scalar")}


def carried(rule: str):
    """The update of the refreshed kernel for ``rule`` (the signature of ``kernel.update.nystrom_update``)."""
    from finetime.kernel.update import nystrom_update

    if rule == "nystrom":
        return nystrom_update

    def other(theta, rows, block, theta_test=None):
        a = theta[rows][:, rows]
        b = block.to(theta.dtype)
        s = float(torch.trace(b) / torch.trace(a))
        if rule == "scalar":
            return s * theta, None if theta_test is None else s * theta_test, s
        ev, evec = torch.linalg.eigh(0.5 * (a + a.T))
        keep = ev > 1e-7 * ev.max()
        v = evec[:, keep] / ev[keep].sqrt()
        w = theta[:, rows] @ v @ v.T
        new = theta - theta[:, rows] @ v @ v.T @ theta[rows, :] + w @ b @ w.T  # residual unscaled
        return 0.5 * (new + new.T), None, s

    return other


def main(argv=None) -> int:
    import finetime.relinearize as relin
    from finetime.config import PRESETS, RunConfig
    from finetime.predict import kernel_for, network_of, prepare, problem_from, training_times
    from finetime.predictors import default_generator
    from finetime.relinearize import checkpoint_schedule, first_checkpoint, relinearized
    from finetime.runtime import tune_allocator
    from finetime.subset import balanced_indices
    from finetime.training_time import relative_error

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=["all", "hard"], default="all")
    ap.add_argument("--stride", type=int, default=1, help="every K-th selected cell")
    ap.add_argument("--variants", default="q8,h16", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, help="default: bench/results/refresh_<group>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    tune_allocator()
    rows = [json.loads(line) for line in (ROOT / "bench/results/paper.jsonl").read_text().splitlines() if line]
    sel = [r for r in rows if not r["predictors"]["adaptive"].get("info", {}).get("linear_regime", True)]
    if args.group == "hard":
        sel = [r for r in sel if r["config"]["lr"] == 0.01 and r["config"]["per_class"] == 30
               and r["config"]["image_size"] == 32]
    sel = sel[:: args.stride]
    names = args.variants.split(",")
    out = []
    for r in sel:
        cfg = dataclasses.replace(RunConfig.from_dict(r["config"]), predictor=PRESETS["adaptive"])
        task = prepare(cfg)
        t0 = time.perf_counter()
        problem = problem_from(kernel_for(task), task)
        res = {"id": r["id"], "n": problem.n, "kernel_s": round(time.perf_counter() - t0, 2),
               "real": {e: r["real"]["training_time"][e]["step"] for e in EPS}}
        p = cfg.predictor
        cps = checkpoint_schedule(cfg.steps, p.relinearize, first=first_checkpoint(cfg.steps))
        for name in ["full"] + names:
            frac, per, rule = (1.0, 0, "nystrom") if name == "full" else VARIANTS[name]
            m = min(problem.n, max(round(frac * problem.n), per * problem.c) // problem.c * problem.c)
            idx = None if m >= problem.n else balanced_indices(task.data.y, problem.c, m)
            relin.nystrom_update = carried(rule)
            t0 = time.perf_counter()
            traj, info = relinearized(problem, cfg.optimizer, cfg.steps, network_of(task), checkpoints=cps,
                                      reanchor=p.reanchor, linearity_tol=p.tolerance(cfg.optimizer), runs=cfg.runs,
                                      generator=default_generator(cfg), refresh_samples=idx)
            dt = time.perf_counter() - t0
            tt = training_times(traj.loss, cfg)
            pt = {e: tt[e]["step"] for e in EPS}
            div = traj.diverged_fraction > 0.5
            err = {e: round(relative_error(pt[e], res["real"][e], predicted_diverged=div,
                                           actual_diverged=r["real"]["diverged"]), 3) for e in EPS}
            res[name] = {"samples": m, "tt": pt, "err": err, "s": round(dt, 2),
                         "traces": [round(x, 2) for x in info.trace_ratios]}
        relin.nystrom_update = carried("nystrom")
        print(json.dumps(res), flush=True)
        out.append(res)
    summary = {}
    for name in ["full"] + names:
        errs = [e for c in out for e in c[name]["err"].values()]
        summary[name] = {"median": round(statistics.median(errs), 3), "mean": round(statistics.mean(errs), 3),
                         "seconds": round(sum(c[name]["s"] for c in out), 1)}
    print(json.dumps(summary))
    path = args.out or ROOT / f"bench/results/refresh_{args.group}.json"
    path.write_text(json.dumps({"cells": out, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
