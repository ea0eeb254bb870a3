"""What a default prediction costs against the fine-tuning it predicts, both timed in one run.

    .venv/bin/python bench/cost_bench.py      # writes bench/results/cost.json (about 25 minutes on 2 cores)

The suite's cost table (BENCHMARKS.md, section 1) divides real runs timed when the suite was run by predictions
re-run and re-timed on other days (this machine's speed varies by up to 1.8x from one day to the next). Here every
cell is fine-tuned for real and then predicted by ``finetime.predict`` (the default predictor, every cost included:
kernel, re-linearization, first real steps, simulation, step timing) in the same process, one after the other, on
the same two threads, with nothing else running; the ratio of a cell is real training seconds over the prediction's
seconds. Each task's kernel floor (one forward and C backward passes over its samples, ``floor_bench``) is timed
too: real / floor bounds the ratio of any prediction that computes a kernel on every sample. The process is warmed
first (one untimed real step and one untimed kernel), so that one-time library and
allocator warm-up is charged to neither side.

Cells: a cross-section of the paper suite (``bench/configs/paper.toml``): EfficientNet-Lite0, Fashion-MNIST, 5 classes,
seed 1, T = 150; 30 images per class at 32 px and 10 per class at 64 px; full-batch GD and SGD (batch 8, 32); lr 1e-3
without and with momentum 0.9 (the paper's regime and the usual recipe), and lr 1e-4; BatchNorm frozen; plus two
cells with batch statistics (64 px, GD and SGD batch 32, lr 1e-3). Training-time errors (README, "Definitions") are
recorded as well, as a check that the cells predict as the suite says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TASKS = (dict(image_size=32, per_class=30), dict(image_size=64, per_class=10))
OPTIMIZERS = tuple(dict(batch_size=b, lr=lr, momentum=m) for b in (0, 8, 32)
                   for lr, m in ((1e-3, 0.0), (1e-3, 0.9), (1e-4, 0.0)))
BATCH_STATISTICS = tuple(dict(image_size=64, per_class=10, bn="batch", batch_size=b, lr=1e-3, momentum=0.0)
                         for b in (0, 32))
EPS = ("eps=0.01", "eps=0.1", "eps=0.4")


def cells() -> list[dict]:
    """The benchmark's configurations, as ``RunConfig.from_dict`` arguments."""
    base = dict(model="efficientnet-lite0", data="fashion-mnist", classes=5, seed=1, steps=150, runs=16,
                epsilon=(0.01, 0.1, 0.4))
    out = [dict(base, **task, **opt) for task in TASKS for opt in OPTIMIZERS]
    return out + [dict(base, **spec) for spec in BATCH_STATISTICS]


def _warm_up() -> None:
    """One untimed real step and one untimed kernel on a small task, so that neither side pays the process's one-time
    warm-up (lazy imports such as ``torch._dynamo`` on the first ``torch.optim`` optimizer, allocator growth)."""
    from finetime.config import RunConfig
    from finetime.predict import kernel_for, prepare
    from finetime.wallclock import step_times

    cfg = RunConfig.from_dict(dict(data="fashion-mnist", classes=5, per_class=4, image_size=32, seed=1, steps=2,
                                   batch_size=8))
    task = prepare(cfg)
    step_times(task.model, task.data.x, task.data.y, cfg.optimizer, 2, params=task.trained)
    kernel_for(task)


def task_floor(spec: dict) -> float:
    """Seconds of one forward and C backward passes over the cell's training samples (``floor_bench``): the least any
    kernel on every sample costs, so ``real / floor`` bounds the ratio of any prediction that computes one."""
    from floor_bench import floor_seconds
    from finetime.config import RunConfig
    from finetime.predict import prepare

    task = prepare(RunConfig.from_dict(spec))
    return round(floor_seconds(task.model, task.data.x, task.config.task.classes), 2)


