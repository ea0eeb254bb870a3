"""``kron``: Kronecker-factored Gaussian sketch ``sum_p (S_L L_p) (x) (S_R R_p)`` of a linear map's gradient.

``S_L`` is ``(k_L, d_out)`` and ``S_R`` is ``(k_R, d_in)`` with ``k_L k_R <= k``; the ``k_L k_R`` coordinates are
embedded with random signs into the shared ``k``-dimensional sketch, so per-sample weight gradients are never formed.
"""

from __future__ import annotations

import math

from ..projection import embedding_map, gaussian, param_generator
from ._base import ParamShape, Route, register_route


@register_route
class Kron(Route):
    name = "kron"
    sketched = True
    fallback_rank = 0

    @classmethod
    def applies(cls, shape: ParamShape) -> bool:
        return shape.factored and shape.groups == 1

    def prepare(self, k, seed, dtype, device):
        s = self.shape
        gen = param_generator(seed, s.index)
        kl = min(s.d_left, max(1, math.isqrt(k)))
        kr = min(s.d_right, max(1, k // kl))
        self.s_left = None if (kl == s.d_left and not s.onehot) else gaussian(kl, s.d_left, gen, dtype).to(device)
        self.s_right = None if kr == s.d_right else gaussian(kr, s.d_right, gen, dtype).to(device)
        perm, signs = embedding_map(kl * kr, k, param_generator(seed, s.index, salt=1))
        self.perm, self.signs = perm.to(device), signs.to(dtype).to(device)

    def add(self, stores, t, start, stop, c):
        phi = t.kron_sketch(self.s_left, self.s_right, c).reshape((stop - start) * c, -1) * self.signs
        stores.sketch[start * c : stop * c].index_add_(1, self.perm, phi)
