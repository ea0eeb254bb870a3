"""Brute-force Jacobians and kernels with ``torch.func`` (the reference the engine is tested against).

``vmap(jacrev)`` materializes ``J`` (``N*C x D``): exact, simple, and as expensive in memory as it sounds.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

from ..network import eval_mode

__all__ = ["jacobian", "jacobian_loop", "brute_force_ntk"]


def jacobian(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None,
             chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample Jacobian of the outputs w.r.t. the trained parameters, ``(N*C, D)`` (model in eval mode)."""
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else names
    params = {n: named[n].detach() for n in names}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    chunk_size = chunk_size or x.shape[0]
    blocks = []
    with eval_mode(model):
        for s in range(0, x.shape[0], chunk_size):
            jac = vmap(jacrev(f), in_dims=(None, 0))(params, x[s : s + chunk_size])
            n, c = jac[names[0]].shape[:2]
            blocks.append(torch.cat([jac[k].reshape(n, c, -1) for k in names], -1).reshape(n * c, -1))
    return torch.cat(blocks)


def jacobian_loop(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """``jacobian`` by one backward pass per sample and output (eval mode): slow, but works on models that
    ``vmap(jacrev)`` cannot trace (Hugging Face transformers). ``(N*C, D)``."""
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else names
    params = [named[n] for n in names]
    rows = []
    with eval_mode(model):
        for i in range(x.shape[0]):
            out = model(x[i : i + 1])[0]
            for c in range(out.shape[0]):
                gs = torch.autograd.grad(out[c], params, retain_graph=c + 1 < out.shape[0], allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                       for g, p in zip(gs, params)]))
    return torch.stack(rows)


def brute_force_ntk(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """``J J^T`` on ``x``, ``(N*C, N*C)``."""
    j = jacobian(model, x, names)
    return j @ j.T
