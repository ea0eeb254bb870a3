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
import math

import torch

from ._factors import Factors, IndexFactor

__all__ = ["Scale", "scale_contribution", "inverse_root_scale", "factored_inverse_root_scale",
           "parameter_preconditioner", "GradientMoments", "GradientSums", "gradient_sums"]


@dataclasses.dataclass
class Scale:
    """``sqrt(P)`` of one parameter in its contribution layout: ``left (G, d_L)`` times ``right (d_R,)`` for a
    factored parameter, or ``dense (dim,)``."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    taps: torch.Tensor | None = None
    """For a convolution whose layout keeps only its live taps (``Factors.live``): those taps."""


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
    return factored_inverse_root_scale(m.sum(1), m.sum(0), layout, eps)


def factored_inverse_root_scale(rows: torch.Tensor, cols: torch.Tensor, layout: tuple[int, int, int],
                                eps: float) -> Scale:
    """``inverse_root_scale`` of a factored parameter from the row and column sums of its ``v`` alone (``(G * d_L,)``
    and ``(d_R,)`` over the ``(G * d_L, d_R)`` layout): the rank-one fit needs nothing else."""
    g, d_left, _ = layout
    rows, cols = rows.clamp_min(0), cols.clamp_min(0)
    norm = rows.sum().clamp_min(torch.finfo(rows.dtype).tiny).sqrt()
    root_eps = eps**0.5
    left = ((rows / norm).sqrt() + root_eps).rsqrt().reshape(g, d_left)
    right = ((cols / norm).sqrt() + root_eps).rsqrt()
    return Scale(left=left, right=right)


def parameter_preconditioner(s: Scale, shape: torch.Size) -> torch.Tensor:
    """``P`` (the square of the scale) in the parameter's own shape: a factored scale's ``(G * d_L, d_R)`` layout is
    the parameter flattened in its own order (a linear map's ``(out, in)``, a convolution's
    ``(out, in / groups * kh * kw)``, an embedding's ``(rows, dim)``). A convolution's taps that only ever see zero
    padding (left out of the layout; their gradient is always 0) get ``P = 0``."""
    root = s.dense if s.dense is not None else s.left.reshape(-1, 1) * s.right.reshape(1, -1)
    p = root * root
    if s.taps is not None:
        rows, per_tap = p.shape[0], shape[1:].numel() // math.prod(shape[2:])
        full = p.new_zeros(rows, per_tap, math.prod(shape[2:]))
        full[:, :, s.taps] = p.view(rows, per_tap, -1)
        p = full
    if p.numel() != shape.numel():
        raise ValueError(f"a scale of {p.numel()} weights for a parameter of shape {tuple(shape)}")
    return p.reshape(shape)


@dataclasses.dataclass
class GradientMoments:
    """Moments over ``n`` samples of the per-sample loss gradients ``g_i = J_i^T r_i``, weight by weight, in each
    parameter's contribution layout: ``mean[name] = mean_i g_i`` and ``sq[name] = mean_i g_i^2`` (``(dim,)``),
    ``layout[name] = (G, d_L, d_R)`` for factored parameters, ``None`` for dense ones. For factored parameters
    ``sq_rows[name]`` and ``sq_cols[name]`` are the row and column sums of ``mean_i g_i^2`` over the
    ``(G * d_L, d_R)`` layout; where those were computed without forming the squares, ``sq`` has no entry."""

    mean: dict[str, torch.Tensor]
    sq: dict[str, torch.Tensor]
    layout: dict[str, tuple[int, int, int] | None]
    n: int
    sq_rows: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    sq_cols: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    taps: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Convolutions whose layout keeps only their live taps (``Factors.live``): those taps."""


@dataclasses.dataclass
class GradientSums:
    """One parameter's per-sample loss gradients ``g_i`` summed over a chunk of samples: ``total = sum_i g_i`` and
    the squares, ``sq = sum_i g_i^2`` in full or (``sq=None``, factored parameters) only its row and column sums
    ``rows``, ``cols`` over the ``(G * d_L, d_R)`` layout."""

    total: torch.Tensor
    sq: torch.Tensor | None
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    layout: tuple[int, int, int] | None
    taps: torch.Tensor | None = None


def _contract_classes(t: Factors, r: torch.Tensor) -> Factors | None:
    """The factors of ``sum_c r_c dW_c`` (class axis 1), or ``None`` when both factors carry the class axis."""
    c = r.shape[1]
    left, right = t.left, t.right
    rr = r.to(right.dtype)
    if not isinstance(left, IndexFactor) and left.shape[1] == c and right.shape[1] == 1:
        return Factors(torch.einsum("ncgpo,nc->ngpo", left, rr).unsqueeze(1), right)
    if right.shape[1] == c and (isinstance(left, IndexFactor) or left.shape[1] == 1):
        return Factors(left, torch.einsum("ncgpi,nc->ngpi", right, rr).unsqueeze(1))
    return None


def gradient_sums(t, r: torch.Tensor, full: bool = False) -> GradientSums:
    """``GradientSums`` of one parameter from its per-output contribution ``t`` and the residuals ``r`` ``(n, C)``.

    A factored gradient ``g_i = sum_p L_p (x) R_p`` has row sums of squares ``sum_p L_pa (G^R L)_pa`` with the position
    Gram matrix ``G^R = R R^T`` (and column sums likewise with ``L L^T``); an embedding's one-hot ``L`` makes them sums
    over positions holding the same token. Those cost ``P^2 (d_L + d_R)`` per sample instead of the ``P d_L d_R`` of
    forming ``g_i`` (and an embedding's whole table); they are used where the two Gram products cost less than that
    (``2 P (d_L + d_R) < d_L d_R``) unless ``full``. Squares are summed in float64, ``total`` in the factors'
    dtype."""
    f64 = torch.float64
    if not isinstance(t, Factors):
        g = torch.einsum("ncd,nc->nd", t, r.to(t.dtype))
        return GradientSums(g.sum(0), (g * g).sum(0, dtype=f64), None, None, None)
    one_hot = isinstance(t.left, IndexFactor)
    d_left = t.left.size if one_hot else t.left.shape[-1]
    n, _, groups, p, d_right = t.right.shape
    layout = (groups, d_left, d_right)
    f = _contract_classes(t, r)
    taps = t.live
    gram = f is not None and not full and (one_hot or 2 * p * (d_left + d_right) < d_left * d_right)
    if not gram:
        g = (f.materialize(1)[:, 0] if f is not None
             else torch.einsum("ncd,nc->nd", t.materialize(r.shape[1]), r.to(t.right.dtype)))
        sq = (g * g).sum(0, dtype=f64)
        m = sq.view(groups * d_left, d_right)
        return GradientSums(g.sum(0), sq, m.sum(1), m.sum(0), layout, taps)
    right = f.right[:, 0]  # (n, G, P, d_R)
    if one_hot:
        idx = f.left.index  # (n, P); -1: no gradient
        slot = torch.where(idx < 0, torch.full_like(idx, d_left), idx).reshape(-1)
        r0 = right[:, 0]  # (n, P, d_R)
        same = ((idx.unsqueeze(2) == idx.unsqueeze(1)) & (idx >= 0).unsqueeze(2)).to(r0.dtype)  # (n, P, P)
        cols = ((same @ r0) * r0).sum((0, 1)).double()
        h = (same * (r0 @ r0.transpose(1, 2))).sum(2).reshape(-1).double()  # (n P,)
        rows = torch.zeros(d_left + 1, dtype=torch.float64, device=h.device).index_add_(0, slot, h)[:d_left]
        total = torch.zeros(d_left + 1, d_right, dtype=r0.dtype, device=r0.device)
        total = total.index_add_(0, slot, r0.reshape(-1, d_right))[:d_left].reshape(-1)
        return GradientSums(total, None, rows, cols, layout, taps)
    left = f.left[:, 0]  # (n, G, P, d_L)
    rows = (((right @ right.transpose(-1, -2)) @ left) * left).sum((0, 2)).reshape(-1).double()
    cols = (((left @ left.transpose(-1, -2)) @ right) * right).sum((0, 1, 2)).double()
    total = torch.einsum("ngpo,ngpi->goi", left, right).reshape(-1)
    return GradientSums(total, None, rows, cols, layout, taps)
