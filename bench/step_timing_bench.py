"""Seconds per step: timing schemes against real fine-tuning steps, in the same process.

    .venv/bin/python bench/step_timing_bench.py      # writes bench/results/step_timing.json (about 8 minutes)

For every distinct training configuration (data, resolution, images per class, BatchNorm mode, batch size, momentum)
of the paper and photographs suites, on 2 threads with nothing else running: ``COUNT`` consecutive steps of every
batch size of an epoch (``finetime.wallclock.step_times``, the short last batch too) are recorded, then a real run of
``finetune`` (a fresh copy of the pretrained model, the suite's data, a batch plan of at least two epochs and 20
steps, 10 for full-batch GD; curve evaluated only at the end) gives the real seconds per step (``train_seconds /
steps``). Each timing scheme (warm-up steps, timed steps, mean or median; the full batch size only, as before, or
every size of the epoch weighted by its count, as ``seconds_per_step`` does) is scored on the same recorded steps:
its ratio to the real seconds per step, and its cost (the steps it runs, warm-up included). The cost issue asks for
10%.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
KEYS = ("data", "image_size", "per_class", "bn", "batch_size", "momentum")


COUNT = 8
SCHEMES = {  # name: (warm-up steps, timed steps, statistic, every batch size of the epoch)
    "full batches only, warm-up 1, mean of 3 (previous)": (1, 3, "mean", False),
    "every epoch size, warm-up 1, mean of 3": (1, 3, "mean", True),
    "every epoch size, warm-up 2, median of 3": (2, 3, "median", True),
    "every epoch size, warm-up 3, median of 3": (3, 3, "median", True),
    "every epoch size, warm-up 4, median of 3": (4, 3, "median", True),
}


def estimate(durations: dict, sizes: list, scheme: tuple) -> tuple[float, float]:
    """``(seconds per step, seconds spent)`` of a scheme on one configuration's recorded step durations
    (``durations[size]``: consecutive steps of that batch size). Batches of 64 samples or more time one step."""
    warm, timed, stat, every = scheme
    total = count = spent = 0.0
    for b, k in (sizes if every else sizes[:1]):
        d = durations[b]
        t = 1 if b >= 64 else timed
        total += k * {"mean": statistics.mean, "median": statistics.median}[stat](d[warm: warm + t])
        count += k
        spent += sum(d[: warm + t])
    return total / count, spent


def main() -> int:
    from finetime.batches import batch_plan
    from finetime.config import RunConfig
    from finetime.finetune import finetune
    from finetime.predict import prepare
    from finetime.runtime import tune_allocator
    from finetime.wallclock import epoch_batch_sizes, step_times

    torch.set_num_threads(2)
    tune_allocator()
    configs: dict = {}
    for stem in ("paper", "photos"):
        for line in (HERE / "results" / f"{stem}.jsonl").read_text().splitlines():
            c = json.loads(line)
            configs.setdefault(tuple(c["config"].get(k) for k in KEYS), c["config"])
    rows = []
    for key, flat in sorted(configs.items(), key=lambda kv: str(kv[0])):
        cfg = RunConfig.from_dict(flat)
        task = prepare(cfg)
        x, y, opt = task.data.x, task.data.y, cfg.optimizer
        n = x.shape[0]
        sizes = epoch_batch_sizes(n, opt)
        durations = {}
        for b, _ in sizes:
            o = opt if b == sizes[0][0] else dataclasses.replace(opt, batch_size=b)
            count = 5 if b >= 64 else COUNT
            durations[b] = step_times(task.model, x, y, o, count, loss=cfg.objective, params=task.trained, bn=cfg.task.bn)
        per_epoch = sum(k for _, k in sizes)
        steps = 10 if opt.is_full_batch(n) else max(20, 2 * per_epoch)
        plan = batch_plan(n, opt, steps, 1, torch.Generator().manual_seed(0))
        real = finetune(copy.deepcopy(task.model), x, y, opt, steps, plan, loss=cfg.objective, params=task.trained,
                        bn=cfg.task.bn, eval_every=steps)
        real_sps = real.train_seconds / steps
        row = {**dict(zip(KEYS, key)), "epoch_batches": sizes, "real_steps": steps,
               "real_seconds_per_step": round(real_sps, 5),
               "durations": {str(b): [round(t, 5) for t in d] for b, d in durations.items()}, "schemes": {}}
        for name, scheme in SCHEMES.items():
            v, spent = estimate(durations, sizes, scheme)
            row["schemes"][name] = {"ratio": round(v / real_sps, 3), "cost": round(spent, 2)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "durations"}), flush=True)
    summary = {}
    for name in SCHEMES:
        q = [r["schemes"][name]["ratio"] for r in rows]
        summary[name] = {"configs": len(q), "within_10pct": sum(abs(v - 1) <= 0.10 for v in q),
                         "median_ratio": round(statistics.median(q), 3), "min_ratio": min(q), "max_ratio": max(q),
                         "median_abs_error": round(statistics.median(abs(v - 1) for v in q), 3),
                         "median_cost_seconds": round(statistics.median(r["schemes"][name]["cost"] for r in rows), 2)}
    (HERE / "results" / "step_timing.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1)
                                                         + "\n")
    for name, v in summary.items():
        print(name, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
