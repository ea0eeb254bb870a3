"""Regenerate BENCHMARKS.md from the results files and the template (prose lives in the template).

    .venv/bin/python bench/benchmarks_md.py

Placeholders: {{paper_suite}} (bench/results/paper.jsonl via report.py), {{adamw_suite}}, {{text_suite}}, {{text_kernel}}, {{kernel}}, {{dynamics}}, {{extrapolation}},
{{testcurves}}; a missing results file renders as a note saying which command produces it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RES = HERE / "results"
sys.path.insert(0, str(HERE))


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
    return _suite("adamw", ("linear",), "predicted vs real training time, AdamW")


def text_suite():
    return _suite("text")


def text_kernel():
    path = RES / "text_kernel.json"
    if not path.exists():
        return _missing("bench/text_kernel_bench.py")
    rows = json.loads(path.read_text())
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


def kernel():
    path = RES / "kernel.json"
    if not path.exists():
        return _missing("bench/kernel_bench.py")
    r = json.loads(path.read_text())
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


def dynamics():
    path = RES / "dynamics.json"
    if not path.exists():
        return _missing("bench/dynamics_bench.py")
    r = json.loads(path.read_text())
    s, w = r["simulator"], r["sweep"]
    return (f"| what | size | seconds |\n|---|---|---|\n"
            f"| exact simulator | N={r['n']}, C={r['classes']}, T={s['steps']}, batch {s['batch_size']}, "
            f"{s['runs']} batch orders | **{s['seconds']:.2f}** |\n"
            f"| sweep from one kernel | {w['configurations']} configurations, {w['runs']} batch orders each, "
            f"incl. step timing of 5 batch sizes | **{w['seconds']:.1f}** |\n"
            f"| the kernel itself | N={r['n']}, 32 px, factored | {r['kernel_seconds']:.1f} |\n")


def extrapolation():
    path = RES / "extrapolation.json"
    if not path.exists():
        return _missing("bench/extrapolation_bench.py")
    r = json.loads(path.read_text())
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


def testcurves():
    path = RES / "testcurves.json"
    if not path.exists():
        return _missing("bench/testcurves_bench.py")
    rows = json.loads(path.read_text())
    lines = ["| setting | best test-loss step, predicted / real | final test accuracy, predicted / real |",
             "|---|---|---|"]
    for r in rows:
        b, a = r["best_test_loss_step"], r["final_test_accuracy"]
        lines.append(f"| {r['settings']} | {b['predicted']} / {b['actual']} | {a['predicted']:.3f} / {a['actual']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    text = (HERE / "BENCHMARKS.template.md").read_text()
    for key, fn in (("paper_suite", paper_suite), ("adamw_suite", adamw_suite), ("text_suite", text_suite),
                    ("text_kernel", text_kernel), ("kernel", kernel), ("dynamics", dynamics),
                    ("extrapolation", extrapolation), ("testcurves", testcurves)):
        text = text.replace("{{" + key + "}}", fn())
    (ROOT / "BENCHMARKS.md").write_text(text)
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
