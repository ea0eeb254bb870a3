"""Benchmark report: relative training-time errors of each predictor against real fine-tuning.

    .venv/bin/python bench/report.py bench/results/paper.jsonl [--markdown OUT.md] [--scatter OUT.png]

Groups: optimizer (GD / SGD), learning rate, momentum, eps, images per class, batch size, dataset, resolution,
BatchNorm mode, budget, optimizer x learning rate x momentum, stability ratio at the start, loss gap at the
linearity check of the `adaptive` predictor. Errors follow
the README's definitions: |TT_pred - TT_real| / max(TT_real, 1); divergence mismatches count as 100% and are listed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from finetime.training_time import relative_error  # noqa: E402

MIN_REAL_TT = 10
"""Cells whose real TT at eps=0.4 is below this are too fast to measure (FINDINGS: 'the budget must fit')."""


def load(paths):
    cells = []
    for p in paths:
        cells += [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]
    return cells


def quantile(values, q):
    v = sorted(values)
    if not v:
        return math.nan
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def rows(cells, predictor):
    """One row per (cell, eps): the relative error and the grouping keys."""
    out = []
    for c in cells:
        if predictor not in c["predictors"] and predictor != "replay":
            continue
        cfg = c["config"]
        real = c["real"]
        pred = c["replay"] if predictor == "replay" else c["predictors"][predictor]
        pdiv = predictor != "replay" and pred["diverged_fraction"] > 0.5
        name = cfg.get("optimizer", "sgd")
        opt = optimizer_kind(cfg)
        for key, rt in real["training_time"].items():
            if not key.startswith("eps="):
                continue
            ps = pred["training_time"][key]["step"]
            out.append({
                "cell": c["id"], "eps": key[4:], "predicted": ps, "actual": rt["step"],
                "error": relative_error(ps, rt["step"], predicted_diverged=pdiv, actual_diverged=real["diverged"]),
                "mismatch": pdiv != real["diverged"],
                "optimizer": opt,
                "batch": cfg["batch_size"] or "full", "lr": cfg["lr"], "momentum": cfg.get("momentum", 0.0),
                "per_class": cfg["per_class"], "data": cfg["data"], "image_size": cfg["image_size"],
                "bn": cfg["bn"], "steps": cfg["steps"],
                "regime": f"{opt} lr {cfg['lr']:g}" + (f" m {cfg['momentum']:g}" if name == "sgd" else ""),
                "stability": stability_bin(c),
                "gap": gap_bin(c),
                "fast": (real["training_time"].get("eps=0.4", {}).get("step") or 0) < MIN_REAL_TT
                and not real["diverged"],
            })
    return out


def optimizer_kind(cfg) -> str:
    """GD / SGD, or Adam / AdamW with " full" for full batch."""
    name = cfg.get("optimizer", "sgd")
    if name == "sgd":
        return "GD" if not cfg["batch_size"] else "SGD"
    return {"adam": "Adam", "adamw": "AdamW"}.get(name, name) + (" full" if not cfg["batch_size"] else "")


STABILITY_BINS = (0.05, 0.2, 0.5)


def stability_bin(cell):
    """Bin of the linear predictor's stability ratio (lr over the linearized stable limit), if recorded."""
    ratio = cell["predictors"].get("linear", {}).get("info", {}).get("stability_ratio")
    if ratio is None:
        return "unknown"
    lo = 0.0
    for hi in STABILITY_BINS:
        if ratio < hi:
            return f"{lo:g}-{hi:g}"
        lo = hi
    return f">= {lo:g}"


GAP_BINS = (0.01, 0.1, 1.0)


def gap_bin(cell):
    """Bin of the ``adaptive`` predictor's linearity check: the relative loss gap between the network moved to the
    linear model's weights at the first checkpoint and the linear model there (below 0.01: one kernel kept)."""
    gaps = cell["predictors"].get("adaptive", {}).get("info", {}).get("loss_gaps")
    if not gaps:
        return "no check"
    lo = 0.0
    for hi in GAP_BINS:
        if gaps[0] < hi:
            return f"{lo:g}-{hi:g}"
        lo = hi
    return f">= {lo:g}"


def summarize(rs):
    e = [r["error"] for r in rs]
    return len(e), statistics.median(e) if e else math.nan, quantile(e, 0.95)


def pct(v: float) -> str:
    """A fraction as a percentage; "-" where a predictor has no cell to score (e.g. an Adam-only baseline on SGD)."""
    return "-" if math.isnan(v) else f"{100 * v:.1f}%"


