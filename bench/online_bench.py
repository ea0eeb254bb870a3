"""Online refinement benchmark: training-time error as a function of the fraction of the real run observed.

    .venv/bin/python bench/online_bench.py [--calibrate] [--out bench/results/online.json]

For every cell of the stored suites (bench/results/paper.jsonl, adamw.jsonl, text.jsonl and photos.jsonl, each with
its default `adaptive` prediction) and every observed fraction f in 0, 5, 10, 20, 40% of the run, the real
whole-training-set losses of steps 0..fT are given to

* `refiner`: `finetime.online.refine_curve` (time-warp posterior of the prediction's simulated runs where the
  results store them, `loss_runs`, else of its curve; kernel-free fallback),
* `open-loop`: the refiner with nothing observed but the starting loss (its prior alone: the prediction's simulated
  runs under the speed prior),
* `predict`: the training times `finetime predict` printed before training (the median over its simulated runs),
* `exponential` and `power-law`: kernel-free fits to the observed points only (need >= 6 points),

and the training time read off each estimated curve is scored against the real one with the README's definitions
(relative error, divergence mismatches 100%, cells with real TT(eps=0.4) < 10 left out as in the suite tables).

Intervals: the refiner's 90% interval is its posterior's 5-95% band, its log half-widths about the median scaled
once anything is observed (by the scale among `REFINER_BAND_SCALES` whose held-out intervals are narrowest), widened
by a margin (log steps) per observed fraction, and by the prediction's calibration bin (its linearity check's gap
bin, or fitted to its first real steps: `finetime.intervals.prediction_bin`) where the bin has at least
`MIN_BIN_ROWS` scored rows at that fraction. `predict`'s own interval is its band over simulated batch orders, scaled
likewise (`BAND_SCALES`), widened by a margin per bin. `--calibrate` fits the scales and margins on all cells
(split-conformal 90% quantile of the extra margin each row needs) and writes `src/finetime/online/calibration.json`;
the coverage reported is held out: each group (suite x dataset x resolution) is scored with margins fitted on the
other groups only, per bin and (for comparison) pooled. No real run is trained here: the real curves are the
suites' stored ones.
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
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
from finetime import intervals  # noqa: E402
from finetime.online import refine_curve, time_interval  # noqa: E402
from finetime.online._fit import (LEVEL_POINTS, MIN_POINTS_FOR_FIT, SPEED_PERSISTENCE, SPEED_PRIOR_SD,  # noqa: E402
                                   Refined, evidence_points, fit_exponential, fit_power_law)
from finetime.online.refiner import LEVEL  # noqa: E402
from finetime.training_time import Threshold, relative_error  # noqa: E402
from report import MIN_REAL_TT, load, quantile  # noqa: E402

SUITES = (("paper", "adaptive"), ("adamw", "adaptive"), ("text", "adaptive"), ("photos", "adaptive"))
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)
EPS = (0.01, 0.1, 0.4)
METHODS = ("refiner", "open-loop", "predict", "exponential", "power-law")
"""``open-loop``: the refiner with nothing but the starting loss observed (its prior: the prediction's simulated runs
under the speed prior); ``predict``: the training times `finetime predict` printed (the median over its simulated
runs)."""
ENSEMBLE = True
"""The refiner's prior is the prediction's simulated runs where the results store them (``loss_runs``)."""
CALIBRATION = HERE.parent / "src" / "finetime" / "online" / "calibration.json"


def _curve(values):
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def practitioner(cfg) -> bool:
    """The issue's practitioner slice: SGD lr 1e-3 with momentum 0.9, or BatchNorm batch statistics."""
    return cfg.get("bn") == "batch" or (cfg.get("optimizer", "sgd") == "sgd" and cfg["lr"] == 1e-3
                                       and cfg.get("momentum", 0.0) == 0.9)


def measurable_run(real: dict, min_real_tt: int = MIN_REAL_TT) -> bool:
    """The suite tables' rule: real runs whose TT(eps=0.4) is below ``min_real_tt`` steps are left out, unless they
    diverged."""
    return real["diverged"] or (real["training_time"].get("eps=0.4", {}).get("step") or 0) >= min_real_tt


def measurable(c) -> bool:
    """``measurable_run`` of a cell's real run."""
    return measurable_run(c["real"])


