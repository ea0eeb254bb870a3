"""Random projections, each generated deterministically from ``(seed, parameter index)``.

Every projection ``S`` (``k x D``) satisfies ``E[S^T S] = I``, so ``<S g, S h>`` is an unbiased estimate of
``<g, h>``. Generating from per-parameter seeds makes the sketch independent of how samples are chunked.
"""

from __future__ import annotations

import enum
import math
import warnings

import torch

__all__ = ["KernelMethod", "gaussian", "very_sparse", "embedding_map", "param_generator"]


class KernelMethod(str, enum.Enum):
    """How the kernel ``Theta = J J^T`` is computed. Costs for ``N`` samples, ``C`` outputs, ``D`` weights.

    All methods share one forward pass per chunk of samples and ``C`` backward passes to the activations only
    (no weight gradients); they differ in what is done with the per-layer factors.
    """

    EXACT = "exact"
    """Exact. Each weight is handled as materialized per-sample gradients (``N C D_l`` memory, ``(NC)^2 D_l``
    flops) or, for linear maps over few positions ``P``, by products of factors (``(NC)^2 P^2 (d_in + d_out)``
    flops), whichever is cheaper. Refused when it does not fit in the memory budget."""
    FACTORED = "factored"
    """Default. Exact for the weights where that is cheap (within a few times the cost of the sketch), and a
    Kronecker-factored Gaussian projection ``(S_L g) (x) (S_R a)`` of dimension ``k`` for the rest: per-sample
    weight gradients are never formed. Cost ``(NC)^2 k`` for the sketch Gram plus thin products per layer."""
    GAUSSIAN = "gaussian"
    """The paper's dense Gaussian projection of the full per-sample gradients to ``k`` dimensions
    (section 4). Forms per-sample gradients layer by layer; ``k D`` random numbers per chunk. Slow; for
    comparison."""
    SPARSE = "sparse"
    """The paper's sparse ``{-1, 0, +1}`` projection (very sparse: density ``1/sqrt(D_l)`` per layer,
    Li et al. 2006), ``k sqrt(D_l)`` stored entries per layer; forms per-sample gradients layer by layer."""


def param_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + index * 7919 + salt * 104_729) % (2**63 - 1))


def gaussian(k: int, d: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Dense ``(k, d)`` Gaussian with entries ``N(0, 1/k)``."""
    return torch.randn(k, d, generator=gen, dtype=torch.float64).div_(math.sqrt(k)).to(dtype)


def very_sparse(k: int, d: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """Sparse CSR ``(k, d)`` with entries ``+-1/sqrt(k rho)`` at about ``k d rho`` random places, ``rho = 1/sqrt(d)``.

    Places are drawn with replacement (a repeated place sums independent signs), which keeps ``E[S^T S] = I``.
    """
    rho = 1.0 / math.sqrt(d)
    nnz = max(1, int(round(k * d * rho)))
    rows = torch.randint(0, k, (nnz,), generator=gen)
    cols = torch.randint(0, d, (nnz,), generator=gen)
    vals = ((torch.randint(0, 2, (nnz,), generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(k * rho)).to(dtype)
    # CSR straight from the sorted places (what COO coalesce then to_sparse_csr gives, 3-4x faster on large layers):
    # repeated places summed, rows counted into the row pointers
    places, order = torch.sort(rows * d + cols, stable=True)
    unique, inverse = torch.unique_consecutive(places, return_inverse=True)
    summed = torch.zeros(unique.numel(), dtype=dtype).index_add_(0, inverse, vals[order])
    crow = torch.zeros(k + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(unique // d, minlength=k), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, unique % d, summed, (k, d))


def embedding_map(k_in: int, k_out: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random injection of ``k_in`` sketch coordinates into ``k_out >= k_in`` shared ones, with random signs.

    Sketches of different parameters summed into one space stay unbiased: cross terms have zero mean.
    """
    perm = torch.randperm(k_out, generator=gen)[:k_in]
    signs = torch.randint(0, 2, (k_in,), generator=gen, dtype=torch.float64) * 2 - 1
    return perm, signs
