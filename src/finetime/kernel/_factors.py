"""Per-sample gradients in factored form, and the three ways to turn them into kernel contributions.

For a weight used as ``out = x W^T`` (linear, convolution after unfolding, embedding as a one-hot product) the
per-sample, per-output gradient is a sum over positions ``p`` of outer products,
``dW[i, c] = sum_p L[i, c, p] (x) R[i, c, p]``, with ``L`` the gradient w.r.t. the op's output (``d_out``) and ``R``
the op's input patch (``d_in``). Everything here works on that form without forming ``dW`` unless asked to:

* ``materialize``: the exact ``(n, C, d_out * d_in)`` per-sample gradients (cheap for small weights).
* ``ghost_gram``: the exact kernel block ``sum_{p,q} (L_ip . L_jq)(R_ip . R_jq)`` (cheap with few positions).
* ``kron_sketch``: the projection ``sum_p (S_L L_p) (x) (S_R R_p)`` with Gaussian ``S_L, S_R``: an unbiased
  estimate of inner products, of dimension ``k_L * k_R``, at the cost of two thin matrix products.

Shapes: ``L`` is ``(n, C or 1, G, P, d_L)``, ``R`` is ``(n, C or 1, G, P, d_R)`` (``G`` groups of a grouped
convolution; a class axis of 1 broadcasts). An ``IndexFactor`` stands for a one-hot ``L`` (embedding rows).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["IndexFactor", "Factors", "ghost_gram"]


@dataclasses.dataclass
class IndexFactor:
    """One-hot factor over ``size`` rows, given by indices ``(n, P)``; ``-1`` marks positions with no gradient."""

    index: torch.Tensor
    size: int

    @property
    def shape(self):
        n, p = self.index.shape
        return (n, 1, 1, p, self.size)


@dataclasses.dataclass
class Factors:
    left: torch.Tensor | IndexFactor
    right: torch.Tensor
    live: torch.Tensor | None = None
    """A convolution's kernel taps kept in ``d_R`` (``(Cin / G, taps)`` flattened with only these taps), when the
    others only ever see zero padding; ``None``: every tap."""

    @property
    def groups(self) -> int:
        return self.right.shape[2]

    @property
    def positions(self) -> int:
        return self.right.shape[3]

    @property
    def dims(self) -> tuple[int, int]:
        return self.left.shape[-1], self.right.shape[-1]

    def concat(self, other: "Factors") -> "Factors":
        """Two uses of the same weight (a shared module): their positions add up."""
        if isinstance(self.left, IndexFactor) or isinstance(other.left, IndexFactor):
            if not (isinstance(self.left, IndexFactor) and isinstance(other.left, IndexFactor)):
                raise TypeError("cannot concatenate one-hot and dense factors")
            left = IndexFactor(torch.cat([self.left.index, other.left.index], 1), self.left.size)
        else:
            c = max(self.left.shape[1], other.left.shape[1])
            left = torch.cat([self.left.expand(-1, c, -1, -1, -1), other.left.expand(-1, c, -1, -1, -1)], 3)
        c = max(self.right.shape[1], other.right.shape[1])
        right = torch.cat([self.right.expand(-1, c, -1, -1, -1), other.right.expand(-1, c, -1, -1, -1)], 3)
        return Factors(left, right, self.live)

    def materialize(self, num_classes: int) -> torch.Tensor:
        """Exact per-sample gradients ``(n, C, G * d_L * d_R)``, row-major over ``(G, d_L, d_R)`` (for convolutions,
        taps that only ever see zero padding are left out of ``d_R``: they have zero gradient)."""
        r = self.right
        n, _, g, p, dr = r.shape
        if isinstance(self.left, IndexFactor):
            idx = self.left.index  # (n, P)
            out = torch.zeros(n, r.shape[1], self.left.size + 1, dr, dtype=r.dtype, device=r.device)
            slot = torch.where(idx < 0, torch.full_like(idx, self.left.size), idx)
            out.scatter_add_(2, slot[:, None, :, None].expand(-1, r.shape[1], -1, dr), r[:, :, 0])
            out = out[:, :, : self.left.size].expand(-1, num_classes, -1, -1)
            return out.reshape(n, num_classes, -1)
        left = self.left.expand(-1, num_classes, -1, -1, -1)
        if r.shape[1] == 1:  # one matrix product per (sample, group), classes stacked on the left
            lt = left.permute(0, 2, 1, 4, 3).reshape(n, g, -1, p)  # (n, G, C*o, P)
            out = (lt @ r[:, 0]).reshape(n, g, num_classes, -1, dr).transpose(1, 2)
        else:
            out = torch.einsum("ncgpo,ncgpi->ncgoi", left, r)
        return out.reshape(n, num_classes, -1)

    def kron_sketch(self, s_left: torch.Tensor | None, s_right: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        """``sum_p (S_L L_p) (x) (S_R R_p)``, shape ``(n, C, k_L * k_R)``; ``None`` means identity. Needs ``G = 1``."""
        if isinstance(self.left, IndexFactor):
            idx = self.left.index
            if s_left is None:
                raise ValueError("one-hot factors need a left projection")
            sl = torch.cat([s_left, torch.zeros(s_left.shape[0], 1, dtype=s_left.dtype, device=s_left.device)], 1)
            slot = torch.where(idx < 0, torch.full_like(idx, self.left.size), idx)
            lp = sl.T[slot].unsqueeze(1)  # (n, 1, P, kL)
        else:
            lp = self.left[:, :, 0]
            if s_left is not None:
                lp = lp @ s_left.T
        rp = self.right[:, :, 0]
        if s_right is not None:
            rp = rp @ s_right.T
        out = torch.einsum("ncpa,ncpb->ncab", lp.expand(-1, num_classes, -1, -1), rp.expand(-1, num_classes, -1, -1))
        return out.reshape(out.shape[0], num_classes, -1)


def ghost_gram(
    left_a: torch.Tensor, right_a: torch.Tensor, left_b: torch.Tensor, right_b: torch.Tensor
) -> torch.Tensor:
    """Exact kernel block between two sample sets from dense factors with ``G = 1``.

    ``left_*``: ``(n, C, P, d_L)``; ``right_*``: ``(n, 1 or C, P, d_R)``. Returns ``(n_a * C, n_b * C)`` with entry
    ``sum_{p,q} (L_a[i,c,p] . L_b[j,d,q]) (R_a[i,c,p] . R_b[j,d,q])``.
    """
    na, c, p, _ = left_a.shape
    nb = left_b.shape[0]
    if p == 1 and left_b.shape[2] == 1:
        ll = left_a.reshape(na * c, -1) @ left_b.reshape(nb * c, -1).T  # (na C, nb C)
        rr = torch.einsum("ixo,jyo->ixjy", right_a[:, :, 0], right_b[:, :, 0])
        return (ll.view(na, c, nb, c) * rr).reshape(na * c, nb * c)
    ll = torch.einsum("icpo,jdqo->icjdpq", left_a, left_b)
    rr = torch.einsum("ixpo,jyqo->ixjypq", right_a, right_b)
    return (ll * rr).sum((-1, -2)).reshape(na * c, nb * c)
