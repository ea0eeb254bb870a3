"""Per-weight scalings of the Jacobian, for preconditioned kernels ``Theta_P = J P J^T`` (``P`` diagonal, >= 0).

The engine multiplies each parameter's per-sample gradient by ``sqrt(P)`` before its route sees it, so every route
(exact or projected) gives ``(J P^{1/2}) (J P^{1/2})^T``. To keep the factored form ``dW = sum_p L_p (x) R_p`` of a
linear map, ``P^{1/2}`` of a factored parameter is a product ``left (x) right`` over its ``(G * d_L, d_R)`` layout,
as Adafactor factors second moments into row and column statistics; other parameters take an exact diagonal.

Also here: the per-weight first and second moments of the per-sample loss gradients over the data
(``gradient_moments``), from which optimizers such as Adam build their ``P``.
"""

from __future__ import annotations

import dataclasses

import torch

from ._factors import Factors, IndexFactor

__all__ = ["Scale", "scale_contribution", "inverse_root_scale", "GradientMoments", "loss_gradient"]


@dataclasses.dataclass
class Scale:
    """``sqrt(P)`` of one parameter in its contribution layout: ``left (G, d_L)`` times ``right (d_R,)`` for a
    factored parameter, or ``dense (dim,)``."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None


def scale_contribution(t, s: Scale):
    """A contribution (``Factors`` or ``(n, C, dim)``) multiplied by ``sqrt(P)``, weight by weight."""
    if isinstance(t, Factors):
        if s.dense is not None:
            raise ValueError("a factored contribution needs a factored scale")
        r = t.right * s.right.to(t.right.dtype).view(1, 1, 1, 1, -1)
        if isinstance(t.left, IndexFactor):  # one-hot rows: the row's scale moves onto the other factor
            rows = torch.cat([s.left.reshape(-1), s.left.new_zeros(1)]).to(r.dtype)
            slot = torch.where(t.left.index < 0, torch.full_like(t.left.index, t.left.size), t.left.index)
            return Factors(t.left, r * rows[slot][:, None, None, :, None])
        g, d_left = s.left.shape
        return Factors(t.left * s.left.to(t.left.dtype).view(1, 1, g, 1, d_left), r)
    if s.dense is None:
        raise ValueError("a dense contribution needs a dense scale")
    return t * s.dense.to(t.dtype)


def inverse_root_scale(v: torch.Tensor, layout: tuple[int, int, int] | None, eps: float) -> Scale:
    """``sqrt(P)`` for Adam's preconditioner ``P = 1 / (sqrt(v) + eps)`` from second moments ``v`` (``(dim,)``) in the
    parameter's contribution layout (``(G, d_L, d_R)`` for a factored parameter, ``None`` for a dense one).

    Factored: ``v`` is replaced by its rank-one fit ``v_ab ~ row_a col_b / total`` (row and column sums, Adafactor's
    factorization), so that ``P_ab ~ 1 / ((sqrt(x_a) + sqrt(eps)) (sqrt(y_b) + sqrt(eps)))`` with ``x_a y_b = v_ab``
    is a product and the linear map keeps its factored form; ``eps`` enters as a floor (weights that never receive a
    gradient stay finite).
    """
    v = v.clamp_min(0)
    if layout is None:
        return Scale(dense=(v.sqrt() + eps).rsqrt())
    g, d_left, d_right = layout
    m = v.reshape(g * d_left, d_right)
    norm = m.sum().clamp_min(torch.finfo(m.dtype).tiny).sqrt()
    root_eps = eps**0.5
    left = ((m.sum(1) / norm).sqrt() + root_eps).rsqrt().reshape(g, d_left)
    right = ((m.sum(0) / norm).sqrt() + root_eps).rsqrt()
    return Scale(left=left, right=right)


@dataclasses.dataclass
class GradientMoments:
    """Moments over ``n`` samples of the per-sample loss gradients ``g_i = J_i^T r_i``, weight by weight, in each
    parameter's contribution layout: ``mean[name] = mean_i g_i`` and ``sq[name] = mean_i g_i^2`` (``(dim,)``),
    ``layout[name] = (G, d_L, d_R)`` for factored parameters, ``None`` for dense ones."""

    mean: dict[str, torch.Tensor]
    sq: dict[str, torch.Tensor]
    layout: dict[str, tuple[int, int, int] | None]
    n: int


def loss_gradient(t, r: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int] | None]:
    """Per-sample loss gradients ``(n, dim)`` of one parameter from its per-output contribution ``t`` and the
    residuals ``r`` ``(n, C)``, contracting the class axis before anything is materialized."""
    c = r.shape[1]
    if isinstance(t, Factors):
        g, d_left = t.right.shape[2], (t.left.size if isinstance(t.left, IndexFactor) else t.left.shape[-1])
        layout = (g, d_left, t.right.shape[-1])
        left, right = t.left, t.right
        rr = r.to(right.dtype)
        if not isinstance(left, IndexFactor) and left.shape[1] == c and right.shape[1] == 1:
            left = torch.einsum("ncgpo,nc->ngpo", left, rr).unsqueeze(1)
        elif right.shape[1] == c and (isinstance(left, IndexFactor) or left.shape[1] == 1):
            right = torch.einsum("ncgpi,nc->ngpi", right, rr).unsqueeze(1)
        else:
            return torch.einsum("ncd,nc->nd", t.materialize(c), rr), layout
        return Factors(left, right).materialize(1)[:, 0], layout
    return torch.einsum("ncd,nc->nd", t, r.to(t.dtype)), None
