"""The sum-of-logits kernel (``--kernel-outputs sum``, the pNTK) against the kernel of every output.

    .venv/bin/python bench/pntk_bench.py [--results paper,photos]   # writes bench/results/pntk.json

For every task (model, data, resolution, images per class, seed) of the stored suites' SGD cells with BatchNorm
frozen, on 2 threads with nothing else running: the default kernel (``C`` backward passes per sample) and the
sum-of-logits kernel times the identity over classes (one backward pass per sample), each timed; their relative
Frobenius distance and trace ratio; and, for every cell of the task, the one-kernel (``linear``) prediction from
each, scored against the stored real run at eps 0.1 and 0.4 (cells with real TT(0.4) < 10 left out, as everywhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
EPS = ("eps=0.1", "eps=0.4")


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[round(q * (len(v) - 1))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="paper,photos", help="comma list of suites: bench/results/<NAME>.jsonl")
    args = ap.parse_args(argv)
    from finetime.config import PRESETS, RunConfig
    from finetime.network import BatchNormMode
    from finetime.predict import kernel_for, prepare, problem_from, training_times
    from finetime.predictors import predict_trajectory
    from finetime.runtime import tune_allocator
    from finetime.training_time import relative_error

    tune_allocator()
    torch.set_num_threads(2)
    out = {"threads": torch.get_num_threads(), "suites": {}}
    for suite in args.results.split(","):
        cells = [json.loads(line) for line in (ROOT / f"bench/results/{suite}.jsonl").read_text().splitlines()
                 if line.strip()]
        tasks: dict = {}
        for c in cells:
            cfg = RunConfig.from_dict(c["config"])
            if cfg.optimizer.name == "sgd" and cfg.task.bn is BatchNormMode.FROZEN:
                tasks.setdefault(cfg.task, []).append(c)
        rows, errors = [], {"all": [], "sum": []}
        for group in tasks.values():
            base = RunConfig.from_dict(group[0]["config"])
            row = {"task": f"{base.task.data} {base.task.image_size} px, {base.task.per_class}/class, seed "
                           f"{base.task.seed}", "n": None, "seconds": {}}
            kernels = {}
            for outputs in ("all", "sum"):
                cfg = base.replace(kernel_outputs=outputs)
                task = prepare(cfg)
                t0 = time.perf_counter()
                kernels[outputs] = (task, kernel_for(task))
                row["seconds"][outputs] = round(time.perf_counter() - t0, 3)
            full, summed = kernels["all"][1].theta, kernels["sum"][1].theta
            row["n"] = kernels["all"][0].data.x.shape[0]
            row["frobenius"] = round(float((summed - full).norm() / full.norm()), 4)
            row["trace_ratio"] = round(float(summed.trace() / full.trace()), 4)
            row["cells"] = []
            for c in group:
                real = c["real"]["training_time"]
                if real["eps=0.4"]["step"] is None or real["eps=0.4"]["step"] < 10:
                    continue
                scored = {}
                for outputs, (task, k) in kernels.items():
                    cfg = dataclasses.replace(RunConfig.from_dict({**c["config"], "kernel_outputs": outputs}),
                                              predictor=PRESETS["linear"])
                    tt = training_times(predict_trajectory(problem_from(k, task), cfg, task).loss, cfg)
                    scored[outputs] = {e: round(relative_error(tt[e]["step"], real[e]["step"],
                                                               actual_diverged=c["real"]["diverged"]), 4)
                                       for e in EPS}
                    errors[outputs] += list(scored[outputs].values())
                row["cells"].append(scored)
            rows.append(row)
            print(f"{suite}: {row['task']}: {row['seconds']} frobenius {row['frobenius']}", file=sys.stderr,
                  flush=True)
        secs = {o: sum(r["seconds"][o] for r in rows) for o in ("all", "sum")}
        out["suites"][suite] = {
            "tasks": rows, "pairs": len(errors["all"]),
            "median": {o: round(statistics.median(e), 4) for o, e in errors.items()},
            "p95": {o: round(_quantile(e, 0.95), 4) for o, e in errors.items()},
            "kernel_seconds": {o: round(s, 2) for o, s in secs.items()},
            "median_frobenius": round(statistics.median(r["frobenius"] for r in rows), 4),
        }
    path = ROOT / "bench/results/pntk.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
