"""The kernel engine: empirical NTK ``Theta = J J^T`` of a model on a set of inputs, layer by layer.

One forward pass per chunk of samples records every parameterized op (``_capture.Capture``); ``C`` backward passes
give the gradients of each output ``f_c`` w.r.t. every recorded op output (activations only, no weight gradients).
Each parameter then contributes to the kernel by the route its ``KernelMethod`` and its size select
(``_ParamPlan.strategy``):

* ``materialize``: exact per-sample gradients stored as features; ``Theta += Phi Phi^T``.
* ``ghost``: exact products of factors ``(g_i . g_j)(a_i . a_j)`` summed over positions, for linear maps.
* ``kron``: Kronecker-factored Gaussian sketch of the gradient, summed into a shared ``k``-dimensional space.
* ``gaussian`` / ``sparse``: per-sample gradients projected by a dense Gaussian / very sparse matrix (paper).

Parameters no op rule covers get exact per-sample gradients from ``torch.func`` on their owning module.
The network runs in eval mode (BatchNorm running statistics, dropout off) while the kernel is computed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch

from ..errors import KernelError, MemoryBudgetError, ModelError
from ..network import eval_mode
from ._capture import Capture
from ._factors import Factors, IndexFactor, ghost_gram
from ._fallback import install_fallback_hooks, module_per_sample_grads
from ._kernel import Kernel, fingerprint_data, fingerprint_model
from .projection import KernelMethod, embedding_map, gaussian, param_generator, very_sparse

__all__ = ["compute_kernel", "KernelPlan", "available_memory"]

DEFAULT_PROJECTION_DIM = 4096
CHUNK_WORKING_SET = 640 * 2**20
"""Target bytes of one chunk's activations and gradients (the chunk size follows unless memory is tighter)."""
EXACT_FLOOR_FLOPS = 3e10
"""The factored method computes a weight exactly whenever the exact route fits into this many flops in total."""


