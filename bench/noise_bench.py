"""The noise floor of the hard regimes: the same configuration fine-tuned again, with other batch orders and its own.

    .venv/bin/python bench/noise_bench.py [--orders 2]      # train (resumable; about 100 minutes on 2 cores)
    .venv/bin/python bench/noise_bench.py --report           # tables only, from the stored runs

A prediction made before training does not know which batch order the run will draw, so its error on a run cannot
fall below how much the real training time changes with the batch order alone. The paper suite measured that spread
for three gentle configurations only (BENCHMARKS.md section 1, "noise floor"). This bench measures it where the
suite's errors are large: every minibatch-SGD cell of ``bench/results/paper.jsonl`` (both seeds, repeat 0) with
lr 1e-3 and momentum 0.9 (the usual recipe), lr 1e-2 without momentum, or BatchNorm batch statistics.

Each such configuration is fine-tuned for real ``--orders`` more times, with the suite's batch orders of repeats 1, 2,
... (``seed + 2 + 1000 r``), from the same pretrained weights and head (the suite's own run is order 0), and then once
more with order 0 itself: the same batches in the same order, only the floating-point rounding differs (this
process's thread count, the order of reductions). Full-batch GD cells of the same regimes (lr 1e-3 with momentum
0.9, lr 1e-2, batch statistics) have no batch order to vary; those whose run is scored are re-run only.

Written to ``bench/results/noise.jsonl`` (one line per configuration and order; ``order`` 0 is the re-run), then
scored with the README's definitions (relative error, divergence mismatches 100%, pairs whose real TT(eps=0.4) < 10
left out unless the run diverged):

* `same order`: the stored run's training time as the prediction of its re-run. Not even knowing the batch order
  exactly can do better where this is large: the run is chaotic.
* `pair floor`: the least error one estimate can have on the worse of the two (``|a - b| / (a + b)``), over the pairs
  whose losses agree to within 1% of the starting loss over the first 10% of the run (``SAME_PREFIX``; the table of
  training times shows by how much each pair differs). Those first steps are all an estimator during training sees;
  from them it gives both runs the same estimate, and errs by at least this on one of them.
* `other orders`: each run predicted by the median training time of the same configuration's other orders (the
  divergence call by their majority). No predictor that is blind to the batch order can expect to do better than
  the real runs themselves do at predicting each other; this is the floor.
* `predict`: the default prediction's stored training times (`adaptive`, the median over its simulated batch
  orders), the same for every order of a configuration.
* `refiner` at 10% and 20% observed: `finetime.online.refine_curve` from each run's own first steps, with the
  stored prediction's simulated runs as its prior (as `bench/online_bench.py`); the new orders are runs the refiner's
  calibration never saw, so the coverage of its calibrated 90% intervals (the shipped calibration, with the
  prediction's bin) on them is a held-out check.

A last table checks what `predict` prints against every order of the SGD cells: its 5-95% band over simulated batch
orders (width against the real spread over orders) and its 90% model-error interval (the suite's own run, which the
calibration saw, against the other orders, which it did not).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from online_bench import _curve, estimates, gap_bin, measurable_run, prior_curve  # noqa: E402
from report import MIN_REAL_TT, load, quantile  # noqa: E402
from suite import prepare_model  # noqa: E402  (a fresh copy of the pretrained model and its new head)

from finetime.batches import batch_plan  # noqa: E402
from finetime.config import RunConfig  # noqa: E402
from finetime.finetune import finetune  # noqa: E402
from finetime.intervals import model_interval  # noqa: E402
from finetime.online import load_calibration, time_interval  # noqa: E402
from finetime.online.refiner import LEVEL  # noqa: E402
from finetime.predict import prepare, tolist, training_times  # noqa: E402
from finetime.training_time import Threshold, relative_error  # noqa: E402

SOURCE = HERE / "results" / "paper.jsonl"
OUT = HERE / "results" / "noise.jsonl"
EPS = (0.01, 0.1, 0.4)
FRACTIONS = (0.1, 0.2)
SAME_PREFIX = 0.01
"""``pair floor`` rows: only pairs whose losses over the first ``FRACTIONS[0]`` of the run differ by less than this
(relative to the starting loss), which no estimator from those steps can tell apart."""


def regime(cfg: dict, every_sgd: bool = False) -> str | None:
    """The hard regime a stored cell belongs to (None: not measured here; ``every_sgd``: other minibatch-SGD cells
    are ``"SGD, other"``)."""
    kind = "SGD" if cfg["batch_size"] else "GD"
    if cfg["bn"] == "batch":
        return f"{kind}, BatchNorm batch statistics"
    if cfg["lr"] == 1e-3 and cfg["momentum"] == 0.9:
        return f"{kind} lr 1e-3, momentum 0.9"
    if cfg["lr"] == 1e-2 and (cfg["momentum"] == 0.0 or kind == "GD"):
        return f"{kind} lr 1e-2" + (", momentum 0" if kind == "SGD" else "")
    return "SGD, other" if every_sgd and kind == "SGD" else None


def selected(cells: list[dict], every_sgd: bool = False) -> list[dict]:
    """The suite's cells measured here (repeat 0); full-batch ones only where their run is scored (``measurable_run``):
    they have no batch order to vary, only the re-run, and each costs 35-150 s."""
    out = [c for c in cells if c.get("repeat", 0) == 0 and regime(c["config"], every_sgd) is not None
           and (c["config"]["batch_size"] or measurable_run(c["real"]))]
    for c in out:
        c["_regime"] = regime(c["config"], every_sgd)
    return out


def train(cells: list[dict], orders: int, out: Path) -> None:
    """Fine-tune each selected cell with batch orders 1..orders, then once more with its own order 0 (resumable:
    runs already in ``out`` are kept). Orders outermost, so that an interrupted run leaves whole orders."""
    done = set()
    if out.exists():
        done = {(r["id"], r["order"]) for r in map(json.loads, filter(str.strip, out.read_text().splitlines()))}
    todo = [(c, k) for k in [*range(1, orders + 1), 0] for c in cells
            if (c["id"], k) not in done and (k == 0 or c["config"]["batch_size"])]  # full batch: the re-run only
    print(f"{len(cells)} configurations x {orders} orders and a re-run: {len(todo)} runs to train -> {out}",
          file=sys.stderr)
    tasks = {}
    for c, k in todo:
        cfg = RunConfig.from_dict(c["config"])
        if cfg.task not in tasks:
            tasks = {cfg.task: prepare(cfg)}  # one task's data and model held at a time
        task = tasks[cfg.task]
        plan = batch_plan(task.data.x.shape[0], cfg.optimizer, cfg.steps, 1,
                          torch.Generator().manual_seed(cfg.task.seed + 2 + 1000 * k))
        real = finetune(prepare_model(cfg), task.data.x, task.data.y, cfg.optimizer, cfg.steps, plan,
                        loss=cfg.objective, params=task.trained, bn=cfg.task.bn)
        rec = {"id": c["id"], "order": k, "config": c["config"],
               "real": {"loss": tolist(real.loss), "training_time": training_times(real.loss.unsqueeze(0), cfg),
                        "diverged": real.diverged, "train_seconds": round(real.train_seconds, 3),
                        "threads": torch.get_num_threads()}}
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"{c['id']} order {k}: TT(0.1) {rec['real']['training_time']['eps=0.1']['step']} "
              f"(stored order 0: {c['real']['training_time']['eps=0.1']['step']}), diverged {real.diverged}",
              file=sys.stderr, flush=True)


def _tt(real: dict, e: float):
    return real["training_time"][f"eps={e}"]["step"]


def _by_order(runs: list[dict]) -> tuple[dict, dict]:
    """{id: {order: real}} of the other orders (1, 2, ...) and {id: real} of the re-runs of order 0."""
    extra, rerun = defaultdict(dict), {}
    for r in runs:
        if r["order"] == 0:
            rerun[r["id"]] = r["real"]
        else:
            extra[r["id"]][r["order"]] = r["real"]
    return extra, rerun


def _orders(c: dict, extra: dict) -> dict:
    """{order: real run} of a cell, in order: the suite's own run (0) and the other orders trained here."""
    return {0: c["real"], **{k: v for k, v in sorted(extra.get(c["id"], {}).items())}}


