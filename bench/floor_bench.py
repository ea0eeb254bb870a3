"""The kernel against its floor: one forward and C backward passes over the samples.

    .venv/bin/python bench/floor_bench.py [--sizes 100x32,100x64,100x128,750x32,750x64,750x128]

For each N x resolution (EfficientNet-Lite0 on Fashion-MNIST, 5 classes, every weight trained), on the same model,
data and threads, one after the other: the floor (a forward pass and C = 5 backward passes, one per output, over
all samples in chunks of 32: what any per-sample kernel must at least do) and the engine's default kernel
(`factored`), after an untimed warm-up of both on a few samples (the first passes of a process are slower). Writes
bench/results/floor.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
from finetime import RunConfig  # noqa: E402
from finetime.device import model_device, synchronize  # noqa: E402
from finetime.kernel import compute_kernel  # noqa: E402
from finetime.predict import prepare  # noqa: E402


def floor_seconds(model, x, c, chunk=32):
    """One forward and ``c`` backward passes (one per output) over ``x``, in chunks (eval mode)."""
    dev = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.eval()
    synchronize(dev)
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], chunk):
        out = model(x[s:s + chunk].to(dev))
        for k in range(c):
            torch.autograd.grad(out[:, k].sum(), params, retain_graph=k < c - 1)
    synchronize(dev)
    model.train(was)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100x32,100x64,100x128,750x32,750x64,750x128")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "floor.json")
    args = ap.parse_args(argv)
    rows = []
    warm = prepare(RunConfig.from_dict({"data": "fashion-mnist", "per_class": 2, "image_size": 32}))
    floor_seconds(warm.model, warm.data.x, warm.config.task.classes)  # untimed: the process's one-time warm-up
    compute_kernel(warm.model, warm.data.x, params=warm.trained)
    for spec in args.sizes.split(","):
        n, px = (int(v) for v in spec.split("x"))
        task = prepare(RunConfig.from_dict({"data": "fashion-mnist", "per_class": n // 5, "image_size": px}))
        model, x = task.model, task.data.x
        floor = floor_seconds(model, x, task.config.task.classes)
        t0 = time.perf_counter()
        k = compute_kernel(model, x, params=task.trained)
        sec = time.perf_counter() - t0
        rows.append({"n": x.shape[0], "image_size": px, "threads": torch.get_num_threads(),
                     "floor_seconds": round(floor, 2), "kernel_seconds": round(sec, 2),
                     "ratio": round(sec / floor, 2), "phase_seconds": k.meta["phase_seconds"],
                     "exact_weight_fraction": round(k.meta["plan"]["exact_weight_fraction"], 3)})
        print(json.dumps(rows[-1]), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
