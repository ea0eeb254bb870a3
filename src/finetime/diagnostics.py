"""What the report draws besides the curves: the kernel's spectrum and the gradients' geometry (paper, Fig. 3-4).

* Spectrum: eigenvalues of ``Theta / N`` (the operator that drives the mean loss), with a power law
  ``lambda_k = c k^-s`` fitted on the middle ranks.
* Gradient map: the per-sample loss gradients ``g_i = sum_c r_ic grad f_c(x_i)`` at ``w0`` have Gram matrix
  ``R Theta R^T``; its eigenvectors give their PCA scores without forming a single gradient. 2-D PCA, and t-SNE on the
  first five components when scikit-learn is installed.
* Per-sample convergence: the step at which each sample's predicted loss crosses its own ``eps = 0.1`` threshold
  (full-batch dynamics, or the first batch order for SGD).
"""

from __future__ import annotations

import torch

from .dynamics import ExactStepper, Problem, Recorder, resolve_plan, solve
from .losses import per_sample_loss, residual
from .optim import Optimizer
from .spectrum import fit_power_law
from .training_time import steps_to_epsilon

__all__ = ["spectrum_summary", "gradient_map", "per_sample_times"]


def spectrum_summary(theta: torch.Tensor, n: int, keep: int = 300) -> dict:
    ev = torch.linalg.eigvalsh(theta.double()).flip(0) / n
    k = ev.numel()
    lo, hi = min(5, max(1, k // 10)), max(6, k // 2)
    try:
        c, s = fit_power_law(ev, lo, hi)
    except ValueError:
        c, s = float("nan"), float("nan")
    return {"eigenvalues": [float(v) for v in ev[:keep]], "count": k, "power_law": {"c": c, "s": s,
                                                                                  "ranks": [lo, hi]}}


def gradient_map(problem: Problem, components: int = 5, seed: int = 0) -> dict:
    n, c = problem.n, problem.c
    r = residual(problem.f0.double(), problem.y, problem.loss)  # (N, C)
    th = problem.theta.double().view(n, c, n, c)
    gram = torch.einsum("ic,icjd,jd->ij", r, th, r)
    ev, vec = torch.linalg.eigh(gram)
    ev, vec = ev.flip(0).clamp_min(0), vec.flip(1)
    scores = vec[:, :components] * ev[:components].sqrt()
    out = {"pca": scores[:, :2].tolist(), "explained": (ev[:components] / ev.sum().clamp_min(1e-30)).tolist(),
           "labels": problem.y.tolist()}
    try:
        from sklearn.manifold import TSNE

        perplexity = max(2.0, min(30.0, (n - 1) / 3))
        emb = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
            scores.numpy())
        out["tsne"] = emb.tolist()
    except ImportError:
        pass
    return out


class _PerSample(Recorder):
    def __init__(self, problem, steps, dt):
        super().__init__(problem, 1, steps, dt)
        self.per_sample = torch.full((steps + 1, problem.n), float("nan"), dtype=dt)

    def __call__(self, fa, t):
        p = self.p
        self.per_sample[t] = per_sample_loss(fa[0, : p.n * p.c].view(p.n, p.c), p.y, p.loss)
        return super().__call__(fa, t)


def per_sample_times(problem: Problem, optimizer: Optimizer, steps: int,
                     generator: torch.Generator | None = None) -> list:
    """Per-sample ``eps = 0.1`` crossing step of the predicted per-sample loss (``None``: not within T)."""
    plan, runs = resolve_plan(problem.n, optimizer, steps, 1, generator or torch.Generator().manual_seed(0), None)
    rec = _PerSample(problem, steps, problem.theta.dtype)
    solve(ExactStepper(problem, optimizer, steps, plan), steps, runs=1, recorder=rec)
    tt = steps_to_epsilon(rec.per_sample.T, 0.1)
    return [None if v < 0 else int(v) for v in tt.tolist()]
