"""``ghost``: the exact kernel block of a linear map from its factors, ``sum_{p,q} (L_ip . L_jq)(R_ip . R_jq)``.

Cheaper than materializing when the map is used at few positions ``P``: ``(NC)^2 P^2 (d_out + d_in)`` flops instead
of ``(NC)^2 d_out d_in``. Keeps the factors of all samples until the Gram.
"""

from __future__ import annotations

import torch

from .._factors import ghost_gram
from ._base import ParamShape, Route, register_route


@register_route
class Ghost(Route):
    name = "ghost"
    exact = True

    @classmethod
    def applies(cls, shape: ParamShape) -> bool:
        return shape.factored and not shape.onehot and shape.groups == 1

    @classmethod
    def flops(cls, shape: ParamShape, rows: int, cols: int, c: int) -> float:
        return rows * cols * shape.positions**2 * (c * c * shape.d_left + shape.d_right * c)

    def own_bytes(self, rows, c, element_bytes):
        s = self.shape
        return rows * s.positions * (c * s.d_left + s.d_right) * element_bytes

    def allocate(self, rows, c, dtype, device):
        s = self.shape
        self.left = torch.zeros(rows, c, s.positions, s.d_left, dtype=dtype, device=device)
        self.right = torch.zeros(rows, 1, s.positions, s.d_right, dtype=dtype, device=device)

    def row_stores(self):
        return [self.left, self.right]

    def add(self, stores, t, start, stop, c):
        self.left[start:stop] = t.left[:, :, 0].expand(-1, c, -1, -1)
        self.right[start:stop] = t.right[:, :1, 0]

    def gram(self, theta, rows, cols, c, span=None):
        left, right = self.left, self.right
        lo, hi = span if span is not None else (0, rows)
        blk = max(1, int(2**25 // max(1, c * c * cols * self.shape.positions**2)))
        for s0 in range(lo, hi, blk):
            s1 = min(hi, s0 + blk)
            theta[s0 * c : s1 * c] += ghost_gram(left[s0:s1], right[s0:s1], left[:cols], right[:cols])
