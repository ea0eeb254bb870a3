"""Benchmark suite: predictions against real fine-tuning, the paper's protocol (section 5).

    .venv/bin/python bench/suite.py --config bench/configs/paper.toml            # run (resumable)
    .venv/bin/python bench/report.py bench/results/paper.jsonl                   # tables + scatter

Each task (dataset, resolution, classes, images per class, seed) gets one kernel; every optimizer cell of the task
is then predicted by each predictor (from that kernel) and really fine-tuned from the pretrained weights with its
own batch order. One JSON line per cell in the results file; cells already there are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
import time
import tomllib
from pathlib import Path

import torch

from finetime.batches import batch_plan
from finetime.config import PRESETS, RunConfig, TaskConfig
from finetime.dynamics import simulate
from finetime.finetune import finetune
from finetime.optim import describe
from finetime.predict import (Task, kernel_for, preconditioner_name, prepare, problem_from, runs_record, tolist,
                              training_times)
from finetime.predictors import predict_trajectory, stability_ratio
from finetime.runtime import tune_allocator
from finetime.wallclock import seconds_per_step
from finetime.zoo import is_text_data

PREDICTION_KEYS = ("predictor", "relinearize", "reanchor", "linearity_tol", "end_tol", "refresh_samples",
                   "relinearize_adam", "first_steps")
"""Flat settings that choose how a prediction is made, not what is trained: left out of cell identities."""


def _grid(spec: dict) -> list[dict]:
    keys = list(spec)
    vals = [v if isinstance(v, list) else [v] for v in spec.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*vals)]


def expand(cfg: dict) -> list[RunConfig]:
    """All cells of a suite file: tasks x optimizers, each a ``RunConfig``. A group's ``optimizers`` is one grid or a
    list of grids."""
    base = cfg.get("suite", {}).get("defaults", {})
    cells = []
    for group in cfg["groups"]:
        for task in _grid(group["tasks"]):
            specs = group["optimizers"]
            for opt in (o for spec in (specs if isinstance(specs, list) else [specs]) for o in _grid(spec)):
                settings = {**base, **group.get("defaults", {}), **task, **opt}
                for k in ("epsilon", "target_loss"):
                    if k in settings:
                        settings[k] = tuple(settings[k])
                cells.append(RunConfig.from_dict(settings))
    return cells


def cell_id(cfg: RunConfig, repeat: int = 0) -> str:
    """Stable identity of a cell: its settings that differ from the defaults (new settings do not change old ids;
    the prediction settings are left out, so that changing the default predictor does not rename the cells run)."""
    default = RunConfig().to_dict()
    d = {k: v for k, v in cfg.to_dict().items() if v != default.get(k) and k not in PREDICTION_KEYS}
    d["_repeat"] = repeat
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def task_key(cfg: RunConfig) -> tuple[TaskConfig, str | None]:
    """Cells with the same task share one kernel (and the same preconditioner, for Adam: it depends on the batch
    size)."""
    return cfg.task, preconditioner_name(cfg.optimizer)


def run_cell(cfg: RunConfig, task: Task, kernel, kernel_seconds: float, step_seconds: dict, predictors: list[str],
             repeat: int) -> dict:
    opt = cfg.optimizer
    n = task.data.x.shape[0]
    problem = problem_from(kernel, task)
    out = {"predictors": predict_cell(cfg, task, kernel, predictors)}
    plan = batch_plan(n, opt, cfg.steps, 1, torch.Generator().manual_seed(cfg.task.seed + 2 + 1000 * repeat))
    replay = simulate(problem, opt, cfg.steps, plan=plan)
    out["replay"] = {"loss": tolist(replay.loss[0]), "training_time": training_times(replay.loss, cfg)}
    model = prepare_model(cfg)
    real = finetune(model, task.data.x, task.data.y, opt, cfg.steps, plan, loss=cfg.objective, params=task.trained,
                    bn=cfg.task.bn)
    out["real"] = {"loss": tolist(real.loss), "accuracy": tolist(real.accuracy),
                   "training_time": training_times(real.loss.unsqueeze(0), cfg), "diverged": real.diverged,
                   "train_seconds": round(real.train_seconds, 3), "eval_seconds": round(real.eval_seconds, 3),
                   "threads": torch.get_num_threads()}
    b = "full" if opt.is_full_batch(n) else str(opt.batch_size)
    out["cost"] = {"kernel_seconds": round(kernel_seconds, 3), "step_timing_seconds": round(step_seconds[b][1], 3),
                   "seconds_per_step_predicted": round(step_seconds[b][0], 5)}
    return out


BENCH_PREDICTORS = {**PRESETS,
                    "adaptive-full-refresh": dataclasses.replace(PRESETS["adaptive"], refresh_samples="all"),
                    "adaptive-stepwise": dataclasses.replace(PRESETS["adaptive"], interpolate=False),
                    "adaptive-interp": dataclasses.replace(PRESETS["adaptive"], interpolate=True,
                                                           interpolation="linear"),
                    "adaptive-geometric": dataclasses.replace(PRESETS["adaptive"], interpolate=True,
                                                              interpolation="geometric"),
                    "adaptive-no-first-steps": dataclasses.replace(PRESETS["adaptive"], first_steps=0),
                    "adaptive-2-refreshes": dataclasses.replace(PRESETS["adaptive"], relinearize=2),
                    "adaptive-always-refresh": dataclasses.replace(PRESETS["adaptive"], linearity_tol=1e-9),
                    "adaptive-no-end-check": dataclasses.replace(PRESETS["adaptive"], end_tol=0.0),
                    "adaptive-eos": dataclasses.replace(PRESETS["adaptive"], stability_cap=0.9),
                    "adaptive-eos1": dataclasses.replace(PRESETS["adaptive"], stability_cap=1.0)}
"""The presets, and variants kept as baselines in the results: ``adaptive-full-refresh`` is ``adaptive`` with every
refresh a whole kernel (``--refresh-samples all``; the default before refreshes on a subset); ``adaptive-stepwise``
and ``adaptive-interp`` use each refreshed kernel from its checkpoint on, or interpolate it linearly in time between
refreshes (``--no-interpolate-kernels`` / ``--interpolate-kernels --kernel-interpolation linear``; the default
interpolates for Adam, AdamW and SGD without momentum, and with momentum where the kernel grows ``GROWTH_JUMP``-fold
between two refreshes); ``adaptive-geometric`` interpolates geometrically between every two refreshes;
``adaptive-no-first-steps`` is ``adaptive`` without its first real steps (``--first-steps 0``; it differs from
``adaptive`` only with BatchNorm batch statistics); ``adaptive-2-refreshes`` refreshes the kernel at ``T/15`` and
``3T/15`` only (``--relinearize 2``), a third cheaper re-linearization; ``adaptive-always-refresh`` refreshes
wherever the check's loss gap is not zero (``--linearity-tol 1e-9``), on the cells whose check passes: what
``adaptive`` would predict there if the check failed; ``adaptive-no-end-check`` is ``adaptive`` without its end
check (``--end-tol 0``; the default before it), on the cells whose first check passes; ``adaptive-eos`` and
``adaptive-eos1`` hold each refreshed kernel's sharpness at 0.9 and 1.0 times the stable limit (``--stability-cap``;
``bench/stability_cap_bench.py``)."""


UNCLIPPED = "-unclipped"
"""A predictor's name with this suffix predicts the cell as if its run did not clip its gradients (what the
prediction without ``--max-grad-norm`` says of a clipped run): the baseline of the clipping suite."""

UNSMOOTHED = "-unsmoothed"
"""Likewise without label smoothing (the prediction without ``--label-smoothing``): its curves are of the plain
cross-entropy, its training times read off them."""


def predict_cell(cfg: RunConfig, task: Task, kernel, names: list[str]) -> dict:
    """Each named predictor (``BENCH_PREDICTORS``, or one of them with ``UNCLIPPED`` or ``UNSMOOTHED``) on this cell,
    from the task's kernel."""
    problem = problem_from(kernel, task)
    out = {}
    for name in names:
        base = name.removesuffix(UNCLIPPED).removesuffix(UNSMOOTHED)
        c = dataclasses.replace(cfg, predictor=BENCH_PREDICTORS[base])
        if name.endswith(UNCLIPPED):
            c = dataclasses.replace(c, optimizer=dataclasses.replace(c.optimizer, max_grad_norm=None))
        t, prob = task, problem
        if name.endswith(UNSMOOTHED):
            c = dataclasses.replace(c, label_smoothing=0.0)
            t = dataclasses.replace(task, config=c)
            prob = problem_from(kernel, t)
        t0 = time.perf_counter()
        traj = predict_trajectory(prob, c, t)
        sim = time.perf_counter() - t0
        info = dict(traj.info or {})
        if name == "linear":
            info["stability_ratio"] = stability_ratio(prob, c)
        elif traj.info is not None:
            info["seconds"] = sim
        out[name] = {
            "loss": tolist(traj.loss.double().nanmean(0)),
            **({"loss_runs": runs} if (runs := runs_record(traj.loss)) is not None else {}),
            "training_time": training_times(traj.loss, c),
            "diverged_fraction": traj.diverged_fraction,
            "seconds": round(sim, 3),
            **({"info": info} if info else {}),
        }
    return out


