"""The kernel sharded over ``torch.distributed`` ranks (``torchrun --nproc-per-node K -m finetime predict ...``).

Every rank runs the same prediction; inside ``compute_kernel`` each rank pushes only its own contiguous block of
samples through the network (the forward and backward passes, the dominant cost), writing the per-sample rows of the
route stores (materialized gradients, the shared sketch, the ghost route's factors) and the outputs. One all-reduce
(sum) of those stores, whose other rows are zero on each rank, gives every rank the stores of all samples; each rank
then forms the Gram rows of its own samples against all of them, and a second all-reduce gives every rank the whole
kernel, so the rest of the prediction (simulation, re-linearization, which computes kernels the same way) runs
identically everywhere and rank 0 writes the results. Random projections are seeded per
parameter, not per rank, so the sharded kernel equals the one-process kernel up to float summation order.

gloo on CPU, NCCL for CUDA tensors; the process group comes from torchrun's environment (``init_from_env``).
Memory per rank is that of the one-process kernel's stores (every rank holds all rows after the reduce); the
speed-up is in the per-sample passes and the Gram.
"""

from __future__ import annotations

import dataclasses
import os

import torch

__all__ = ["Shard", "current_shard", "sample_span", "all_reduce_sum", "init_from_env", "is_main", "broadcast_value",
           "shutdown", "world_size"]


@dataclasses.dataclass(frozen=True)
class Shard:
    rank: int
    world: int


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def current_shard(rows: int | None = None) -> Shard | None:
    """This process's shard when a process group with more than one rank is initialized (and every rank gets at
    least one of ``rows`` samples), else ``None``."""
    d = _dist()
    if d is None or d.get_world_size() < 2 or (rows is not None and rows < d.get_world_size()):
        return None
    return Shard(d.get_rank(), d.get_world_size())


def is_main() -> bool:
    d = _dist()
    return d is None or d.get_rank() == 0


def sample_span(rows: int, shard: Shard | None) -> tuple[int, int]:
    """Contiguous block of sample rows ``[lo, hi)`` of this rank (all rows without a shard)."""
    if shard is None:
        return 0, rows
    return rows * shard.rank // shard.world, rows * (shard.rank + 1) // shard.world


def all_reduce_sum(tensors) -> None:
    """Sum each tensor over the ranks, in place."""
    d = _dist()
    for t in tensors:
        if t is not None:
            d.all_reduce(t, op=d.ReduceOp.SUM)


def broadcast_value(value: float | None, src: int = 0) -> float | None:
    """``value`` of rank ``src`` on every rank (``value`` itself without a process group)."""
    d = _dist()
    if d is None:
        return value
    box = [value]
    d.broadcast_object_list(box, src=src)
    return box[0]


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment): NCCL for CUDA, gloo
    otherwise. Returns whether this process is one rank of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group, if one was joined, tearing it down here rather than at interpreter exit, where a rank
    that finished first could abort in the backend's teardown while another still ran (``terminate called without
    an active exception``). ``wait``: first wait for every rank to get here (after a successful command; after an
    error the other ranks may be inside a collective and never arrive)."""
    d = _dist()
    if d is None:
        return
    try:
        if wait:
            d.barrier()
    finally:
        d.destroy_process_group()