def estimates(prior, real, T, f, evidence=evidence_points, tau=SPEED_PRIOR_SD, refiner_only=False,
              persistence=SPEED_PERSISTENCE, level_points=LEVEL_POINTS):
    """{method: Refined or None (cannot estimate)} from the first round(f T) steps of the real curve; the refiner's
    posterior with ``evidence``, ``tau`` and ``persistence`` (the refiner alone with ``refiner_only``)."""
    m = int(round(f * T))
    t = torch.arange(m + 1, dtype=torch.float64)
    y = real[: m + 1]
    out = {"refiner": refine_curve(prior, t, y, T, tau=tau, evidence=evidence, persistence=persistence,
                                   level_points=level_points)}
    if refiner_only:
        return out
    out["open-loop"] = refine_curve(prior, t[:1], y[:1], T)
    for name, fit in (("exponential", fit_exponential), ("power-law", fit_power_law)):
        if m + 1 < MIN_POINTS_FOR_FIT:
            out[name] = None
        elif out["refiner"].diverged:
            out[name] = out["refiner"]
        else:
            out[name] = Refined(fit(t, y, T).unsqueeze(0), torch.ones(1, dtype=torch.float64), name)
    return out


def prior_curve(c, ensemble: bool = True) -> torch.Tensor:
    """The cell's prediction as the refiner's prior: its simulated runs ``(R, T+1)`` where they are stored (NaN
    from each run's divergence on), else its curve, NaN from its divergence on when most simulated runs diverged
    (what ``Refiner.from_prediction`` does)."""
    pred = c["predictors"][c["_prior"]]
    if ensemble and pred.get("loss_runs"):
        return torch.stack([_curve(row) for row in pred["loss_runs"]])
    prior = _curve(pred["loss"])
    if pred["diverged_fraction"] > 0.5:
        bad = torch.nonzero(~torch.isfinite(prior))
        prior[int(bad[0]) if len(bad) else 0:] = math.nan
    return prior


def collect(cells, evidence=evidence_points, tau=SPEED_PRIOR_SD, refiner_only=False, persistence=SPEED_PERSISTENCE,
            ensemble=ENSEMBLE, level_points=LEVEL_POINTS):
    """One row per (cell, observed fraction, estimate, eps) of the measurable cells (``estimates``)."""
    rows = []
    for c in cells:
        if not measurable(c):
            continue
        real = c["real"]
        prior = prior_curve(c, ensemble)
        rc = _curve(real["loss"])
        T = rc.shape[0] - 1
        cfg = c["config"]
        group = f"{c['_suite']} {cfg['data']} {cfg['image_size']}px"
        pred = c["predictors"][c["_prior"]]
        pred_div = pred["diverged_fraction"] > 0.5
        bin_ = gap_bin(c)
        for f in FRACTIONS:
            def row(name, e, **scored):
                return {"cell": c["id"], "suite": c["_suite"], "group": group, "fraction": f, "method": name,
                        "eps": e, "bin": bin_, "actual": real["training_time"][f"eps={e}"]["step"],
                        "practitioner": practitioner(cfg), **scored}

            def error(step, diverged, e):
                return relative_error(step, real["training_time"][f"eps={e}"]["step"], predicted_diverged=diverged,
                                      actual_diverged=real["diverged"])

            for name, r in estimates(prior, rc, T, f, evidence, tau, refiner_only, persistence,
                                     level_points).items():
                for e in EPS:
                    if name == "refiner" and f == 0:  # nothing observed: Refiner.estimate says what predict said
                        step = None if pred_div else pred["training_time"][f"eps={e}"]["step"]
                        rows.append(row(name, e, predicted=step, low=None, high=None, diverged=pred_div,
                                        as_predicted=True, error=error(step, pred_div, e)))
                        continue
                    if r is None:
                        rows.append(row(name, e, error=None))
                        continue
                    med, lo, hi, _ = time_interval(r, Threshold.eps(e), T, None, LEVEL)
                    rows.append(row(name, e, predicted=med, low=lo, high=hi, diverged=r.diverged,
                                    error=error(med, r.diverged, e)))
            if not refiner_only:  # what `finetime predict` printed (its training times, read per simulated run)
                for e in EPS:
                    step = None if pred_div else pred["training_time"][f"eps={e}"]["step"]
                    rows.append(row("predict", e, predicted=step, diverged=pred_div,
                                    error=error(step, pred_div, e)))
    return rows


def needed_margin(r, scale: float = 1.0) -> float | None:
    """Extra log-margin the row's posterior band, its log half-widths about the median scaled by ``scale`` (once
    anything is observed), needs to contain the real time (None: not scorable). With nothing observed the refiner's
    rows are the prediction's own (its interval is scored by ``open_loop_coverage``); the posterior's margin there,
    for refiners with no such interval, is fitted on the prior alone (``open-loop``)."""
    posterior = r["method"] == "refiner" or (r["method"] == "open-loop" and r["fraction"] == 0)
    if not posterior or r.get("as_predicted") or r["error"] is None or r.get("diverged") or r["actual"] is None \
            or r["predicted"] is None:
        return None
    k = _scale(r, scale)
    a = math.log(r["actual"] + 1)
    m = math.log(r["predicted"] + 1)
    lo = m - k * (m - math.log(r["low"] + 1))
    hi = math.inf if r["high"] is None else m + k * (math.log(r["high"] + 1) - m)
    return max(lo - a, a - hi, 0.0)


