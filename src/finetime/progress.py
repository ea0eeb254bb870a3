"""Progress display, injected into long phases (kernel, real fine-tuning, sweeps, benchmark).

The library never prints: functions accept ``progress(phase, done, total)`` callables. ``TerminalProgress`` is the
CLI's: a tqdm bar per phase on stderr, only when stderr is a terminal and not ``--quiet``.
"""

from __future__ import annotations

import sys

__all__ = ["TerminalProgress"]


class TerminalProgress:
    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bars: dict = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None or bar.total != total or done < bar.n:
            unit = {"kernel": "sample", "fine-tuning": "step", "sweep": "config"}.get(phase, "it")
            bar = self.bars[phase] = tqdm(total=total, desc=phase, unit=unit, leave=False, file=self.stream)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
