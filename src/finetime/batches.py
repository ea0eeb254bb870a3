"""Minibatch index plans, shared by the simulator and by real fine-tuning.

A plan for ``R`` runs of ``T`` steps is an index tensor ``(R, T, b)`` with a weight tensor of the same shape:
``weight = 1/|B_t|`` on the real members of batch ``t`` and ``0`` on padding (the short last batch of an epoch when
``drop_last`` is off). Weights make a batch *mean*, like a loss with ``reduction='mean'``.
"""

from __future__ import annotations

import dataclasses

import torch

from .optim import SGD, Sampling

__all__ = ["BatchPlan", "batch_plan"]


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    indices: torch.Tensor  # (R, T, b) long
    weights: torch.Tensor  # (R, T, b) float64, rows sum to 1

    @property
    def runs(self) -> int:
        return self.indices.shape[0]

    @property
    def steps(self) -> int:
        return self.indices.shape[1]

    def to(self, device: torch.device | str) -> "BatchPlan":
        """The plan on ``device`` (the simulator's), for indexing tensors there."""
        return BatchPlan(self.indices.to(device), self.weights.to(device))

    def batch(self, run: int, step: int) -> torch.Tensor:
        """Sample indices of one batch (padding removed)."""
        keep = self.weights[run, step] > 0
        return self.indices[run, step][keep]


def _epoch_batches(n: int, b: int, drop_last: bool, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    batches = list(perm.split(b))
    if drop_last and len(batches[-1]) < b:
        batches.pop()
    return batches


def batch_plan(n: int, sgd: SGD, steps: int, runs: int, generator: torch.Generator) -> BatchPlan:
    """Draw ``runs`` independent batch orders of ``steps`` steps over ``n`` samples.

    Full-batch GD gives one batch of all ``n`` samples at every step (identical for every run). Draws are made epoch
    by epoch (step by step with replacement) across the runs, so the plan for ``T`` steps is exactly the first ``T``
    steps of the plan for any longer budget from the same generator state (the sweep relies on this).
    """
    sgd.check_dataset(n)
    if sgd.is_full_batch(n):
        idx = torch.arange(n).expand(runs, steps, n).clone()
        return BatchPlan(idx, torch.full((runs, steps, n), 1.0 / n, dtype=torch.float64))
    b = sgd.batch_size
    idx = torch.zeros(runs, steps, b, dtype=torch.long)
    w = torch.zeros(runs, steps, b, dtype=torch.float64)
    if sgd.sampling is Sampling.REPLACEMENT:
        for t in range(steps):
            idx[:, t] = torch.randint(0, n, (runs, b), generator=generator)
        w[:] = 1.0 / b
        return BatchPlan(idx, w)
    per_epoch = n // b if sgd.drop_last else -(-n // b)
    for t0 in range(0, steps, per_epoch):
        for r in range(runs):
            batches = _epoch_batches(n, b, sgd.drop_last, generator)[: steps - t0]
            for t, batch in enumerate(batches, start=t0):
                idx[r, t, : len(batch)] = batch
                w[r, t, : len(batch)] = 1.0 / len(batch)
    return BatchPlan(idx, w)
