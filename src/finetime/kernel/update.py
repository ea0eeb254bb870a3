"""A kernel refreshed from a sub-block: the new kernel measured on a few samples, carried to all of them.

Re-linearization needs the kernel at new weights. Computing it on all ``N`` samples costs as much as the first one
(one forward and ``C`` backward passes per sample). ``nystrom_update`` takes the new kernel on a subset ``S`` of the
samples only (``B = Theta_new[S, S]``) and carries it to the rest through the old kernel ``K``:

    K_new = s (K - K[:, S] A^+ K[S, :]) + W B W^T,   A = K[S, S],  W = K[:, S] A^+,  s = tr B / tr A.

The second term is the Nystrom extension of the new block along the old kernel's features (the regression of every
sample's old features on the subset's); the first keeps the part of the old kernel the subset does not span, scaled
by the growth measured on the subset. Properties (``tests/test_kernel_update.py``):

* on ``S`` the result is ``B`` exactly (where ``A`` is well conditioned);
* ``B = A`` gives back ``K``, and ``B = c A`` gives ``c K``;
* where the old kernel has rank at most ``|S|`` on features the subset spans and the new kernel is ``Phi M Phi^T`` on
  the same features, the result is the new kernel exactly;
* it is positive semi-definite (both terms are: the first is a Schur complement).

What it cannot see is a change along directions of the old features that the subset does not span; those only
grow by ``s``. The same formula gives the test cross-kernel, ``K_test`` rows regressed on the subset the same way.
"""

from __future__ import annotations

import torch

__all__ = ["nystrom_update", "subset_rows"]

RTOL = 1e-7
"""Eigenvalues of the old sub-block below ``RTOL`` times the largest are dropped from its pseudo-inverse."""


def subset_rows(samples: torch.Tensor, c: int) -> torch.Tensor:
    """Flat kernel rows (index ``i * C + k``) of the samples ``samples``."""
    samples = torch.as_tensor(samples, dtype=torch.long)
    return (samples.unsqueeze(1) * c + torch.arange(c, device=samples.device)).reshape(-1)


def nystrom_update(theta: torch.Tensor, rows: torch.Tensor, block: torch.Tensor,
                   theta_test: torch.Tensor | None = None, *, rtol: float = RTOL
                   ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``(K_new, K_new_test, s)`` from the old kernel ``theta`` ``(P, P)``, the refreshed rows ``rows`` ``(q,)`` and
    the new kernel on them ``block`` ``(q, q)``; ``theta_test`` ``(Q, P)`` is the old test cross-kernel (or ``None``).
    All in ``theta``'s dtype; ``s`` is the trace ratio of the new block over the old."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=theta.device)
    q = rows.numel()
    if block.shape != (q, q):
        raise ValueError(f"block is {tuple(block.shape)}, expected ({q}, {q}) for {q} rows")
    block = block.to(theta.device, theta.dtype)
    a = theta[rows][:, rows]
    a = 0.5 * (a + a.T)
    s = float(torch.trace(block) / torch.trace(a).clamp_min(torch.finfo(theta.dtype).tiny))
    evals, evecs = torch.linalg.eigh(a)
    keep = evals > rtol * evals.max().clamp_min(0)
    v = evecs[:, keep] / evals[keep].sqrt()  # A^+ = v v^T
    cols = theta[:, rows]  # K[:, S]
    g = cols @ v  # K[:, S] A^{+1/2}: the Nystrom features of the old kernel
    w = g @ v.T  # K[:, S] A^+
    new = s * (theta - g @ g.T) + w @ block @ w.T
    new = 0.5 * (new + new.T)
    new_test = None
    if theta_test is not None:
        gt = theta_test[:, rows] @ v
        wt = gt @ v.T
        new_test = s * (theta_test - gt @ g.T) + wt @ block @ w.T
    return new, new_test, s
