"""The stability cap (``--stability-cap``) against the default, on the suite's cells where it can matter, scored
against their stored real runs (`bench/results/paper.jsonl`; nothing is trained again).

    .venv/bin/python bench/stability_cap_bench.py            # select, re-predict (~25 min on 2 cores), summarize
    .venv/bin/python bench/stability_cap_bench.py --summary  # the summary of bench/results/stability_cap.jsonl
    .venv/bin/python bench/stability_cap_bench.py --timing   # seconds of the cap itself, N = 50 and 500, C = 5

The cells: full-batch GD at lr 1e-2 with BatchNorm frozen (the kernel grows there, section 1), and every cell whose
real run diverged or whose stored default prediction did. They are copied to `bench/results/stability_cap.jsonl`
with their stored predictions, and ``adaptive-eos`` (cap 0.9) and ``adaptive-eos1`` (cap 1.0) are computed on them
from each task's kernel (``bench/suite.py --repredict``); ``adaptive`` is the stored default, the same computation
without the cap. The summary: per group, median, p95 and mean relative error at eps 0.1 and 0.4 (cells whose real
TT(0.4) is under 10 steps left out, as in section 1), and the divergence tables of `bench/report.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
sys.path.insert(0, str(HERE))

PREDICTORS = ("adaptive", "adaptive-eos", "adaptive-eos1")
OUT = RES / "stability_cap.jsonl"


def gd_grows(c: dict) -> bool:
    cfg = c["config"]
    return cfg["batch_size"] == 0 and cfg["lr"] >= 1e-2 and cfg["bn"] == "frozen"


def diverging(c: dict) -> bool:
    p = c["predictors"].get("adaptive")
    return c["real"]["diverged"] or (p is not None and p["diverged_fraction"] > 0.5)


GROUPS = {"GD lr 1e-2, BatchNorm frozen": gd_grows, "real or predicted divergence": diverging}


def select(source: Path) -> list[dict]:
    """The cells of ``source`` in a group, with only the predictions compared here."""
    cells = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    cells = [c for c in cells if any(rule(c) for rule in GROUPS.values())]
    for c in cells:
        c["predictors"] = {k: v for k, v in c["predictors"].items() if k in PREDICTORS}
    return cells


def render(cells: list[dict]) -> str:
    import report

    names = [p for p in PREDICTORS if all(p in c["predictors"] for c in cells)]
    lines = ["| cells | predictor | pairs | median | p95 | mean |", "|---|---|---|---|---|---|"]
    for title, rule in GROUPS.items():
        cs = [c for c in cells if rule(c)]
        for p in names:
            errs = [r["error"] for r in report.rows(cs, p) if not r["fast"]]
            lines.append(f"| {title} ({len(cs)}) | {p} | {len(errs)} | {report.pct(report.quantile(errs, 0.5))} | "
                         f"{report.pct(report.quantile(errs, 0.95))} | {report.pct(statistics.mean(errs))} |")
    per_cell = ["| cell | real TT(0.1) / TT(0.4) | " + " | ".join(names) + " | sharpness over the limit (cap 1.0) |",
                "|---|---|" + "---|" * len(names) + "---|"]
    for c in cells:
        cfg = c["config"]
        label = (f"{cfg['image_size']} px, {cfg['per_class']}/class, "
                 + ("GD" if not cfg["batch_size"] else f"batch {cfg['batch_size']}")
                 + f", lr {cfg['lr']:g}, momentum {cfg['momentum']:g}")

        def tt(p, diverged):
            if diverged:
                return "diverged"
            return " / ".join(str(p["training_time"][k]["step"]) for k in ("eps=0.1", "eps=0.4"))

        ratios = c["predictors"].get("adaptive-eos1", {}).get("info", {}).get("sharpness_ratios", [])
        preds = [c["predictors"][p] for p in names]
        per_cell.append(f"| {label} | {tt(c['real'], c['real']['diverged'])} | "
                        + " | ".join(tt(p, p["diverged_fraction"] > 0.5) for p in preds)
                        + " | " + (", ".join("-" if r is None else f"{r:.2g}" for r in ratios) or "-") + " |")
    return ("\n".join(lines) + "\n\n" + report.divergence_table(cells, names) + "\n" + "\n".join(per_cell) + "\n")


def timing() -> None:
    """Seconds of ``capped_kernel`` on a random rank-3000 kernel (N = 50 and 500, C = 5, two threads), the limit a
    third of the full-batch sharpness, with batches of 32 and full batches."""
    import time

    import torch

    from finetime.losses import Loss
    from finetime.spectrum import capped_kernel, sharpness

    torch.set_num_threads(2)
    for n in (50, 500):
        g = torch.Generator().manual_seed(0)
        j = torch.randn(n * 5, 3000, generator=g)
        theta, f = j @ j.T, torch.randn(n, 5, generator=g)
        limit = sharpness(theta, f, Loss.CE) / 3
        for batch in (32, None):
            t = time.perf_counter()
            _, ratio = capped_kernel(theta, f, Loss.CE, limit, batch)
            print(f"N = {n}, {'batch 32' if batch else 'full batch'}: {time.perf_counter() - t:.2f} s "
                  f"(sharpness {ratio:.1f}x the limit)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=RES / "paper.jsonl")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--summary", action="store_true", help="only summarize --out")
    ap.add_argument("--timing", action="store_true", help="only time the cap on random kernels")
    args = ap.parse_args(argv)
    if args.timing:
        timing()
        return 0
    if not args.summary:
        import suite

        cells = select(args.source)
        suite.write_results(args.out, cells)
        suite.repredict(args.out, ["adaptive-eos", "adaptive-eos1"], quiet=False,
                        ids={c["id"] for c in cells})
    cells = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(render(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