def table(rs_by_pred, key, title):
    lines = [f"#### by {title}", "", "| " + title + " | " + " | ".join(f"{p} median / p95" for p in rs_by_pred)
             + " | n |", "|---|" + "---|" * (len(rs_by_pred) + 1)]
    groups = sorted({r[key] for rs in rs_by_pred.values() for r in rs}, key=lambda v: (str(type(v)), v))
    for g in groups:
        cells = []
        n = 0
        for rs in rs_by_pred.values():
            sel = [r for r in rs if r[key] == g]
            n, med, p95 = summarize(sel)
            cells.append(f"{pct(med)} / {pct(p95)}")
        lines.append(f"| {g} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n"


def failed(real) -> bool:
    """A real run (a cell's ``real``) that diverged (``PROTOCOL``: non-finite or above 10x its start) or ended no lower
    than it started (``loss[T] >= loss[0]``: it did not train)."""
    last = real["loss"][-1]
    return real["diverged"] or last is None or last >= real["loss"][0]


def confusion(pairs) -> str:
    """``both | predicted only | real only | neither | recall | precision`` over (predicted, real) booleans."""
    pairs = list(pairs)
    tp = sum(p and r for p, r in pairs)
    fp = sum(p and not r for p, r in pairs)
    fn = sum(r and not p for p, r in pairs)
    tn = sum(not p and not r for p, r in pairs)
    rec = f"{100 * tp / (tp + fn):.0f}%" if tp + fn else "-"
    prec = f"{100 * tp / (tp + fp):.0f}%" if tp + fp else "-"
    return f"{tp} | {fp} | {fn} | {tn} | {rec} | {prec}"


def divergence_table(cells, predictors) -> str:
    """Per predictor, over every cell: how often a real divergence was predicted (recall) and how often a predicted
    divergence was real (precision); then the same against real runs that diverged or did not train (``failed``)."""
    out = []
    for title, real_bad in (("divergence: predicted against real, per cell", lambda r: r["diverged"]),
                            ("predicted divergence against real runs that diverged or did not train (loss[T] >= "
                             "loss[0])", failed)):
        lines = [f"#### {title}\n",
                 "| predictor | both | predicted only | real only | neither | recall | precision |",
                 "|---|---|---|---|---|---|---|"]
        for p in predictors:
            pairs = [(c["predictors"][p]["diverged_fraction"] > 0.5, real_bad(c["real"]))
                     for c in cells if p in c["predictors"]]
            lines.append(f"| {p} | {confusion(pairs)} |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


PREDICTION_THREADS = 2
"""Threads the stored predictions ran on; cost ratios use only real runs on as many."""


def cost_lines(cells, predictors):
    """Real fine-tuning seconds over prediction seconds (kernel + step timing + that predictor's simulation), on the
    cells whose real run used as many threads as the predictions (``real.threads``, 2 where not recorded)."""
    ratios = defaultdict(list)
    secs = defaultdict(list)
    same = [c for c in cells if c["real"].get("threads", PREDICTION_THREADS) == PREDICTION_THREADS]
    for c in same:
        opt = optimizer_kind(c["config"])
        for name in predictors:
            p = c["predictors"].get(name)
            if p is None:
                continue
            kernel = p.get("kernel_seconds", c["cost"]["kernel_seconds"])  # a variant's own kernel (e.g. +sum)
            pred_cost = kernel + c["cost"]["step_timing_seconds"] + p["seconds"]
            ratios[name, opt].append(c["real"]["train_seconds"] / pred_cost)
            secs[name, opt].append(pred_cost)
    out = [f"{len(same)} of {len(cells)} cells: those whose real run trained on the predictions' {PREDICTION_THREADS} "
           "threads.", "",
           "| predictor | optimizer | cells | median prediction seconds | median real/prediction | min | max |",
           "|---|---|---|---|---|---|---|"]
    for (name, opt), v in sorted(ratios.items()):
        out.append(f"| {name} | {opt} | {len(v)} | {statistics.median(secs[name, opt]):.1f} | "
                   f"{statistics.median(v):.1f}x | {min(v):.1f}x | {max(v):.1f}x |")
    return "\n".join(out) + "\n"


def noise_floor(cells):
    groups = defaultdict(list)
    for c in cells:
        cfg = dict(c["config"])
        groups[json.dumps(cfg, sort_keys=True)].append(c)
    lines = []
    for key, cs in groups.items():
        if len(cs) < 2:
            continue
        cfg = cs[0]["config"]
        for eps in ("eps=0.01", "eps=0.1", "eps=0.4"):
            steps = [c["real"]["training_time"][eps]["step"] for c in cs]
            steps = [s for s in steps if s is not None]
            if len(steps) < 2:
                continue
            mean = statistics.mean(steps)
            spread = max(abs(s - mean) / max(mean, 1) for s in steps)
            lines.append(f"| {cfg['data']} {cfg['image_size']}px n={cfg['per_class']} {optimizer_kind(cfg)}"
                         f"{cfg['batch_size']} lr {cfg['lr']:g} m {cfg.get('momentum', 0):g} | {eps} | {len(steps)} | "
                         f"{', '.join(map(str, steps))} | {100 * spread:.1f}% |")
    if not lines:
        return ""
    head = ["| configuration | threshold | batch orders | real TT | max deviation from mean |", "|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def scatter(cells, predictors, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({optimizer_kind(c["config"]) for c in cells})
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4.6), squeeze=False)
    for ax, opt in zip(axes[0], kinds):
        lim = 1
        for i, p in enumerate(predictors):
            rs = [r for r in rows(cells, p) if r["optimizer"] == opt and r["predicted"] is not None
                  and r["actual"] is not None]
            if not rs:
                continue
            xs = [r["actual"] for r in rs]
            ys = [r["predicted"] for r in rs]
            lim = max(lim, max(xs), max(ys))
            ax.scatter(xs, ys, s=12, alpha=0.7, color=f"C{i}", label=p)
        ax.plot([0, lim], [0, lim], color="k", lw=0.8)
        ax.fill_between([0, lim], [0, 0.8 * lim], [0, 1.2 * lim], color="k", alpha=0.06, label="+-20%")
        ax.set_xlabel("real training time (steps)")
        ax.set_ylabel("predicted training time (steps)")
        ax.set_title(f"{opt}: eps in 0.01, 0.1, 0.4")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(cells, predictors, include_fast=False) -> str:
    rs = {p: [r for r in rows(cells, p) if include_fast or not r["fast"]] for p in predictors}
    fast = {r["cell"] for r in rows(cells, predictors[0]) if r["fast"]}
    pairs = {p: len(v) for p, v in rs.items()}
    most = max(pairs.values(), default=0)
    fewer = ", ".join(f"`{p}` {v}" for p, v in pairs.items() if v < most)
    out = [f"{len(cells)} cells ({len(fast)} with real TT(eps=0.4) < {MIN_REAL_TT} steps left out of the error "
           f"tables), {most} (cell, eps) pairs per predictor" + (f" ({fewer}: the cells they predict)" if fewer
                                                                    else "") + ".", ""]
    kinds = sorted({x["optimizer"] for r in rs.values() for x in r})
    out.append("| predictor | " + " | ".join(f"{k} median | {k} p95" for k in kinds) + " | all median | all p95 |")
    out.append("|---|" + "---|---|" * (len(kinds) + 1))
    for p, r in rs.items():
        cols = [summarize([x for x in r if x["optimizer"] == k]) for k in kinds] + [summarize(r)]
        out.append(f"| {p} | " + " | ".join(f"{pct(m[1])} | {pct(m[2])}" for m in cols) + " |")
    out.append("")
    for key, title in (("optimizer", "optimizer"), ("lr", "learning rate"), ("momentum", "momentum"),
                       ("eps", "eps"), ("per_class", "images per class"), ("batch", "batch size"),
                       ("data", "dataset"), ("image_size", "resolution"), ("bn", "BatchNorm"),
                       ("steps", "budget T"), ("regime", "optimizer, learning rate and momentum"),
                       ("stability", "stability ratio at the start (lr over the linearized stable limit)"),
                       ("gap", "loss gap at the linearity check (network at the linear model's weights vs the "
                               "linear model, step T/15)")):
        if len({r[key] for r in next(iter(rs.values()))}) > 1:
            out.append(table(rs, key, title))
    for p in predictors:
        mism = [r for r in rs[p] if r["mismatch"] and r["eps"] == "0.1"]
        if mism:
            kinds = defaultdict(int)
            for r in mism:
                kinds[f"{r['regime']} n={r['per_class']} {r['image_size']}px"] += 1
            out.append(f"Divergence mismatches of `{p}` (real and predicted disagree on divergence; counted as 100%): "
                       + ", ".join(f"{k} (x{v})" for k, v in sorted(kinds.items())) + "\n")
    out.append(divergence_table(cells, [p for p in predictors if p != "replay"]))
    out.append("#### cost\n")
    out.append(cost_lines(cells, [p for p in predictors if p != "replay"]))
    nf = noise_floor(cells)
    if nf:
        out.append("#### noise floor: the same configuration, different batch orders (real runs only)\n")
        out.append(nf)
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--predictors", help="comma list (default: all found, plus replay)")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--scatter", type=Path)
    ap.add_argument("--include-fast", action="store_true")
    args = ap.parse_args(argv)
    cells = load(args.results)
    names = args.predictors.split(",") if args.predictors else sorted({p for c in cells for p in c["predictors"]}) + [
        "replay"]
    text = render(cells, names, args.include_fast)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    if args.scatter:
        scatter(cells, [n for n in names if n != "replay"], args.scatter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