def available_memory(device: torch.device) -> int:
    """Bytes the engine may use by default: half of what is available on the device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return int(info.get("MemAvailable", info["MemTotal"]) * 0.5)
    except OSError:
        return 4 * 2**30


@dataclasses.dataclass
class _ParamPlan:
    name: str
    index: int
    numel: int  # weights in the parameter
    form: str  # "factors" | "dense"
    dim: int = 0  # length of its per-sample gradient as materialized (dead convolution taps left out)
    positions: int = 1
    d_left: int = 0
    d_right: int = 0
    groups: int = 1
    onehot: bool = False
    strategy: str = ""
    offset: int = 0
    k_left: int = 0
    k_right: int = 0
    s_left: torch.Tensor | None = None
    s_right: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    signs: torch.Tensor | None = None
    proj: torch.Tensor | None = None

    @property
    def ghost_ok(self) -> bool:
        return self.form == "factors" and not self.onehot and self.groups == 1

    @property
    def kron_ok(self) -> bool:
        return self.form == "factors" and self.groups == 1


@dataclasses.dataclass
class KernelPlan:
    """How each parameter is handled, and the resulting costs; returned in ``Kernel.meta['plan']`` as a summary."""

    params: list[_ParamPlan]
    projection_dim: int
    chunk_size: int
    persistent_bytes: int
    per_sample_bytes: int
    mat_dims: int = 0
    use_sketch: bool = False

    def summary(self) -> dict:
        by = {}
        for p in self.params:
            s = by.setdefault(p.strategy, {"params": 0, "weights": 0})
            s["params"] += 1
            s["weights"] += p.numel
        total = sum(p.numel for p in self.params)
        exact = sum(p.numel for p in self.params if p.strategy in ("materialize", "ghost"))
        return {"strategies": by, "exact_weight_fraction": exact / max(total, 1), "chunk_size": self.chunk_size,
                "projection_dim": self.projection_dim, "persistent_bytes": self.persistent_bytes}


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
    cap = Capture(tracked, scan=scan, skip=skip)
    try:
        import contextlib

        with torch.enable_grad(), (cap.track_modules(model) if scan else contextlib.nullcontext()), cap:
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must return logits of shape (batch, classes); got {shape}")
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


def _choose(plans, method, rows, cols, c, k, exact_budget):
    """Assign a strategy to every parameter."""
    def mat_cost(p):
        return rows * cols * c * c * p.dim

    def ghost_cost(p):
        return rows * cols * p.positions**2 * (c * c * p.d_left + p.d_right * c)

    def exact_route(p):
        if p.ghost_ok and ghost_cost(p) < mat_cost(p):
            return "ghost", ghost_cost(p)
        return "materialize", mat_cost(p)

    if method is KernelMethod.EXACT:
        for p in plans:
            p.strategy = exact_route(p)[0]
        return
    if method in (KernelMethod.GAUSSIAN, KernelMethod.SPARSE):
        for p in plans:
            p.strategy = method.value
        return
    ranked = sorted(plans, key=lambda p: exact_route(p)[1])
    spent = 0.0
    for p in ranked:
        route, cost = exact_route(p)
        if spent + cost <= exact_budget:
            p.strategy = route
            spent += cost
        else:
            p.strategy = "kron" if p.kron_ok else "sparse"


def _bytes(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _prepare_projections(plans, k, seed, dtype, device):
    s = max(1, math.isqrt(k))
    for p in plans:
        gen = param_generator(seed, p.index)
        if p.strategy == "kron":
            kl = min(p.d_left, s)
            kr = min(p.d_right, max(1, k // kl))
            p.k_left, p.k_right = kl, kr
            p.s_left = None if (kl == p.d_left and not p.onehot) else gaussian(kl, p.d_left, gen, dtype).to(device)
            p.s_right = None if kr == p.d_right else gaussian(kr, p.d_right, gen, dtype).to(device)
            perm, signs = embedding_map(kl * kr, k, param_generator(seed, p.index, salt=1))
            p.perm, p.signs = perm.to(device), signs.to(dtype).to(device)
        elif p.strategy == "sparse":
            p.proj = very_sparse(k, p.dim, gen, dtype).to(device)
        elif p.strategy == "gaussian":
            p.proj = None  # generated per chunk in blocks (or cached below when small)
            if k * p.dim <= 2**26:
                p.proj = gaussian(k, p.dim, gen, dtype).to(device)


def _gaussian_project(p, t, k, seed, dtype, device):
    if p.proj is not None:
        return t @ p.proj.T
    gen = param_generator(seed, p.index)
    out = torch.zeros(t.shape[0], k, dtype=dtype, device=device)
    block = max(1, 2**26 // k)
    for start in range(0, p.dim, block):
        stop = min(p.dim, start + block)
        out += t[:, start:stop] @ gaussian(k, stop - start, gen, dtype).to(device).T
    return out


def _probe(model, probe, tracked, names, named):
    """Forward/backward on a couple of samples: which ops consume which parameters, and the shape of each
    parameter's contribution. Returns ``(plans, owners, fallback, classes, activation elements per sample)``."""
    out, cap, _ = _forward(model, probe, tracked, {}, scan=True)
    c = out.shape[1]
    act_elems = sum(r.inp.numel() + math.prod(r.out_shape) for r in cap.records) // probe.shape[0]
    fallback = frozenset(cap.foreign)
    owners = cap.fallback_owners(set(fallback))
    del out, cap
    _, contrib = _contributions(model, probe, tracked, owners, fallback, c)
    plans = []
    for i, name in enumerate(names):
        t = contrib.get(name)
        if t is None:
            continue  # not used by the forward pass: zero gradient
        p = _ParamPlan(name, i, named[name].numel(), "factors" if isinstance(t, Factors) else "dense")
        if isinstance(t, Factors):
            p.positions, (p.d_left, p.d_right), p.groups = t.positions, t.dims, t.groups
            p.onehot = isinstance(t.left, IndexFactor)
            p.dim = p.groups * p.d_left * p.d_right
        else:
            p.dim = t.shape[-1]
        plans.append(p)
    return plans, owners, fallback, c, act_elems


