"""The SignGD-kernel baseline (Malladi et al. 2023): the asymmetric kernel against brute force, and sign descent in
function space against sign descent of a linear model in weight space, where it is exact."""

import pytest
import torch

from finetime.batches import batch_plan
from finetime.dynamics import Problem, simulate_sign_descent
from finetime.kernel import jacobian, sign_gradient_kernel
from finetime.losses import per_sample_loss
from finetime.optim import AdamW
from finetime.optim._schedule import Linear


def _mlp(c=3, d=5, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 7), torch.nn.Tanh(), torch.nn.Linear(7, c)).double()


def test_sign_gradient_kernel_matches_brute_force():
    model = _mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    j = jacobian(model, x)  # (N*C, D)
    k, f0 = sign_gradient_kernel(model, x, block=4, chunk=7)  # blocks and chunks that do not divide N*C and D
    assert torch.allclose(k, j @ j.sign().T, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(k, k.T)  # asymmetric
    assert torch.allclose(f0, model(x).detach())


def test_sign_gradient_kernel_names_its_memory():
    with pytest.raises(MemoryError, match="int8"):
        sign_gradient_kernel(_mlp(), torch.randn(6, 5, dtype=torch.float64), memory_budget=100)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_sign_descent_is_exact_for_a_linear_model(batch_size):
    """A linear layer's outputs have weights of their own, so the kernel rule is per-sample sign descent there."""
    torch.manual_seed(1)
    n, d, c, steps = 10, 6, 3, 12
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    model = torch.nn.Linear(d, c).double()
    k, f0 = sign_gradient_kernel(model, x)
    opt = AdamW(lr=0.05, batch_size=batch_size, schedule=Linear(warmup_steps=3))
    plan = batch_plan(n, opt, steps, 3, torch.Generator().manual_seed(0))
    sim = simulate_sign_descent(Problem(k, f0, y), opt, steps, plan=plan)

    lr = opt.lr_table(steps)
    for run in range(plan.runs):
        w, b = model.weight.detach().clone(), model.bias.detach().clone()
        losses = [per_sample_loss(x @ w.T + b, y, "ce").mean()]
        for t in range(steps):
            dw, db = torch.zeros_like(w), torch.zeros_like(b)
            for i, wt in zip(plan.indices[run, t].tolist(), plan.weights[run, t].tolist()):
                wi, bi = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
                gw, gb = torch.autograd.grad(per_sample_loss((x[i] @ wi.T + bi)[None], y[i : i + 1], "ce").sum(),
                                             (wi, bi))
                dw += wt * gw.sign()
                db += wt * gb.sign()
            w, b = w - lr[t] * dw, b - lr[t] * db
            losses.append(per_sample_loss(x @ w.T + b, y, "ce").mean())
        assert torch.allclose(sim.loss[run], torch.stack(losses), rtol=1e-10, atol=1e-12)
    assert sim.loss[0, -1] < sim.loss[0, 0]