def _timings(entry: dict) -> dict:
    """The timing fields of a stored prediction (``seconds`` and every ``*seconds`` of its ``info``)."""
    info = entry.get("info") or {}
    return {"seconds": entry.get("seconds"), "info": {k: v for k, v in info.items() if k.endswith("seconds")}}


def keep_timings(old: dict, new: dict) -> dict:
    """``new`` with the timing fields of ``old`` (``--keep-seconds``), marked ``seconds_kept``."""
    t = _timings(old)
    out = {**new, "seconds": t["seconds"], "seconds_kept": True}
    if "info" in new:
        out["info"] = {**new["info"], **t["info"]}
    return out


def repredict(path: Path, names: list[str], quiet: bool, kernel_outputs: str | None = None,
              where: dict | None = None, ids: set[str] | None = None, keep_seconds: bool = False) -> int:
    """Recompute ``names`` for every cell of ``path`` (or those whose flat settings match ``where``, or whose id is in
    ``ids``) from its task's kernel; real runs are kept as they are. With ``kernel_outputs`` (``sum``) the kernels (the first and every
    refresh) are computed that way and the results are stored as ``<name>+<kernel_outputs>``, with their own kernel
    seconds. ``keep_seconds``: a prediction already stored keeps its timings (the computation re-run unchanged, to
    store what it did not, e.g. the simulated runs, on a machine slower that day than when it was timed)."""
    cells = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_task: dict = {}
    for c in cells:
        if (where and not _matches(RunConfig.from_dict(c["config"]), where)) or (ids and c["id"] not in ids):
            continue
        by_task.setdefault(task_key(RunConfig.from_dict(c["config"])), []).append(c)
    config = (lambda c: RunConfig.from_dict(c["config"]) if kernel_outputs is None  # noqa: E731
              else RunConfig.from_dict(c["config"]).replace(kernel_outputs=kernel_outputs))
    for i, group in enumerate(by_task.values()):
        task = prepare(config(group[0]))
        t0 = time.perf_counter()
        kernel = kernel_for(task)
        kernel_seconds = round(time.perf_counter() - t0, 3)
        for c in group:
            got = predict_cell(config(c), task, kernel, names)
            if keep_seconds:
                got = {n: keep_timings(c["predictors"][n], v) if n in c["predictors"] else v for n, v in got.items()}
            if kernel_outputs is not None:
                got = {f"{n}+{kernel_outputs}": {**v, "kernel_seconds": kernel_seconds} for n, v in got.items()}
            c["predictors"].update(got)
        if not quiet:
            print(f"[{i + 1}/{len(by_task)} tasks] {_label(RunConfig.from_dict(group[0]['config']))}", file=sys.stderr,
                  flush=True)
    write_results(path, cells)
    return 0