def score(cells: list[dict], runs: list[dict], predictor: str = "adaptive",
          min_real_tt: int = MIN_REAL_TT) -> list[dict]:
    """One row per (configuration, order, eps, method) of the measurable runs; ``same order`` rows score the stored
    run's training time as a prediction of its re-run."""
    extra, rerun = _by_order(runs)
    calibration = load_calibration()
    rows = []
    for c in cells:
        def row(method, k, e, real, step, diverged):
            err = relative_error(step, _tt(real, e), predicted_diverged=diverged, actual_diverged=real["diverged"])
            return {"id": c["id"], "order": k, "eps": e, "method": method, "error": err,
                    "regime": c["_regime"], "predicted": step, "actual": _tt(real, e)}

        reals = _orders(c, extra)
        again = rerun.get(c["id"])
        if again is not None and measurable_run(again, min_real_tt):
            same_prefix = prefix_gap(c["real"], again, FRACTIONS[0]) < SAME_PREFIX
            for e in EPS:
                rows.append(row("same order", 0, e, again, _tt(c["real"], e), c["real"]["diverged"]))
                if measurable_run(c["real"], min_real_tt) and same_prefix:
                    rows.append({"id": c["id"], "order": 0, "eps": e, "regime": c["_regime"], "method": "pair floor",
                                 "error": pair_floor(c["real"], again, e)})
        if len(reals) < 2:
            continue  # no other batch order (full batch, or not trained yet)
        c["_prior"] = predictor
        prior = prior_curve(c)
        pred = c["predictors"][predictor]
        pred_div = pred["diverged_fraction"] > 0.5

        for k, real in sorted(reals.items()):
            if not measurable_run(real, min_real_tt):
                continue
            others = [v for j, v in reals.items() if j != k]
            curve = _curve(real["loss"])
            T = curve.shape[0] - 1
            refined = {f: estimates(prior, curve, T, f, refiner_only=True)["refiner"] for f in FRACTIONS}
            for e in EPS:
                div = sum(o["diverged"] for o in others) > len(others) / 2
                steps = [_tt(o, e) for o in others if not o["diverged"]]
                reached = [s for s in steps if s is not None]
                step = None if div or len(reached) <= len(steps) / 2 else int(round(statistics.median(reached)))
                rows.append(row("other orders", k, e, real, step, div))
                rows.append(row("predict", k, e, real, None if pred_div else _tt(pred, e), pred_div))
                for f, r in refined.items():
                    med, lo, hi, _ = time_interval(r, Threshold.eps(e), T, calibration.margin(f, gap_bin(c)),
                                                   LEVEL, calibration.band_scale)
                    rows.append(row(f"refiner {int(100 * f)}%", k, e, real, med, r.diverged))
                    if not r.diverged and med is not None and _tt(real, e) is not None:
                        rows[-1]["covered"] = lo <= _tt(real, e) <= (math.inf if hi is None else hi)
    return rows


