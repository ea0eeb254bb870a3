"""The kernel on a subset of the training set (``--kernel-samples``): how many samples, which ones, and how the
subset's predicted curves become curves for the whole set.

A kernel costs one forward and ``C`` backward passes per sample, so on large training sets it can cost as much as the
run it predicts. With ``--kernel-samples M`` the kernel, the simulation and any re-linearization see a class-balanced
subset of ``M`` samples (the first ``M / C`` of each class in the sampled order, itself random). The simulated curves
are then carried to the ``N`` samples of the real run by a time map from the spectrum (``extrapolate.size_time_map``):
step ``s`` of the run on ``N`` samples is the step of the run on ``M`` that has made the same progress on the MSE
closed form, with the spectrum extrapolated to ``N`` (paper, section 4). Full-batch runs keep their meaning: the step
on all ``N`` samples is timed for seconds.

``auto`` (the default) keeps every sample up to ``AUTO_ALL_UP_TO`` and uses ``AUTO_SAMPLES`` beyond (more if the batch
size asks for it); ``all`` always uses every sample.
"""

from __future__ import annotations

import dataclasses

import torch

from .dynamics import Problem, Trajectory
from .errors import ConfigError
from .extrapolate import size_time_map, warp_curves
from .training_time import first_crossing
from .zoo import Dataset

__all__ = ["AUTO_ALL_UP_TO", "AUTO_SAMPLES", "MIN_PER_CLASS", "AUTO_REFRESH_FRACTION", "AUTO_REFRESH_PER_CLASS",
           "kernel_sample_count", "class_balanced_subset", "to_full_set", "refresh_sample_count", "balanced_indices"]

AUTO_ALL_UP_TO = 1000
"""``--kernel-samples auto`` computes the kernel on all samples up to this many."""

AUTO_SAMPLES = 500
"""``--kernel-samples auto`` on larger sets: the kernel on this many samples (BENCHMARKS.md, section 4)."""

AUTO_REFRESH_FRACTION = 0.25
"""``--refresh-samples auto``: each re-linearization refresh computes the new kernel on this fraction of the samples
(the kernel's samples: all of them, or the ``--kernel-samples`` subset) ..."""

AUTO_REFRESH_PER_CLASS = 16
"""... and on at least this many per class (all of them where there are fewer)."""

MIN_PER_CLASS = 10
"""``--kernel-samples M`` below the whole set needs at least this many samples per class: the spectrum's extrapolation
fits the subset's eigenvalues, and with fewer it is off by far (the default task, 100 images at 64 px, full-batch GD,
one kernel: TT(eps=0.1) 38 from all samples, 45 from 10 per class, 73 from 5, 22 from 2)."""

MIN_BATCHES = 4
"""A minibatch run on the subset needs at least this many batches per epoch to keep its noise."""


def kernel_sample_count(setting: int | str, n: int, classes: int, batch_size: int | None) -> int:
    """The number of samples the kernel sees (``n``: all of them) for ``--kernel-samples setting``."""
    minibatch = batch_size is not None and batch_size < n
    if setting == "all":
        return n
    if setting == "auto":
        if n <= AUTO_ALL_UP_TO:
            return n
        m = max(AUTO_SAMPLES, MIN_BATCHES * batch_size if minibatch else 0)
    else:
        m = int(setting)
        if m < n and m // classes < MIN_PER_CLASS:
            raise ConfigError(f"--kernel-samples {m} is too few for {classes} classes: the spectrum's extrapolation to "
                              f"all {n} samples needs at least {MIN_PER_CLASS} per class ({MIN_PER_CLASS * classes} "
                              "samples); use a larger M, or all")
        if minibatch and m < MIN_BATCHES * batch_size and m < n:
            raise ConfigError(f"--kernel-samples {m} is too few for --batch-size {batch_size}: the subset needs at "
                              f"least {MIN_BATCHES} batches ({MIN_BATCHES * batch_size} samples) to simulate its "
                              "minibatch noise")
    per_class = max(1, m // classes)
    return n if per_class * classes >= n else per_class * classes


def refresh_sample_count(setting: int | str, n: int, classes: int) -> int:
    """The number of samples a re-linearization refresh computes the new kernel on (``n``: all) for
    ``--refresh-samples setting``."""
    if setting == "all":
        return n
    if setting == "auto":
        m = max(round(AUTO_REFRESH_FRACTION * n), AUTO_REFRESH_PER_CLASS * classes)
    else:
        m = int(setting)
    return min(n, max(1, m // classes) * classes)


def balanced_indices(y: torch.Tensor, classes: int, m: int) -> torch.Tensor:
    """Sorted indices of the first ``m / C`` samples of each class (all of a class that has fewer), in ``y``'s order
    (random in finetime's data)."""
    per = max(1, m // classes)
    keep = [torch.nonzero(y == k).flatten()[:per] for k in range(classes)]
    return torch.cat(keep).sort().values


def class_balanced_subset(data: Dataset, m: int) -> Dataset:
    """The first ``m / C`` training samples of each class (in ``data``'s order, which is random); the test split is
    kept whole. ``m`` must be a multiple of the number of classes."""
    c = data.num_classes
    if m % c:
        raise ValueError(f"subset of {m} samples is not a multiple of {c} classes")
    per = m // c
    keep = []
    for k in range(c):
        members = torch.nonzero(data.y == k).flatten()
        if members.numel() < per:
            raise ConfigError(f"class {data.class_names[k]!r} has {members.numel()} samples, fewer than the {per} per "
                              "class asked by --kernel-samples")
        keep.append(members[:per])
    idx = torch.cat(keep).sort().values
    return dataclasses.replace(data, x=data.x[idx], y=data.y[idx],
                               train_index=[data.train_index[i] for i in idx.tolist()])


def to_full_set(traj: Trajectory, problem: Problem, optimizer, steps: int, n_full: int) -> tuple[Trajectory, dict]:
    """The subset's simulated runs as runs on ``n_full`` samples (``extrapolate.size_time_map``), and what was done.
    Final outputs are not carried (they are the subset's)."""
    lrs = optimizer.lr_table(steps)
    at = size_time_map(problem.theta, problem.f0, problem.y, n_full, lrs, steps,
                       momentum=getattr(optimizer, "momentum", 0.0))
    warp = lambda c: None if c is None else warp_curves(c, at)  # noqa: E731
    loss = warp(traj.loss)
    d = traj.diverged_at  # a run diverged on the whole set from the first step mapped to its subset divergence step
    first = first_crossing(-at.expand(d.numel(), -1), -d.double())
    first = torch.where(d >= 0, first, torch.full_like(first, -1))
    out = Trajectory(loss, warp(traj.accuracy), first, None, warp(traj.test_loss), warp(traj.test_accuracy),
                     f"{traj.method}; on {problem.n} of {n_full} samples, time-mapped to {n_full}", traj.info)
    info = {"samples": problem.n, "of": n_full, "subset_steps_at_end": round(float(at[-1]), 2),
            "method": "class-balanced subset; step s on all samples = the subset's step with the same MSE closed-form "
                      "progress, spectrum extrapolated by power laws (paper, section 4)"}
    return out, info
