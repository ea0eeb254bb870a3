"""Output files of the CLI: every path is checked before any work, and each output is written on its own, so one
that fails (a full disk, a removed folder) does not lose the others. Nothing existing is replaced without
``--overwrite`` (a kernel file never)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from ..errors import ConfigError, FinetimeError
from ..report import report_files

__all__ = ["check_outputs", "check_report_out", "check_file", "write_outputs", "write_json"]


def check_file(path: Path | None, flag: str, overwrite: bool) -> None:
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"{flag} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: folder {parent} is not writable")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; refusing to overwrite it (pass --overwrite or choose another path)")


def check_report_out(out: Path, overwrite: bool, kind: dict | str) -> None:
    """The report folder: a folder (or creatable), and none of the files the report writes there already exists
    unless ``overwrite``. ``kind``: the result to draw, or ``"prediction"`` / ``"sweep"``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} is a file; give a folder path")
    if out.exists():
        taken = [name for name in report_files(kind) if (out / name).exists()]
        if taken and not overwrite:
            raise ConfigError(f"{out} already holds {', '.join(taken)}; refusing to overwrite (pass --overwrite or "
                              "choose another folder)")
        return
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir() or not os.access(anc, os.W_OK):
        raise ConfigError(f"report folder {out} cannot be created under {anc}")


def check_outputs(args) -> None:
    """Every output path of a predict / validate / sweep command, before any work."""
    overwrite = args.overwrite
    check_file(getattr(args, "json", None), "--json", overwrite)
    check_file(getattr(args, "plot", None), "--plot", overwrite)
    check_file(getattr(args, "kernel_out", None), "--kernel-out", False)
    paths = [p.resolve() for p in (getattr(args, "json", None), getattr(args, "plot", None),
                                   getattr(args, "kernel_out", None)) if p is not None]
    if len(set(paths)) < len(paths):
        raise ConfigError("two outputs point at the same file")
    if getattr(args, "report", None) is not None:
        check_report_out(args.report, overwrite, "sweep" if args.command == "sweep" else "prediction")
    kin = getattr(args, "kernel_in", None)
    if kin is not None and not kin.is_file():
        raise ConfigError(f"--kernel-in {kin} does not exist or is not a file")


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_json(result: dict, path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; refusing to overwrite it (pass --overwrite or choose another path)")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False, default=_json_default))
    tmp.replace(path)


def write_outputs(result: dict, args, plot: str | None = None) -> int:
    """Write --json, --report and --plot (with the named ``finetime.plots`` function), each on its own; returns the
    exit code (2 if any output could not be written, after writing the others)."""
    failures = []

    def attempt(what, fn):
        try:
            print(f"wrote {fn()}")
        except (FinetimeError, OSError) as exc:
            failures.append(f"could not write {what}: {exc}")

    if getattr(args, "json", None) is not None:
        attempt("--json", lambda: (write_json(result, args.json, args.overwrite), args.json)[1])
    if getattr(args, "report", None) is not None:
        from ..report import write_report

        attempt("--report", lambda: write_report(result, args.report, overwrite=args.overwrite))
    if plot is not None and getattr(args, "plot", None) is not None:
        from .. import plots

        attempt("--plot", lambda: (getattr(plots, plot)(result, args.plot), args.plot)[1])
    for f in failures:
        print(f"finetime: error: {f}", file=sys.stderr)
    return 2 if failures else 0