def _scale(r, scale: float) -> float:
    """The band scale of a row: ``scale`` once anything is observed; before that the band is the speed prior's, not
    a posterior's, and stays as it is (``Refiner.estimate`` does the same)."""
    return scale if r["fraction"] > 0 else 1.0


def conformal(scores, level=LEVEL):
    s = sorted(scores)
    if not s:
        return 0.0
    k = min(math.ceil((len(s) + 1) * level), len(s))
    return s[k - 1]


def fit_margins(rows, scale: float = 1.0):
    by = defaultdict(list)
    for r in rows:
        s = needed_margin(r, scale)
        if s is not None:
            by[r["fraction"]].append(s)
    return {f: conformal(by[f]) for f in FRACTIONS}


MIN_BIN_ROWS = 30
"""A calibration bin gets margins of its own at an observed fraction only with at least this many scored rows there;
else the pooled margin applies."""


def fit_bin_margins(rows, scale: float = 1.0):
    """``{bin: {fraction: margin or None}}``: the split-conformal margin of each prediction bin (``gap_bin``), None
    where the bin has fewer than ``MIN_BIN_ROWS`` rows at that fraction."""
    by = defaultdict(list)
    for r in rows:
        s = needed_margin(r, scale)
        if s is not None:
            by[r["bin"], r["fraction"]].append(s)
    return {b: {f: (conformal(by[b, f]) if len(by[b, f]) >= MIN_BIN_ROWS else None) for f in FRACTIONS}
            for b in sorted({b for b, _ in by})}


def _margin(pooled, binned, r):
    m = (binned or {}).get(r["bin"], {}).get(r["fraction"])
    return pooled[r["fraction"]] if m is None else m


def heldout_coverage(rows, by_bin=True, keep=lambda r: True, scale: float = 1.0):
    """Coverage of the 90% intervals on each group (suite x dataset x resolution) with margins fitted on the other
    groups (per prediction bin with ``by_bin``, else pooled), over the rows ``keep`` selects: ``{fraction: (share,
    rows)}``."""
    groups = sorted({r["group"] for r in rows})
    hit, tot = defaultdict(int), defaultdict(int)
    for g in groups:
        others = [r for r in rows if r["group"] != g]
        pooled, binned = fit_margins(others, scale), (fit_bin_margins(others, scale) if by_bin else None)
        for r in rows:
            if r["group"] != g or not keep(r):
                continue
            s = needed_margin(r, scale)
            if s is None:
                continue
            tot[r["fraction"]] += 1
            hit[r["fraction"]] += s <= _margin(pooled, binned, r) + 1e-12
    return {f: (hit[f] / tot[f] if tot[f] else math.nan, tot[f]) for f in FRACTIONS}


def _width(r, margin: float, scale: float) -> float:
    """The row's interval width as the ratio ``(high + 1) / (low + 1)``: its band scaled, plus the margin twice."""
    return math.exp(_scale(r, scale) * math.log((r["high"] + 1) / (r["low"] + 1)) + 2 * margin)


def interval_width(rows, pooled, binned, scale: float = 1.0):
    """Median over the scorable refiner rows of the 90% interval's width, as the ratio ``(high + 1) / (low + 1)``
    (rows whose interval is open above left out), by observed fraction."""
    out = {}
    for f in FRACTIONS:
        w = [_width(r, _margin(pooled, binned, r), scale) for r in rows
             if r["fraction"] == f and needed_margin(r) is not None and r["high"] is not None]
        out[f] = statistics.median(w) if w else math.nan
    return out


REFINER_BAND_SCALES = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
"""Scales of the posterior band's log half-widths tried for the refiner's interval (``Calibration.band_scale``; 1:
the band as it is); the one whose intervals are narrowest once anything is observed, held out by group, is
calibrated."""


def refiner_band_scale_study(rows) -> dict:
    """``{scale: ({fraction: held-out coverage}, {fraction: median held-out width}, median held-out width once
    anything is observed)}``: each group's rows with bin margins fitted on the other groups."""
    out = {}
    for k in REFINER_BAND_SCALES:
        widths = defaultdict(list)
        for g in sorted({r["group"] for r in rows}):
            others = [r for r in rows if r["group"] != g]
            pooled, binned = fit_margins(others, k), fit_bin_margins(others, k)
            for r in rows:
                if r["group"] == g and needed_margin(r) is not None and r["high"] is not None:
                    widths[r["fraction"]].append(_width(r, _margin(pooled, binned, r), k))
        cov = heldout_coverage(rows, scale=k)
        observed = [w for f, ws in widths.items() if f > 0 for w in ws]
        out[k] = ({f: cov[f][0] for f in FRACTIONS}, {f: statistics.median(ws) for f, ws in widths.items()},
                  statistics.median(observed) if observed else math.nan)
    return out


