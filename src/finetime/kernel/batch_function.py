"""The exact kernel of the network that ``model.train()`` fine-tunes with BatchNorm batch statistics.

With batch statistics, BatchNorm normalizes each sample by the mean and variance of the whole batch, so every output
depends on every sample of the batch and the Jacobian couples them: ``J_ij = d f(x_i; w, stats(X; w)) / d w`` has a
term through the statistics that the per-sample engine does not see. For full-batch GD on ``X`` the network is
exactly this batch function. Its kernel ``J J^T`` here is computed by one backward pass per output through the graph
of the whole batch (``N C`` passes over ``N`` samples, ``O(N^2 C)`` sample-backwards, and the ``N C x D`` gradient
matrix held in the model's dtype): a reference for measurement on small sets (``bench/bn_batch_bench.py``), not a
route of the engine.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..network import _BN

__all__ = ["batch_function_kernel", "batch_statistics_network"]


def batch_statistics_network(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode (dropout off) whose BatchNorm layers always normalize with the statistics of
    the batch they see and keep no running statistics."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, _BN):
            mod.track_running_stats = False
            mod.running_mean = mod.running_var = mod.num_batches_tracked = None
    return m


def batch_function_kernel(model: nn.Module, x: torch.Tensor, params: list[str], *, chunk: int = 25,
                          max_bytes: float = 8e9) -> tuple[torch.Tensor, torch.Tensor]:
    """``(theta (N*C, N*C) float64, outputs (N, C))`` of the batch function ``X -> f(X; w)`` at ``model``'s weights,
    differentiated with respect to the named parameters; flat index ``i * C + c`` as everywhere in finetime."""
    m = batch_statistics_network(model)
    named = dict(m.named_parameters())
    ps = [named[n] for n in params]
    out = m(x)
    n, c = out.shape
    d = sum(p.numel() for p in ps)
    need = float(n * c * d * out.element_size())
    if need > max_bytes:
        raise ConfigError(f"the batch-function kernel holds {n * c} gradients of {d} weights ({need / 1e9:.1f} GB), "
                          f"more than the {max_bytes / 1e9:.1f} GB allowed; use fewer samples")
    g = torch.empty(n * c, d, dtype=out.dtype)
    eye = torch.eye(n * c, dtype=out.dtype).view(n * c, n, c)
    for s in range(0, n * c, chunk):
        grads = torch.autograd.grad(out, ps, grad_outputs=eye[s : s + chunk], retain_graph=True,
                                    is_grads_batched=True)
        g[s : s + chunk] = torch.cat([gr.reshape(gr.shape[0], -1) for gr in grads], 1)
    return (g @ g.T).double(), out.detach()
