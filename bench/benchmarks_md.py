"""Regenerate BENCHMARKS.md from the results files and the template (prose lives in the template).

    .venv/bin/python bench/benchmarks_md.py

Placeholders: {{paper_suite}} (bench/results/paper.jsonl via report.py), {{adamw_suite}}, {{text_suite}},
{{text_trainer_suite}}, {{text_kernel}}, {{kernel}}, {{dynamics}}, {{extrapolation}},
{{testcurves}}, {{online}} (bench/results/online.json), {{online_relin}}, {{online_relin_regimes}}, {{gpu}}, {{distributed}}, {{floor}}, {{subsample}}, {{bn_batch}}, {{scale}}, {{photos_suite}}
(bench/results/photos.jsonl), {{clip_suite}} (bench/results/clip.jsonl), {{smoothing_suite}} and
{{smoothing_targets}} (bench/results/smoothing.jsonl), {{resolution}} (paper.jsonl and photos.jsonl by resolution),
{{photos_intervals}} (coverage on photos.jsonl of intervals fitted on the other suites), {{interpolation}} (kernels
interpolated between refreshes against stepwise ones, all four suites), {{stability_cap}}
(bench/results/stability_cap.jsonl: the stability cap against the default), {{divergence_orders}}
(bench/results/divergence_orders.jsonl: SGD lr 1e-2 momentum 0.9 re-trained with other batch orders), {{momentum_interpolation}} (with momentum:
stepwise, linear, geometric and the default, paper and photos suites), {{end_check}} (the end check on the cells whose
linearity check passes), {{bn_batch_photos}}, {{step_timing}}, {{cost}} (bench/results/cost.json), {{growth}} (bench/results/growth.json), {{first_steps}} (bench/results/first_steps.json), {{noise}}
(bench/results/noise.jsonl: the hard regimes' real runs by batch order); a missing results file renders as a note saying which command produces it.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RES = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from finetime.relinearize import end_refreshed  # noqa: E402
from finetime.optim import describe  # noqa: E402


def _results(name: str, cmd: str):
    """A renderer of ``bench/results/<name>``: called with the parsed JSON, or replaced by the note naming ``cmd``
    when the file is not there."""
    def wrap(render):
        @functools.wraps(render)
        def run():
            path = RES / name
            return render(json.loads(path.read_text())) if path.exists() else _missing(cmd)
        return run
    return wrap


def _eps_pair(d: dict) -> str:
    """``TT(0.1) / TT(0.4)`` of a ``{"eps=0.1": step, "eps=0.4": step}`` record ("-" where not reached)."""
    return " / ".join("-" if d[k] is None else str(d[k]) for k in ("eps=0.1", "eps=0.4"))


def _eps_errors(d: dict, keys=("eps=0.1", "eps=0.4")) -> str:
    """The relative errors at ``keys`` (eps 0.1 and 0.4), in percent."""
    return " / ".join(f"{100 * d[k]:.0f}%" for k in keys)


def _missing(cmd):
    return f"_Not run yet: `{cmd}`._\n"


def _suite(stem: str, scatter: tuple[str, ...] = (), caption: str = "") -> str:
    """The report of ``bench/results/<stem>.jsonl`` (every predictor found, plus replay), with a scatter plot of the
    ``scatter`` predictors present."""
    import report

    path = RES / f"{stem}.jsonl"
    if not path.exists():
        return _missing(f"bench/suite.py --config bench/configs/{stem}.toml")
    cells = report.load([path])
    names = sorted({p for c in cells for p in c["predictors"]}) + ["replay"]
    text = report.render(cells, names)
    shown = [p for p in scatter if any(p in c["predictors"] for c in cells)]
    if shown:
        report.scatter(cells, shown, RES / f"{stem}_scatter.png")
        text += f"\n![{caption}](bench/results/{stem}_scatter.png)\n"
    return text


def paper_suite():
    return _suite("paper", ("linear", "paper", "adaptive"), "predicted vs real training time")


def adamw_suite():
    return _suite("adamw", ("linear", "adaptive"), "predicted vs real training time, AdamW")


def text_suite():
    return _suite("text")


def text_trainer_suite():
    return _suite("text_trainer")


def clip_suite():
    return _suite("clip", ("adaptive", "adaptive-unclipped"), "predicted vs real training time, clipped gradients")


def smoothing_suite():
    return _suite("smoothing")


SMOOTHING_TARGETS = (0.7, 0.5)


def smoothing_targets():
    """The label-smoothing suite read at absolute targets: each cell's real loss at steps 0 and T, the predictions'
    loss at T, and the first step each curve (the real one; the predictions' mean curves) reaches loss 0.7 and 0.5."""
    import report

    path = RES / "smoothing.jsonl"
    if not path.exists():
        return _missing("bench/suite.py --config bench/configs/smoothing.toml")
    cells = report.load([path])
    names = ("adaptive", "adaptive-unsmoothed")

    def first(curve, target):
        return next((t for t, v in enumerate(curve) if v is not None and v <= target), None)

    head = " | ".join(f"{n} loss[T]" for n in names)
    ths = " | ".join(f"TT({x:g}) real / {' / '.join(names)}" for x in SMOOTHING_TARGETS)
    lines = [f"| cell | real loss[0] / loss[T] | {head} | {ths} |", "|---|---|" + "---|" * (len(names) + 2)]
    for c in cells:
        cfg, real = c["config"], c["real"]["loss"]
        size = f"{cfg['max_length']} tokens" if cfg["data"] == "fine-foods" else f"{cfg['image_size']} px"
        label = f"{cfg['data']} {size} s={cfg['seed']}, {describe(cfg, short=True)}"
        finals = " | ".join(f"{c['predictors'][n]['loss'][-1]:.3f}" for n in names)
        tts = " | ".join(" / ".join(str(first(curve, x)) for curve in [real] + [c["predictors"][n]["loss"] for n in names])
                         for x in SMOOTHING_TARGETS)
        lines.append(f"| {label} | {real[0]:.3f} / {real[-1]:.3f} | {finals} | {tts} |")
    return "\n".join(lines) + "\n"


def photos_suite():
    return _suite("photos", ("linear", "paper", "adaptive"), "predicted vs real training time, photographs")


RESOLUTION_PREDICTORS = ("adaptive", "linear", "paper")


def resolution():
    """Errors by dataset and resolution over the paper suite and the photographs, and the usual SGD recipe (lr 1e-3,
    momentum 0.9) alone."""
    import report

    paths = [RES / f"{s}.jsonl" for s in ("paper", "photos")]
    if not all(p.exists() for p in paths):
        return _missing("bench/suite.py --config bench/configs/photos.toml")
    cells = report.load(paths)
    head = ("| data | px | BatchNorm | " + " | ".join(f"{p} median / p95" for p in RESOLUTION_PREDICTORS)
            + " | (cell, eps) pairs | of which lr 1e-3 momentum 0.9 |")
    lines = [head, "|---|---|---|" + "---|" * (len(RESOLUTION_PREDICTORS) + 2)]
    rs = {p: [r for r in report.rows(cells, p) if not r["fast"]] for p in RESOLUTION_PREDICTORS}
    keys = sorted({(r["data"], r["image_size"], r["bn"]) for r in rs["adaptive"]})
    for data, px, bn in keys:
        cols = []
        for p in RESOLUTION_PREDICTORS:
            n, med, p95 = report.summarize([r for r in rs[p] if (r["data"], r["image_size"], r["bn"]) == (data, px, bn)])
            cols.append(f"{100 * med:.1f}% / {100 * p95:.1f}%")
        sel = [r for r in rs["adaptive"] if (r["data"], r["image_size"], r["bn"]) == (data, px, bn)]
        usual = sum(r["lr"] == 1e-3 and r["momentum"] == 0.9 for r in sel)
        lines.append(f"| {data} | {px} | {bn} | " + " | ".join(cols) + f" | {len(sel)} | {usual} |")
    return "\n".join(lines) + "\n"


INTERPOLATION_SUITES = ("paper", "photos", "adamw", "text")


def _default_interpolation(cfg) -> tuple[str, float]:
    """How the default (``adaptive``) interpolates its kernels for this stored cell
    (``PredictorConfig.interpolation_for``): ``("linear", 0)`` for Adam, AdamW and SGD or GD without momentum,
    ``("geometric", GROWTH_JUMP)`` with momentum."""
    from finetime.config import PredictorConfig, RunConfig

    return PredictorConfig().interpolation_for(RunConfig.from_dict(cfg).optimizer)


def _variant_names(c) -> dict[str, str | None]:
    """The stored prediction of this cell for each way of moving the kernel between refreshes: ``stepwise``,
    ``linear`` (in time, every interval) and ``geometric`` (every interval), and ``default``: ``adaptive`` itself,
    which is one of them or, with momentum, geometric only across the intervals of a ``GROWTH_JUMP``-fold growth.
    A cell whose default made no refresh has one curve for all; ``None`` for a variant not stored. A cell whose
    default refreshed only at the end check enters with its prediction without that check (``adaptive-no-end-check``)
    in every column: these tables are about the refreshes at the checkpoints."""
    info = c["predictors"]["adaptive"].get("info", {})
    how, min_growth = _default_interpolation(c["config"])
    if end_refreshed(info):
        return dict.fromkeys(("stepwise", "linear", "geometric", "default"), "adaptive-no-end-check")
    if not info.get("kernels"):
        return {"stepwise": "adaptive", "linear": "adaptive", "geometric": "adaptive", "default": "adaptive"}
    moved = bool(info.get("interpolated"))
    whole = moved and not min_growth  # the default interpolated every interval
    names = {"stepwise": "adaptive" if not moved else "adaptive-stepwise",
             "linear": "adaptive" if whole and how == "linear" else "adaptive-interp",
             "geometric": "adaptive" if whole and how == "geometric" else "adaptive-geometric",
             "default": "adaptive"}
    return {k: v if v in c["predictors"] else None for k, v in names.items()}


def end_check():
    """The end check on the cells whose linearity check passes, all four suites: per setting (batch sizes together),
    the end gaps, how many cells the end check refreshed, the errors with it (``adaptive``), without it (``adaptive-no-end-check``) and with
    three refreshes whatever the check says (``adaptive-always-refresh``), and the seconds it added (median per
    cell, ``adaptive`` minus ``adaptive-no-end-check``, both timed in one ``--repredict`` run)."""
    import statistics

    import report
    from finetime.zoo import is_text_data

    names = ("adaptive-no-end-check", "adaptive", "adaptive-always-refresh")
    lines = ["| suite | setting | cells | end gap | refreshed at the end | without the end check: median / p95 | "
             "default (with it) | three refreshes | seconds added (median): default / three refreshes |",
             "|---|---|---|---|---|---|---|---|---|"]
    every = {n: [] for n in names}
    for stem in INTERPOLATION_SUITES:
        path = RES / f"{stem}.jsonl"
        if not path.exists():
            continue
        groups: dict[tuple, list] = {}
        for c in report.load([path]):
            if "adaptive-no-end-check" not in c["predictors"]:
                continue
            cfg = c["config"]
            key = (report.optimizer_kind(cfg), cfg["lr"], cfg.get("momentum") or 0.0, cfg["image_size"],
                   cfg["data"], cfg["per_class"])
            groups.setdefault(key, []).append(c)
        for (opt, lr, mom, px, data, per), cs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            ends = [c["predictors"]["adaptive"]["info"]["end_check"] for c in cs]
            gaps = [e["gap"] for e in ends if e["gap"] is not None]
            cols = []
            for n in names:
                rs = [r for r in report.rows(cs, n) if not r["fast"]]
                every[n] += rs
                k, med, p95 = report.summarize(rs)
                cols.append(f"{100 * med:.1f}% / {100 * p95:.1f}%" if k else "-")
            added = [statistics.median(c["predictors"][n]["seconds"] - c["predictors"]["adaptive-no-end-check"]["seconds"]
                                       for c in cs) for n in names[1:]]
            shown = "" if opt.startswith("Adam") else f" m {mom:g}"
            size = f"{px} tokens" if is_text_data(data) else f"{px} px"
            lines.append(f"| {stem} | {data} {size}, {per}/class, {opt} lr {lr:g}{shown} | {len(cs)} | "
                         f"{min(gaps):.2f}-{max(gaps):.2f} | {sum(e['refreshed'] for e in ends)} | "
                         + " | ".join(cols) + f" | {added[0]:+.1f} s / {added[1]:+.1f} s |")
    cols = []
    for n in names:
        k, med, p95 = report.summarize(every[n])
        cols.append(f"**{100 * med:.1f}% / {100 * p95:.1f}%** ({k})")
    lines.append("| **all** | | | | | " + " | ".join(cols) + " | |")
    return "\n".join(lines) + "\n"


def _default_label(cfg) -> str:
    how, min_growth = _default_interpolation(cfg)
    return how if not min_growth else f"stepwise; {how} across a x{min_growth:g} growth"


def interpolation():
    """Kernels interpolated linearly in time between refreshes against stepwise kernels, per suite, optimizer,
    momentum and resolution, and the default (``_default_label``: linear for Adam, AdamW and SGD without momentum;
    with momentum stepwise except across a ``GROWTH_JUMP``-fold growth, there geometric), stored as ``adaptive``;
    the other variants as ``adaptive-stepwise`` / ``adaptive-interp`` (``_variant_names``). A cell without one of
    the variants is left out of every column (the stored variants may predate the first real steps)."""
    import report

    paths = [RES / f"{s}.jsonl" for s in INTERPOLATION_SUITES]
    if not all(p.exists() for p in paths):
        return _missing("bench/suite.py --config bench/configs/<suite>.toml --repredict adaptive-interp")
    kinds = ("stepwise", "linear", "default")
    lines = ["| suite | optimizer | momentum | resolution | (cell, eps) pairs | stepwise median / p95 | linear in time "
             "median / p95 | default median / p95 | default |", "|---|---|---|---|---|---|---|---|---|"]
    everything = {k: [] for k in kinds}
    for stem, path in zip(INTERPOLATION_SUITES, paths):
        rs = {k: [] for k in kinds}
        defaults = {}  # (optimizer, momentum, resolution) -> the default's way
        for c in report.load([path]):
            names = _variant_names(c)
            if any(names[k] is None for k in kinds):
                continue  # a variant not predicted on this cell: the cell is left out of every column
            for k in kinds:
                got = [r for r in report.rows([c], names[k]) if not r["fast"]]
                rs[k] += got
                defaults.update({(r["optimizer"], r["momentum"], r["image_size"]): _default_label(c["config"])
                                 for r in got})
        for opt, mom, px in sorted(defaults):
            cols = []
            for k in kinds:
                n, med, p95 = report.summarize([r for r in rs[k]
                                                if (r["optimizer"], r["momentum"], r["image_size"]) == (opt, mom, px)])
                cols.append(f"{100 * med:.1f}% / {100 * p95:.1f}%")
            shown = "-" if opt.startswith("Adam") else f"{mom:g}"
            lines.append(f"| {stem} | {opt} | {shown} | {px} | {n} | " + " | ".join(cols)
                         + f" | {defaults[opt, mom, px]} |")
        for k in everything:
            everything[k] += rs[k]
    for label, keep in (("GD and SGD without momentum", lambda r: not r["optimizer"].startswith("Adam")
                         and not r["momentum"]),
                        ("GD and SGD with momentum", lambda r: not r["optimizer"].startswith("Adam") and r["momentum"]),
                        ("AdamW", lambda r: r["optimizer"].startswith("Adam")), ("all", lambda r: True)):
        cols = []
        for k in kinds:
            n, med, p95 = report.summarize([r for r in everything[k] if keep(r)])
            cols.append(f"{100 * med:.1f}% / {100 * p95:.1f}%")
        lines.append(f"| **all four suites** | **{label}** | | | {n} | " + " | ".join(cols) + " | |")
    return "\n".join(lines) + "\n"


def momentum_interpolation():
    """With momentum, on the cells that refresh their kernel (paper and photographs' suites): stepwise kernels,
    interpolated linearly or geometrically across every interval, and the default (geometric only across a
    ``GROWTH_JUMP``-fold growth), by learning rate, batch and resolution; the largest growth of the kernel's trace
    between two refreshes in each group."""
    import report

    lines = ["| suite | optimizer | lr | resolution | (cell, eps) pairs | largest growth between refreshes "
             "| stepwise | linear | geometric | default |", "|---|---|---|---|---|---|---|---|---|---|"]
    kinds = ("stepwise", "linear", "geometric", "default")
    for stem in ("paper", "photos"):
        path = RES / f"{stem}.jsonl"
        if not path.exists():
            return _missing(f"bench/suite.py --config bench/configs/{stem}.toml")
        groups: dict[tuple, dict] = {}
        for c in report.load([path]):
            info = c["predictors"]["adaptive"].get("info", {})
            sgd = c["config"].get("optimizer", "sgd") == "sgd"
            if not (sgd and c["config"].get("momentum") and info.get("kernels")) \
                    or end_refreshed(info):
                continue  # no refresh at the checkpoints (the end check's refresh is not this table's)
            names = _variant_names(c)
            if any(v is None for v in names.values()):
                continue
            ratios = [1.0] + info["trace_ratios"]
            growth = max(b / a for a, b in zip(ratios, ratios[1:]))
            for k in kinds:
                for r in report.rows([c], names[k]):
                    if r["fast"]:
                        continue
                    g = groups.setdefault((r["optimizer"], r["lr"], r["image_size"]), {"growth": 0.0, **{
                        q: [] for q in kinds}})
                    g[k].append(r)
                    g["growth"] = max(g["growth"], growth)
        for (opt, lr, px), g in sorted(groups.items()):
            cols = []
            for k in kinds:
                n, med, p95 = report.summarize(g[k])
                cols.append(f"{100 * med:.1f}% / {100 * p95:.1f}%")
            lines.append(f"| {stem} | {opt} | {lr:g} | {px} | {n} | x{g['growth']:.1f} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def photos_intervals():
    """Coverage on the photographs of the open-loop 90% model-error intervals fitted without them: margins per
    linearity-check bin fitted on the other suites' cells (``online_bench.open_loop_margins``, as ``--calibrate``
    fits the shipped ones, with its band scale, which was chosen with the photographs in), scored on every (cell,
    eps) pair of the photographs."""
    import math

    import online_bench
    import report

    from finetime.intervals import band_scale

    if not (RES / "photos.jsonl").exists():
        return _missing("bench/suite.py --config bench/configs/photos.toml")
    rows = {}
    for stem, prior in online_bench.SUITES:
        cells = report.load([RES / f"{stem}.jsonl"])
        for c in cells:
            c["_suite"], c["_prior"] = stem, prior
        rows[stem] = online_bench.open_loop_rows(cells)
    scale = band_scale()
    margins = online_bench.open_loop_margins([r for stem, rs in rows.items() if stem != "photos" for r in rs], scale)
    hit, tot = {}, {}
    for r in rows["photos"]:
        m = margins.get(r["bin"], math.inf)
        score = online_bench.open_loop_score(r, scale)
        ok = score is not None and score <= m + 1e-12
        for key in (r["bin"], "all"):
            tot[key] = tot.get(key, 0) + 1
            hit[key] = hit.get(key, 0) + ok
    lines = ["| linearity check (loss gap at step T/15) | margin fitted without the photographs (log steps) | "
             "covered on the photographs |", "|---|---|---|"]
    for b in sorted(k for k in tot if k != "all"):
        m = margins.get(b, math.inf)
        lines.append(f"| {b} | {'none' if math.isinf(m) else f'{m:.2f}'} | {hit[b]} of {tot[b]} |")
    if tot:
        lines.append(f"| all | | **{hit['all']} of {tot['all']} ({100 * hit['all'] / tot['all']:.0f}%)** |")
    return "\n".join(lines) + "\n"


@_results("text_kernel.json", "bench/text_kernel_bench.py")
def text_kernel(rows):
    lines = ["| kernel | samples x tokens | weights | routes | kernel seconds (phases) | peak memory | one step "
             "(batch 16) | kernel / 200-step run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        routes = ", ".join(f"{k} {v['weights'] / 1e6:.1f}M" for k, v in r["plan"]["strategies"].items())
        phases = ", ".join(f"{k} {v:g}" for k, v in r["phase_seconds"].items())
        name = "J P J^T (AdamW)" if r["optimizer"] == "adamw" else "J J^T (SGD)"
        lines.append(f"| {name} | {r['n']} x {r['tokens']} | {r['weights'] / 1e6:.1f}M | {routes} | "
                     f"{r['kernel_seconds']} ({phases}) | {r['peak_rss_gb']} GB | {r['seconds_per_step']} s | "
                     f"1/{1 / r['kernel_over_run']:.1f} |")
    return "\n".join(lines) + "\n"


@_results("kernel.json", "bench/kernel_bench.py")
def kernel(r):
    ref = r["reference"]
    lines = [f"Reference: exact kernel by the engine, N={ref['n']} x 5 outputs, 32 px, {ref['seconds']:.2f} s. "
             f"Training times from the exact kernel: {ref['tt']}.", "",
             "| method | k | seconds | Frobenius error | top-20 eigenvalue error | TT max rel. diff vs exact kernel | "
             "weights exact |", "|---|---|---|---|---|---|---|"]
    for a in r["accuracy"]:
        lines.append(f"| {a['label']} | {a['k']} | {a['seconds']:.2f} | {100 * a['frobenius_error']:.2f}% | "
                     f"{100 * a['top20_eig_error']:.2f}% | {100 * a['tt_max_rel_diff']:.1f}% | "
                     f"{100 * a['exact_weight_fraction']:.0f}% |")
    s = r["speed"]
    lines += ["", "| kernel (N=100, 32 px) | seconds | ratio to the engine's factored default |", "|---|---|---|",
              f"| engine, factored (default; Frobenius error {100 * s['factored_frobenius_error']:.2g}%) | "
              f"{s['engine_factored_seconds']:.2f} | 1 |",
              f"| engine, exact | {s['engine_exact_seconds']:.2f} | "
              f"{s['engine_exact_seconds'] / s['engine_factored_seconds']:.2f} |",
              f"| vmap(jacrev) + J J^T (exact) | {s['vmap_jacrev_plus_gram_seconds']:.2f} | "
              f"{s['vmap_jacrev_plus_gram_seconds'] / s['engine_factored_seconds']:.1f} |"]
    if "vmap_jacrev_gaussian4096_seconds" in s:
        lines.append(f"| vmap(jacrev) + dense Gaussian projection, k=4096 (Frobenius error "
                     f"{100 * s['vmap_jacrev_gaussian4096_error']:.1f}%) | {s['vmap_jacrev_gaussian4096_seconds']:.2f} | "
                     f"{s['vmap_jacrev_gaussian4096_seconds'] / s['engine_factored_seconds']:.1f} |")
    m = r["memory"]
    lines += ["", f"Memory: N={m['n']} images at 64 px, factored kernel in a fresh process with a {m['budget_gb']} GB "
                  f"budget: peak resident memory **{m['peak_rss_gb']:.2f} GB**, {m['seconds']:.1f} s "
                  f"(chunk of {m['plan']['chunk_size']} samples; {100 * m['plan']['exact_weight_fraction']:.0f}% of "
                  "the weights exact)."]
    return "\n".join(lines) + "\n"


@_results("dynamics.json", "bench/dynamics_bench.py")
def dynamics(r):
    s, w = r["simulator"], r["sweep"]
    return (f"| what | size | seconds |\n|---|---|---|\n"
            f"| exact simulator | N={r['n']}, C={r['classes']}, T={s['steps']}, batch {s['batch_size']}, "
            f"{s['runs']} batch orders | **{s['seconds']:.2f}** |\n"
            f"| sweep from one kernel | {w['configurations']} configurations, {w['runs']} batch orders each, "
            f"incl. step timing of 5 batch sizes | **{w['seconds']:.1f}** |\n"
            f"| the kernel itself | N={r['n']}, 32 px, factored | {r['kernel_seconds']:.1f} |\n")


@_results("extrapolation.json", "bench/extrapolation_bench.py")
def extrapolation(r):
    lines = ["| N | source | TT eps 0.01 / 0.1 / 0.4 | relative error | seconds |", "|---|---|---|---|---|"]
    for t in r["targets"]:
        fmt = lambda d: " / ".join(str(d[k]) for k in ("eps=0.01", "eps=0.1", "eps=0.4"))  # noqa: E731
        lines.append(f"| {t['n']} | real fine-tuning | {fmt(t['real']['tt'])} | - | {t['real']['train_seconds']} |")
        k = t["kernel_at_n"]
        lines.append(f"| {t['n']} | kernel at N (linear simulator) | {fmt(k['tt'])} | "
                     f"{fmt({a: f'{100 * b:.0f}%' for a, b in k['relative_error'].items()})} | {k['kernel_seconds']} |")
        for n_sub, s in t["from_subset"].items():
            lines.append(f"| {t['n']} | extrapolated from N'={n_sub} | {fmt(s['tt'])} | "
                         f"{fmt({a: f'{100 * b:.0f}%' for a, b in s['relative_error'].items()})} | {s['seconds']} |")
    return "\n".join(lines) + "\n"


@_results("testcurves.json", "bench/testcurves_bench.py")
def testcurves(rows):
    lines = ["| setting | best test-loss step, predicted / real | final test accuracy, predicted / real |",
             "|---|---|---|"]
    for r in rows:
        b, a = r["best_test_loss_step"], r["final_test_accuracy"]
        lines.append(f"| {r['settings']} | {b['predicted']} / {b['actual']} | {a['predicted']:.3f} / {a['actual']:.3f} |")
    return "\n".join(lines) + "\n"


@_results("online.json", "bench/online_bench.py --calibrate")
def online(r):
    import online_bench

    return (f"{r['cells']} cells, {r['pairs_per_method_and_fraction']} (cell, eps) pairs per estimate and observed "
            f"fraction.\n\n" + online_bench.render(r) + "\n![TT error against the fraction of the run observed]"
            "(bench/results/online.png)\n\nThe open-loop prediction's own 90% interval (`predict`'s "
            "`training_time[key][\"interval\"]`, `finetime.intervals`), by the linearity check's loss gap. "
            + online_bench.render_open_loop(r)
            + ("\nHow the intervals' widths, (high + 1) / (low + 1), spread (margins fitted on every row, as "
               "shipped), scaled against unscaled:\n\n" + online_bench.render_spread(r)
               if "width_spread" in r else "")
            + ("\nHow much the observed steps count (`finetime.online._fit.evidence_points`; refiner TT error, whole "
               "suite, by the fraction observed):\n\n" + online_bench.render_evidence(r["evidence"])
               if "evidence" in r else "")
            + ("\nHow much of the speed observed so far the rest of the run keeps (`finetime.online._fit."
               "SPEED_PERSISTENCE`; 1 is a time-warp of the whole prediction; refiner TT error, whole suite):\n\n"
               + online_bench.render_evidence(r["persistence"], online_bench.PERSISTENCE_HEAD)
               if "persistence" in r else "")
            + ("\nWhat the refiner starts from (`finetime.online._fit.warp_posterior`: the prediction's mean curve, or its "
               "simulated runs, one per batch order, weighed by the observations too) and how many of the last "
               "observations set the level the refined curves go on from (`LEVEL_POINTS`; refiner TT error, whole "
               "suite):\n\n" + online_bench.render_evidence(r["prior"], online_bench.PRIOR_HEAD)
               if "prior" in r else ""))


def _online_relin_rows():
    """The rows of ``bench/results/online_relin.jsonl`` (``None`` when the file is not there)."""
    import report

    path = RES / "online_relin.jsonl"
    return report.load([path]) if path.exists() else None


def online_relin():
    import online_relin_bench

    rows = _online_relin_rows()
    return _missing("bench/online_relin_bench.py") if rows is None else online_relin_bench.render(rows)


def noise():
    import noise_bench

    path = RES / "noise.jsonl"
    return noise_bench.render() if path.exists() else _missing("bench/noise_bench.py")


def online_relin_regimes():
    import online_relin_bench

    rows = _online_relin_rows()
    return _missing("bench/online_relin_bench.py") if rows is None else online_relin_bench.render_regimes(rows)


def gpu():
    path = RES / "gpu.json"
    if not path.exists():
        return ("_Not run: no CUDA machine has been available to the sessions that built `--device`. The prepared "
                "script is `bench/gpu_bench.py` (`.venv/bin/python bench/gpu_bench.py` on a CUDA machine writes "
                "`bench/results/gpu.json`; `--device cpu --smoke` runs the same code at tiny sizes)._\n")
    r = json.loads(path.read_text())
    lines = [f"Device: {r['device']}, torch {r['torch']}.", "",
             "| settings | precision | TT error eps 0.01 / 0.1 / 0.4 | s/step predicted / real (error) | "
             "prediction s | real training s | cost ratio | peak GPU GB |", "|---|---|---|---|---|---|---|---|"]
    for v in r["validate"]:
        e = " / ".join(f"{100 * x:.0f}%" if x is not None else "-" for x in v["error"].values())
        s_ = v["seconds_per_step"]
        err = "-" if s_["relative_error"] is None else f"{100 * s_['relative_error']:.0f}%"
        lines.append(f"| {v['settings']} | {v['precision']} | {e} | {s_['predicted']} / {s_['real']} ({err}) | "
                     f"{v['prediction_seconds']['total']} | {v['real_train_seconds']} | {v['cost_ratio']} | "
                     f"{v['peak_gpu_gb']} |")
    lines += ["", "| kernel | seconds | floor (1 forward + C backward) | ratio | peak GPU GB |", "|---|---|---|---|---|"]
    for k in r["kernel"]:
        lines.append(f"| N={k['n']}, {k['image_size']} px | {k['kernel_seconds']} | {k['floor_seconds']} | "
                     f"{k['kernel_over_floor']} | {k['peak_gpu_gb']} |")
    if r.get("simulator"):
        lines += ["", "| simulator: outputs (16 runs x 300 steps, SGD momentum 0.9) | CPU s | GPU s | largest curve "
                  "difference |", "|---|---|---|---|"]
        for v in r["simulator"]:
            gpu_s = v.get("cuda_seconds", v.get("cpu_seconds"))
            lines.append(f"| {v['outputs']} | {v['cpu_seconds']} | {gpu_s} | {v['max_abs_curve_difference']:.2g} |")
    return "\n".join(lines) + "\n"


@_results("distributed.json", "bench/distributed_bench.py")
def distributed(r):
    lines = [f"EfficientNet-Lite0, N = {next(iter(r['runs'].values()))['n']} images at {r['image_size']} px, "
             f"{r['cores']} cores, `--predictor linear`.", "",
             "| run | ranks x threads | kernel s | prediction s | TT eps 0.01 / 0.1 / 0.4 |", "|---|---|---|---|---|"]
    for name, v in r["runs"].items():
        tt = " / ".join(str(x) for x in v["training_time"].values())
        lines.append(f"| {name} | {v['ranks']} x {v['threads']} | {v['kernel_seconds']} | {v['total_seconds']} | "
                     f"{tt} |")
    return "\n".join(lines) + "\n"


@_results("floor.json", "bench/floor_bench.py")
def floor(rows):
    lines = ["| N | resolution | floor s (1 forward + 5 backward) | kernel s (factored) | kernel / floor | "
             "kernel phases s | weights exact |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ph = ", ".join(f"{k} {v:g}" for k, v in r["phase_seconds"].items())
        lines.append(f"| {r['n']} | {r['image_size']} px | {r['floor_seconds']} | {r['kernel_seconds']} | "
                     f"**{r['ratio']}** | {ph} | {100 * r['exact_weight_fraction']:.1f}% |")
    return "\n".join(lines) + "\n"


def _optimizer_label(cfg: dict) -> str:
    """``GD lr 0.01 m 0.9`` or ``SGD b32 lr 0.001 m 0`` from a flat config."""
    return (f"GD lr {cfg['lr']:g} m {cfg['momentum']:g}" if not cfg["batch_size"]
            else f"SGD b{cfg['batch_size']} lr {cfg['lr']:g} m {cfg['momentum']:g}")


def _cost_cell(cs: dict, parts=("kernel", "relinearization", "simulation", "step_timing")) -> str:
    """``total (kernel, re-linearization, simulation, step timing)`` seconds (or the ``parts`` given) of a
    prediction's ``cost_seconds``."""
    return f"{cs['total']:.1f} ({', '.join(f'{cs[k]:.1f}' for k in parts)})"


def _predicted_tt(p: dict) -> str:
    """``diverges``, or the predicted TT pair."""
    return "diverges" if p.get("diverged") else _eps_pair(p["tt"])


def _refreshed(p: dict) -> str:
    """Whether a cost-bench prediction refreshed its kernel: ``no``, ``yes`` (at the checkpoints) or ``at the end``
    (the end check; results stored before it was recorded say ``yes``)."""
    if not p["relinearized"]:
        return "no"
    return "at the end" if end_refreshed(p) else "yes"


@_results("cost.json", "bench/cost_bench.py")
def cost(r):
    lines = ["| cell | real training s | prediction s: total (kernel, re-linearization, first steps, simulation, step "
             "timing) | real / prediction | real / kernel floor | refreshed | TT error eps 0.01 / 0.1 / 0.4 |",
             "|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        cfg, p = c["config"], c["predicted"]
        cost_cell = _cost_cell(p["cost"], ("kernel", "relinearization", "first_steps", "simulation", "step_timing"))
        bn = ", batch statistics" if cfg["bn"] == "batch" else ""
        errs = _eps_errors(p["error"], ("eps=0.01", "eps=0.1", "eps=0.4"))
        lines.append(f"| {cfg['image_size']} px, {cfg['per_class']}/class, {_optimizer_label(cfg)}{bn} | "
                     f"{c['real']['train_seconds']:.1f} | {cost_cell} | **{c['ratio']}x** | "
                     f"{c.get('real_over_floor', '-')}x | {_refreshed(p)} | {errs} |")
    lines += ["", "| optimizer | cells | median real s | median prediction s | median real / prediction | median "
                  "real / kernel floor | median parts: kernel, re-linearization, first steps, simulation, step "
                  "timing |", "|---|---|---|---|---|---|---|"]
    for name, v in r["summary"].items():
        parts = ", ".join(f"{x:.1f}" for x in v["median_parts"].values())
        lines.append(f"| {name} | {v['cells']} | {v['median_real_seconds']:.1f} | {v['median_prediction_seconds']:.1f}"
                     f" | **{v['median_ratio']}x** | {v.get('median_real_over_floor') or '-'}x | {parts} |")
    return "\n".join(lines) + "\n"


@_results("subsample.json", "bench/subsample_bench.py")
def subsample(r):
    lines = ["| cell | kernel on | TT eps 0.1 / 0.4 | error eps 0.1 / 0.4 | prediction s (kernel, re-lin., sim., "
             "step timing) | s per step predicted / real | real training s | real / prediction |",
             "|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        cfg = c["config"]
        name = f"{_optimizer_label(cfg)}, {cfg['steps']} steps, N = {c['n']}"
        real = c["real"]
        real_sps = real["train_seconds"] / cfg["steps"]
        lines.append(f"| {name} | real fine-tuning | {_eps_pair(real['tt'])} | - | - | "
                     f"- / {real_sps:.3g} | {real['train_seconds']} | - |")
        for m, p in c["predicted"].items():
            sps = p.get("seconds_per_step")
            step = "-" if sps is None else f"{sps:.3g} ({100 * (sps / real_sps - 1):+.0f}%)"
            lines.append(f"| | {p['samples']} samples ({m}) | {_predicted_tt(p)} | {_eps_errors(p['error'])} | "
                         f"{_cost_cell(p['cost'])} | {step} | {real['train_seconds']} | **{p['cost_ratio']}** |")
    return "\n".join(lines) + "\n"


@_results("growth.json", "bench/growth_bench.py")
def growth(r):
    lines = ["| cell | checkpoints | real run: trace ratio | linear path: trace ratio | linear path: loss gap | "
             "real loss | linear model's loss |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda v: " / ".join(f"{x:.3g}" for x in v)  # noqa: E731
    for c in r["cells"]:
        cfg = c["config"]
        where = ("text" if c["suite"] == "text" else f"{cfg['image_size']} px") + f", {cfg['per_class']} per class"
        name = f"{where}, {_optimizer_label({**cfg, 'momentum': cfg.get('momentum', 0.0)})}"
        lines.append(f"| {name} | {', '.join(map(str, c['checkpoints']))} | {fmt(c['real_trace_ratio'])} | "
                     f"{fmt(c['linear_path_trace_ratio'])} | {fmt(c['linear_path_loss_gap'])} | "
                     f"{fmt(c['real_loss'])} | {fmt(c['linear_loss'])} |")
    return "\n".join(lines) + "\n"


@_results("first_steps.json", "bench/first_steps_bench.py")
def first_steps(r):
    from first_steps_bench import render

    return render(r)


@_results("scale.json", "bench/scale_bench.py")
def scale(r):
    lines = ["| cell | kernel on | peak memory | prediction s (kernel, re-lin., sim., step timing) | TT eps 0.1 / 0.4 "
             "predicted | real (every 10 steps) | error eps 0.1 / 0.4 | s per step predicted / real | real training s "
             "| real / prediction |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["cells"]:
        cfg, p, real = c["config"], c["predicted"], c["real"]
        name = f"{_optimizer_label(cfg)}, {cfg['steps']} steps, N = {c['n']:,}"
        ks = p["kernel_samples"] or {}
        lines.append(f"| {name} | {ks.get('samples', c['n'])} samples | {p['peak_rss_bytes'] / 2**30:.2f} GiB | "
                     f"{_cost_cell(p['cost'])} | {_predicted_tt(p)} | {_eps_pair(real['tt'])} | "
                     f"{_eps_errors(p['error'])} | "
                     f"{p['seconds_per_step']:.3g} / {real['seconds_per_step']:.3g} | {real['train_seconds']} | "
                     f"**{p['cost_ratio']}** |")
    return "\n".join(lines) + "\n"


def _bn_batch_table(tasks):
    """The batch-function kernel's table; with the columns of the one-batch variant where it was run (``--subset``)."""
    m = next((c["subset"]["samples"] for t in tasks for c in t["cells"] if c.get("subset")), None)
    extra = f" one batch of {m}, carried to all (kernel s) | error |" if m else ""
    lines = ["| task | batch-function kernel s | trace / running-stats kernel's | optimizer | real TT eps 0.1 / 0.4 | "
             "batch-function kernel | error | kernel-only default (running-stats kernel) | error |" + extra,
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if m else "")]
    for t in tasks:
        for i, c in enumerate(t["cells"]):
            head = (f"{t['image_size']} px, seed {t['seed']}, N = {t['n']} | {t['kernel_seconds']} | "
                    f"{t['trace_ratio']}" if i == 0 else " | | ")
            opt = (f"{'GD' if not c['batch_size'] else 'SGD b' + str(c['batch_size'])} lr {c['lr']:g}"
                   + (f" m {c['momentum']:g}" if c.get("momentum") else ""))
            bf = "diverges" if c["batch_function_diverged"] else _eps_pair(c["batch_function"])
            row = (f"| {head} | {opt} | {_eps_pair(c['real'])} | {bf} | "
                   f"{_eps_errors(c['error_batch_function'])} | {_eps_pair(c['default'])} | "
                   f"{_eps_errors(c['error_default'])} |")
            sub = c.get("subset")
            if sub:
                tt = "diverges" if sub["diverged"] else _eps_pair(sub["tt"])
                row += f" {tt} ({sub['kernel_seconds']}) | {_eps_errors(sub['error'])} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


bn_batch = _results("bn_batch.json", "bench/bn_batch_bench.py")(_bn_batch_table)
bn_batch_photos = _results("bn_batch_photos.json",
                           "bench/bn_batch_bench.py --results photos --subset 16")(_bn_batch_table)


@_results("step_timing.json", "bench/step_timing_bench.py")
def step_timing(r):
    lines = ["| timing scheme | configurations within 10% of the real step | median predicted / real | range | "
             "median error | median cost (s) |", "|---|---|---|---|---|---|"]
    for name, v in r["summary"].items():
        lines.append(f"| {name} | {v['within_10pct']} of {v['configs']} | {v['median_ratio']:.2f} | "
                     f"{v['min_ratio']:.2f}-{v['max_ratio']:.2f} | {100 * v['median_abs_error']:.0f}% | "
                     f"{v['median_cost_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


@_results("pntk.json", "bench/pntk_bench.py")
def pntk(r):
    lines = ["| suite | tasks | (cell, eps) pairs | kernel seconds, every output / sum | median Frobenius distance | "
             "linear: median, every output / sum | linear: p95, every output / sum |", "|---|---|---|---|---|---|---|"]
    for name, s in r["suites"].items():
        k = s["kernel_seconds"]
        lines.append(f"| {name} | {len(s['tasks'])} | {s['pairs']} | {k['all']} / {k['sum']} "
                     f"(1/{k['all'] / k['sum']:.1f}) | {100 * s['median_frobenius']:.0f}% | "
                     f"{100 * s['median']['all']:.1f}% / {100 * s['median']['sum']:.1f}% | "
                     f"{100 * s['p95']['all']:.1f}% / {100 * s['p95']['sum']:.1f}% |")
    return "\n".join(lines) + "\n"


@_results("adam_rule.json", "bench/adam_rule_bench.py")
def adam_rule(r):
    eps = ("eps=0.4", "eps=0.1", "eps=0.01")
    names = ("linear", "row x column P", "diagonal P")  # adaptive is linear for AdamW
    lines = ["| AdamW lr | seed | real TT(0.4) / TT(0.1) / TT(0.01) | "
             + " | ".join(f"{n} (error at 0.4 / 0.1 / 0.01)" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in r["rows"]:
        cells = [" / ".join(f"{100 * row['errors'][n][k]:.0f}%" for k in eps) for n in names]
        lines.append(f"| {row['lr']:g} | {row['seed']} | {' / '.join(str(row['real'][k]) for k in eps)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stability_cap():
    import stability_cap_bench

    path = RES / "stability_cap.jsonl"
    if not path.exists():
        return _missing("bench/stability_cap_bench.py")
    return stability_cap_bench.render([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def divergence_orders():
    import divergence_orders_bench as b

    path = RES / "divergence_orders.jsonl"
    if not path.exists():
        return _missing("bench/divergence_orders_bench.py")
    return b.render(b.selected(b.load([b.SOURCE])), b.load([path]))


def main():
    text = (HERE / "BENCHMARKS.template.md").read_text()
    for key, fn in (("paper_suite", paper_suite), ("adamw_suite", adamw_suite), ("text_suite", text_suite),
                    ("text_trainer_suite", text_trainer_suite), ("clip_suite", clip_suite),
                    ("smoothing_suite", smoothing_suite), ("smoothing_targets", smoothing_targets),
                    ("text_kernel", text_kernel), ("adam_rule", adam_rule), ("pntk", pntk), ("kernel", kernel), ("dynamics", dynamics),
                    ("extrapolation", extrapolation), ("testcurves", testcurves), ("online", online),
                    ("online_relin", online_relin), ("online_relin_regimes", online_relin_regimes), ("gpu", gpu), ("distributed", distributed),
                    ("floor", floor), ("cost", cost), ("subsample", subsample), ("bn_batch", bn_batch), ("scale", scale),
                    ("photos_suite", photos_suite), ("resolution", resolution),
                    ("photos_intervals", photos_intervals), ("bn_batch_photos", bn_batch_photos),
                    ("step_timing", step_timing), ("interpolation", interpolation),
                    ("momentum_interpolation", momentum_interpolation), ("end_check", end_check), ("growth", growth),
                    ("first_steps", first_steps), ("noise", noise), ("stability_cap", stability_cap),
                    ("divergence_orders", divergence_orders)):
        text = text.replace("{{" + key + "}}", fn())
    (ROOT / "BENCHMARKS.md").write_text(text)
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