def _size(plans, method, rows, cols, c, k, exact_flops, eb, budget, chunk_size, act_elems) -> KernelPlan:
    """Choose each parameter's route, lay out the stores, check the memory budget and size the chunks."""
    if exact_flops is None:
        exact_flops = max(4 * rows * cols * c * c * k, EXACT_FLOOR_FLOPS)
    _choose(plans, method, rows, cols, c, k, exact_flops)
    mat_dims = 0
    ghost_bytes = 0
    for p in plans:
        if p.strategy == "materialize":
            p.offset = mat_dims
            mat_dims += p.dim
        elif p.strategy == "ghost":
            ghost_bytes += rows * p.positions * (c * p.d_left + p.d_right) * eb
    use_sketch = any(p.strategy in ("kron", "gaussian", "sparse") for p in plans)
    persistent = eb * (rows * c * mat_dims + (rows * c * k if use_sketch else 0) + rows * c * cols * c) + ghost_bytes
    widest = max([p.dim for p in plans if p.strategy in ("materialize", "gaussian", "sparse")] or [0])
    per_sample = eb * (act_elems * (c + 1) + c * widest)
    if persistent + per_sample > budget:
        fixes = ([] if method is KernelMethod.FACTORED else ["--kernel-method factored"]) + (
            ["a smaller --projection-dim"] if use_sketch else []) + ["fewer samples", "a larger --max-memory"]
        raise MemoryBudgetError(
            f"the {method.value} kernel for {rows} samples x {c} outputs needs about "
            f"{(persistent + per_sample) / 2**30:.2f} GiB, over the {budget / 2**30:.2g} GiB budget; "
            f"use {', '.join(fixes[:-1])} or {fixes[-1]}"
        )
    if chunk_size is None:  # small working sets are reused by the allocator instead of page-faulted afresh
        room = min(budget - persistent, CHUNK_WORKING_SET)
        chunk_size = int(max(1, min(rows, room // max(per_sample, 1))))
    plan = KernelPlan(plans, k, chunk_size, persistent, per_sample)
    plan.mat_dims, plan.use_sketch = mat_dims, use_sketch
    return plan


class _Stores:
    """What the chunks leave behind for the final Gram: materialized features, the shared sketch, ghost factors."""

    def __init__(self, plan: KernelPlan, rows: int, c: int, dtype, device):
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        self.feats = z(rows * c, plan.mat_dims) if plan.mat_dims else None
        self.sketch = z(rows * c, plan.projection_dim) if plan.use_sketch else None
        self.ghosts = {p.name: (z(rows, c, p.positions, p.d_left), z(rows, 1, p.positions, p.d_right))
                       for p in plan.params if p.strategy == "ghost"}

    def add(self, plan: KernelPlan, contrib: dict, start: int, stop: int, c: int, seed: int) -> None:
        r0, r1 = start * c, stop * c
        k = plan.projection_dim
        for p in plan.params:
            t = contrib.get(p.name)
            if t is None:
                continue
            if p.strategy == "ghost":
                left, right = self.ghosts[p.name]
                left[start:stop] = t.left[:, :, 0].expand(-1, c, -1, -1)
                right[start:stop] = t.right[:, :1, 0]
            elif p.strategy == "kron":
                phi = t.kron_sketch(p.s_left, p.s_right, c).reshape(r1 - r0, -1) * p.signs
                self.sketch[r0:r1].index_add_(1, p.perm, phi)
            else:
                m = (t.materialize(c) if isinstance(t, Factors) else t).reshape(r1 - r0, -1)
                if p.strategy == "materialize":
                    self.feats[r0:r1, p.offset : p.offset + p.dim] = m
                elif p.strategy == "sparse":
                    self.sketch[r0:r1] += torch.sparse.mm(p.proj, m.T).T
                else:
                    self.sketch[r0:r1] += _gaussian_project(p, m, k, seed, m.dtype, m.device)

    def gram(self, plan: KernelPlan, rows: int, cols: int, c: int) -> torch.Tensor:
        """``Theta(all samples, training samples)``, ``(rows*C, cols*C)``."""
        nc = cols * c
        dt = next(v for v in (self.feats, self.sketch, *[g[0] for g in self.ghosts.values()]) if v is not None)
        theta = torch.zeros(rows * c, nc, dtype=dt.dtype, device=dt.device)
        if self.feats is not None:
            theta.addmm_(self.feats, self.feats[:nc].T)
        if self.sketch is not None:
            theta.addmm_(self.sketch, self.sketch[:nc].T)
        for p in plan.params:
            if p.strategy != "ghost":
                continue
            left, right = self.ghosts[p.name]
            blk = max(1, int(2**25 // max(1, c * c * cols * p.positions**2)))
            for s0 in range(0, rows, blk):
                s1 = min(rows, s0 + blk)
                theta[s0 * c : s1 * c] += ghost_gram(left[s0:s1], right[s0:s1], left[:cols], right[:cols])
        return theta


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
    """
    t_start = time.perf_counter()
    method = KernelMethod(method)
    if projection_dim < 1:
        raise KernelError(f"projection dimension must be >= 1, got {projection_dim}")
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise KernelError(f"unknown parameter names: {unknown[:5]}")
    if not names:
        raise KernelError("no trainable parameters: nothing to compute a kernel for")
    tracked = {id(named[n]): n for n in names}
    device = named[names[0]].device
    dtype = named[names[0]].dtype
    xs = x if x_test is None else torch.cat([x, x_test.to(x.dtype)])
    rows, cols = xs.shape[0], x.shape[0]
    if rows == 0:
        raise KernelError("empty input: no samples to compute a kernel on")
    budget = max_memory if max_memory is not None else available_memory(device)
    with eval_mode(model):
        plans, owners, fallback, c, act_elems = _probe(model, xs[: min(2, rows)].to(device), tracked, names, named)
        plan = _size(plans, method, rows, cols, c, projection_dim, exact_flops, _bytes(dtype), budget, chunk_size,
                     act_elems)
        _prepare_projections(plans, projection_dim, seed, dtype, device)
        t_plan = time.perf_counter() - t_start
        stores = _Stores(plan, rows, c, dtype, device)
        f_all = torch.zeros(rows, c, dtype=dtype, device=device)
        for start in range(0, rows, plan.chunk_size):
            stop = min(rows, start + plan.chunk_size)
            out, contrib = _contributions(model, xs[start:stop].to(device), tracked, owners, fallback, c)
            f_all[start:stop] = out
            stores.add(plan, contrib, start, stop, c, seed)
            del contrib, out
            if progress is not None:
                progress(stop, rows)
        t_chunks = time.perf_counter() - t_start - t_plan
        theta = stores.gram(plan, rows, cols, c)
        nc = cols * c
        train = theta[:nc]
        theta_train = 0.5 * (train + train.T)
        theta_test = theta[nc:].clone() if x_test is not None else None
        jw0 = jw0_test = None
        if with_jw0:
            j = jacobian_weight_product(model, xs, names, plan.chunk_size)
            jw0, jw0_test = j[:cols], (j[cols:] if x_test is not None else None)
    meta = {
        "method": method.value,
        "projection_dim": projection_dim,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "n": cols,
        "n_test": rows - cols,
        "classes": c,
        "params": len(names),
        "weights": sum(named[n].numel() for n in names),
        "model_fingerprint": fingerprint_model(model),
        "data_fingerprint": fingerprint_data(x, x_test),
        "plan": plan.summary(),
        "seconds": time.perf_counter() - t_start,
        "phase_seconds": {"plan": round(t_plan, 3), "chunks": round(t_chunks, 3),
                          "gram": round(time.perf_counter() - t_start - t_plan - t_chunks, 3)},
    }
    return Kernel(theta_train, f_all[:cols].clone(), theta_test, f_all[cols:].clone() if x_test is not None else None,
                  jw0, jw0_test, meta)


def jacobian_weight_product(model: torch.nn.Module, x: torch.Tensor, names: list[str], chunk_size: int = 64):
    """``J w0``: forward-mode product of the Jacobian (w.r.t. the trained parameters) with their current values."""
    from torch.func import functional_call, jvp

    named = dict(model.named_parameters())
    primals = {n: named[n].detach() for n in names}
    outs = []
    with eval_mode(model):
        for s in range(0, x.shape[0], chunk_size):
            xb = x[s : s + chunk_size]
            _, tangent_out = jvp(lambda p: functional_call(model, p, (xb,)), (primals,), (primals,))
            outs.append(tangent_out.detach())
    return torch.cat(outs)
