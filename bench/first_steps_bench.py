"""The first real steps as evidence: which cells they help, and the prior that fits them (`finetime.first_steps`).

    .venv/bin/python bench/first_steps_bench.py [--steps 5] [--out bench/results/first_steps.jsonl]   # ~8 min
    .venv/bin/python bench/first_steps_bench.py --score                                               # no torch run

For every measurable cell of the image suites (`paper.jsonl`, `photos.jsonl`, `adamw.jsonl`: real TT(eps=0.4) >= 10,
or diverged)
the first `--steps` real steps of the cell's run are trained on a fresh copy of its model with the prediction's own
batch order (`finetime.first_steps.run_first_steps`, as `predict` does; not the real run's order) and their
whole-training-set losses are stored, one JSON line per cell (resumable). `--eval-samples M --out FILE` measures only the cells with more than M samples, evaluating the losses on a
class-balanced subset of M of them (a cheaper first-steps measurement than `predict`'s, scored beside the same cells
evaluated on every sample). `--score` then time-warps each cell's stored
kernel-only prediction (`adaptive-no-first-steps`: the default without its first steps; with batch statistics
the one-kernel `linear` one, which is what the default warps there) to them with
`finetime.first_steps.apply_first_steps` at several prior spreads of the log speed, and scores the training times
against the stored real runs (README definitions), by BatchNorm mode, linearity check (far from linear: loss gap
>= `FAR_FROM_LINEAR`), suite and resolution, beside the prediction without the warp and `--first-steps auto`
(the warp with batch statistics or far from linear). This is how `auto` was scoped and how its prior spread was
chosen (BENCHMARKS.md, section 1, "The first real steps"). AdamW's cells (`adamw.jsonl`) are in too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
from finetime import first_steps as fs  # noqa: E402
from finetime.config import FAR_FROM_LINEAR, RunConfig  # noqa: E402
from finetime.dynamics import Trajectory  # noqa: E402
from finetime.training_time import Threshold, relative_error, steps_to_threshold  # noqa: E402
from report import MIN_REAL_TT, load, quantile  # noqa: E402

SUITES = ("paper", "photos", "adamw")
BASE = "adaptive-no-first-steps"
WARPED_BATCH = "linear"
"""What is warped with batch statistics: the one kernel at ``w0`` (the default refreshes no kernel there once it
measures the first steps, ``RunConfig.batch_statistics_fitted``); elsewhere ``BASE``."""
SDS = (0.5, 1.0, 2.0, 3.0)
EPS = (0.01, 0.1, 0.4)


def measurable(c) -> bool:
    real = c["real"]
    return real["diverged"] or (real["training_time"].get("eps=0.4", {}).get("step") or 0) >= MIN_REAL_TT


def cells():
    out = []
    for stem in SUITES:
        for c in load([HERE / "results" / f"{stem}.jsonl"]):
            if measurable(c) and BASE in c["predictors"]:
                c["_suite"] = stem
                out.append(c)
    return out


def measure(path: Path, steps: int, eval_samples: int | None = None) -> None:
    from finetime.predict import prepare
    from finetime.runtime import tune_allocator

    tune_allocator()
    done = {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()} if path.exists() else set()
    todo = [c for c in cells() if c["id"] not in done and (eval_samples is None or
                                                          c["config"]["classes"] * c["config"]["per_class"] > eval_samples)]
    print(f"{len(todo)} cells to measure -> {path}", file=sys.stderr)
    with path.open("a") as f:
        for i, c in enumerate(todo):
            cfg = RunConfig.from_dict({k: v for k, v in c["config"].items() if k in RunConfig.flat_keys()})
            task = prepare(cfg)
            m = fs.run_first_steps(task, cfg, steps, eval_samples=eval_samples)
            f.write(json.dumps({"id": c["id"], "suite": c["_suite"], **m.to_dict()}) + "\n")
            f.flush()
            print(f"[{i + 1}/{len(todo)}] {c['id']} {cfg.task.image_size}px bn={cfg.task.bn.value} "
                  f"losses {' '.join(f'{v:.3f}' for v in m.losses)} ({m.seconds:.1f} s)", file=sys.stderr, flush=True)


def _times(loss: torch.Tensor, diverged: bool) -> dict:
    """TT at each eps of one curve (``None``: diverged or not reached)."""
    out = {}
    for e in EPS:
        step = int(steps_to_threshold(loss[None], Threshold.eps(e))[0])
        out[e] = None if diverged or step < 0 else step
    return out


def _trajectory(p: dict) -> Trajectory:
    """A stored prediction's mean curve as a one-run trajectory (diverged where the prediction mostly did)."""
    mean = torch.tensor([float("nan") if v is None else v for v in p["loss"]], dtype=torch.float64)[None]
    bad = torch.nonzero(~torch.isfinite(mean[0]))
    traj = Trajectory(mean, torch.zeros_like(mean), torch.tensor([int(bad[0]) if len(bad) else -1]))
    if p["diverged_fraction"] > 0.5 and not len(bad):
        traj.diverged_at[:] = 0
    return traj


