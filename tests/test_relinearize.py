"""Re-linearization: a checkpoint at every step is real gradient descent; coefficient tracking is exact."""

import copy

import torch

from finetime.batches import batch_plan
from finetime.dynamics import Problem
from finetime.dynamics._trajectory import Recorder
from finetime.dynamics.exact import initial_state, run_segment
from finetime.finetune import finetune
from finetime.kernel import brute_force_ntk, compute_kernel, jacobian
from finetime.losses import Loss
from finetime.optim import SGD
from finetime.relinearize import checkpoint_schedule, relinearized
from models_for_tests import SmallConvNet


def _setup(seed=0, n=8):
    torch.manual_seed(seed)
    m = SmallConvNet(3).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        f0 = m(x)
    return m, x, y, Problem(brute_force_ntk(m, x), f0, y, Loss.CE)


def test_tracked_coefficients_give_the_linear_models_weights():
    """w_t - w_0 = J^T a_t: compare with the gradient sum accumulated by hand for the linearized model."""
    m, x, y, p = _setup()
    sgd = SGD(lr=0.3, momentum=0.7, batch_size=3)
    plan = batch_plan(p.n, sgd, 9, 2, torch.Generator().manual_seed(1))
    rec = Recorder(p, 2, 9, torch.float64)
    st = run_segment(p, sgd, initial_state(p, sgd, 2, track=True), 0, 9, [0.3] * 9, plan, rec)
    j = jacobian(m, x)  # (N*C, D)
    # The displacement J^T a must move the linear model's outputs to the simulated ones: f0 + J J^T a.
    torch.testing.assert_close(p.f0.reshape(-1) + (j @ (j.T @ st.a.T)).T, st.f)


def test_checkpoint_at_every_step_is_real_gradient_descent():
    m, x, y, p = _setup(n=6)
    sgd = SGD(lr=0.5)
    steps = 8
    traj, info = relinearized(m, x, p, sgd, steps, checkpoints=list(range(1, steps)),
                              kernel_fn=lambda mm: compute_kernel(mm, x, method="exact"),
                              params=[n for n, _ in m.named_parameters()])
    real = finetune(copy.deepcopy(m), x, y, sgd, steps, batch_plan(p.n, sgd, steps, 1, torch.Generator()))
    # every recorded step but the last is the re-anchored network; the last is one linear step from T-1
    torch.testing.assert_close(traj.loss[0, :-1], real.loss[:-1], rtol=1e-7, atol=1e-10)
    assert torch.isfinite(traj.loss[0, -1])
    assert len(info.kernel_traces) == steps - 1


def test_no_checkpoint_is_the_linear_model():
    from finetime.dynamics import simulate

    m, x, y, p = _setup()
    sgd = SGD(lr=0.2, batch_size=4)
    a, _ = relinearized(m, x, p, sgd, 10, checkpoints=[], kernel_fn=None, params=[], runs=3,
                        generator=torch.Generator().manual_seed(0))
    b = simulate(p, sgd, 10, runs=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.loss, b.loss)


def test_checkpoint_schedule():
    assert checkpoint_schedule(150, 3) == [10, 30, 70]
    assert checkpoint_schedule(150, 0) == []
    assert all(0 < t < 20 for t in checkpoint_schedule(20, 6))
