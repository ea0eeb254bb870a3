"""Refinement with re-linearization at the real weights, on real runs: the cells where the open-loop prediction is
weakest.

    .venv/bin/python bench/online_relin_bench.py [--out bench/results/online_relin.jsonl] [--limit N]
    .venv/bin/python bench/online_relin_bench.py --rescore     # the columns that need no training, current code

For each selected cell of the stored suites (the practitioner slice: SGD lr 1e-3 momentum 0.9 or BatchNorm batch
statistics; SGD lr 1e-2; AdamW lr >= 1e-4; and every 8th other cell of the paper suite as a control) the real run is
trained again from the pretrained weights with the suite's own batch order (validate's: seed + 2). After 10% and 20%
of its steps the refiner, fed the stored real curve up to there, re-linearizes at the live weights with the live
optimizer (`Refiner.relinearize`: kernel and outputs at the real weights, SGD momentum carried over) and predicts
the rest. The training times of its refined curve, of the refiner without re-linearization and of the open-loop
prediction are scored against the real run's (README definitions). One JSON line per cell, resumable; the cost of
each re-linearization (kernel at the real weights + simulation) is recorded beside the real run's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
from finetime.batches import batch_plan  # noqa: E402
from finetime.config import RunConfig  # noqa: E402
from finetime.finetune import finetune  # noqa: E402
from finetime.online import Refiner  # noqa: E402
from finetime.predict import prepare  # noqa: E402
from finetime.runtime import tune_allocator  # noqa: E402
from finetime.training_time import relative_error  # noqa: E402
from online_bench import SUITES, measurable, practitioner  # noqa: E402
from report import load, quantile  # noqa: E402

FRACTIONS = (0.1, 0.2)
EPS = (0.01, 0.1, 0.4)


def selected(cells):
    out, other = [], 0
    for c in cells:
        cfg = c["config"]
        if c["_suite"] == "text":
            continue  # a text kernel per checkpoint costs more than this bench's budget (BENCHMARKS, section 7)
        if not measurable(c):
            continue
        opt = cfg.get("optimizer", "sgd")
        hard = practitioner(cfg) or (opt == "sgd" and cfg["lr"] >= 1e-2) or (opt != "sgd" and cfg["lr"] >= 1e-4)
        if hard:
            out.append((c, "hard"))
        elif c["_suite"] == "paper":
            other += 1
            if other % 8 == 1:
                out.append((c, "control"))
    return out


def _times(est):
    return {str(e): (None if est.diverged else est.thresholds[f"eps={e}"].step) for e in EPS}


def _stored(c) -> dict:
    """The cell's stored default prediction, as the refiner reads a prediction JSON."""
    pred = c["predictors"][c["_prior"]]
    return {"predicted": {k: pred[k] for k in ("loss", "loss_runs", "training_time") if k in pred} | {
        "diverged": pred["diverged_fraction"] > 0.5, "seconds_per_step": None}}


def _observed(c, t) -> Refiner:
    """A refiner on the cell's stored prediction that has seen the stored real curve up to step ``t``."""
    real = c["real"]["loss"]
    r = Refiner.from_prediction(_stored(c), calibration=None)
    for s in range(1, t + 1):
        r.observe(s, real[s] if real[s] is not None else math.nan)
    return r


def plain_estimates(c, t) -> dict:
    """The open-loop and the curve-only refiner's training times after ``t`` observed steps (no training)."""
    plain = _observed(c, t).estimate()
    open_loop = Refiner.from_prediction(_stored(c), calibration=None).estimate()
    return {"refiner": _times(plain), "refiner_diverged": plain.diverged,
            "open_loop": _times(open_loop), "open_loop_diverged": open_loop.diverged}


