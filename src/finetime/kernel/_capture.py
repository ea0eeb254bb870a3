"""Recording the parameterized ops of one forward pass (a ``TorchFunctionMode``), and module-level fallbacks."""

from __future__ import annotations

import dataclasses

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import torch.nn.functional as F

from ._ops import RULES, OpRecord, capture_call, expand_shared_input, zero_pad_info

__all__ = ["Capture", "ModuleRecord"]


@dataclasses.dataclass
class ModuleRecord:
    """One call of a module whose own parameters no recognized op covers (per-sample grads via torch.func)."""

    module_name: str
    module: torch.nn.Module
    params: dict[str, str]  # local name -> global parameter name
    args: tuple
    kwargs: dict
    edge: object = None
    out_shape: tuple = ()


class Capture(TorchFunctionMode):
    """Records every recognized op that consumes a tracked parameter.

    ``tracked`` maps ``id(parameter) -> name``. With ``scan=True`` it also notes parameters that reach an op no rule
    recognizes in a differentiable way (``foreign``); their gradients must come from a module-level fallback.
    """

    def __init__(self, tracked: dict[int, str], scan: bool = False, skip: frozenset[str] = frozenset(),
                 batch: int = 0):
        super().__init__()
        self.batch = batch  # samples in the forward pass: inputs shared by all of them are expanded to it
        self.tracked = tracked
        self.scan = scan
        self.skip = skip
        self.records: list[OpRecord] = []
        self.foreign: set[str] = set()
        self.padded: dict[int, tuple] = {}  # id(output of a zero F.pad) -> (output, pads, input shape)
        self.stack: list[str] = []  # names of the modules whose forward is running (maintained in scan mode)
        self.uses: dict[str, list[tuple[str, ...]]] = {}  # parameter -> module stacks at its uses (scan mode)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.pad:
            out = func(*args, **kwargs)
            info = zero_pad_info(args, kwargs)
            if info is not None:
                self.padded[id(out)] = (out, *info)
            return out
        if func in RULES:
            args, kwargs = expand_shared_input(func, args, kwargs, self.batch)
            rec = capture_call(func, args, kwargs, self.tracked, self.padded)
            if rec is not None and self.skip and set(rec.params.values()) & self.skip:
                rec.params = {r: n for r, n in rec.params.items() if n not in self.skip}
                if not rec.params:
                    rec = None
            out = func(*args, **kwargs)
            if rec is not None:
                if self.scan:
                    for n in rec.params.values():
                        self.uses.setdefault(n, []).append(tuple(self.stack))
                if not out.requires_grad:
                    return out
                rec.version = rec.inp._version
                rec.edge = torch.autograd.graph.get_gradient_edge(out)
                rec.out_shape = tuple(out.shape)
                self.records.append(rec)
            return out
        out = func(*args, **kwargs)
        if self.scan:
            leaves, _ = tree_flatten((args, kwargs))
            used = [self.tracked[id(a)] for a in leaves if isinstance(a, torch.Tensor) and id(a) in self.tracked]
            if used:
                outs, _ = tree_flatten(out)
                if any(isinstance(o, torch.Tensor) and o.grad_fn is not None for o in outs):
                    self.foreign.update(used)
                    for n in used:
                        self.uses.setdefault(n, []).append(tuple(self.stack))
        return out

    def track_modules(self, model: torch.nn.Module):
        """Context manager keeping ``self.stack`` equal to the chain of running module forwards."""
        import contextlib

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        names = {id(m): n for n, m in model.named_modules()}

        def pre(module, args):
            self.stack.append(names.get(id(module), "?"))

        def post(module, args, output):
            self.stack.pop()

        @contextlib.contextmanager
        def ctx():
            h1, h2 = register_module_forward_pre_hook(pre), register_module_forward_hook(post)
            try:
                yield
            finally:
                h1.remove()
                h2.remove()
                self.stack.clear()

        return ctx()

    def fallback_owners(self, params: set[str]) -> dict[str, dict[str, str]]:
        """For each parameter used outside the op rules: the innermost module whose forward contains every use of it
        (its per-sample gradients come from ``torch.func`` on that module). Returns ``module -> {relative: global}``."""
        owners: dict[str, dict[str, str]] = {}
        for p in sorted(params):
            stacks = [s for s in self.uses.get(p, []) if "?" not in s]
            common: tuple[str, ...] = ()
            if stacks:
                for level in zip(*stacks):
                    if all(v == level[0] for v in level):
                        common += (level[0],)
                    else:
                        break
            mod = common[-1] if common else ""
            while mod and not p.startswith(mod + "."):  # the owner must contain the parameter
                common = common[:-1]
                mod = common[-1] if common else ""
            owners.setdefault(mod, {})[p[len(mod) + 1 :] if mod else p] = p
        return owners
