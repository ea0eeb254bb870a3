"""Re-predict a sample of stored suite cells with the current code and compare with the stored predictions.

    .venv/bin/python bench/check_stored.py bench/results/paper.jsonl --per-task 2 [--tasks 4]

A refactoring that must not change behaviour keeps every training time and loss curve (max relative difference 0
on the same thread count). Tasks are picked one per (resolution, images per class, BatchNorm mode, dataset), first
seed, and cells spread over each task's optimizers. The full check is ``suite.py --repredict`` on a copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402

from finetime.config import RunConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--per-task", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=4)
    args = ap.parse_args(argv)
    cells = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    groups: dict = {}
    for c in cells:
        k = c["config"]
        groups.setdefault((k["image_size"], k["per_class"], k["bn"], k["data"]), []).append(c)
    mismatches = 0
    for key, group in list(groups.items())[: args.tasks]:
        seed = group[0]["config"]["seed"]
        group = [c for c in group if c["config"]["seed"] == seed]
        group = group[:: max(1, len(group) // args.per_task)][: args.per_task]
        t0 = time.perf_counter()
        task = suite.prepare(RunConfig.from_dict(group[0]["config"]))
        kernel = suite.kernel_for(task)
        for c in group:
            names = [n for n in c["predictors"] if n in suite.BENCH_PREDICTORS]
            new = suite.predict_cell(RunConfig.from_dict(c["config"]), task, kernel, names)
            for name, p in new.items():
                old = c["predictors"][name]
                same_tt = ({k: v["step"] for k, v in old["training_time"].items()}
                           == {k: v["step"] for k, v in p["training_time"].items()})
                diff = max((abs(a - b) / max(abs(b), 1e-9) for a, b in zip(p["loss"], old["loss"])
                            if a is not None and b is not None), default=0.0)
                mismatches += (not same_tt) or diff > 0
                print(f"{c['id']} {name:14s} training times {'same' if same_tt else 'DIFFER'}; "
                      f"loss max rel. diff {diff:.2e}", flush=True)
        print(f"task {key}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{mismatches} mismatching (cell, predictor) pairs")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
