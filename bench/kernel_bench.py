"""Kernel engine benchmark (accuracy, speed, memory), EfficientNet-Lite0 on Fashion-MNIST, 5 classes.

    .venv/bin/python bench/kernel_bench.py [--quick]          # writes bench/results/kernel.json

* accuracy: N=100 images at 32 px against the exact kernel (the engine's exact route, itself tested against
  vmap(jacrev) to 1e-9 in float64): relative Frobenius error, top-20 eigenvalue error and the predicted training
  times (GD and SGD, eps 0.1 and 0.4) for several projection dimensions and methods.
* speed: the same N=100 kernel by torch.func vmap(jacrev) (+ J J^T, exact; + a dense Gaussian projection) against the
  engine, one process, one after the other; ratios reported.
* memory: peak resident memory of a separate process computing the factored kernel for N=750 at 64 px.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b):
    return float((a - b).norm() / b.norm())


def top_eig_err(a, b, k=20):
    ea = torch.linalg.eigvalsh(a.double()).flip(0)[:k]
    eb = torch.linalg.eigvalsh(b.double()).flip(0)[:k]
    return float(((ea - eb).abs() / eb).max())


def tts(kernel, task, cfgs):
    from finetime.predict import problem_from, training_times
    from finetime.predictors import predict_trajectory

    out = {}
    for name, cfg in cfgs.items():
        traj = predict_trajectory(problem_from(kernel, task), cfg)
        t = training_times(traj.loss, cfg)
        out[name] = {k: v["step"] for k, v in t.items() if k in ("eps=0.1", "eps=0.4")}
    return out


def baseline_vmap_jacrev(model, x, k_proj=None, seed=0, chunk=20):
    """The reference the issue names: per-sample Jacobians by vmap(jacrev), then J J^T or a dense Gaussian
    projection ``(J S^T)(J S^T)^T`` with S generated block by block (never more than 256 MB of it at once)."""
    from finetime.kernel import jacobian

    t0 = time.perf_counter()
    j = jacobian(model, x, chunk_size=chunk)
    t_jac = time.perf_counter() - t0
    if k_proj is None:
        theta = j @ j.T
        return theta, time.perf_counter() - t0, t_jac
    gen = torch.Generator().manual_seed(seed)
    phi = torch.zeros(j.shape[0], k_proj)
    block = max(1, (64 * 2**20) // k_proj)
    for s in range(0, j.shape[1], block):
        e = min(j.shape[1], s + block)
        phi += j[:, s:e] @ (torch.randn(k_proj, e - s, generator=gen) / math.sqrt(k_proj)).T
    del j
    return phi @ phi.T, time.perf_counter() - t0, t_jac


MEMORY_SCRIPT = r"""
import sys, time, json, torch


def peak_rss_gb():
    # VmHWM belongs to this process image; getrusage's ru_maxrss survives exec and would report the parent's peak
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20


from finetime.runtime import tune_allocator; tune_allocator()
from finetime.config import RunConfig
from finetime.predict import prepare
from finetime.kernel import compute_kernel
task = prepare(RunConfig.from_dict(dict(image_size=64, per_class=150, seed=1)))
t = time.perf_counter()
k = compute_kernel(task.model, task.data.x, max_memory=int(float(sys.argv[1]) * 2**30))
print(json.dumps({"seconds": time.perf_counter() - t, "n": k.n, "plan": k.meta["plan"],
                  "phase_seconds": k.meta["phase_seconds"],
                  "peak_rss_gb": peak_rss_gb()}))
