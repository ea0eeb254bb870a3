"""Predicted test-set curves against real held-out curves.

    .venv/bin/python bench/testcurves_bench.py           # writes bench/results/testcurves.json

EfficientNet-Lite0, Fashion-MNIST, 5 classes, 30 training + 50 held-out images per class, T=300, a few optimizer
settings at 32 and 64 px: the step of the lowest test loss and the final test accuracy, predicted vs real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    dict(image_size=64, lr=1e-3),
    dict(image_size=64, lr=1e-2, batch_size=32),
    dict(image_size=64, lr=1e-3, momentum=0.9, batch_size=32),
    dict(image_size=32, lr=1e-3),
    dict(image_size=32, lr=1e-3, batch_size=32),
]


def main():
    from finetime.runtime import tune_allocator
    from finetime.config import RunConfig
    from finetime.validate import validate

    tune_allocator()
    rows = []
    for c in CELLS:
        cfg = RunConfig.from_dict(dict(per_class=30, test_per_class=50, seed=3, steps=300, runs=16, predictor="linear", **c))
        r = validate(cfg).to_dict()
        row = {"settings": c, **r["test_error"], "train_tt_error": {k: v["relative"] for k, v in r["error"].items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "testcurves.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