def score(path: Path, ids: set | None = None, warp: str | None = None) -> dict:
    measured = {r["id"]: r for r in map(json.loads, filter(str.strip, path.read_text().splitlines()))
                if ids is None or r["id"] in ids}
    errors: dict = defaultdict(list)
    for c in cells():
        if c["id"] not in measured:
            continue
        p = c["predictors"][BASE]
        cfg = c["config"]
        one = warp == "linear" or (warp is None and cfg["bn"] == "batch")
        kernel_only, warped = _trajectory(p), _trajectory(c["predictors"][WARPED_BATCH] if one else p)
        real = c["real"]
        gaps = (p.get("info") or {}).get("loss_gaps")
        far = bool(gaps) and gaps[0] >= FAR_FROM_LINEAR
        where = f"bn {cfg['bn']}" + ("" if cfg["bn"] == "batch" else ", far from linear" if far else ", near linear")
        groups = {"all", f"bn {cfg['bn']}", where, f"{c['_suite']} {where}", f"{cfg['image_size']} px {where}"}
        m = measured[c["id"]]
        per = {}
        for sd in (None,) + SDS:
            out = kernel_only if sd is None else fs.apply_first_steps(warped, fs.FirstSteps.from_dict(m), sd=sd)
            pdiv = out.diverged_fraction > 0.5
            pred = _times(out.loss[0], pdiv)
            per["kernel only" if sd is None else f"sd {sd:g}"] = [
                relative_error(pred[e], real["training_time"][f"eps={e}"]["step"], predicted_diverged=pdiv,
                               actual_diverged=real["diverged"]) for e in EPS]
        # --first-steps auto: the warp (FIRST_STEPS_SPEED_SD) with batch statistics or far from linear, else none
        per["auto"] = per[f"sd {fs.FIRST_STEPS_SPEED_SD:g}"] if cfg["bn"] == "batch" or far else per["kernel only"]
        for how, errs in per.items():
            for g in groups:
                errors[(g, how)] += errs
    table = {}
    for (g, how), e in errors.items():
        table.setdefault(g, {})[how] = (statistics.median(e), quantile(e, 0.95), len(e))
    return table


def render(table: dict) -> str:
    hows = ["kernel only"] + [f"sd {sd:g}" for sd in SDS] + ["auto"]
    lines = ["| cells (cell, eps pairs) | " + " | ".join(f"{h}: median / p95" for h in hows) + " |",
             "|---|" + "---|" * len(hows)]
    for g in sorted(table, key=lambda g: (g != "all", g)):
        n = table[g]["kernel only"][2]
        lines.append(f"| {g} ({n}) | " + " | ".join(
            f"{100 * table[g][h][0]:.1f}% / {100 * table[g][h][1]:.1f}%" for h in hows) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=fs.FIRST_STEPS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "first_steps.jsonl")
    ap.add_argument("--score", action="store_true", help="score the stored measurements (no training)")
    ap.add_argument("--warp", choices=["linear", "refreshed"],
                    help="with --score: warp this prediction in every cell, the one-kernel `linear` or the refreshed "
                         f"`{BASE}` (default: as the default predictor does, the one kernel with batch statistics "
                         "only); prints the table, writes nothing")
    ap.add_argument("--eval-samples", type=int, default=None,
                    help="evaluate the losses on a class-balanced subset of this many samples (and measure only the "
                         "cells with more); predict evaluates every sample")
    args = ap.parse_args(argv)
    if not args.score:
        measure(args.out, args.steps, args.eval_samples)
    table = score(args.out, warp=args.warp)
    if args.warp:
        print(render(table))
        return 0
    (args.out.with_suffix(".json")).write_text(json.dumps({g: {h: list(t[h]) for h in sorted(t)}
                                                          for g, t in sorted(table.items())}, indent=1))
    print(render(table))
    if args.eval_samples is not None:  # the same cells with every sample evaluated
        ids = {json.loads(line)["id"] for line in args.out.read_text().splitlines() if line.strip()}
        print(f"the same cells, losses over every sample ({HERE / 'results' / 'first_steps.jsonl'}):\n")
        print(render(score(HERE / "results" / "first_steps.jsonl", ids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
