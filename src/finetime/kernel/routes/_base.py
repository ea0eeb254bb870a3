"""What every kernel route shares: the shape of a parameter's contribution, the route protocol and the registry.

A route decides what one parameter's per-sample gradient becomes in the kernel ``Theta = J J^T``. The engine finds
each parameter's ``ParamShape`` with a probe pass, chooses a route class for it (``exact`` routes by their flop
count, projected ones within the memory budget), and then drives the instances through one kernel computation:
``prepare`` (random projections), ``allocate`` (a store of its own, if any), ``add`` per chunk of samples, and
``gram`` for what its own store adds to the final Gram. Routes write into the shared ``Stores`` (materialized
features, one ``k``-dimensional sketch) or keep their own. Register a new route with ``@register_route``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from .._factors import Factors, IndexFactor

__all__ = ["ParamShape", "Route", "Stores", "ROUTES", "register_route", "flat_gradient"]


@dataclasses.dataclass(frozen=True)
class ParamShape:
    """One trained parameter as the probe pass saw it.

    ``dim`` is the length of its per-sample gradient as materialized (dead convolution taps left out). Factored
    parameters (linear maps: ``dW = sum_p L_p (x) R_p``) also carry ``positions`` ``P``, the factor widths
    ``d_left`` (op output) and ``d_right`` (op input), ``groups`` and whether ``L`` is one-hot (embedding rows).
    """

    name: str
    index: int  # position among the trained parameters; seeds the parameter's projections
    numel: int
    factored: bool
    dim: int
    positions: int = 1
    d_left: int = 0
    d_right: int = 0
    groups: int = 1
    onehot: bool = False

    @classmethod
    def of(cls, name: str, index: int, numel: int, contribution) -> "ParamShape":
        if isinstance(contribution, Factors):
            d_left, d_right = contribution.dims
            groups = contribution.groups
            return cls(name, index, numel, True, groups * d_left * d_right, contribution.positions, d_left, d_right,
                       groups, isinstance(contribution.left, IndexFactor))
        return cls(name, index, numel, False, contribution.shape[-1])


@dataclasses.dataclass
class Stores:
    """The stores routes share: materialized features ``(rows*C, D_exact)`` and the sketch ``(rows*C, k)``."""

    feats: torch.Tensor | None
    sketch: torch.Tensor | None


def flat_gradient(t, rows: int, c: int) -> torch.Tensor:
    """A contribution as per-sample, per-output gradient rows ``(rows*C, dim)``."""
    return (t.materialize(c) if isinstance(t, Factors) else t).reshape(rows * c, -1)


class Route:
    """How one parameter's gradient enters the kernel. An instance lives for one kernel computation.

    Class attributes: ``name`` (registry key, reported in the plan), ``exact`` (exact routes are chosen by
    ``flops``; the others estimate the kernel by a projection), ``sketched`` (adds into the shared sketch),
    ``fallback_rank`` (for the factored method: projected routes tried in this order, ``None`` = never a fallback).
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = False
    sketched: ClassVar[bool] = False
    fallback_rank: ClassVar[int | None] = None

    def __init__(self, shape: ParamShape):
        self.shape = shape
        self.offset = 0  # first column in the shared feature store (routes with ``feature_dim``)

    @classmethod
    def applies(cls, shape: ParamShape) -> bool:
        return True

    @classmethod
    def flops(cls, shape: ParamShape, rows: int, cols: int, c: int) -> float:
        """Cost of this parameter's share of the ``(rows*C, cols*C)`` Gram (exact routes)."""
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """Columns this parameter takes in the shared feature store."""
        return 0

    @property
    def working_width(self) -> int:
        """Width of the per-sample gradient it forms per chunk (sizes the chunks)."""
        return 0

    def own_bytes(self, rows: int, c: int, element_bytes: int) -> int:
        """Bytes of a store of its own, kept until the Gram."""
        return 0

    def prepare(self, k: int, seed: int, dtype: torch.dtype, device: torch.device) -> None:
        """Draw its projections (from ``param_generator(seed, shape.index)``)."""

    def allocate(self, rows: int, c: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate a store of its own."""

    def add(self, stores: Stores, t, start: int, stop: int, c: int) -> None:
        """Add the contribution ``t`` (``Factors`` or ``(n, C, dim)``) of samples ``start:stop``."""
        raise NotImplementedError

    def gram(self, theta: torch.Tensor, rows: int, cols: int, c: int, span: tuple[int, int] | None = None) -> None:
        """Add what its own store gives to ``theta`` ``(rows*C, cols*C)``, on the rows of samples ``span = (lo, hi)``
        only (default: all; a rank's share when the Gram is split over ranks)."""

    def row_stores(self) -> list[torch.Tensor]:
        """Its own store's tensors indexed by sample along the first axis (summed over ranks when the samples are
        sharded; ``kernel.distributed``)."""
        return []


ROUTES: dict[str, type[Route]] = {}
"""Registered routes by name, in registration order (the order ties between exact routes are broken in)."""


def register_route(cls: type[Route]) -> type[Route]:
    if cls.name in ROUTES:
        raise ValueError(f"a kernel route named {cls.name!r} is already registered")
    ROUTES[cls.name] = cls
    return cls