"""


def measure_memory(budget_gb: float = 4.0) -> dict:
    """Peak resident memory of the N=750, 64 px factored kernel, in a fresh process (nothing else allocated)."""
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(budget_gb)], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["budget_gb"] = budget_gb
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kernel.json")
    ap.add_argument("--quick", action="store_true", help="fewer dimensions, no dense-Gaussian baseline")
    ap.add_argument("--memory-only", action="store_true", help="re-measure only the N=750 memory row in --out")
    args = ap.parse_args(argv)
    if args.memory_only:
        res = json.loads(args.out.read_text())
        res["memory"] = measure_memory()
        print(json.dumps(res["memory"]), flush=True)
        args.out.write_text(json.dumps(res, indent=1))
        return 0
    from finetime.runtime import tune_allocator
    from finetime.config import RunConfig
    from finetime.kernel import compute_kernel
    from finetime.predict import prepare

    tune_allocator()
    torch.set_num_threads(2)
    res = {"machine": {"threads": torch.get_num_threads()}, "accuracy": [], "speed": {}}
    cfg = RunConfig.from_dict(dict(image_size=32, per_class=20, seed=1, predictor="linear"))
    task = prepare(cfg)
    model, x = task.model, task.data.x
    compute_kernel(model, x[:8])  # warm-up (allocator, lazy imports)
    t0 = time.perf_counter()
    exact = compute_kernel(model, x, method="exact")
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    fact = compute_kernel(model, x)
    t_fact = time.perf_counter() - t0
    cfgs = {"GD lr 1e-3": cfg.replace(lr=1e-3), "GD lr 1e-2": cfg.replace(lr=1e-2),
            "SGD b32 lr 1e-3": cfg.replace(lr=1e-3, batch_size=32, runs=32)}
    ref_tt = tts(exact, task, cfgs)
    res["reference"] = {"method": "exact", "seconds": t_exact, "tt": ref_tt, "n": exact.n,
                        "plan": exact.meta["plan"]}
    dims = [256, 1024, 4096] if args.quick else [256, 1024, 4096, 16384]
    runs = [("factored", {}, "default: exact where cheap, Kronecker sketch elsewhere"),
            ("factored", {"exact_flops": 0}, "all weights projected (Kronecker)"),
            ("sparse", {}, "paper: very sparse {-1,0,+1}"),
            ("gaussian", {}, "paper: dense Gaussian")]
    for k in dims:
        for method, kw, label in runs:
            if method == "gaussian" and k > 1024:  # the dense Gaussian takes ~300 s at k=1024 already
                continue
            t0 = time.perf_counter()
            est = compute_kernel(model, x, method=method, projection_dim=k, seed=3, **kw)
            sec = time.perf_counter() - t0
            tt = tts(est, task, cfgs)
            tt_err = max(abs(tt[c][e] - ref_tt[c][e]) / max(ref_tt[c][e], 1) for c in tt for e in tt[c])
            row = {"k": k, "method": method, "label": label, "seconds": round(sec, 2),
                   "frobenius_error": rel(est.theta.double(), exact.theta.double()),
                   "top20_eig_error": top_eig_err(est.theta, exact.theta), "tt": tt, "tt_max_rel_diff": tt_err,
                   "exact_weight_fraction": est.meta["plan"]["exact_weight_fraction"]}
            res["accuracy"].append(row)
            print(json.dumps(row), flush=True)
    # speed against the torch.func baseline
    theta_b, t_base, t_jac = baseline_vmap_jacrev(model, x)
    res["speed"] = {"engine_exact_seconds": t_exact, "engine_factored_seconds": t_fact,
                    "factored_frobenius_error": rel(fact.theta.double(), exact.theta.double()),
                    "vmap_jacrev_seconds": t_jac, "vmap_jacrev_plus_gram_seconds": t_base,
                    "baseline_vs_engine_error": rel(exact.theta.double(), theta_b.double())}
    del theta_b
    if not args.quick:
        theta_g, t_gauss, _ = baseline_vmap_jacrev(model, x, k_proj=4096)
        res["speed"]["vmap_jacrev_gaussian4096_seconds"] = t_gauss
        res["speed"]["vmap_jacrev_gaussian4096_error"] = rel(theta_g.double(), exact.theta.double())
    print(json.dumps(res["speed"]), flush=True)
    # memory at N=750, 64 px, in a fresh process
    res["memory"] = measure_memory()
    print(json.dumps(res["memory"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
