"""The kernel engine: empirical NTK ``Theta = J J^T`` of a model on a set of inputs, layer by layer.

One forward pass per chunk of samples records every parameterized op (``_capture.Capture``); ``C`` backward passes
give the gradients of each output ``f_c`` w.r.t. every recorded op output (activations only, no weight gradients).
Each parameter then contributes to the kernel by its route (``routes/``: materialize, ghost, kron, gaussian,
sparse), which ``_plan.plan_kernel`` chooses from the ``KernelMethod`` and the parameter's size. Parameters no op
rule covers get exact per-sample gradients from ``torch.func`` on their owning module.
The network runs in eval mode (BatchNorm running statistics, dropout off) while the kernel is computed.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch

from ..errors import KernelError, ModelError
from ..network import check_logits, eval_mode
from ..runtime import free_memory
from ._capture import Capture
from ._factors import Factors
from ._fallback import install_fallback_hooks, module_per_sample_grads
from ._kernel import Kernel, fingerprint_data, fingerprint_model
from ._plan import CHUNK_WORKING_SET, KernelPlan, plan_kernel
from ._scales import GradientMoments, Scale, gradient_sums, scale_contribution
from .distributed import Shard, all_reduce_sum, current_shard, sample_span
from .projection import KernelMethod
from .routes import ParamShape, Stores

__all__ = ["compute_kernel", "summed_outputs_kernel", "gradient_moments", "KernelPlan", "available_memory",
           "jacobian_weight_product", "jacobian_vector_product"]

DEFAULT_PROJECTION_DIM = 4096


def available_memory(device: torch.device) -> int:
    """Bytes the engine may use by default: half of what is available on the device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    free = free_memory(default=-1)
    return 4 * 2**30 if free < 0 else int(free * 0.5)


def _merge(a, b, c):
    if a is None:
        return b
    if isinstance(a, Factors) and isinstance(b, Factors):
        try:
            if a.dims == b.dims and a.groups == b.groups:
                return a.concat(b)
        except TypeError:
            pass
    ta = a.materialize(c) if isinstance(a, Factors) else a
    tb = b.materialize(c) if isinstance(b, Factors) else b
    return ta + tb


def _forward(model, x, tracked, owners, scan=False, skip=frozenset()):
    mrecs: list = []
    handles = install_fallback_hooks(model, owners, mrecs) if owners else []
    cap = Capture(tracked, scan=scan, skip=skip, batch=x.shape[0])
    try:
        with torch.enable_grad(), (cap.track_modules(model) if scan else contextlib.nullcontext()), cap:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    check_logits(out, x.shape[0])
    if not torch.isfinite(out).all():
        raise ModelError("the model returns NaN/inf outputs at the pretrained weights; check the inputs")
    return out, cap, mrecs


def _output_grads(out, edges):
    """``[(n, C, *shape)]`` gradients of each output class (summed over samples) w.r.t. each edge."""
    c = out.shape[1]
    per_class = []
    for k in range(c):
        gs = torch.autograd.grad(out[:, k].sum(), edges, retain_graph=k < c - 1, allow_unused=True)
        per_class.append(gs)
    stacked = []
    for gs in zip(*per_class):
        ref = next((g for g in gs if g is not None), None)
        stacked.append(None if ref is None else torch.stack([torch.zeros_like(ref) if g is None else g for g in gs], 1))
    return stacked


def _contributions(model, x, tracked, owners, skip, c):
    out, cap, mrecs = _forward(model, x, tracked, owners, skip=skip)
    records = cap.records
    edges = [r.edge for r in records] + [m.edge for m in mrecs]
    if not edges:
        return out.detach(), {}
    grads = _output_grads(out, edges)
    contrib: dict = {}
    for rec, g in zip(records, grads[: len(records)]):
        if g is None:
            continue
        rec.check_unchanged()
        for name, t in rec.contribute(rec, g.to(rec.inp.dtype) if rec.inp.is_floating_point() else g, c).items():
            contrib[name] = _merge(contrib.get(name), t, c)
    for mrec, g in zip(mrecs, grads[len(records):]):
        if g is None:
            continue
        for name, t in module_per_sample_grads(mrec, g).items():
            contrib[name] = _merge(contrib.get(name), t, c)
    return out.detach(), contrib


