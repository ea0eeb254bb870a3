"""Process set-up for heavy runs: the allocator, and how many threads torch uses.

torch defaults to one thread per core. On a machine where another process is busy (training, data loading), that
oversubscribes the cores and every parallel region waits for the slowest thread: a 2-core machine with one other
busy process made a prediction 35-70x slower with two threads than with one. ``choose_threads`` counts the cores
that are actually free, from the kernel's per-core counters over a short window, and uses that many.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import time

import torch

from .errors import ConfigError

__all__ = ["free_memory", "tune_allocator", "preload_optimizers", "ThreadChoice", "choose_threads", "configure_threads"]


def free_memory(default: int = 4 * 2**30) -> int:
    """Bytes of memory available on this machine (``MemAvailable``, else ``MemTotal``, of ``/proc/meminfo``);
    ``default`` where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        return default


def tune_allocator() -> None:
    """Keep freed memory in the process (glibc): repeated large tensors then skip page faults."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_OPTIMIZERS_LOADED = False


def preload_optimizers() -> None:
    """Build one throwaway ``torch.optim`` optimizer. The first one a process builds imports ``torch._dynamo`` (1.7 s
    on the 2-core benchmark machine), a one-time cost of any training process, like ``import torch``, not of a step:
    paid here, before the prediction's clocks start, it is charged to neither its step timing nor its cost."""
    global _OPTIMIZERS_LOADED
    if not _OPTIMIZERS_LOADED:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        _OPTIMIZERS_LOADED = True


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int  # cores this process may run on
    busy: float | None  # cores kept busy by other processes when measured (None: not measured)
    requested: int = 0  # 0: chosen automatically

    def describe(self) -> str:
        if self.requested:
            return f"{self.threads} (--threads), {self.cores} cores"
        if self.busy is None:
            return f"{self.threads} ({self.cores} cores)"
        return f"{self.threads} ({self.cores} cores, {self.busy:.1f} busy with other work)"

    def to_dict(self) -> dict:
        return {"threads": self.threads, "cores": self.cores,
                "busy_cores": None if self.busy is None else round(self.busy, 2),
                "chosen": "flag" if self.requested else "automatic"}


def _cpu_times(cores: set[int]) -> dict[int, tuple[int, int]]:
    """``core -> (busy jiffies, total jiffies)`` from ``/proc/stat``."""
    out = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            core = int(name[3:])
            if core not in cores:
                continue
            v = [int(x) for x in vals[:8]]
            idle = v[3] + v[4]  # idle + iowait
            out[core] = (sum(v) - idle, sum(v))
    return out


def _busy_cores(cores: set[int], window: float) -> float | None:
    try:
        a = _cpu_times(cores)
        time.sleep(window)
        b = _cpu_times(cores)
    except (OSError, ValueError):
        return None
    busy = 0.0
    for core, (b1, t1) in b.items():
        b0, t0 = a.get(core, (b1, t1))
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


def choose_threads(requested: int = 0, window: float = 0.25) -> ThreadChoice:
    """``requested`` threads, or (0) as many as there are cores not kept busy by other processes, at least one."""
    if requested < 0:
        raise ConfigError(f"--threads must be 0 (one per free core) or a positive number, got {requested}")
    try:
        cores = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = set(range(os.cpu_count() or 1))
    if requested:
        return ThreadChoice(requested, len(cores), None, requested)
    busy = _busy_cores(cores, window)
    if busy is None:
        return ThreadChoice(len(cores), len(cores), None)
    free = len(cores) - busy
    return ThreadChoice(max(1, min(len(cores), math.floor(free + 0.5))), len(cores), busy)


def configure_threads(requested: int = 0) -> ThreadChoice:
    """Choose the thread count (``choose_threads``) and apply it to torch's intra-op pool."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