def pair_floor(a: dict, b: dict, e: float) -> float:
    """The least error one estimate can have on the worse of two runs: ``|a - b| / (a + b)`` for training times a and
    b (the estimate between them that errs equally on both), 1 where they disagree on divergence or on reaching the
    threshold, 0 where neither reaches it or both diverge."""
    if a["diverged"] or b["diverged"]:
        return float(a["diverged"] != b["diverged"])
    ta, tb = _tt(a, e), _tt(b, e)
    if ta is None or tb is None:
        return float((ta is None) != (tb is None))
    return abs(ta - tb) / max(ta + tb, 1)


def prefix_gap(a: dict, b: dict, fraction: float) -> float:
    """How far two runs' observed losses are apart over the first ``fraction`` of the run: the largest difference,
    relative to the starting loss."""
    la, lb = _curve(a["loss"]), _curve(b["loss"])
    m = int(round(fraction * (la.shape[0] - 1)))
    return float(((la[: m + 1] - lb[: m + 1]).abs() / la[0]).nan_to_num(math.inf).max())


def spreads(cells: list[dict], runs: list[dict], predictor: str = "adaptive") -> list[str]:
    """Per configuration: real TT(eps=0.1) of every order (the re-run of order 0 in brackets)."""
    extra, rerun = _by_order(runs)
    lines = ["| regime | configuration | real TT(0.1): order 0 (re-run), 1, 2, ... | re-run against order 0: largest "
             "loss difference over the first 10% / 20% of the run | predict |", "|---|---|---|---|---|"]

    def tt(r):
        return "div." if r["diverged"] else str(_tt(r, 0.1))

    for c in sorted(cells, key=lambda c: (c["_regime"], c["config"]["image_size"], c["config"]["per_class"],
                                          c["config"]["batch_size"], c["config"]["seed"])):
        others = list(_orders(c, extra).values())[1:]
        if not others and c["id"] not in rerun:
            continue
        cfg = c["config"]
        first = tt(c["real"]) + (f" ({tt(rerun[c['id']])})" if c["id"] in rerun else "")
        gap = (" / ".join(f"{100 * prefix_gap(c['real'], rerun[c['id']], f):.2g}%" for f in FRACTIONS)
               if c["id"] in rerun else "-")
        pred = c["predictors"][predictor]
        p = "div." if pred["diverged_fraction"] > 0.5 else str(_tt(pred, 0.1))
        lines.append(f"| {c['_regime']} | {cfg['data']} {cfg['image_size']} px, {cfg['per_class']}/class, seed "
                     f"{cfg['seed']}, batch {cfg['batch_size'] or 'full'} | "
                     f"{', '.join([first, *map(tt, others)])} | {gap} "
                     f"| {p} |")
    return lines


