"""The kernel of a transformer at realistic size: all-MiniLM-L6-v2 (22.6M weights, all trained), N = 200 fine-food
reviews (2 classes) at up to 128 tokens, within a 4 GB memory budget; its cost against the real run it predicts.

    .venv/bin/python bench/text_kernel_bench.py          # writes bench/results/text_kernel.json

Runs in a separate process so that its peak resident memory is its own. Reports the engine's plan (which routes,
persistent bytes), the kernel seconds (plain ``J J^T`` for SGD; Adam's preconditioned ``J P J^T``, which adds a
pass for the gradient moments), the measured seconds of one AdamW step (batch 16) and the ratio of the kernel's cost
to a 200-step run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "text_kernel.json"

CHILD = r"""
import json, resource, sys, time
import torch
from finetime.config import RunConfig
from finetime.predict import kernel_for, prepare
from finetime.runtime import tune_allocator
from finetime.wallclock import seconds_per_step
tune_allocator()
kind = sys.argv[1]
cfg = RunConfig.from_dict({"model": "minilm", "data": "fine-foods", "classes": 2, "per_class": 100,
                           "max_length": 128, "optimizer": kind, "lr": 3e-5 if kind == "adamw" else 1e-3,
                           "batch_size": 16, "steps": 200, "max_memory_gb": 4.0, "seed": 1})
task = prepare(cfg)
t0 = time.perf_counter()
k = kernel_for(task)
secs = time.perf_counter() - t0
sps = seconds_per_step(task.model, task.data.x, task.data.y, cfg.optimizer, loss=cfg.objective, params=task.trained,
                       bn=cfg.task.bn)
print(json.dumps({"optimizer": kind, "n": task.data.x.shape[0], "tokens": task.data.x.shape[-1],
                  "weights": k.meta["weights"], "kernel_seconds": round(secs, 2),
                  "phase_seconds": k.meta["phase_seconds"], "plan": k.meta["plan"],
                  "seconds_per_step": round(sps, 4), "run_seconds_200_steps": round(200 * sps, 1),
                  "kernel_over_run": round(secs / (200 * sps), 3),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def main() -> int:
    rows = []
    for kind in ("sgd", "adamw"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
