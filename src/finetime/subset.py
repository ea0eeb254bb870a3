"""The kernel on a subset of the training set (``--kernel-samples``): how many samples, which ones, and how the
subset's predicted curves become curves for the whole set.

A kernel costs one forward and ``C`` backward passes per sample, so on large training sets it can cost as much as the
run it predicts. With ``--kernel-samples M`` the kernel, the simulation and any re-linearization see a class-balanced
subset of ``M`` samples (the first ``M / C`` of each class in the sampled order, itself random; where the classes
differ in size, as with ``--per-class all``, in proportion to their sizes: ``stratified_counts``). The simulated curves
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
           "kernel_sample_count", "class_balanced_subset", "to_full_set", "refresh_sample_count", "balanced_indices",
           "stratified_counts", "evaluation_indices"]

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


def stratified_counts(sizes: list[int], m: int) -> list[int]:
    """How many of each class's ``sizes`` samples a subset of ``m`` takes: ``m / C`` of each where the classes are
    the same size (all of a class that has fewer), else in proportion to their sizes (largest remainders), at least one
    of each class, so that the subset's kernel is a sample of the whole set's."""
    c = len(sizes)
    if len(set(sizes)) <= 1:
        per = max(1, m // c)
        return [min(per, k) for k in sizes]
    n = sum(sizes)
    m = min(m, n)
    exact = [m * k / n for k in sizes]
    counts = [int(e) for e in exact]
    for i in sorted(range(c), key=lambda i: counts[i] - exact[i])[: m - sum(counts)]:
        counts[i] += 1
    for i in range(c):  # every class in the subset, taken from the largest
        if counts[i] == 0 and sizes[i] > 0:
            j = max(range(c), key=lambda j: counts[j])
            if counts[j] > 1:
                counts[j] -= 1
                counts[i] = 1
    return counts


def balanced_indices(y: torch.Tensor, classes: int, m: int) -> torch.Tensor:
    """Sorted indices of a subset of about ``m`` samples: the first ``stratified_counts`` of each class, in ``y``'s
    order (random in finetime's data): ``m / C`` of each class where the classes are the same size."""
    members = [torch.nonzero(y == k).flatten() for k in range(classes)]
    counts = stratified_counts([len(g) for g in members], m)
    return torch.cat([g[:k] for g, k in zip(members, counts)]).sort().values


def evaluation_indices(y: torch.Tensor, classes: int, m: int | str | None) -> torch.Tensor | None:
    """The training samples a real run's curve is evaluated on: ``balanced_indices`` of ``m`` of them, or ``None``
    (all) where ``m`` is ``None``, ``all`` or not fewer than the samples."""
    if m is None or m == "all" or m >= y.shape[0]:
        return None
    return balanced_indices(y, classes, m)


def class_balanced_subset(data: Dataset, m: int) -> Dataset:
    """The subset ``balanced_indices`` picks of the training samples (in ``data``'s order, which is random): ``m / C``
    of each class, or in proportion to the classes' sizes where they differ; the test split is kept whole."""
    idx = balanced_indices(data.y, data.num_classes, m)
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
