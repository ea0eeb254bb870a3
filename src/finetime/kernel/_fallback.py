"""Per-sample gradients of a module's own parameters by ``torch.func`` (for modules no op rule covers)."""

from __future__ import annotations

import torch
from torch.func import functional_call, vjp, vmap

from ..errors import KernelError
from ._capture import ModuleRecord

__all__ = ["module_per_sample_grads", "install_fallback_hooks"]


def install_fallback_hooks(model: torch.nn.Module, owners: dict[str, dict[str, str]], sink: list):
    """Hook each owner module (``name -> {parameter name relative to it: global name}``); returns the handles."""
    handles = []
    modules = dict(model.named_modules())
    for mname, params in owners.items():
        mod = modules[mname]

        def hook(module, args, kwargs, output, mname=mname, params=params):
            if not isinstance(output, torch.Tensor):
                raise KernelError(
                    f"module '{mname}' ({type(module).__name__}) has parameters no kernel rule covers and returns "
                    f"{type(output).__name__}, not a tensor; per-sample gradients cannot be taken for it"
                )
            if not output.requires_grad:
                return
            rec = ModuleRecord(mname, module, params, tuple(a.detach() if isinstance(a, torch.Tensor) else a
                                                            for a in args), dict(kwargs))
            rec.edge = torch.autograd.graph.get_gradient_edge(output)
            rec.out_shape = tuple(output.shape)
            sink.append(rec)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    return handles


def module_per_sample_grads(rec: ModuleRecord, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact per-sample gradients ``(n, C, D)`` of the module's own parameters, given output grads ``(n, C, ...)``."""
    module = rec.module
    own = dict(module.named_parameters())
    pvals = {k: own[k].detach() for k in rec.params}
    n = g.shape[0]
    in_dims = tuple(0 if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == n else None for a in rec.args)

    def one(args, gi):
        def f(p):
            xs = tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(args, in_dims))
            return functional_call(module, p, xs, rec.kwargs).squeeze(0)

        _, vjp_fn = vjp(f, pvals)
        return vmap(vjp_fn)(gi)[0]

    try:
        grads = vmap(one, in_dims=(in_dims, 0))(rec.args, g)
    except Exception as exc:  # torch.func raises many types; name the module for the user
        raise KernelError(
            f"per-sample gradients failed for module '{rec.module_name}' ({type(module).__name__}): {exc}"
        ) from exc
    return {rec.params[k]: v.detach().reshape(n, g.shape[1], -1) for k, v in grads.items()}
