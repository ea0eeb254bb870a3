"""Does a real run's divergence depend on its batch order? The suite's SGD lr 1e-2 momentum 0.9 cells (where every
real divergence of section 1 happened) fine-tuned again with other batch orders and with their own.

    .venv/bin/python bench/divergence_orders_bench.py [--orders 4]   # train (resumable; 40-70 s a run on 2 cores)
    .venv/bin/python bench/divergence_orders_bench.py --report        # tables only, from the stored runs

Each configuration is trained ``--orders`` more times with the suite's batch orders of repeats 1, 2, ... and once
more with its own order 0 (``noise_bench.train``: same weights, head and data; ``order`` 0 in the results is the
re-run). A prediction made before training is blind to the batch order, so no such prediction can call a
configuration's divergence better than its other orders do: the `other orders` row calls each run divergent where the
majority of the configuration's other runs diverged, or (`half or more`) at least half of them. The last row calls the
stored order-0 run by its re-run, which saw the same batches and differs only in its floating-point rounding (thread
count, order of reductions). The default's stored call (`adaptive`, diverged in more than half of its simulated batch
orders) is scored on every run. Divergence as in PROTOCOL (non-finite or above 10x the starting loss); the second
table counts, as section 1's does, runs that diverged or ended no lower than they started (did not train). Written to
``bench/results/divergence_orders.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import confusion, failed, load  # noqa: E402

SOURCE = HERE / "results" / "paper.jsonl"
OUT = HERE / "results" / "divergence_orders.jsonl"


def selected(cells: list[dict]) -> list[dict]:
    """The suite's minibatch SGD cells at lr 1e-2 with momentum 0.9 (repeat 0)."""
    return [c for c in cells if c.get("repeat", 0) == 0 and c["config"]["batch_size"] and c["config"]["lr"] == 1e-2
            and c["config"]["momentum"] == 0.9]


def render(cells: list[dict], runs: list[dict]) -> str:
    """Per configuration the outcome of each order, then the confusion tables of the order-blind floor and the
    default's call over every run."""
    by = {}
    for r in runs:
        by.setdefault(r["id"], {})[r["order"]] = r["real"]
    lines = ["| configuration | default predicts | order 0 (stored) | re-run of order 0 | other orders |",
             "|---|---|---|---|---|"]

    def outcome(real):
        if real["diverged"]:
            return "diverged"
        if failed(real):
            return "did not train"
        return f"TT(0.1) {real['training_time']['eps=0.1']['step']}"

    scored = {"diverged": [], "failed": []}
    again = {"diverged": [], "failed": []}  # (re-run's outcome, stored order 0's): the same batches, run again
    for c in cells:
        cfg, pred = c["config"], c["predictors"]["adaptive"]["diverged_fraction"] > 0.5
        own = by.get(c["id"], {})
        others = [own[k] for k in sorted(own) if k > 0]
        lines.append(f"| {cfg['image_size']} px, {cfg['per_class']}/class, seed {cfg['seed']}, batch "
                     f"{cfg['batch_size']} | {'divergence' if pred else 'finite'} | {outcome(c['real'])} | "
                     f"{outcome(own[0]) if 0 in own else '-'} | {', '.join(map(outcome, others)) or '-'} |")
        every = [c["real"], *others]  # the re-run repeats order 0: left out of the scores
        for key, bad in (("diverged", lambda r: r["diverged"]), ("failed", failed)):
            if 0 in own:
                again[key].append((bad(own[0]), bad(c["real"])))
            for i, r in enumerate(every):
                rest = every[:i] + every[i + 1:]
                votes = sum(map(bad, rest))
                half = bool(rest) and votes >= len(rest) / 2  # no other run: no call
                scored[key].append((pred, votes > len(rest) / 2, half, bad(r)))
    out = ["\n".join(lines), ""]
    for key, title in (("diverged", "real divergence"), ("failed", "real runs that diverged or did not train")):
        out += [f"#### {title}, every order", "",
                "| call | both | predicted only | real only | neither | recall | precision |",
                "|---|---|---|---|---|---|---|",
                f"| adaptive (the stored default) | {confusion([(p, r) for p, _, _, r in scored[key]])} |",
                f"| other orders, majority | {confusion([(b, r) for _, b, _, r in scored[key]])} |",
                f"| other orders, half or more | {confusion([(b, r) for _, _, b, r in scored[key]])} |"]
        if again[key]:
            out.append(f"| order 0 run again (same batches; scores order 0 only) | {confusion(again[key])} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=4, help="batch orders to train besides the suite's own")
    ap.add_argument("--report", action="store_true", help="only score the stored runs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    cells = selected(load([SOURCE]))
    if not args.report:
        import noise_bench

        noise_bench.train(cells, args.orders, args.out)
    print(render(cells, load([args.out]) if args.out.exists() else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
