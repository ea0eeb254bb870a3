"""finetime: predict fine-tuning time before training (predict), check it against real training (validate),
rank many optimizer settings from one kernel (sweep), draw the results (report), and refine a prediction with a
training run's log (watch)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError, FinetimeError
from ..device import resolve_device
from ..kernel.distributed import init_from_env, is_main, shutdown
from ..progress import TerminalProgress
from ..runtime import configure_threads, tune_allocator
from ..sweep import SWEEPABLE
from ._flags import _count_or_all, add_run_flags, config_from_args, load_config_file
from ._outputs import check_outputs, write_outputs
from ._summary import print_summary, print_sweep, print_validation

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``parser.commands`` maps each command name to its sub-parser."""
    p = argparse.ArgumentParser(prog="finetime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    pp = sub.add_parser("predict", help="predict the training loss curve and training time (no training)",
                        description="Predict the loss curve, training time (steps) and seconds of fine-tuning, "
                                    "from the network's linearization at the pretrained weights, re-linearized "
                                    "along the predicted path where a linearity check fails, and fitted to the first "
                                    "real steps where the kernel is not to be trusted (--first-steps).")
    add_run_flags(pp)
    pv = sub.add_parser("validate", help="predict, then really fine-tune the same configuration and compare",
                        description="Predict as `predict` does, then fine-tune the model for real with the same "
                                    "settings (own batch order, seed+2) and report both curves and the training-time "
                                    "errors (definitions: README.md, 'Definitions'). The 'same order' column is the "
                                    "predictor replayed on the real run's batch order, with the prediction's "
                                    "linearity-check decision and its first real steps.")
    add_run_flags(pv)
    pv.add_argument("--plot", type=Path, help="write a PNG overlaying predicted band and real curve")
    pv.add_argument("--eval-every", type=int, default=1, metavar="K",
                    help="evaluate the real run's whole-training-set loss every K steps (and at the last) instead of "
                         "after every step, which on a large set costs more than the training; its training times "
                         "are then late by less than K steps (default: %(default)s)")
    pv.add_argument("--eval-samples", type=_count_or_all, default="all", metavar="M",
                    help="evaluate the real run's loss on M training samples, in the classes' proportions (an "
                         "estimate of the whole set's mean loss), or all (default: %(default)s)")
    ps = sub.add_parser("sweep", help="predict a grid of optimizer settings from one kernel, ranked by time",
                        description="Compute (or load) the kernel once, predict every combination of the listed "
                                    "settings (" + ", ".join("--" + k.replace("_", "-") for k in SWEEPABLE)
                                    + " take comma lists) with the one kernel at the pretrained weights, and rank "
                                    "them by predicted wall-clock time to the target loss (--target-loss; default: "
                                    "25% of the initial loss).")
    add_run_flags(ps, lists=SWEEPABLE, predictors=("linear", "paper"), relinearization=False)
    ps.add_argument("--plot", type=Path, help="write a heatmap PNG (learning rate x batch size, colour = seconds)")
    pr = sub.add_parser("report", help="HTML page and PNGs from a result JSON",
                        description="Draw the curves, training-time markers, kernel spectrum and gradient map of a "
                                    "result written by predict/validate --json (or the ranking of a sweep).")
    pr.add_argument("result", type=Path, help="result JSON from predict, validate or sweep")
    pr.add_argument("--out", type=Path, required=True, help="folder for report.html and its PNGs")
    pr.add_argument("--overwrite", action="store_true", help="allow replacing an existing report folder's files")
    pr.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    pw = sub.add_parser("watch", help="refine a prediction with a running (or finished) training log",
                        description="Read a training log (CSV or JSON lines with step and loss columns, or a Hugging "
                                    "Face trainer_state.json) and the prediction JSON written by `predict --json`, "
                                    "and print the refined training time to each threshold: steps and seconds left "
                                    "with a 90%% interval (finetime.online.Refiner). Logged minibatch losses are "
                                    "fine; --window says how many steps each logged loss averages. A log with "
                                    "nothing logged yet (empty, or a header) gives the prediction itself, so the "
                                    "watcher can start with the run.")
    pw.add_argument("log", type=Path, help="training log: CSV / JSON lines (step, loss[, seconds]) or "
                                           "trainer_state.json")
    pw.add_argument("--prediction", type=Path, required=True, help="prediction JSON from `finetime predict --json`")
    pw.add_argument("--steps", type=int, help="the run's total steps (default: the prediction's)")
    pw.add_argument("--window", default="1", help="steps each logged loss averages, ending at its step: a number, or "
                                                  "'auto' (Trainer's logs: the mean of the batch losses since the "
                                                  "previous record, each taken before its update); default 1")
    pw.add_argument("--persistence", type=float, default=None, metavar="RHO",
                    help="how much of the speed observed so far (against the prediction) the rest of the run keeps: "
                         "0 (default) goes on at the prediction's pace from the loss reached, 1 stretches the whole "
                         "prediction by it (for a prediction known to be off by a steady factor)")
    pw.add_argument("--follow", type=float, metavar="SECONDS",
                    help="keep reading the log every SECONDS and print each new estimate (Ctrl-C stops)")
    pw.add_argument("--json", type=Path, help="write the estimate as JSON")
    pw.add_argument("--overwrite", action="store_true", help="allow replacing an existing --json file")
    pw.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.commands = {"predict": pp, "validate": pv, "sweep": ps, "report": pr, "watch": pw}
    return p