def table(rows, keep=lambda r: True):
    out = {}
    for m in METHODS:
        for f in FRACTIONS:
            errs = [r["error"] for r in rows if r["method"] == m and r["fraction"] == f and keep(r)]
            if errs and all(e is not None for e in errs):
                out[(m, f)] = (statistics.median(errs), quantile(errs, 0.95), len(errs))
            else:
                out[(m, f)] = None
    return out


GAP_BINS = (0.01, 0.1)
"""Bins of the linearity check's loss gap that condition the open-loop interval (finetime.intervals)."""


def gap_bin(c) -> str:
    """The calibration bin of a cell's default prediction, as ``predict`` chooses it
    (``finetime.intervals.prediction_bin``): fitted to its first real steps, or its linearity check's gap bin."""
    info = c["predictors"][c["_prior"]].get("info") or {}
    gaps = info.get("loss_gaps")
    return intervals.prediction_bin(gaps[0] if gaps else None, (info.get("first_steps") or {}).get("speed") is not None,
                                    c["config"].get("bn") == "batch", GAP_BINS)


def open_loop_rows(cells):
    """Per (cell, eps) of the measured cells: the prediction's own training time (what `predict` prints) against
    the real one, with the prediction's linearity-check bin: ``d`` is ``log((TT_real + 1) / (TT_pred + 1))``,
    ``None`` where no finite interval can hold the real time (the prediction diverged or never reaches the threshold
    while the real run does), and ``below`` / ``above`` the log half-widths of the prediction's 5-95% band over
    simulated batch orders about its step (``above`` infinite where some orders never reach the threshold). The
    one-kernel ``linear`` prediction of every cell gives the rows of the "no check" bin (``--predictor linear``,
    ``--no-relinearize-adam``), marked ``default=False``."""
    rows = []
    for c in cells:
        if not measurable(c):
            continue
        real = c["real"]
        cfg = c["config"]
        preds = [(c["predictors"][c["_prior"]], gap_bin(c), True)]
        if c["_prior"] != "linear" and "linear" in c["predictors"]:
            preds.append((c["predictors"]["linear"], intervals.gap_bin(None, GAP_BINS), False))
        for pred, b, default in preds:
            for e in EPS:
                a = real["training_time"][f"eps={e}"]["step"]
                if a is None or real["diverged"]:
                    continue  # an interval of steps has nothing to cover
                t = pred["training_time"][f"eps={e}"]
                p = None if pred["diverged_fraction"] > 0.5 else t["step"]
                row = {"group": f"{c['_suite']} {cfg['data']} {cfg['image_size']}px", "bin": b, "default": default,
                       "sgd": bool(cfg["batch_size"]), "d": None, "below": 0.0, "above": 0.0}
                if p is not None:
                    row["d"] = math.log((a + 1) / (p + 1))
                    row["below"] = max(math.log((p + 1) / (t["low"] + 1)), 0.0)
                    row["above"] = math.inf if t["high"] is None else max(math.log((t["high"] + 1) / (p + 1)), 0.0)
                rows.append(row)
    return rows


BAND_SCALES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
"""Scales of the band's log half-widths tried for the open-loop interval (``finetime.intervals.band_scale``; 0: the
symmetric interval about the step); the one whose intervals are narrowest, held out by group, is calibrated."""


def open_loop_score(r, scale: float) -> float | None:
    """The log margin the row's interval (its band scaled by ``scale``) needs on either side to hold the real time
    (``None``: no finite interval can)."""
    if r["d"] is None:
        return None
    below = scale * r["below"]
    above = scale * r["above"] if scale > 0 else 0.0
    return max(-r["d"] - below, r["d"] - above, 0.0)


def open_loop_margins(rows, scale: float = 0.0):
    bins = sorted({r["bin"] for r in rows})
    return {b: conformal([s if (s := open_loop_score(r, scale)) is not None else math.inf
                          for r in rows if r["bin"] == b]) for b in bins}