def write_results(path: Path, cells: list[dict]) -> None:
    """Rewrite a results file with ``cells``, one JSON line each, through a temporary file (a crash leaves the old
    file whole)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(c, default=str) + "\n" for c in cells))
    tmp.replace(path)


def prepare_model(cfg: RunConfig):
    """A fresh copy of the pretrained model with its new head (same seed as the kernel's)."""
    from finetime.zoo import build_model, freeze_backbone

    t = cfg.task
    m = build_model(t.model, num_classes=t.classes, image_size=t.image_size, seed=t.seed)
    if t.freeze_backbone:
        freeze_backbone(m)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="results file (default: bench/results/<config name>.jsonl)")
    ap.add_argument("--limit", type=int, help="run at most this many new cells")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--repredict", help="comma list of predictors to (re)compute on the cells already in the results "
                                        "file, keeping their real runs; rewrites the file")
    ap.add_argument("--kernel-outputs", choices=["sum"], help="with --repredict: kernels of the summed outputs "
                                                             "(pNTK), stored as <predictor>+sum")
    ap.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="only the cells with this flat setting (e.g. bn=batch), for new runs and --repredict; "
                         "repeatable")
    ap.add_argument("--ids", help="with --repredict: only these cells (comma list of ids)")
    ap.add_argument("--keep-seconds", action="store_true",
                    help="with --repredict: keep the stored timings of predictions already there (the same "
                         "computation re-run to store more of it; marked seconds_kept)")
    args = ap.parse_args(argv)
    tune_allocator()
    cfg = tomllib.loads(args.config.read_text())
    out = args.out or Path(__file__).parent / "results" / f"{args.config.stem}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--where takes KEY=VALUE, got {item!r}")
        if key not in RunConfig().to_dict():
            ap.error(f"--where: unknown setting {key!r} (one of {', '.join(sorted(RunConfig().to_dict()))})")
        try:
            where[key] = json.loads(value)  # numbers and booleans as in the stored settings
        except json.JSONDecodeError:
            where[key] = value
    if args.repredict:
        ids = set(args.ids.split(",")) if args.ids else None
        return repredict(out, args.repredict.split(","), args.quiet, args.kernel_outputs, where, ids,
                         args.keep_seconds)
    done = set()
    if out.exists():  # identities recomputed from the stored settings, so a file from an older version resumes
        done = {cell_id(RunConfig.from_dict(r["config"]), r.get("repeat", 0))
                for r in map(json.loads, filter(str.strip, out.read_text().splitlines()))}
    suite = cfg.get("suite", {})
    predictors = suite.get("predictors", ["linear"])
    repeats = suite.get("repeats", {})
    cells = []
    for c in expand(cfg):
        reps = repeats.get("count", 1) if _matches(c, repeats.get("where", {})) else 1
        cells += [(c, r) for r in range(reps)]
    missing = [(c, r) for c, r in cells if cell_id(c, r) not in done]
    todo = [(c, r) for c, r in missing if _matches(c, where)]
    if args.limit is not None:
        todo = todo[: args.limit]
    print(f"{len(cells)} cells, {len(cells) - len(missing)} done, running {len(todo)}"
          f"{f' of the {len(missing)} not done (--where)' if where else ''} -> {out}", file=sys.stderr)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=args.quiet or not sys.stderr.isatty(), unit="cell")
    by_task: dict = {}
    for c, r in todo:
        by_task.setdefault(task_key(c), []).append((c, r))
    finished = 0
    for key, group in by_task.items():
        first = group[0][0]
        task = prepare(first)
        t0 = time.perf_counter()
        kernel = kernel_for(task)
        kernel_seconds = time.perf_counter() - t0
        step_seconds: dict = {}
        for c, r in group:
            opt = c.optimizer
            n = task.data.x.shape[0]
            b = "full" if opt.is_full_batch(n) else str(opt.batch_size)
            if b not in step_seconds:
                t1 = time.perf_counter()
                sps = seconds_per_step(task.model, task.data.x, task.data.y, opt, loss=c.objective,
                                       params=task.trained, bn=c.task.bn)
                step_seconds[b] = (sps, time.perf_counter() - t1)
            t_cell = time.perf_counter()
            rec = run_cell(c, task, kernel, kernel_seconds, step_seconds, predictors, r)
            rec.update({"id": cell_id(c, r), "repeat": r, "config": c.to_dict(),
                        "kernel_meta": {k: kernel.meta[k] for k in ("method", "projection_dim", "seconds", "plan")},
                        "wall_seconds": round(time.perf_counter() - t_cell, 2)})
            with open(out, "a") as fh:
                fh.write(json.dumps(rec, default=str) + "\n")
            bar.update(1)
            finished += 1
            if bar.disable and not args.quiet:
                e = {k: (v["training_time"]["eps=0.1"]["step"]) for k, v in rec["predictors"].items()}
                print(f"[{finished}/{len(todo)}] {_label(c)} real TT0.1={rec['real']['training_time']['eps=0.1']['step']}"
                      f" predicted {e}", file=sys.stderr, flush=True)
    bar.close()
    return 0


def _matches(c: RunConfig, where: dict) -> bool:
    flat = c.to_dict()
    return all(flat[k] in (v if isinstance(v, list) else [v]) for k, v in where.items())


def _label(c: RunConfig) -> str:
    f = c.to_dict()
    size = f"{f['max_length']}tok" if is_text_data(f["data"]) else f"{f['image_size']}px"
    return f"{f['data']} {size} n={f['per_class']} s={f['seed']} {describe(f, short=True)} bn={f['bn']}"


if __name__ == "__main__":
    sys.exit(main())