def run_cell(c):
    cfg = RunConfig.from_dict(c["config"])
    task = prepare(cfg)
    live = types.SimpleNamespace(task=task, config=cfg)  # what re-linearization reads of a Prediction
    real = c["real"]["loss"]
    T = cfg.steps
    stops = {max(1, round(f * T)): f for f in FRACTIONS}
    out = {"id": c["id"], "suite": c["_suite"], "config": c["config"], "fractions": {}}

    def hook(t, model, opt):
        if t not in stops:
            return
        f = stops[t]
        refiner = _observed(c, t)
        refiner.prediction = live
        t0 = time.perf_counter()
        refiner.relinearize(model, t, optimizer=opt, loss=real[t])
        est = refiner.estimate()
        seconds = time.perf_counter() - t0
        out["fractions"][str(f)] = {"step": t, "relinearized": _times(est), "relinearized_diverged": est.diverged,
                                    **plain_estimates(c, t), "speed_after": est.speed, "seconds": round(seconds, 3)}

    plan = batch_plan(task.data.x.shape[0], cfg.optimizer, T, 1, torch.Generator().manual_seed(cfg.task.seed + 2))
    t0 = time.perf_counter()
    run = finetune(task.model, task.data.x, task.data.y, cfg.optimizer, T, plan, loss=cfg.objective,
                   params=task.trained, bn=cfg.task.bn, on_step=hook)
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    out["rerun_train_seconds"] = round(run.train_seconds, 3)
    rerun = run.loss.tolist()
    both = [(a, b) for a, b in zip(rerun, real) if b is not None and math.isfinite(a)]
    out["rerun_max_rel_diff"] = max((abs(a - b) / max(abs(b), 1e-12) for a, b in both), default=None)
    out["real"] = {str(e): c["real"]["training_time"][f"eps={e}"]["step"] for e in EPS}
    out["real_diverged"] = c["real"]["diverged"]
    return out


def errors(rows, method, f, keep=lambda r: True):
    errs = []
    for r in rows:
        if not keep(r) or str(f) not in r["fractions"]:
            continue
        fr = r["fractions"][str(f)]
        for e in EPS:
            errs.append(relative_error(fr[method][str(e)], r["real"][str(e)], predicted_diverged=fr[f"{method}_diverged"],
                                       actual_diverged=r["real_diverged"]))
    return errs


REGIMES = (
    ("AdamW lr 1e-4, images", lambda c: not _sgd(c) and c["lr"] == 1e-4),
    ("SGD lr 1e-3 momentum 0.9, BatchNorm frozen",
     lambda c: _sgd(c) and c["lr"] == 1e-3 and c.get("momentum") == 0.9 and c["bn"] == "frozen"),
    ("SGD lr 1e-2, BatchNorm frozen", lambda c: _sgd(c) and c["lr"] == 1e-2 and not c.get("momentum")
     and c["bn"] == "frozen"),
    ("SGD lr 1e-3, BatchNorm batch statistics", lambda c: _sgd(c) and c["lr"] == 1e-3 and c["bn"] == "batch"),
    ("SGD lr 1e-2, BatchNorm batch statistics", lambda c: _sgd(c) and c["lr"] == 1e-2 and c["bn"] == "batch"),
    ("AdamW lr 1e-3, images", lambda c: not _sgd(c) and c["lr"] == 1e-3),
    ("SGD lr 1e-2 momentum 0.9 (real runs diverge or nearly)",
     lambda c: _sgd(c) and c["lr"] == 1e-2 and c.get("momentum") == 0.9),
)
"""The hard regimes, one row each in ``render_regimes``."""


def _sgd(cfg) -> bool:
    return cfg.get("optimizer", "sgd") == "sgd"


