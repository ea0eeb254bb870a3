"""The sharded kernel against the one-process kernel, on this machine's cores.

    .venv/bin/python bench/distributed_bench.py [--per-class 40] [--image-size 64]

Runs `finetime predict --predictor linear` once as one process (all cores) and once under `torchrun --standalone
--nproc-per-node 2` (each rank half the cores), on the same task, and records the kernel seconds, the whole
prediction's seconds, and whether the predicted training times agree. Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    common = ["predict", "--per-class", str(args.per_class), "--image-size", str(args.image_size), "--predictor",
              "linear", "--quiet"]
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in (("one process", [sys.executable, "-m", "finetime"]),
                          (f"{args.ranks} ranks", [torchrun, "--standalone", "--nproc-per-node", str(args.ranks),
                                                   "-m", "finetime"])):
            path = Path(tmp) / "r.json"
            _run([*cmd, *common, "--json", str(path)], env)
            r = json.loads(path.read_text())
            out[name] = {"kernel_seconds": r["cost_seconds"]["kernel"], "total_seconds": r["cost_seconds"]["total"],
                         "ranks": r["config"]["kernel"]["ranks"], "threads": r["runtime"]["threads"],
                         "training_time": {k: v["step"] for k, v in r["predicted"]["training_time"].items()},
                         "n": r["config"]["kernel"]["n"]}
            path.unlink()
    result = {"per_class": args.per_class, "image_size": args.image_size, "cores": len(os.sched_getaffinity(0)),
              "runs": out}
    (HERE / "results" / "distributed.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