def table(rows: list[dict]) -> list[str]:
    methods = ["pair floor", "same order", "other orders", "predict", *(f"refiner {int(100 * f)}%" for f in FRACTIONS)]
    regimes = sorted({r["regime"] for r in rows})
    lines = ["| regime | pairs (re-run / orders) | " + " | ".join(f"{m} median / p95" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for name, keep in [*((g, lambda r, g=g: r["regime"] == g) for g in regimes), ("all", lambda r: True)]:
        cells, n = [], {}
        for m in methods:
            errs = [r["error"] for r in rows if r["method"] == m and keep(r)]
            n[m] = len(errs)
            cells.append(f"{100 * statistics.median(errs):.1f}% / {100 * quantile(errs, 0.95):.1f}%" if errs else "-")
        lines.append(f"| {name} | {n['same order']} / {n['other orders']} | " + " | ".join(cells) + " |")
    cover = []
    for f in FRACTIONS:
        hits = [r["covered"] for r in rows if r["method"] == f"refiner {int(100 * f)}%" and "covered" in r
                and r["order"] > 0]
        if hits:
            cover.append(f"{100 * sum(hits) / len(hits):.1f}% of {len(hits)} at {int(100 * f)}% observed")
    if cover:
        lines += ["", "The refiner's calibrated 90% intervals on the orders the calibration never saw (1, 2, ...) "
                      "contain the real training time in " + ", ".join(cover) + "."]
    return lines


def bands(cells: list[dict], runs: list[dict], predictor: str = "adaptive") -> list[str]:
    """How the prediction's printed ranges hold the real runs of every batch order (0, 1, 2, ...), SGD cells whose
    prediction reaches the threshold: its 5-95% band over simulated batch orders, and its 90% model-error interval
    (``finetime.intervals``, the shipped calibration, the cell's bin; orders 1, 2, ... were never calibrated on)."""
    extra, _ = _by_order(runs)
    open_loop = (load_calibration().open_loop or {}).get("margins", {})
    stats = defaultdict(lambda: defaultdict(list))
    for c in cells:
        pred = c["predictors"][predictor]
        if not c["config"]["batch_size"] or pred["diverged_fraction"] > 0.5:
            continue
        c["_prior"] = predictor
        margin = open_loop.get(gap_bin(c))  # the margin `predict` prints its interval with
        reals = list(_orders(c, extra).values())
        s = stats[c["_regime"]]
        for e in EPS:
            t = pred["training_time"][f"eps={e}"]
            if t["step"] is None or t["low"] is None or t["high"] is None:
                continue
            s["width"].append((t["high"] + 1) / (t["low"] + 1))
            tts = [(k, _tt(r, e)) for k, r in enumerate(reals)
                   if measurable_run(r) and not r["diverged"] and _tt(r, e) is not None]
            if len(tts) >= 2:
                s["spread"].append((max(x for _, x in tts) + 1) / (min(x for _, x in tts) + 1))
            interval = model_interval(t["step"], margin, c["config"]["steps"], band=(t["low"], t["high"]))
            for k, x in tts:
                s["band"].append(t["low"] <= x <= t["high"])
                if interval is not None:
                    inside = interval[0] <= x <= (math.inf if interval[1] is None else interval[1])
                    s["interval new" if k else "interval"].append(inside)
    lines = ["| regime | real training times | in the 5-95% band over batch orders | band width, high / low (median) "
             "| real spread over orders, max / min (median) | in the 90% model-error interval: the suite's run / the "
             "other orders |", "|---|---|---|---|---|---|"]
    for g in sorted(stats):
        s = stats[g]
        share = lambda v: f"{100 * sum(v) / len(v):.0f}%" if v else "-"  # noqa: E731
        ratio = lambda v: f"x{statistics.median(v):.2f}" if v else "-"  # noqa: E731
        lines.append(f"| {g} | {len(s['band'])} | {share(s['band'])} | {ratio(s['width'])} | {ratio(s['spread'])} | "
                     f"{share(s['interval'])} / {share(s['interval new'])} |")
    return lines


def render(source: Path = SOURCE, out: Path = OUT, predictor: str = "adaptive", every_sgd: bool = False) -> str:
    """The three tables (training times by batch order; errors by regime; what `predict` prints against every order)
    from the stored runs."""
    cells = selected(load([source]), every_sgd)
    runs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the refiner's many small tensor operations (as online_bench)
    try:
        rows = score(cells, runs, predictor)
    finally:
        torch.set_num_threads(threads)
    return ("\n".join(spreads(cells, runs, predictor)) + "\n\n" + "\n".join(table(rows)) + "\n\n"
            + "\n".join(bands(cells, runs, predictor)) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=2, help="batch orders to train besides the suite's own")
    ap.add_argument("--report", action="store_true", help="only score the stored runs")
    ap.add_argument("--source", type=Path, default=SOURCE, help="the suite results whose cells are re-trained")
    ap.add_argument("--predictor", default="adaptive", help="the stored prediction scored and used as the prior")
    ap.add_argument("--every-sgd", action="store_true", help="every minibatch-SGD cell, not only the hard regimes")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not args.report:
        train(selected(load([args.source]), args.every_sgd), args.orders, args.out)
    print(render(args.source, args.out, args.predictor, args.every_sgd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
