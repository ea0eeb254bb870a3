"""finetime: predict fine-tuning time before training (predict), check it against real training (validate),
rank many optimizer settings from one kernel (sweep), and draw the results (report)."""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import sys
from pathlib import Path

from ..errors import ConfigError, FinetimeError
from ..progress import TerminalProgress
from ._flags import add_run_flags, config_from_args, load_config_file
from ._summary import print_summary, print_sweep, print_validation

__all__ = ["main", "build_parser"]

SWEEP_LISTS = ("lr", "momentum", "batch_size", "weight_decay", "steps", "schedule")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    pp = sub.add_parser("predict", help="predict the training loss curve and training time (no training)",
                        description="Predict the loss curve, training time (steps) and seconds of fine-tuning, "
                                    "from the network's linearization at the pretrained weights, re-linearized "
                                    "along the predicted path where a linearity check fails.")
    add_run_flags(pp)
    pv = sub.add_parser("validate", help="predict, then really fine-tune the same configuration and compare",
                        description="Predict as `predict` does, then fine-tune the model for real with the same "
                                    "settings (own batch order, seed+2) and report both curves and the training-time "
                                    "errors (PROTOCOL.md definitions).")
    add_run_flags(pv)
    pv.add_argument("--plot", type=Path, help="write a PNG overlaying predicted band and real curve")
    ps = sub.add_parser("sweep", help="predict a grid of optimizer settings from one kernel, ranked by time",
                        description="Compute (or load) the kernel once, predict every combination of the listed "
                                    "settings (--lr, --momentum, --batch-size, --weight-decay, --steps, --schedule "
                                    "take comma lists) and rank them by predicted wall-clock time to the target loss "
                                    "(--target-loss; default: 25%% of the initial loss).")
    add_run_flags(ps, lists=SWEEP_LISTS)
    ps.add_argument("--plot", type=Path, help="write a heatmap PNG (learning rate x batch size, colour = seconds)")
    pr = sub.add_parser("report", help="HTML page and PNGs from a result JSON",
                        description="Draw the curves, training-time markers, kernel spectrum and gradient map of a "
                                    "result written by predict/validate --json (or the ranking of a sweep).")
    pr.add_argument("result", type=Path, help="result JSON from predict, validate or sweep")
    pr.add_argument("--out", type=Path, required=True, help="folder for report.html and its PNGs")
    pr.add_argument("--overwrite", action="store_true", help="allow replacing an existing report folder's files")
    pr.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def _tune_allocator() -> None:
    """Keep freed memory in the process (glibc): repeated large tensors then skip page faults."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(result: dict, path: Path, overwrite: bool) -> None:
    _refuse_existing([path], overwrite)
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean, indent=1, allow_nan=False, default=_json_default))
    tmp.replace(path)


def _refuse_existing(paths, overwrite: bool) -> None:
    for path in paths:
        if path is not None and path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; refusing to overwrite it (pass --overwrite or choose another path)")


def _check_outputs(args) -> None:
    _refuse_existing([getattr(args, "json", None), getattr(args, "plot", None)], args.overwrite)
    if getattr(args, "report", None) is not None and (args.report / "report.html").exists() and not args.overwrite:
        raise ConfigError(f"{args.report}/report.html exists; refusing to overwrite it (pass --overwrite)")
    if getattr(args, "kernel_out", None) is not None and args.kernel_out.exists():
        raise ConfigError(f"{args.kernel_out} exists; refusing to overwrite it")


def _finish(result: dict, args, plot: str | None = None) -> None:
    """Write what the flags ask for: --json, --report, and --plot (with the named ``finetime.plots`` function)."""
    if plot is not None and args.plot is not None:
        from .. import plots

        getattr(plots, plot)(result, args.plot)
        print(f"wrote {args.plot}")
    if args.json is not None:
        write_json(result, args.json, args.overwrite)
        print(f"wrote {args.json}")
    if args.report is not None:
        from ..report import write_report

        page = write_report(result, args.report, overwrite=args.overwrite)
        print(f"wrote {page}")


def cmd_predict(args) -> int:
    from ..predict import predict

    cfg = config_from_args(args)
    _check_outputs(args)
    result = predict(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=TerminalProgress(args.quiet),
                     diagnostics=args.report is not None)
    print_summary(result)
    _finish(result, args)
    return 0


def cmd_validate(args) -> int:
    from ..validate import validate

    cfg = config_from_args(args)
    _check_outputs(args)
    result = validate(cfg, kernel_in=args.kernel_in, kernel_out=args.kernel_out, progress=TerminalProgress(args.quiet),
                      diagnostics=args.report is not None)
    print_summary(result)
    print_validation(result)
    _finish(result, args, plot="plot_validation")
    return 0


def cmd_sweep(args) -> int:
    from ..sweep import sweep

    lists = {k: getattr(args, k) for k in SWEEP_LISTS if isinstance(getattr(args, k), list)}
    for k, v in lists.items():  # a single value is a plain setting
        if len(v) == 1:
            setattr(args, k, v[0])
    grid = {k: v for k, v in lists.items() if len(v) > 1}
    if not grid:
        raise ConfigError("nothing to sweep: give comma lists to --lr, --momentum, --batch-size, --weight-decay, "
                          "--steps or --schedule")
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
    _check_outputs(args)
    result = sweep(base, grid, kernel_in=args.kernel_in, kernel_out=args.kernel_out,
                   progress=TerminalProgress(args.quiet))
    print_sweep(result)
    _finish(result, args, plot="plot_sweep_heatmap")
    return 0


def cmd_report(args) -> int:
    from ..report import write_report

    if not args.result.exists():
        raise ConfigError(f"result file {args.result} does not exist")
    try:
        result = json.loads(args.result.read_text())
    except ValueError as exc:
        raise ConfigError(f"{args.result} is not a finetime result JSON: {exc}") from None
    page = write_report(result, args.out, overwrite=args.overwrite)
    print(f"wrote {page}")
    return 0


COMMANDS = {"predict": cmd_predict, "validate": cmd_validate, "sweep": cmd_sweep, "report": cmd_report}


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``--config FILE``: its settings become the subcommand's defaults, so flags still override them."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv[1:])
    if known.config is None:
        return
    settings = load_config_file(known.config)
    sub = parser._subparsers._group_actions[0].choices[argv[0]]  # noqa: SLF001 - argparse has no public accessor
    sub.set_defaults(**settings)


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
        _tune_allocator()
        return COMMANDS[args.command](args)
    except FinetimeError as exc:
        if debug:
            raise
        print(f"finetime: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if debug:
            raise
        print(f"finetime: error: out of memory ({exc}); use fewer samples, --kernel-method factored, a smaller "
              "--projection-dim or --max-memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finetime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