def _start(args):
    """Set up the process for a heavy command and check every output path before any work. Under torchrun (several
    ranks) the kernel is sharded over the ranks (``finetime.kernel.distributed``), each rank takes its share of the
    cores, and only rank 0 prints and writes."""
    config = config_from_args(args)
    threads = args.threads
    if init_from_env(str(resolve_device(config.device))):
        if args.command == "validate":
            raise ConfigError("validate fine-tunes for real in one process; run it without torchrun")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        threads = threads or max(1, len(os.sched_getaffinity(0)) // max(local, 1))
        if not is_main():
            args.quiet = True
            for out in ("json", "report", "plot", "kernel_out"):
                if hasattr(args, out):
                    setattr(args, out, None)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (rank 0 prints)
    check_outputs(args)
    tune_allocator()
    return config, configure_threads(threads)


def _runtime(threads, task) -> dict:
    """Threads, device, precision and ranks of this run (the result's ``runtime`` section)."""
    from ..device import describe, model_device
    from ..kernel.distributed import world_size

    return {**threads.to_dict(), "device": describe(model_device(task.model)),
            "precision": task.config.precision.value, "ranks": world_size()}


def cmd_predict(args) -> int:
    from ..predict import predict

    cfg, threads = _start(args)
    pred = predict(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=TerminalProgress(args.quiet),
                   diagnostics=args.report is not None or args.json is not None)
    pred.runtime = _runtime(threads, pred.task)
    result = pred.to_dict()
    print_summary(result, threads=threads.describe())
    return write_outputs(result, args)


def cmd_validate(args) -> int:
    from ..validate import validate

    cfg, threads = _start(args)
    val = validate(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=TerminalProgress(args.quiet),
                   diagnostics=args.report is not None or args.json is not None, eval_every=args.eval_every,
                   eval_samples=args.eval_samples)
    val.prediction.runtime = _runtime(threads, val.prediction.task)
    result = val.to_dict()
    print_summary(result, threads=threads.describe())
    print_validation(result)
    return write_outputs(result, args, plot="plot_validation")


def cmd_sweep(args) -> int:
    from ..sweep import sweep

    lists = {k: getattr(args, k) for k in SWEEPABLE if isinstance(getattr(args, k), list)}
    for k, v in lists.items():  # a single value is a plain setting
        if len(v) == 1:
            setattr(args, k, v[0])
    grid = {k: v for k, v in lists.items() if len(v) > 1}
    if not grid:
        raise ConfigError("nothing to sweep: give comma lists to "
                          + ", ".join("--" + k.replace("_", "-") for k in SWEEPABLE))
    base, first_error = None, None
    for combo in itertools.product(*grid.values()):  # the base is any valid point of the grid
        for k, v in zip(grid, combo):
            setattr(args, k, v)
        try:
            base = config_from_args(args)
            break
        except ConfigError as exc:
            first_error = first_error or exc
    if base is None:
        raise ConfigError(f"no valid configuration in the sweep: {first_error}")
    check_outputs(args)
    tune_allocator()
    threads = configure_threads(args.threads)
    result = sweep(base, grid, kernel_in=args.kernel_in, kernel_out=args.kernel_out,
                   progress=TerminalProgress(args.quiet))
    result["runtime"] = threads.to_dict()
    print_sweep(result, threads=threads.describe())
    return write_outputs(result, args, plot="plot_sweep_heatmap")


def cmd_report(args) -> int:
    from ..report import write_report

    if not args.result.exists():
        raise ConfigError(f"result file {args.result} does not exist")
    if args.result.is_dir():
        raise ConfigError(f"{args.result} is a folder; give the result JSON written by predict, validate or sweep")
    try:
        result = json.loads(args.result.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{args.result} is not a finetime result JSON: {exc}") from None
    page = write_report(result, args.out, overwrite=args.overwrite)
    print(f"wrote {page}")
    return 0


def _watch_once(args, seen: int):
    from ..online import Refiner
    from ..online.logs import read_log

    records = read_log(args.log, allow_empty=True)  # nothing logged yet: the prediction itself
    if seen is not None and len(records) == seen:
        return None, seen
    kw = {"steps": args.steps} if args.steps else {}
    if args.persistence is not None:
        kw["persistence"] = args.persistence
    refiner = Refiner.from_prediction(args.prediction, **kw)
    prev = 0
    for r in records:
        if args.window == "auto":  # Trainer's convention: the mean of the batch losses since the previous log, each
            window, at = max(r.step - prev, 1), r.step - 1  # computed before its update
        else:
            window, at = int(args.window), r.step
        prev = r.step
        if at > 0:
            refiner.observe(at, r.loss, seconds=r.seconds, window=window)
    if records and records[-1].step > refiner.steps and (not seen or records[seen - 1].step <= refiner.steps):
        print(f"finetime: note: {args.log} reaches step {records[-1].step}, past the prediction's {refiner.steps} "
              "steps; the estimates cover the predicted run only (predict again with --steps for a longer one)",
              file=sys.stderr)
    return refiner.estimate(), len(records)


def cmd_watch(args) -> int:
    import time

    from ._outputs import check_file, write_json

    if args.window != "auto" and not (args.window.isdigit() and int(args.window) >= 1):
        raise ConfigError(f"--window must be a positive number of steps or 'auto' (got {args.window!r})")
    check_file(args.json, "--json", args.overwrite)
    est, seen = _watch_once(args, None)
    print(est.summary())
    if args.json:
        write_json(est.to_dict(), args.json, overwrite=args.overwrite)
    while args.follow:
        time.sleep(args.follow)
        new, seen = _watch_once(args, seen)
        if new is not None:
            print(new.summary())
            if args.json:
                write_json(new.to_dict(), args.json, overwrite=True)
    return 0


COMMANDS = {"predict": cmd_predict, "validate": cmd_validate, "sweep": cmd_sweep, "report": cmd_report,
            "watch": cmd_watch}


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE``: its settings become the subcommand's defaults, so flags still override them."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv[1:])
    if known.config is None:
        return
    parser.commands[argv[0]].set_defaults(**load_config_file(known.config))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["predict", *argv]  # `finetime` alone runs the default prediction
    debug = "--debug" in argv
    try:
        if argv[0] in COMMANDS:
            _apply_config_file(parser, argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        try:
            code = COMMANDS[args.command](args)
        except BaseException:
            shutdown(wait=False)
            raise
        shutdown()
        return code
    except FinetimeError as exc:
        if debug:
            raise
        print(f"finetime: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if debug:
            raise
        print(f"finetime: error: out of memory ({exc}); use fewer samples (--kernel-samples M), a smaller --projection-dim or a lower "
              "--max-memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
