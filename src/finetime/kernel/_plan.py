"""The kernel plan: a route for every trained parameter, the stores they need, and the chunk size.

Routes come from the registry (``routes.ROUTES``). ``exact``: each parameter takes its cheapest exact route.
``gaussian`` / ``sparse``: every parameter takes that projection. ``factored``: parameters take their cheapest exact
route, cheapest first, while the total stays within a flop budget; the rest take the first projected route (by
``fallback_rank``) that applies to them.
"""

from __future__ import annotations

import dataclasses

from ..errors import MemoryBudgetError
from .projection import KernelMethod
from .routes import ROUTES, ParamShape, Route

__all__ = ["KernelPlan", "plan_kernel", "CHUNK_WORKING_SET", "EXACT_FLOOR_FLOPS"]

CHUNK_WORKING_SET = 640 * 2**20
"""Target bytes of one chunk's activations and gradients (the chunk size follows unless memory is tighter)."""
EXACT_FLOOR_FLOPS = 3e10
"""The factored method computes a weight exactly whenever the exact route fits into this many flops in total."""


@dataclasses.dataclass
class KernelPlan:
    """How each parameter is handled, and the resulting costs; returned in ``Kernel.meta['plan']`` as a summary."""

    routes: list[Route]
    projection_dim: int
    chunk_size: int
    persistent_bytes: int
    per_sample_bytes: int
    feature_dims: int
    sketched: bool

    def summary(self) -> dict:
        by: dict = {}
        for r in self.routes:
            s = by.setdefault(r.name, {"params": 0, "weights": 0})
            s["params"] += 1
            s["weights"] += r.shape.numel
        total = sum(r.shape.numel for r in self.routes)
        exact = sum(r.shape.numel for r in self.routes if r.exact)
        return {"strategies": by, "exact_weight_fraction": exact / max(total, 1), "chunk_size": self.chunk_size,
                "projection_dim": self.projection_dim, "persistent_bytes": self.persistent_bytes}


def _exact_route(shape: ParamShape, rows: int, cols: int, c: int) -> tuple[type[Route], float]:
    best = None
    for cls in ROUTES.values():
        if cls.exact and cls.applies(shape):
            cost = cls.flops(shape, rows, cols, c)
            if best is None or cost < best[1]:
                best = (cls, cost)
    if best is None:
        raise LookupError(f"no registered exact kernel route applies to {shape.name}")
    return best


def _fallback_route(shape: ParamShape) -> type[Route]:
    ranked = sorted((cls for cls in ROUTES.values() if cls.fallback_rank is not None), key=lambda r: r.fallback_rank)
    return next(cls for cls in ranked if cls.applies(shape))


def _choose(shapes: list[ParamShape], method: KernelMethod, rows: int, cols: int, c: int,
            exact_budget: float) -> list[Route]:
    if method is KernelMethod.EXACT:
        return [_exact_route(s, rows, cols, c)[0](s) for s in shapes]
    if method in (KernelMethod.GAUSSIAN, KernelMethod.SPARSE):
        return [ROUTES[method.value](s) for s in shapes]
    chosen: dict[str, type[Route]] = {}
    spent = 0.0
    for s in sorted(shapes, key=lambda s: _exact_route(s, rows, cols, c)[1]):
        route, cost = _exact_route(s, rows, cols, c)
        if spent + cost <= exact_budget:
            chosen[s.name] = route
            spent += cost
        else:
            chosen[s.name] = _fallback_route(s)
    return [chosen[s.name](s) for s in shapes]


def plan_kernel(shapes: list[ParamShape], method: KernelMethod, *, rows: int, cols: int, c: int, k: int,
                exact_flops: float | None, element_bytes: int, budget: int, chunk_size: int | None,
                act_elems: int) -> KernelPlan:
    """Choose each parameter's route, lay out the stores, check the memory budget and size the chunks.

    ``rows`` samples (training then test) against ``cols`` training samples, ``c`` outputs, sketch dimension ``k``;
    ``act_elems`` activation elements per sample (from the probe). Raises ``MemoryBudgetError`` over ``budget``.
    """
    if exact_flops is None:
        exact_flops = max(4 * rows * cols * c * c * k, EXACT_FLOOR_FLOPS)
    routes = _choose(shapes, method, rows, cols, c, exact_flops)
    feature_dims = 0
    for r in routes:
        r.offset = feature_dims
        feature_dims += r.feature_dim
    sketched = any(r.sketched for r in routes)
    eb = element_bytes
    persistent = eb * (rows * c * feature_dims + (rows * c * k if sketched else 0) + rows * c * cols * c) + sum(
        r.own_bytes(rows, c, eb) for r in routes)
    per_sample = eb * (act_elems * (c + 1) + c * max([r.working_width for r in routes] or [0]))
    if persistent + per_sample > budget:
        fixes = ([] if method is KernelMethod.FACTORED else ["--kernel-method factored"]) + (
            ["a smaller --projection-dim"] if sketched else []) + ["fewer samples (--kernel-samples M)", "a larger --max-memory"]
        raise MemoryBudgetError(
            f"the {method.value} kernel for {rows} samples x {c} outputs needs about "
            f"{(persistent + per_sample) / 2**30:.2f} GiB, over the {budget / 2**30:.2g} GiB budget; "
            f"use {', '.join(fixes[:-1])} or {fixes[-1]}"
        )
    if chunk_size is None:  # small working sets are reused by the allocator instead of page-faulted afresh
        room = min(budget - persistent, CHUNK_WORKING_SET)
        chunk_size = int(max(1, min(rows, room // max(per_sample, 1))))
    return KernelPlan(routes, k, chunk_size, persistent, per_sample, feature_dims, sketched)