def open_loop_coverage(rows, scale: float = 0.0):
    """Held-out coverage per bin and overall (``all``: the default predictions; ``GD`` / ``SGD`` of those), each
    group scored with margins fitted on the other groups, and the median width of the default predictions' held-out
    intervals (``(high + 1) / (low + 1)``, before rounding): ``({key: (share, rows)}, width)``."""
    hit, tot, widths = defaultdict(int), defaultdict(int), []
    for g in sorted({r["group"] for r in rows}):
        margins = open_loop_margins([r for r in rows if r["group"] != g], scale)
        for r in rows:
            if r["group"] != g:
                continue
            m = margins.get(r["bin"], math.inf)
            s = open_loop_score(r, scale)
            ok = s is not None and s <= m + 1e-12
            keys = (r["bin"],) + (("all", "SGD" if r["sgd"] else "GD") if r["default"] else ())
            for key in keys:
                tot[key] += 1
                hit[key] += ok
            if r["default"] and r["d"] is not None:
                spread = scale * (r["below"] + (r["above"] if scale > 0 else 0.0))
                widths.append(math.exp(spread + 2 * m))
    return {k: (hit[k] / tot[k], tot[k]) for k in tot}, (statistics.median(widths) if widths else math.nan)


def band_scale_study(rows) -> dict:
    """``{scale: (held-out coverage of the default predictions, median held-out width)}`` for each of
    ``BAND_SCALES``."""
    out = {}
    for k in BAND_SCALES:
        cov, width = open_loop_coverage(rows, k)
        out[k] = (cov["all"][0], width)
    return out


def spread(widths) -> tuple:
    """Median, 75th and 90th percentiles of interval widths, nearest rank (infinite where an interval is open
    above)."""
    w = sorted(widths)
    return tuple(w[round(q * (len(w) - 1))] if w else math.nan for q in (0.5, 0.75, 0.9))


def open_loop_width_spread(rows, scale: float) -> dict:
    """How the default predictions' interval widths ``(high + 1) / (low + 1)`` spread, with margins fitted on all
    rows (the shipped calibration's), at ``scale`` and symmetric (scale 0): ``{kind: {"all"|"SGD": spread}}``."""
    out = {}
    for kind, k in (("scaled", scale), ("symmetric", 0.0)):
        margins = open_loop_margins(rows, k)
        w = {"all": [], "SGD": []}
        for r in rows:
            if r["default"] and r["d"] is not None:
                x = math.exp(k * r["below"] + (k * r["above"] if k > 0 else 0.0) + 2 * margins[r["bin"]])
                w["all"].append(x)
                if r["sgd"]:
                    w["SGD"].append(x)
        out[kind] = {g: spread(v) for g, v in w.items()}
    return out


def refiner_width_spread(rows, scale: float) -> dict:
    """How the refiner's interval widths spread once anything is observed, with bin margins fitted on all rows, at
    ``scale`` and with the band unscaled: ``{kind: {fraction: spread}}``."""
    out = {}
    for kind, k in (("scaled", scale), ("unscaled", 1.0)):
        pooled, binned = fit_margins(rows, k), fit_bin_margins(rows, k)
        out[kind] = {f: spread([math.inf if r["high"] is None else _width(r, _margin(pooled, binned, r), k)
                                for r in rows if r["fraction"] == f and needed_margin(r) is not None])
                     for f in FRACTIONS if f > 0}
    return out


def render_spread(result) -> str:
    """The two width-spread tables (``open_loop_width_spread``, ``refiner_width_spread``)."""
    fmt = lambda t: " / ".join(f"x{v:.2f}" for v in t)  # noqa: E731
    ol = result["open_loop"]["width_spread"]
    lines = ["| `predict`'s interval | all default predictions: median / p75 / p90 width | minibatch |",
             "|---|---|---|"]
    for kind, name in (("scaled", f"band scaled by {result['open_loop']['band_scale']:g}"),
                       ("symmetric", "symmetric about the step")):
        lines.append(f"| {name} | {fmt(ol[kind]['all'])} | {fmt(ol[kind]['SGD'])} |")
    rf = result["width_spread"]
    lines += ["", "| the refiner's interval | " + " | ".join(f"{int(100 * float(f))}% observed: median / p75 / p90 "
                                                              "width" for f in rf["scaled"]) + " |",
              "|---|" + "---|" * len(rf["scaled"])]
    for kind, name in (("scaled", f"posterior band scaled by {result['band_scale']:g}"),
                       ("unscaled", "posterior band as it is")):
        lines.append(f"| {name} | " + " | ".join(fmt(t) for t in rf[kind].values()) + " |")
    return "\n".join(lines) + "\n"