def render_regimes(rows) -> str:
    """Median TT error by regime: open loop / refiner / re-linearized, at each observed fraction (the best bold)."""
    lines = ["| regime (cells) | " + " | ".join(f"{int(100 * f)}% observed" for f in FRACTIONS) + " |",
             "|---|" + "---|" * len(FRACTIONS)]
    for name, keep in REGIMES:
        sel = [r for r in rows if r["kind"] == "hard" and keep(r["config"])]
        if not sel:
            continue
        cols = []
        for f in FRACTIONS:
            meds = [statistics.median(errors(sel, m, f)) for m in ("open_loop", "refiner", "relinearized")]
            best = min(meds)
            cols.append(" / ".join(f"**{100 * v:.0f}%**" if v == best and meds.count(best) == 1 else f"{100 * v:.0f}%"
                                   for v in meds))
        lines.append(f"| {name} ({len(sel)}) | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def render(rows) -> str:
    lines = [f"{len(rows)} cells ({sum(r['kind'] == 'hard' for r in rows)} hard, "
             f"{sum(r['kind'] == 'control' for r in rows)} control), 3 eps each.", "",
             "| cells | estimate | " + " | ".join(f"{int(100 * f)}% observed: median / p95" for f in FRACTIONS)
             + " |", "|---|---|" + "---|" * len(FRACTIONS)]
    for name, keep in (("hard", lambda r: r["kind"] == "hard"), ("control", lambda r: r["kind"] == "control"),
                       ("all", lambda r: True)):
        for method in ("open_loop", "refiner", "relinearized"):
            cols = []
            for f in FRACTIONS:
                e = errors(rows, method, f, keep)
                cols.append(f"{100 * statistics.median(e):.1f}% / {100 * quantile(e, 0.95):.1f}%" if e else "n/a")
            lines.append(f"| {name} | {method.replace('_', '-')} | " + " | ".join(cols) + " |")
    cost = [r["fractions"][str(f)]["seconds"] / r["rerun_train_seconds"] for r in rows for f in FRACTIONS
            if str(f) in r["fractions"] and r["rerun_train_seconds"]]
    if cost:
        lines += ["", f"One re-linearization (kernel at the real weights + simulation) costs a median "
                      f"{statistics.median(cost):.2f}x the re-run's own training seconds "
                      f"(range {min(cost):.2f}-{max(cost):.2f}x; same machine, one process)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "online_relin.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many new cells (0: all)")
    ap.add_argument("--report", action="store_true", help="print the table of the results file and exit")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the open-loop and curve-only refiner columns of the results file from the "
                         "suites' stored predictions and real curves with the current refiner (no training; the "
                         "re-linearized column is kept) and print the table")
    args = ap.parse_args(argv)
    done = [json.loads(x) for x in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.report:
        print(render(done))
        return
    cells = []
    for stem, prior in SUITES:
        for c in load([HERE / "results" / f"{stem}.jsonl"]):
            c["_suite"], c["_prior"] = stem, prior
            cells.append(c)
    if args.rescore:
        by_id = {c["id"]: c for c in cells}
        for row in done:
            for fr in row["fractions"].values():
                fr.update(plain_estimates(by_id[row["id"]], fr["step"]))
        args.out.write_text("".join(json.dumps(row) + "\n" for row in done))
        print(render(done))
        print(render_regimes(done))
        return
    tune_allocator()
    seen = {r["id"] for r in done}
    todo = [(c, k) for c, k in selected(cells) if c["id"] not in seen]
    print(f"{len(todo)} cells to run ({len(seen)} done)", file=sys.stderr)
    for i, (c, kind) in enumerate(todo[: args.limit or None]):
        row = run_cell(c)
        row["kind"] = kind
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done.append(row)
        fr = row["fractions"]
        print(f"[{i + 1}/{len(todo)}] {c['_suite']} {c['config']['lr']:g} m{c['config'].get('momentum', 0):g} "
              f"bn {c['config']['bn']}: " + "; ".join(
                  f"{k}: relin {v['relinearized']} plain {v['refiner']} real {row['real']}" for k, v in fr.items()),
              file=sys.stderr, flush=True)
    print(render(done))


if __name__ == "__main__":
    main()