def _bytes(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _probe(model, probe, tracked, names, named):
    """Forward/backward on a couple of samples: which ops consume which parameters, and the shape of each
    parameter's contribution. Returns ``(shapes, owners, fallback, classes, activation elements per sample)``."""
    out, cap, _ = _forward(model, probe, tracked, {}, scan=True)
    c = out.shape[1]
    act_elems = sum(r.inp.numel() + math.prod(r.out_shape) for r in cap.records) // probe.shape[0]
    fallback = frozenset(cap.foreign)
    owners = cap.fallback_owners(set(fallback))
    del out, cap
    _, contrib = _contributions(model, probe, tracked, owners, fallback, c)
    shapes = [ParamShape.of(name, i, named[name].numel(), contrib[name])
              for i, name in enumerate(names) if name in contrib]  # an unused parameter has zero gradient
    return shapes, owners, fallback, c, act_elems


def _accumulate(model, xs, plan, tracked, owners, fallback, c, dtype, device, progress, scales, span=None):
    """Every chunk of the samples ``span`` (``[lo, hi)``, default all) through the routes; returns the shared stores
    and the outputs ``f`` ``(rows, C)`` (rows outside the span stay zero)."""
    rows = xs.shape[0]
    lo, hi = span if span is not None else (0, rows)
    zeros = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
    stores = Stores(zeros(rows * c, plan.feature_dims) if plan.feature_dims else None,
                    zeros(rows * c, plan.projection_dim) if plan.sketched else None)
    for r in plan.routes:
        r.allocate(rows, c, dtype, device)
    f_all = zeros(rows, c)
    for start in range(lo, hi, plan.chunk_size):
        stop = min(hi, start + plan.chunk_size)
        out, contrib = _contributions(model, xs[start:stop].to(device), tracked, owners, fallback, c)
        f_all[start:stop] = out
        for r in plan.routes:
            if (t := contrib.get(r.shape.name)) is not None:
                if scales is not None and r.shape.name in scales:
                    t = scale_contribution(t, scales[r.shape.name])
                r.add(stores, t, start, stop, c)
        del contrib, out
        if progress is not None:
            progress(stop - lo, hi - lo)
    return stores, f_all


GRAM_BLOCK_ROWS = 1024
"""Rows per block of the symmetric training Gram (``_add_symmetric_outer``): smaller Grams are one product."""


def _add_symmetric_outer(out: torch.Tensor, a: torch.Tensor) -> None:
    """``out += a a^T`` forming only the blocks on and above the diagonal (``GRAM_BLOCK_ROWS`` rows each) and
    mirroring the others: about half the flops of the whole product on large Grams."""
    n = a.shape[0]
    if n <= GRAM_BLOCK_ROWS:
        out.addmm_(a, a.T)
        return
    edges = list(range(0, n, GRAM_BLOCK_ROWS)) + [n]
    for i in range(len(edges) - 1):
        ri = slice(edges[i], edges[i + 1])
        for j in range(i, len(edges) - 1):
            rj = slice(edges[j], edges[j + 1])
            block = a[ri] @ a[rj].T
            out[ri, rj] += block
            if j > i:
                out[rj, ri] += block.T


def _gram(plan: KernelPlan, stores: Stores, rows: int, cols: int, c: int, dtype, device,
          span: tuple[int, int] | None = None) -> torch.Tensor:
    """``Theta(all samples, training samples)``, ``(rows*C, cols*C)``: shared stores first, then each route's own.
    With ``span = (lo, hi)`` only the rows of samples ``lo:hi`` are formed (the others stay zero)."""
    nc = cols * c
    lo, hi = span if span is not None else (0, rows)
    theta = torch.zeros(rows * c, nc, dtype=dtype, device=device)
    for store in (stores.feats, stores.sketch):
        if store is None:
            continue
        if lo == 0 and hi >= cols:  # the training block is symmetric: its upper blocks, mirrored
            _add_symmetric_outer(theta[:nc], store[:nc])
            lo_rest = cols
        else:
            lo_rest = lo
        if hi > lo_rest:
            theta[lo_rest * c : hi * c].addmm_(store[lo_rest * c : hi * c], store[:nc].T)
    for r in plan.routes:
        r.gram(theta, rows, cols, c, span)
    return theta


def _trained_names(named: dict, params: list[str] | None) -> list[str]:
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise KernelError(f"unknown parameter names: {unknown[:5]}")
    if not names:
        raise KernelError("no trainable parameters: nothing to compute a kernel for")
    return names


def compute_kernel(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    x_test: torch.Tensor | None = None,
    method: KernelMethod | str = KernelMethod.FACTORED,
    projection_dim: int = DEFAULT_PROJECTION_DIM,
    seed: int = 0,
    params: list[str] | None = None,
    max_memory: int | None = None,
    chunk_size: int | None = None,
    with_jw0: bool = False,
    progress: Callable[[int, int], None] | None = None,
    exact_flops: float | None = None,
    scales: dict[str, Scale] | None = None,
    shard: "Shard | None | str" = "auto",
) -> Kernel:
    """Empirical NTK of ``model`` on ``x`` (and the cross-kernel to ``x_test``).

    Args:
        model: maps a batch ``(n, ...)`` to logits ``(n, C)``; run in eval mode here (restored afterwards).
        x: training inputs ``(N, ...)`` (floating point, or integer token ids).
        x_test: optional test inputs ``(M, ...)``; gives ``theta_test`` ``(M*C, N*C)`` and ``f0_test``.
        method: see ``KernelMethod``.
        projection_dim: sketch dimension ``k`` for the projected routes.
        seed: seed of every random projection (the result does not depend on chunking).
        params: names of the parameters that are trained (default: those with ``requires_grad``).
        max_memory: byte budget (default: half the available memory); refused with ``MemoryBudgetError`` if the
            kernel cannot be held within it.
        chunk_size: samples per forward pass (default: sized from the memory budget).
        with_jw0: also compute ``J w0`` (needed to predict weight decay).
        progress: called as ``progress(samples_done, samples_total)``.
        exact_flops: for ``factored``, the flop budget of the exact routes (default: ``max(4 (NC)^2 k, 3e10)``);
            0 projects every weight.
        scales: per-parameter ``sqrt(P)`` (``_scales.Scale``) for the preconditioned kernel ``J P J^T`` (Adam);
            parameters without an entry are not scaled.
        shard: this process's share of the samples (``kernel.distributed``); ``"auto"``: the initialized
            ``torch.distributed`` group's, if it has several ranks. Every rank returns the same kernel.
    """
    t_start = time.perf_counter()
    method = KernelMethod(method)
    if projection_dim < 1:
        raise KernelError(f"projection dimension must be >= 1, got {projection_dim}")
    named = dict(model.named_parameters())
    names = _trained_names(named, params)
    tracked = {id(named[n]): n for n in names}
    device, dtype = named[names[0]].device, named[names[0]].dtype
    xs = x if x_test is None else torch.cat([x, x_test.to(x.dtype)])
    rows, cols = xs.shape[0], x.shape[0]
    if rows == 0:
        raise KernelError("empty input: no samples to compute a kernel on")
    budget = max_memory if max_memory is not None else available_memory(device)
    with eval_mode(model):
        shapes, owners, fallback, c, act_elems = _probe(model, xs[: min(2, rows)].to(device), tracked, names, named)
        plan = plan_kernel(shapes, method, rows=rows, cols=cols, c=c, k=projection_dim, exact_flops=exact_flops,
                           element_bytes=_bytes(dtype), budget=budget, chunk_size=chunk_size, act_elems=act_elems)
        for r in plan.routes:
            r.prepare(projection_dim, seed, dtype, device)
        t_plan = time.perf_counter() - t_start
        shard = current_shard(rows) if shard == "auto" else shard
        stores, f_all = _accumulate(model, xs, plan, tracked, owners, fallback, c, dtype, device, progress,
                                     scales, sample_span(rows, shard))
        if shard is not None:  # every rank filled its own rows: the sum is every sample's
            all_reduce_sum([stores.feats, stores.sketch, f_all, *(t for r in plan.routes for t in r.row_stores())])
        t_chunks = time.perf_counter() - t_start - t_plan
        theta = _gram(plan, stores, rows, cols, c, dtype, device, sample_span(rows, shard))
        if shard is not None:  # each rank formed its own samples' rows
            all_reduce_sum([theta])
        nc = cols * c
        theta_train = 0.5 * (theta[:nc] + theta[:nc].T)
        theta_test = theta[nc:].clone() if x_test is not None else None
        jw0 = jw0_test = None
        if with_jw0:
            j = jacobian_weight_product(model, xs, names, plan.chunk_size)
            jw0, jw0_test = j[:cols], (j[cols:] if x_test is not None else None)
    t_gram = time.perf_counter() - t_start - t_plan - t_chunks
    meta = {
        "method": method.value, "projection_dim": projection_dim, "seed": seed,
        "dtype": str(dtype).replace("torch.", ""), "n": cols, "n_test": rows - cols, "classes": c,
        "params": len(names), "weights": sum(named[n].numel() for n in names),
        "model_fingerprint": fingerprint_model(model), "data_fingerprint": fingerprint_data(x, x_test),
        "plan": plan.summary(), "seconds": time.perf_counter() - t_start, "ranks": 1 if shard is None else shard.world,
        "preconditioner": None if scales is None else "scaled",
        "phase_seconds": {"plan": round(t_plan, 3), "chunks": round(t_chunks, 3), "gram": round(t_gram, 3)},
    }
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731  (computed on the model's device, kept on the CPU)
    return Kernel(cpu(theta_train), cpu(f_all[:cols].clone()), cpu(theta_test),
                  cpu(f_all[cols:].clone()) if x_test is not None else None, cpu(jw0), cpu(jw0_test), meta)


def gradient_moments(
    model: torch.nn.Module,
    x: torch.Tensor,
    residuals: torch.Tensor,
    *,
    params: list[str] | None = None,
    chunk_size: int | None = None,
    full_squares: bool = False,
) -> GradientMoments:
    """Mean and mean square over the samples of the per-sample loss gradients ``g_i = J_i^T r_i``, weight by weight.

    Args:
        model: as for ``compute_kernel`` (run in eval mode here).
        x: inputs ``(N, ...)``.
        residuals: ``r_i = dl(f_i, y_i) / df_i`` at the current outputs, ``(N, C)`` (``losses.residual``).
        params: names of the trained parameters (default: those with ``requires_grad``).
        chunk_size: samples per forward pass (default: sized to a few hundred MB of working memory).
        full_squares: the mean square of every weight; by default a factored parameter (linear map, convolution,
            embedding) gets only the row and column sums of its squares where position Gram matrices give them
            for less than forming the per-sample gradients (``_scales.gradient_sums``).

    One forward and ``C`` backward passes per chunk, as for the kernel; per-sample gradients are formed (one chunk
    at a time, in the contribution layout ``compute_kernel``'s ``scales`` use) only where their squares are.
    """
    named = dict(model.named_parameters())
    names = _trained_names(named, params)
    tracked = {id(named[n]): n for n in names}
    device, dtype = named[names[0]].device, named[names[0]].dtype
    n = x.shape[0]
    if n == 0:
        raise KernelError("empty input: no samples to compute gradient moments on")
    sums: dict[str, list] = {}  # name -> [total, sq, rows, cols]
    layout: dict = {}
    taps: dict = {}
    with eval_mode(model):
        shapes, owners, fallback, c, act_elems = _probe(model, x[: min(2, n)].to(device), tracked, names, named)
        if residuals.shape != (n, c):
            raise KernelError(f"residuals must have shape {(n, c)} (samples, outputs), got {tuple(residuals.shape)}")
        if chunk_size is None:
            per_sample = _bytes(dtype) * (act_elems * (c + 1) + (c + 2) * max([s.dim for s in shapes] or [1]))
            chunk_size = int(max(1, min(n, CHUNK_WORKING_SET // max(per_sample, 1))))
        shard = current_shard(n)
        lo, hi = sample_span(n, shard)
        for start in range(lo, hi, chunk_size):
            stop = min(hi, start + chunk_size)
            _, contrib = _contributions(model, x[start:stop].to(device), tracked, owners, fallback, c)
            r = residuals[start:stop].to(device)
            for name, t in contrib.items():
                gs = gradient_sums(t, r, full=full_squares)
                layout[name] = gs.layout
                if gs.taps is not None:
                    taps[name] = gs.taps
                parts = [gs.total, gs.sq, gs.rows, gs.cols]
                if name not in sums:
                    sums[name] = parts
                elif (gs.sq is None) != (sums[name][1] is None):  # one route per parameter: same for every chunk
                    raise KernelError(f"gradient moments of {name}: chunks summarized differently")
                else:
                    for acc, v in zip(sums[name], parts):
                        if v is not None:
                            acc += v
        if shard is not None:  # the same parameters in the same order on every rank
            all_reduce_sum([v for parts in sums.values() for v in parts if v is not None])
    out = lambda i: {k: (v[i] / n).to(dtype) for k, v in sums.items() if v[i] is not None}  # noqa: E731
    return GradientMoments(out(0), out(1), layout, n, sq_rows=out(2), sq_cols=out(3), taps=taps)


class _SummedOutputs(torch.nn.Module):
    """``sum_c f_c / sqrt(C)``: the one output whose kernel is the pNTK's."""

    def __init__(self, model: torch.nn.Module, classes: int):
        super().__init__()
        self.inner = model
        self.scale = classes**-0.5
        self.training = model.training  # restored on ``model`` as it was when the engine leaves eval mode

    def forward(self, x):
        return self.inner(x).sum(1, keepdim=True) * self.scale


def summed_outputs_kernel(model: torch.nn.Module, x: torch.Tensor, *, x_test: torch.Tensor | None = None,
                          params: list[str] | None = None, with_jw0: bool = False,
                          scales: dict[str, Scale] | None = None, **kwargs) -> Kernel:
    """The sum-of-logits kernel (the pNTK of Mohamadi et al. 2023): ``Theta ~ Theta_s (x) I_C`` with ``Theta_s`` the
    kernel of ``sum_c f_c / sqrt(C)``, at one backward pass per sample instead of ``C``. Exact where the class blocks
    of ``Theta`` are equal on the diagonal and zero off it (a linear head on fixed features); elsewhere it keeps the
    kernel's trace on average and drops the coupling between classes. ``f0`` (and ``J w0``) are the network's own
    ``C`` outputs. Other arguments as for ``compute_kernel``."""
    from ..network import network_outputs

    named = dict(model.named_parameters())
    names = _trained_names(named, params)
    with torch.no_grad(), eval_mode(model):
        f0 = network_outputs(model, x)
        f0_test = None if x_test is None else network_outputs(model, x_test)
    c = f0.shape[1]
    k = compute_kernel(_SummedOutputs(model, c), x, x_test=x_test, params=[f"inner.{n}" for n in names],
                       scales=None if scales is None else {f"inner.{n}": s for n, s in scales.items()}, **kwargs)
    eye = torch.eye(c, dtype=k.theta.dtype, device=k.theta.device)
    k.theta = torch.kron(k.theta, eye)
    if k.theta_test is not None:
        k.theta_test = torch.kron(k.theta_test, eye)
    k.f0 = f0.detach().to(k.f0.dtype)
    k.f0_test = None if f0_test is None else f0_test.detach().to(k.f0.dtype)
    if with_jw0:
        k.jw0 = jacobian_weight_product(model, x, names)
        k.jw0_test = None if x_test is None else jacobian_weight_product(model, x_test, names)
    k.meta["outputs"] = "sum"
    k.meta["classes"] = c
    k.meta["model_fingerprint"] = fingerprint_model(model)
    return k


def jacobian_weight_product(model: torch.nn.Module, x: torch.Tensor, names: list[str], chunk_size: int = 64):
    """``J w0``: forward-mode product of the Jacobian (w.r.t. the trained parameters) with their current values."""
    named = dict(model.named_parameters())
    return jacobian_vector_product(model, x, {n: named[n].detach() for n in names}, chunk_size)


def jacobian_vector_product(model: torch.nn.Module, x: torch.Tensor, tangents: dict[str, torch.Tensor],
                            chunk_size: int = 64) -> torch.Tensor:
    """``J v`` (``(N, C)``) at the current weights in eval mode: forward-mode product of the Jacobian w.r.t. the
    parameters named in ``tangents`` with those tangents (e.g. an optimizer's momentum buffers)."""
    from torch.func import functional_call, jvp

    named = dict(model.named_parameters())
    primals = {n: named[n].detach() for n in tangents}
    tangents = {n: t.detach().to(primals[n].dtype) for n, t in tangents.items()}
    outs = []
    # Fused attention kernels have no forward-mode derivative; the math backend computes the same function.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with eval_mode(model), sdpa_kernel([SDPBackend.MATH]):
        for s in range(0, x.shape[0], chunk_size):
            xb = x[s : s + chunk_size].to(named[next(iter(tangents))].device)
            _, tangent_out = jvp(lambda p: functional_call(model, p, (xb,)), (primals,), (tangents,))
            outs.append(tangent_out.detach())
    return torch.cat(outs)