def render_open_loop(result) -> str:
    ol = result["open_loop"]
    lines = [f"The 5-95% band over simulated batch orders, its log half-widths scaled by {ol['band_scale']:g} "
             "(`band_scale`), widened on each side by the bin's margin:", "",
             "| linearity check (loss gap at step T/15), or fitted to the first real steps | margin (log steps) | "
             "90% interval coverage, held out |", "|---|---|---|"]
    for b, m in ol["margins"].items():
        cov, n = ol["coverage"][b]
        lines.append(f"| {b} | {'none' if m is None else f'{m:.2f}'} | {100 * cov:.1f}% ({n}) |")
    for key, name in (("GD", "full-batch GD"), ("SGD", "minibatch")):
        if key in ol["coverage"]:
            cov, n = ol["coverage"][key]
            lines.append(f"| default predictions, {name} | | {100 * cov:.1f}% ({n}) |")
    cov, n = ol["coverage"]["all"]
    lines.append(f"| all default predictions | | **{100 * cov:.1f}%** ({n}) |")
    lines += ["", "| band scale | held-out coverage, default predictions | median held-out width, (high + 1) / "
                  "(low + 1) |", "|---|---|---|"]
    for k, (cov, width) in ol["band_scales"].items():
        mark = " (calibrated)" if float(k) == ol["band_scale"] else ""
        lines.append(f"| {float(k):g}{mark} | {100 * cov:.1f}% | x{width:.2f} |")
    return "\n".join(lines) + "\n"


EVIDENCE_RULES = {"k": lambda k: k, "sqrt(k)": math.sqrt, "k/4": lambda k: k / 4,
                  "1+log(k)": lambda k: 1 + math.log(k), "min(k,3)": lambda k: min(k, 3)}
"""How many independent observations ``k`` observed steps count as in the warp posterior (``evidence_points``: the
refiner uses ``sqrt(k)``; ``k`` treats them as independent)."""
PRIOR_SDS = (0.25, 0.5, 1.0)


