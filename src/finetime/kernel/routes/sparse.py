"""``sparse``: the paper's very sparse ``{-1, 0, +1}`` projection of the per-sample gradient (density
``1/sqrt(dim)``, Li et al. 2006); ``k sqrt(dim)`` stored entries per parameter."""

from __future__ import annotations

import torch

from ..projection import param_generator, very_sparse
from ._base import Route, flat_gradient, register_route


@register_route
class Sparse(Route):
    name = "sparse"
    sketched = True
    fallback_rank = 1

    @property
    def working_width(self) -> int:
        return self.shape.dim

    def prepare(self, k, seed, dtype, device):
        self.proj = very_sparse(k, self.shape.dim, param_generator(seed, self.shape.index), dtype).to(device)

    def add(self, stores, t, start, stop, c):
        m = flat_gradient(t, stop - start, c)
        stores.sketch[start * c : stop * c] += torch.sparse.mm(self.proj, m.T).T
