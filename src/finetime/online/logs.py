"""Training logs ``finetime watch`` reads: CSV, JSON lines, or a Hugging Face ``trainer_state.json``.

Each record needs a step (``step``, ``global_step`` or ``iteration``) and a loss (``loss``, ``train_loss`` or
``training_loss``); a ``seconds`` (``time``, ``elapsed``, ``wall_seconds``) column is used for the step time when
present. Records without a loss (evaluation lines) are skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

from ..errors import DataError

__all__ = ["LogRecord", "read_log"]

STEP_KEYS = ("step", "global_step", "iteration")
LOSS_KEYS = ("loss", "train_loss", "training_loss")
SECONDS_KEYS = ("seconds", "time", "elapsed", "wall_seconds")


@dataclasses.dataclass(frozen=True)
class LogRecord:
    step: int
    loss: float
    seconds: float | None = None


def _first(rec: dict, keys):
    for k in keys:
        if k in rec and rec[k] not in (None, ""):
            return rec[k]
    return None


def _records(rows, path: Path, allow_empty: bool = False) -> list[LogRecord]:
    out = []
    for i, rec in enumerate(rows, 1):
        step, loss = _first(rec, STEP_KEYS), _first(rec, LOSS_KEYS)
        if loss is None:
            continue
        if step is None:
            raise DataError(f"{path}, record {i}: no step column (one of {', '.join(STEP_KEYS)})")
        try:
            step, loss = int(float(step)), float(loss)
            sec = _first(rec, SECONDS_KEYS)
            sec = None if sec is None else float(sec)
        except (TypeError, ValueError):
            raise DataError(f"{path}, record {i}: step and loss must be numbers (got {step!r}, {loss!r})") from None
        if step < 0:
            raise DataError(f"{path}, record {i}: negative step {step}")
        out.append(LogRecord(step, loss if math.isfinite(loss) else math.nan, sec))
    if not out and not allow_empty:
        raise DataError(f"{path}: no record with a step and a loss (columns: {', '.join(STEP_KEYS)} and "
                        f"{', '.join(LOSS_KEYS)})")
    out.sort(key=lambda r: r.step)
    return out


def read_log(path: str | Path, allow_empty: bool = False) -> list[LogRecord]:
    """The (step, loss, seconds) records of a training log, sorted by step. ``allow_empty``: a log with nothing
    logged yet (an empty file, a CSV header with step and loss columns, an empty JSON list or ``log_history``, or
    records without a loss so far) gives no records instead of an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training log not found: {path}")
    text = path.read_text()
    if allow_empty and not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("log_history"), list):  # HF trainer_state.json
        return _records(doc["log_history"], path, allow_empty)
    if isinstance(doc, list):
        return _records(doc, path, allow_empty)
    if text.lstrip().startswith("{"):  # JSON lines
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not JSON ({e})") from None
        return _records(rows, path, allow_empty)
    reader = csv.DictReader(text.splitlines())
    rows = list(reader)
    header = {k.strip().lower() for k in reader.fieldnames or () if k}
    if not rows and allow_empty and header & set(STEP_KEYS) and header & set(LOSS_KEYS):
        return []
    if not rows:
        what = "empty" if not text.strip() else "neither JSON nor a CSV with a header row and at least one data row"
        raise DataError(f"{path}: {what} (want step and loss columns, as CSV or JSON lines)")
    return _records([{k.strip().lower(): v for k, v in r.items() if k} for r in rows], path, allow_empty)
