"""Brute-force Jacobians and kernels with ``torch.func`` (the reference the engine is tested against).

``vmap(jacrev)`` materializes ``J`` (``N*C x D``): exact, simple, and as expensive in memory as it sounds.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

from ..network import eval_mode

__all__ = ["jacobian", "jacobian_loop", "brute_force_ntk", "sign_gradient_kernel"]


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


def sign_gradient_kernel(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None, *,
                         block: int = 16, chunk: int = 2**20,
                         memory_budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric SignGD kernel of Malladi et al. (2023, "A Kernel-Based View of Language Model Fine-Tuning"),
    the kernel of early Adam as sign descent: ``K[(j, c), (i, c')] = <df_c(x_j)/dw, sign(df_c'(x_i)/dw)>``,
    ``(N*C, N*C)`` float64 (flat index ``i * C + c``), and the outputs ``f0`` ``(N, C)`` (model in eval mode).

    By brute force, one backward pass per sample and output, twice: the signs of every row are kept as ``int8``
    (``N * C * D`` bytes, checked against ``memory_budget``, default half the available memory), then the rows are
    recomputed ``block`` at a time and multiplied with them ``chunk`` weights at a time. A baseline for the bench,
    not a route of the engine: it has no sketch, since the sign is not linear in the gradient.
    """
    from .engine import available_memory

    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else names
    params = [named[n] for n in names]
    d = sum(p.numel() for p in params)
    n = x.shape[0]
    budget = available_memory(torch.device("cpu")) if memory_budget is None else memory_budget

    def rows(i: int, into: torch.Tensor) -> torch.Tensor:
        """The gradient rows of sample ``i`` written into ``into`` ``(C, D)``; returns its outputs."""
        out = model(x[i : i + 1])[0]
        for c in range(out.shape[0]):
            gs = torch.autograd.grad(out[c], params, retain_graph=c + 1 < out.shape[0], allow_unused=True)
            at = 0
            for g, p in zip(gs, params):
                if g is None:
                    into[c, at : at + p.numel()].zero_()
                else:
                    into[c, at : at + p.numel()].copy_(g.reshape(-1))
                at += p.numel()
        return out.detach()

    with eval_mode(model):
        c = model(x[:1]).shape[-1]
        need = n * c * d
        if need > budget:
            raise MemoryError(f"the SignGD kernel keeps the signs of {n * c} gradient rows of {d:,} weights "
                              f"({need / 2**30:.1f} GiB as int8), more than the {budget / 2**30:.1f} GiB allowed; "
                              "use fewer samples")
        dtype = params[0].dtype
        per = max(1, block // c)
        buf = torch.empty(per * c, d, dtype=dtype)  # reused: fresh 100 MB tensors per row cost page faults
        signs = torch.empty(n * c, d, dtype=torch.int8)
        f0 = torch.empty(n, c, dtype=torch.float64)
        for i in range(n):
            f0[i] = rows(i, buf[:c]).double()
            signs[i * c : (i + 1) * c] = buf[:c].sign()
        k = torch.zeros(n * c, n * c, dtype=torch.float64)
        conv = torch.empty(n * c, min(chunk, d), dtype=dtype)
        for s in range(0, n, per):
            m = min(n, s + per) - s
            for j in range(m):
                rows(s + j, buf[j * c : (j + 1) * c])
            g = buf[: m * c]
            for a in range(0, d, chunk):
                w = min(chunk, d - a)
                conv[:, :w].copy_(signs[:, a : a + w])
                k[s * c : (s + m) * c] += (g[:, a : a + w] @ conv[:, :w].T).double()
    return k, f0
