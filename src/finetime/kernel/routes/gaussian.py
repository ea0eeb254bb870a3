"""``gaussian``: the paper's dense Gaussian projection (section 4) of the per-sample gradient to ``k`` dimensions.

The ``(k, dim)`` matrix is kept when it has at most ``2**26`` entries, else regenerated per chunk in column blocks
from the same generator (the sketch does not depend on chunking).
"""

from __future__ import annotations

import torch

from ..projection import gaussian, param_generator
from ._base import Route, flat_gradient, register_route

CACHED_ENTRIES = 2**26


@register_route
class Gaussian(Route):
    name = "gaussian"
    sketched = True

    @property
    def working_width(self) -> int:
        return self.shape.dim

    def prepare(self, k, seed, dtype, device):
        self.k, self.seed = k, seed
        self.proj = None
        if k * self.shape.dim <= CACHED_ENTRIES:
            self.proj = gaussian(k, self.shape.dim, param_generator(seed, self.shape.index), dtype).to(device)

    def _project(self, m: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return m @ self.proj.T
        k, dim = self.k, self.shape.dim
        gen = param_generator(self.seed, self.shape.index)
        out = torch.zeros(m.shape[0], k, dtype=m.dtype, device=m.device)
        block = max(1, CACHED_ENTRIES // k)
        for start in range(0, dim, block):
            stop = min(dim, start + block)
            out += m[:, start:stop] @ gaussian(k, stop - start, gen, m.dtype).to(m.device).T
        return out

    def add(self, stores, t, start, stop, c):
        stores.sketch[start * c : stop * c] += self._project(flat_gradient(t, stop - start, c))