PERSISTENCES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""How much of the observed speed carries on past the last observation (``SPEED_PERSISTENCE``; 1: the whole run
warped, the rule before it)."""


def _choice_study(runs: dict, label) -> dict:
    """Scores of every variant in ``runs`` (``{key: rows}``) on the whole suite, and the variant chosen by
    leave-one-group-out: for each group (suite x dataset x resolution) the variant with the smallest sum over the
    observed fractions of the p95 on the other groups, scored on the group left out (pooled)."""
    stat = lambda rows: {str(f): (statistics.median(e), quantile(e, 0.95)) for f in FRACTIONS  # noqa: E731
                         for e in [[r["error"] for r in rows if r["fraction"] == f]]}
    groups = sorted({r["group"] for rows in runs.values() for r in rows})
    held, chosen = [], {}
    for g in groups:
        score = {k: sum(quantile([r["error"] for r in rows if r["group"] != g and r["fraction"] == f], 0.95)
                        for f in FRACTIONS if f > 0) for k, rows in runs.items()}
        best = min(score, key=score.get)
        chosen[g] = label(best)
        held += [r for r in runs[best] if r["group"] == g]
    return {"rules": {label(k): stat(rows) for k, rows in runs.items()},
            "heldout_selection": stat(held), "chosen": chosen}


def evidence_study(cells):
    """Every evidence rule x prior sd (at ``SPEED_PERSISTENCE``), and the rule chosen by leave-one-group-out."""
    runs = {(name, tau): collect(cells, rule, tau, refiner_only=True) for name, rule in EVIDENCE_RULES.items()
            for tau in PRIOR_SDS}
    return _choice_study(runs, lambda k: f"{k[0]}, sd {k[1]}")


def persistence_study(cells):
    """Every persistence of the observed speed x prior sd (``evidence_points``), and the pair chosen by
    leave-one-group-out."""
    runs = {(rho, tau): collect(cells, evidence_points, tau, refiner_only=True, persistence=rho)
            for rho in PERSISTENCES for tau in PRIOR_SDS}
    return _choice_study(runs, lambda k: f"persistence {k[0]:g}, sd {k[1]}")


PERSISTENCE_HEAD = "observed speed carried past the last observation (persistence), prior sd of log speed"

LEVEL_WINDOWS = (1, 3, 5, 10)
"""How many of the last observations set the level the refined curves go on from (``LEVEL_POINTS``)."""


def prior_study(cells):
    """The refiner's prior as the prediction's mean curve or its simulated runs (``loss_runs``, where stored) x the
    observations that set the level, and the pair chosen by leave-one-group-out."""
    runs = {(ens, w): collect(cells, refiner_only=True, ensemble=ens, level_points=w)
            for ens in (False, True) for w in LEVEL_WINDOWS}
    return _choice_study(runs, lambda k: f"{'simulated runs' if k[0] else 'mean curve'}, level from the last {k[1]}")


PRIOR_HEAD = "prior (the prediction's mean curve or its simulated runs), observations that set the level"


def render_evidence(study, head="evidence of k observed steps, prior sd of log speed") -> str:
    lines = [f"| {head} | " + " | ".join(
        f"{int(100 * f)}%: median / p95" for f in FRACTIONS if f > 0) + " |", "|---|" + "---|" * (len(FRACTIONS) - 1)]
    rows = list(study["rules"].items()) + [("**chosen on the other groups, scored on the one left out**",
                                            study["heldout_selection"])]
    for name, st in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * st[str(f)][0]:.1f}% / {100 * st[str(f)][1]:.1f}%"
                                                 for f in FRACTIONS if f > 0) + " |")
    lines += ["", "Chosen per group left out: " + "; ".join(f"{g}: {v}" for g, v in study["chosen"].items()) + "."]
    return "\n".join(lines) + "\n"


def render(result) -> str:
    lines = ["| estimate | " + " | ".join(f"{int(100 * f)}% observed: median / p95" for f in FRACTIONS) + " |",
             "|---|" + "---|" * len(FRACTIONS)]
    for name, tab in result["tables"].items():
        lines.append(f"| **{name}** |" + "|" * len(FRACTIONS))
        for m in METHODS:
            cells = []
            for f in FRACTIONS:
                v = tab.get(f"{m}@{f}")
                cells.append("n/a" if v is None else f"{100 * v[0]:.1f}% / {100 * v[1]:.1f}%")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    cov = result["coverage"]
    lines.append("| observed | " + " | ".join(f"{int(100 * f)}%" for f in FRACTIONS) + " |")
    lines.append("|---|" + "---|" * len(FRACTIONS))
    lines.append("| margin (log steps, all cells) | " + " | ".join(f"{result['margins'][str(f)]:.2f}"
                                                           for f in FRACTIONS) + " |")
    lines.append("| 90% interval coverage, held out | " + " | ".join(
        f"{100 * cov[str(f)][0]:.1f}% ({cov[str(f)][1]})" for f in FRACTIONS) + " |")
    if "coverage_pooled" in result:
        lines.append("| the same with one margin for every bin | " + " | ".join(
            f"{100 * result['coverage_pooled'][str(f)][0]:.1f}%" for f in FRACTIONS) + " |")
        for kind, w in result["width"].items():
            lines.append(f"| median interval width, high / low ({kind}) | " + " | ".join(
                f"{w[str(f)]:.2f}" for f in FRACTIONS) + " |")
    lines.append("| posterior band alone, coverage | " + " | ".join(
        f"{100 * result['raw_coverage'][str(f)]:.1f}%" for f in FRACTIONS) + " |")
    if "band_scales" in result:
        lines += ["", "| posterior band scale | " + " | ".join(
            f"{int(100 * f)}% observed: coverage / width" for f in FRACTIONS if f > 0) + " | median width, 5-40% |",
                  "|---|" + "---|" * len(FRACTIONS)]
        for k, v in result["band_scales"].items():
            mark = " (calibrated)" if float(k) == result["band_scale"] else ""
            lines.append(f"| {float(k):g}{mark} | " + " | ".join(
                f"{100 * v['coverage'][str(f)]:.1f}% / x{v['width'][str(f)]:.2f}" for f in FRACTIONS if f > 0)
                         + f" | x{v['width_observed']:.2f} |")
    if "coverage_by_bin" in result:
        lines += ["", "| prediction bin | margin by observed fraction (log steps; - : pooled) | held-out coverage, one "
                      "margin for every bin | held-out coverage, the bin's own margins |", "|---|---|---|---|"]
        for b, cov_b in result["coverage_by_bin"].items():
            m = result["bin_margins"][b]
            fmt = lambda c: ", ".join(f"{100 * c[str(f)][0]:.0f}%" if c[str(f)][1] else "-"  # noqa: E731
                                      for f in FRACTIONS)
            n = sum(cov_b["bin margins"][str(f)][1] for f in FRACTIONS)
            lines.append(f"| {b} ({n} rows) | " + ", ".join("-" if m[str(f)] is None else f"{m[str(f)]:.2f}"
                                                           for f in FRACTIONS)
                         + f" | {fmt(cov_b['pooled margin'])} | {fmt(cov_b['bin margins'])} |")
    return "\n".join(lines) + "\n"


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = result["tables"]["whole suite"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, i, title in ((axes[0], 0, "median TT error"), (axes[1], 1, "p95 TT error")):
        for m in METHODS:
            xs = [100 * f for f in FRACTIONS if tab.get(f"{m}@{f}")]
            ys = [100 * tab[f"{m}@{f}"][i] for f in FRACTIONS if tab.get(f"{m}@{f}")]
            ax.plot(xs, ys, marker="o", label=m)
        ax.set_xlabel("% of the real run observed")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "online.json")
    ap.add_argument("--calibrate", action="store_true", help=f"write the fitted margins to {CALIBRATION}")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # thousands of small tensor operations: as fast as two threads here; one core left free
    cells = []
    for stem, prior in SUITES:
        for c in load([HERE / "results" / f"{stem}.jsonl"]):
            c["_suite"], c["_prior"] = stem, prior
            cells.append(c)
    rows = collect(cells)
    scales = refiner_band_scale_study(rows)
    rscale = min(scales, key=lambda k: scales[k][2])
    margins, bin_margins = fit_margins(rows, rscale), fit_bin_margins(rows, rscale)
    raw = defaultdict(list)
    for r in rows:
        s = needed_margin(r)
        if s is not None:
            raw[r["fraction"]].append(s == 0.0)
    slices = {"whole suite": lambda r: True, "practitioner slice": lambda r: r["practitioner"],
              "paper suite": lambda r: r["suite"] == "paper", "AdamW (images)": lambda r: r["suite"] == "adamw",
              "text": lambda r: r["suite"] == "text", "photographs": lambda r: r["suite"] == "photos"}
    result = {
        "cells": len({r["cell"] for r in rows}),
        "pairs_per_method_and_fraction": sum(1 for r in rows if r["method"] == "refiner" and r["fraction"] == 0),
        "tables": {name: {f"{m}@{f}": v for (m, f), v in table(rows, keep).items()} for name, keep in
                   slices.items()},
        "band_scale": rscale,
        "band_scales": {str(k): {"coverage": {str(f): c for f, c in v[0].items()},
                                 "width": {str(f): w for f, w in v[1].items()}, "width_observed": v[2]}
                        for k, v in scales.items()},
        "margins": {str(f): v for f, v in margins.items()},
        "bin_margins": {b: {str(f): v for f, v in m.items()} for b, m in bin_margins.items()},
        "coverage": {str(f): v for f, v in heldout_coverage(rows, scale=rscale).items()},
        "coverage_pooled": {str(f): v for f, v in heldout_coverage(rows, by_bin=False, scale=rscale).items()},
        "coverage_by_bin": {b: {kind: {str(f): v for f, v in heldout_coverage(
            rows, by_bin=kind == "bin margins", keep=lambda r, b=b: r["bin"] == b, scale=rscale).items()}
            for kind in ("pooled margin", "bin margins")} for b in bin_margins},
        "width": {kind: {str(f): v for f, v in interval_width(rows, margins, binned, rscale).items()}
                  for kind, binned in (("pooled margin", None), ("bin margins", bin_margins))},
        "raw_coverage": {str(f): (sum(v) / len(v) if v else math.nan) for f, v in raw.items()},
        "width_spread": {kind: {str(f): v for f, v in by.items()}
                         for kind, by in refiner_width_spread(rows, rscale).items()},
    }
    ol_rows = open_loop_rows(cells)
    study = band_scale_study(ol_rows)
    scale = min(study, key=lambda k: study[k][1])
    ol_margins = open_loop_margins(ol_rows, scale)
    result["open_loop"] = {"band_scale": scale, "band_scales": {str(k): v for k, v in study.items()},
                           "margins": {b: (None if math.isinf(m) else m) for b, m in ol_margins.items()},
                           "coverage": open_loop_coverage(ol_rows, scale)[0],
                           "width_spread": open_loop_width_spread(ol_rows, scale)}
    result["evidence"] = evidence_study(cells)
    result["persistence"] = persistence_study(cells)
    result["prior"] = prior_study(cells)
    args.out.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(render_evidence(result["evidence"]))
    print(render_evidence(result["persistence"], PERSISTENCE_HEAD))
    print(render_evidence(result["prior"], PRIOR_HEAD))
    print(render_open_loop(result))
    print(render_spread(result))
    try:
        plot(result, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot")
    if args.calibrate:
        CALIBRATION.write_text(json.dumps({
            "fractions": list(FRACTIONS), "margins": [round(margins[f], 4) for f in FRACTIONS], "level": LEVEL,
            "band_scale": rscale,
            "bins": {b: [None if m[f] is None else round(m[f], 4) for f in FRACTIONS] for b, m in bin_margins.items()},
            "open_loop": {"gap_bins": list(GAP_BINS), "band_scale": scale,
                          "margins": {b: (None if math.isinf(m) else round(m, 4)) for b, m in ol_margins.items()}},
            "source": "bench/online_bench.py --calibrate: split-conformal margins over "
                      f"{result['cells']} suite cells ({', '.join(stem for stem, _ in SUITES)})"}, indent=1) + "\n")
        print(f"wrote {CALIBRATION}")


if __name__ == "__main__":
    main()