def measure(spec: dict) -> dict:
    """Fine-tune ``spec`` for real, then predict it; both timed."""
    from finetime.batches import batch_plan
    from finetime.config import RunConfig
    from finetime.finetune import finetune
    from finetime.predict import predict, prepare, training_times
    from finetime.predictors import real_run_generator
    from finetime.training_time import relative_error

    cfg = RunConfig.from_dict(spec)
    task = prepare(cfg)
    d, opt = task.data, cfg.optimizer
    plan = batch_plan(d.x.shape[0], opt, cfg.steps, 1, real_run_generator(cfg))
    real = finetune(task.model, d.x, d.y, opt, cfg.steps, plan, loss=cfg.objective, params=task.trained, bn=cfg.task.bn)
    real_tt = {k: v["step"] for k, v in training_times(real.loss.unsqueeze(0), cfg).items() if k in EPS}
    t0 = time.perf_counter()
    res = predict(cfg).to_dict()
    wall = time.perf_counter() - t0
    pr = res["predicted"]
    tt = {k: pr["training_time"][k]["step"] for k in EPS}
    err = {k: relative_error(tt[k], real_tt[k], predicted_diverged=pr["diverged"], actual_diverged=real.diverged)
           for k in EPS}
    cost = res["cost_seconds"]
    return {"config": cfg.to_dict(), "n": d.x.shape[0],
            "real": {"tt": real_tt, "train_seconds": round(real.train_seconds, 2), "diverged": real.diverged},
            "predicted": {"tt": tt, "diverged": pr["diverged"], "error": {k: round(v, 4) for k, v in err.items()},
                          "relinearized": bool(pr.get("relinearization")) and not
                          pr["relinearization"].get("linear_regime", False),
                          "end_check": (pr.get("relinearization") or {}).get("end_check"),
                          "first_steps": (pr.get("first_steps") or {}).get("steps", 0),
                          "cost": cost, "wall_seconds": round(wall, 2),
                          "seconds_per_step": pr["seconds_per_step"]},
            "ratio": round(real.train_seconds / cost["total"], 2)}


def summary(rows: list[dict]) -> dict:
    """Median real / prediction by optimizer (GD: full batch), and of the prediction's parts."""
    out = {}
    for name, keep in (("GD", lambda r: not r["config"]["batch_size"]), ("SGD", lambda r: r["config"]["batch_size"]),
                       ("all", lambda r: True)):
        sel = [r for r in rows if keep(r)]
        if not sel:
            continue
        out[name] = {"cells": len(sel), "median_ratio": round(statistics.median(r["ratio"] for r in sel), 2),
                     "median_real_over_floor": (round(statistics.median(r["real_over_floor"] for r in sel), 2)
                                                if all("real_over_floor" in r for r in sel) else None),
                     "median_real_seconds": round(statistics.median(r["real"]["train_seconds"] for r in sel), 2),
                     "median_prediction_seconds": round(statistics.median(
                         r["predicted"]["cost"]["total"] for r in sel), 2),
                     "median_parts": {k: round(statistics.median(r["predicted"]["cost"][k] for r in sel), 2)
                                      for k in ("kernel", "relinearization", "first_steps", "simulation",
                                                "step_timing")}}
    return out


def main(argv=None) -> int:
    from finetime.runtime import tune_allocator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/cost.json")
    ap.add_argument("--cells", type=int, default=None, help="run only the first K cells")
    ap.add_argument("--floors", action="store_true",
                    help="only time the kernel floor of every task of the cells already in --out, and add it to them")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    tune_allocator()
    _warm_up()
    floors: dict[str, float] = {}

    def floor_of(spec):
        key = json.dumps({k: spec.get(k) for k in ("image_size", "per_class", "bn")})
        if key not in floors:
            floors[key] = task_floor(spec)
        return floors[key]

    if args.floors:
        rows = json.loads(args.out.read_text())["cells"]
        for row in rows:
            row["floor_seconds"] = floor_of(row["config"])
            row["real_over_floor"] = round(row["real"]["train_seconds"] / row["floor_seconds"], 2)
        args.out.write_text(json.dumps({"threads": 2, "cells": rows, "summary": summary(rows)}, indent=1) + "\n")
        return 0
    rows = []
    for spec in cells()[: args.cells]:
        row = measure(spec)
        row["floor_seconds"] = floor_of(spec)
        row["real_over_floor"] = round(row["real"]["train_seconds"] / row["floor_seconds"], 2)
        rows.append(row)
        p = row["predicted"]
        print(f"{spec['image_size']} px {spec['per_class']}/class b{spec['batch_size']} lr {spec['lr']:g} "
              f"m {spec['momentum']:g} {spec.get('bn', 'frozen')}: real {row['real']['train_seconds']:.1f} s, "
              f"prediction {p['cost']['total']:.1f} s -> {row['ratio']}x; TT {p['tt']} real {row['real']['tt']}",
              flush=True)
        args.out.write_text(json.dumps({"threads": 2, "cells": rows, "summary": summary(rows)}, indent=1) + "\n")
    print(json.dumps(summary(rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
