"""GPU evidence in one script: predict and validate on CUDA, the kernel on CUDA, and the step-timing error.

    .venv/bin/python bench/gpu_bench.py                      # on a CUDA machine: writes bench/results/gpu.json
    .venv/bin/python bench/gpu_bench.py --device cpu --smoke  # the same code path, tiny sizes (a dry run here)

1. `validate` (predict, then real fine-tuning) on the GPU for EfficientNet-Lite0 on Fashion-MNIST: full-batch GD at
   64 px (the default task), SGD batch 16 lr 1e-3 momentum 0.9 at 128 px, and the same at 224 px, each in fp32 and
   bf16: training-time errors, predicted vs real seconds per step (the step-timing error), prediction cost vs the
   real run.
2. The kernel alone on the GPU: N = 100 and 750 images at 64 and 128 px, seconds and peak GPU memory, beside one
   forward + C backward passes over the samples (the floor of a per-sample kernel).
3. The simulator on the GPU against the CPU: SGD with momentum (16 batch orders, batch 32, 300 steps) on random
   kernels of 1,000 to 20,000 outputs, float32 both sides, seconds and the largest difference between the curves;
   `finetime.predict.SIMULATOR_DEVICE_OUTPUTS` (2,000: the simulator moves to the GPU beyond it) is the guess these
   rows check.

Results go to bench/results/gpu.json (with the GPU's name); `bench/benchmarks_md.py` renders them in BENCHMARKS.md.
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
sys.path.insert(0, str(HERE))
from finetime import RunConfig, validate  # noqa: E402
from finetime.device import describe, resolve_device, synchronize  # noqa: E402
from finetime.kernel import compute_kernel  # noqa: E402
from finetime.predict import prepare  # noqa: E402
from floor_bench import floor_seconds  # noqa: E402

VALIDATE = [
    {"per_class": 20, "image_size": 64, "lr": 1e-3, "steps": 150},
    {"per_class": 20, "image_size": 128, "lr": 1e-3, "momentum": 0.9, "batch_size": 16, "steps": 150},
    {"per_class": 20, "image_size": 224, "lr": 1e-3, "momentum": 0.9, "batch_size": 16, "steps": 150},
]
KERNELS = [(100, 64), (750, 64), (100, 128), (750, 128)]
SMOKE_VALIDATE = [{"per_class": 3, "image_size": 32, "lr": 1e-3, "steps": 6, "runs": 2},
                  {"per_class": 3, "image_size": 32, "lr": 1e-3, "momentum": 0.9, "batch_size": 4, "steps": 6,
                   "runs": 2}]
SMOKE_KERNELS = [(15, 32)]
SIMULATOR = [1000, 2500, 5000, 10000, 20000]
SMOKE_SIMULATOR = [100]


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gb(dev):
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3) if dev.type == "cuda" else None


def validate_rows(device: str, cells, precisions):
    rows = []
    for cell in cells:
        for precision in precisions:
            cfg = RunConfig.from_dict({"data": "fashion-mnist", **cell, "device": device, "precision": precision})
            dev = resolve_device(device)
            _peak_reset(dev)
            t0 = time.perf_counter()
            val = validate(cfg)
            d = val.to_dict()
            pred, real = d["predicted"], d["actual"]
            sps_p, sps_r = pred["seconds_per_step"], real["seconds_per_step"]
            rows.append({
                "settings": cell, "precision": precision,
                "tt": {k: {"predicted": pred["training_time"][k]["step"], "real": real["training_time"][k]["step"]}
                       for k in pred["training_time"]},
                "error": {k: v["relative"] for k, v in d["error"].items()},
                "seconds_per_step": {"predicted": sps_p, "real": sps_r,
                                     "relative_error": round(abs(sps_p - sps_r) / sps_r, 4) if sps_r else None},
                "prediction_seconds": d["cost_seconds"], "real_train_seconds": real["train_seconds"],
                "cost_ratio": d["cost_ratio"], "peak_gpu_gb": _peak_gb(dev),
                "wall_seconds": round(time.perf_counter() - t0, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def kernel_rows(device: str, sizes):
    rows = []
    dev = resolve_device(device)
    for n, px in sizes:
        cfg = RunConfig.from_dict({"data": "fashion-mnist", "per_class": n // 5, "image_size": px, "device": device})
        task = prepare(cfg)
        model, x = task.model, task.data.x
        floor = floor_seconds(model, x, cfg.task.classes)
        _peak_reset(dev)
        synchronize(dev)
        t0 = time.perf_counter()
        k = compute_kernel(model, x, params=task.trained)
        synchronize(dev)
        sec = time.perf_counter() - t0
        rows.append({"n": x.shape[0], "image_size": px, "kernel_seconds": round(sec, 3),
                     "floor_seconds": round(floor, 3), "kernel_over_floor": round(sec / floor, 2),
                     "peak_gpu_gb": _peak_gb(dev), "plan": k.meta["plan"]["strategies"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def simulator_rows(device: str, sizes):
    """The exact simulator on ``device`` and on the CPU, same problem, same batch orders, float32."""
    from finetime.batches import batch_plan
    from finetime.dynamics import Problem, simulate
    from finetime.optim import SGD

    rows = []
    dev = resolve_device(device)
    for nc in sizes:
        n, c = nc // 5, 5
        g = torch.Generator().manual_seed(0)
        j = torch.randn(n * c, 256, generator=g) / 16
        problem = Problem(j @ j.T, torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g))
        opt = SGD(lr=0.05, momentum=0.9, batch_size=min(32, n))
        steps = 300
        plan = batch_plan(n, opt, steps, 16, torch.Generator().manual_seed(1))
        row = {"outputs": nc, "runs": 16, "steps": steps}
        curves = {}
        for where, prob in (("cpu", problem), (str(dev), problem.to(device=dev))):
            simulate(prob, opt, 3, plan=plan)  # warm-up (CUDA context, kernels)
            synchronize(dev)
            t0 = time.perf_counter()
            curves[where] = simulate(prob, opt, steps, plan=plan).loss
            synchronize(dev)
            row[f"{where.split(':')[0]}_seconds"] = round(time.perf_counter() - t0, 3)
        diff = (curves["cpu"] - curves[str(dev)]).abs()
        row["max_abs_curve_difference"] = float(torch.nan_to_num(diff, nan=0.0).max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the GPU")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    out = args.out or (HERE / "results" / ("gpu_smoke.json" if args.smoke else "gpu.json"))
    result = {"device": describe(dev), "torch": torch.__version__, "smoke": args.smoke,
              "validate": validate_rows(args.device, SMOKE_VALIDATE if args.smoke else VALIDATE,
                                        ["fp32", "bf16"]),
              "kernel": kernel_rows(args.device, SMOKE_KERNELS if args.smoke else KERNELS),
              "simulator": simulator_rows(args.device, SMOKE_SIMULATOR if args.smoke else SIMULATOR)}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
