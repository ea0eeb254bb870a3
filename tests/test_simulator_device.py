"""The simulator runs where its problem lives: the same curves on a GPU as on the CPU (CUDA tests skip without
one), trajectories always on the CPU, and the rule that picks the device."""

import pytest
import torch

from finetime.batches import batch_plan
from finetime.dynamics import Problem, simulate, simulate_sde, simulate_sign_descent
from finetime.optim import SGD, AdamW
from finetime.predict import SIMULATOR_DEVICE_OUTPUTS, Task, simulation_device


def _problem(n=40, c=3, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn((n + m) * c, 30, generator=g, dtype=torch.float64) / 6
    k = j @ j.T
    nc = n * c
    f0 = torch.randn(n, c, generator=g, dtype=torch.float64)
    ft = torch.randn(m, c, generator=g, dtype=torch.float64)
    jw = torch.randn(n + m, c, generator=g, dtype=torch.float64)
    return Problem(k[:nc, :nc], f0, torch.randint(0, c, (n,), generator=g), "ce", k[nc:, :nc], ft,
                   torch.randint(0, c, (m,), generator=g), jw[:n], jw[n:])


RUNS = {
    "sgd-momentum-decay": lambda p, plan: simulate(p, SGD(lr=0.5, momentum=0.9, weight_decay=0.01, batch_size=8), 30,
                                                   plan=plan),
    "adamw": lambda p, plan: simulate(p, AdamW(lr=0.05, weight_decay=0.01, batch_size=8), 30, plan=plan),
    "sde": lambda p, plan: simulate_sde(p, SGD(lr=0.5, batch_size=8), 30, runs=3,
                                        generator=torch.Generator().manual_seed(1)),
    "sign": lambda p, plan: simulate_sign_descent(Problem(p.theta, p.f0, p.y), AdamW(lr=0.01, batch_size=8), 30,
                                                  plan=plan),
}


def _plan(n):
    return batch_plan(n, SGD(lr=1.0, batch_size=8), 30, 3, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", list(RUNS))
def test_trajectories_come_back_on_the_cpu(name):
    p = _problem()
    traj = RUNS[name](p, _plan(p.n))
    assert traj.loss.device.type == "cpu" and traj.diverged_at.device.type == "cpu"
    assert torch.isfinite(traj.loss).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(RUNS))
def test_simulation_on_cuda_matches_the_cpu(name):
    p = _problem()
    plan = _plan(p.n)
    cpu = RUNS[name](p, plan)
    gpu = RUNS[name](p.to(device="cuda"), plan)
    assert gpu.loss.device.type == "cpu"
    torch.testing.assert_close(gpu.loss, cpu.loss, rtol=1e-9, atol=1e-12)


def test_the_simulator_stays_on_the_cpu_for_a_cpu_network():
    task = Task(config=None, data=None, model=torch.nn.Linear(3, 2), trained=["weight"])
    assert simulation_device(task, 10 * SIMULATOR_DEVICE_OUTPUTS).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_simulator_follows_a_cuda_network_on_large_problems():
    task = Task(config=None, data=None, model=torch.nn.Linear(3, 2).cuda(), trained=["weight"])
    assert simulation_device(task, SIMULATOR_DEVICE_OUTPUTS).type == "cpu"
    assert simulation_device(task, SIMULATOR_DEVICE_OUTPUTS + 1).type == "cuda"


def test_problem_moves_whole():
    p = _problem()
    q = p.to(torch.float32, "cpu")
    assert q.theta.dtype == torch.float32 and q.y.dtype == p.y.dtype and q.device.type == "cpu"
    assert q.jw0_test.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("subset", [False, True])
def test_relinearized_simulation_on_cuda_matches_the_cpu(subset):
    """Network and problem on the GPU, refreshed kernels computed there and on a subset indexed on the CPU."""
    from finetime.kernel import compute_kernel
    from finetime.relinearize import Network, relinearized
    from models_for_tests import SmallConvNet

    out = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        m = SmallConvNet(3).double().eval().to(dev)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(10, 3, 6, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (10,), generator=g)
        k = compute_kernel(m, x, method="exact")
        p = Problem(k.theta, k.f0, y).to(device=dev)
        net = Network(m, x, [n for n, _ in m.named_parameters()],
                      kernel=lambda mm: compute_kernel(mm, x, method="exact"),
                      subset_kernel=lambda mm, idx: compute_kernel(mm, x[idx], method="exact"))
        out[dev], _ = relinearized(p, SGD(lr=1.0, momentum=0.5, batch_size=4), 12, net, checkpoints=[4, 8],
                                   reanchor="none", runs=2, generator=torch.Generator().manual_seed(1),
                                   refresh_samples=torch.tensor([0, 2, 5, 6, 8]) if subset else None)
    torch.testing.assert_close(out["cuda"].loss, out["cpu"].loss, rtol=1e-7, atol=1e-10)
