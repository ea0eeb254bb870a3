"""Re-linearization: a checkpoint at every step is real gradient descent; coefficient tracking is exact."""

import copy
import dataclasses
import math

import pytest
import torch

from finetime.batches import batch_plan
from finetime.dynamics import ExactStepper, Problem, solve
from finetime.finetune import finetune
from finetime.kernel import brute_force_ntk, compute_kernel, jacobian
from finetime.losses import Loss
from finetime.optim import SGD
from finetime.relinearize import Network, checkpoint_schedule, relinearized
from models_for_tests import SmallConvNet, SoftmaxRegression


def _setup(seed=0, n=8, linear=False):
    """A small nonlinear CNN on 3x6x6 inputs, or (``linear``) a softmax regression on 12 features; 3 classes."""
    torch.manual_seed(seed)
    m = (SoftmaxRegression(12, 3) if linear else SmallConvNet(3)).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *((12,) if linear else (3, 6, 6)), generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    with torch.no_grad():
        f0 = m(x)
    return m, x, y, Problem(brute_force_ntk(m, x), f0, y, Loss.CE)


def test_tracked_coefficients_give_the_linear_models_weights():
    """w_t - w_0 = J^T a_t: compare with the gradient sum accumulated by hand for the linearized model."""
    m, x, y, p = _setup()
    sgd = SGD(lr=0.3, momentum=0.7, batch_size=3)
    plan = batch_plan(p.n, sgd, 9, 2, torch.Generator().manual_seed(1))
    _, st = solve(ExactStepper(p, sgd, 9, plan, track=True), 9, runs=2)
    j = jacobian(m, x)  # (N*C, D)
    # The displacement J^T a must move the linear model's outputs to the simulated ones: f0 + J J^T a.
    torch.testing.assert_close(p.f0.reshape(-1) + (j @ (j.T @ st.a.T)).T, st.f)


def test_checkpoint_at_every_step_is_real_gradient_descent():
    m, x, y, p = _setup(n=6)
    sgd = SGD(lr=0.5)
    steps = 8
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    traj, info = relinearized(p, sgd, steps, net, checkpoints=list(range(1, steps)))
    real = finetune(copy.deepcopy(m), x, y, sgd, steps, batch_plan(p.n, sgd, steps, 1, torch.Generator()))
    # every recorded step but the last is the re-anchored network; the last is one linear step from T-1
    torch.testing.assert_close(traj.loss[0, :-1], real.loss[:-1], rtol=1e-7, atol=1e-10)
    assert torch.isfinite(traj.loss[0, -1])
    assert len(info.kernel_traces) == steps - 1


def test_no_checkpoint_is_the_linear_model():
    from finetime.dynamics import simulate

    m, x, y, p = _setup()
    sgd = SGD(lr=0.2, batch_size=4)
    a, _ = relinearized(p, sgd, 10, Network(m, x, [], kernel=None), checkpoints=[], runs=3,
                        generator=torch.Generator().manual_seed(0))
    b = simulate(p, sgd, 10, runs=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.loss, b.loss)


def test_checkpoint_schedule():
    assert checkpoint_schedule(150, 3) == [10, 30, 70]
    assert checkpoint_schedule(150, 0) == []
    assert all(0 < t < 20 for t in checkpoint_schedule(20, 6))


def test_linearity_check_keeps_one_kernel_for_a_linear_model():
    """A linear model is its own linearization: the moved network has exactly the linear model's loss."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(n=10, linear=True)
    sgd = SGD(lr=0.5, momentum=0.5, batch_size=4)
    calls = []
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: calls.append(1))
    a, info = relinearized(p, sgd, 20, net, checkpoints=[3, 9], runs=3, generator=torch.Generator().manual_seed(0),
                           linearity_tol=1e-6)
    b = simulate(p, sgd, 20, runs=3, generator=torch.Generator().manual_seed(0))
    assert info.linear_regime and info.kernels == 0 and not calls
    assert info.loss_gaps[0] < 1e-10
    torch.testing.assert_close(a.loss, b.loss)


def test_every_reanchor_mode_is_exact_for_a_linear_model():
    """Re-linearizing a linear model changes nothing: same kernel, and its true outputs are the linear model's."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(seed=1, n=10, linear=True)
    sgd = SGD(lr=0.4, momentum=0.9, batch_size=5)
    b = simulate(p, sgd, 15, runs=2, generator=torch.Generator().manual_seed(3))
    for mode in ("all", "first", "none"):
        net = Network(m, x, [n for n, _ in m.named_parameters()],
                      kernel=lambda mm: compute_kernel(mm, x, method="exact"))
        a, info = relinearized(p, sgd, 15, net, checkpoints=[2, 6], runs=2,
                               generator=torch.Generator().manual_seed(3), reanchor=mode)
        assert info.kernels == 2 and max(info.loss_gaps) < 1e-10
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(torch.tensor(info.trace_ratios, dtype=torch.float64),
                                   torch.ones(2, dtype=torch.float64))


def test_refresh_continues_the_linear_curve_and_reanchor_jumps():
    """On a nonlinear network, 'none' keeps the linear model's curve up to the checkpoint and only changes the
    kernel; 'all' restarts the curve from the moved network's true loss at the checkpoint."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(n=8)
    sgd = SGD(lr=2.0)
    lin = simulate(p, sgd, 12)
    params = [n for n, _ in m.named_parameters()]
    kfn = lambda mm: compute_kernel(mm, x, method="exact")  # noqa: E731
    net = Network(m, x, params, kernel=kfn)
    none, info_n = relinearized(p, sgd, 12, net, checkpoints=[4], reanchor="none", linearity_tol=1e-9)
    anchored, info_a = relinearized(p, sgd, 12, net, checkpoints=[4], reanchor="all")
    assert info_n.kernels == 1 and not info_n.linear_regime and info_n.loss_gaps[0] > 1e-9
    torch.testing.assert_close(none.loss[:, :5], lin.loss[:, :5])
    assert not torch.allclose(none.loss[:, 5:], lin.loss[:, 5:])  # the refreshed kernel changes the rest
    moved = copy.deepcopy(m)
    from finetime.relinearize import apply_coefficients

    _, st = solve(ExactStepper(p, sgd, 4, None, track=True), 4, runs=1)
    apply_coefficients(moved, x, st.a[0].view(p.n, p.c), params)
    with torch.no_grad():
        true_loss = torch.nn.functional.cross_entropy(moved(x), y)
    torch.testing.assert_close(anchored.loss[0, 4], true_loss)
    assert abs(info_a.loss_gaps[0] - abs(float(true_loss) / float(lin.loss[0, 4]) - 1)) < 1e-9


def test_reanchor_and_tolerance_are_checked():
    import pytest

    from finetime.config import RunConfig
    from finetime.errors import ConfigError

    with pytest.raises(ConfigError, match="--reanchor"):
        RunConfig.from_dict({"reanchor": "sometimes"})
    with pytest.raises(ConfigError, match="--linearity-tol"):
        RunConfig.from_dict({"linearity_tol": -0.1})
    assert not RunConfig.from_dict({"relinearize": 2, "predictor": "paper"}).relinearizes
    assert not RunConfig.from_dict({"relinearize": 2, "weight_decay": 1e-4}).relinearizes
    assert RunConfig.from_dict({"relinearize": 2}).relinearizes
    # results written before --predictor: dynamics ode/sde is the paper's predictor, exact with 0 the linear one
    assert RunConfig.from_dict({"dynamics": "ode"}).predictor_name == "paper"
    assert RunConfig.from_dict({"dynamics": "exact", "relinearize": 0}).predictor_name == "linear"


def test_subset_refresh_of_a_linear_model_is_exact_and_all_samples_is_the_full_refresh():
    """A linear model's kernel does not move: the refresh from any subset gives back the same kernel (the Nystrom
    update of an unchanged block), so the curve is the one-kernel curve; the subset of every sample is the full
    refresh itself."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(seed=2, n=12, linear=True)
    sgd = SGD(lr=0.4, momentum=0.9, batch_size=4)
    params = [n for n, _ in m.named_parameters()]
    seen = []

    def sub(mm, idx):
        seen.append(idx.numel())
        return compute_kernel(mm, x[idx], method="exact")

    net = Network(m, x, params, kernel=lambda mm: compute_kernel(mm, x, method="exact"), subset_kernel=sub)
    b = simulate(p, sgd, 15, runs=2, generator=torch.Generator().manual_seed(3))
    a, info = relinearized(p, sgd, 15, net, checkpoints=[2, 6], runs=2, generator=torch.Generator().manual_seed(3),
                           reanchor="none", refresh_samples=torch.tensor([0, 3, 4, 7, 9]))
    assert seen == [5, 5] and info.refresh_samples == 5 and info.kernels == 2
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(torch.tensor(info.trace_ratios, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    m2, x2, y2, p2 = _setup(n=8)
    net2 = Network(m2, x2, [n for n, _ in m2.named_parameters()],
                   kernel=lambda mm: compute_kernel(mm, x2, method="exact"), subset_kernel=None)
    full, _ = relinearized(p2, SGD(lr=1.0), 10, net2, checkpoints=[3], reanchor="none")
    every, info2 = relinearized(p2, SGD(lr=1.0), 10, net2, checkpoints=[3], reanchor="none",
                                refresh_samples=torch.arange(8))
    assert info2.refresh_samples is None
    torch.testing.assert_close(every.loss, full.loss)


def test_subset_refresh_matches_the_full_refresh_on_the_subset_and_refuses_reanchoring():
    """On a nonlinear network the subset refresh's kernel is the full refresh's on the subset's rows (exact kernels),
    so the refreshed curves stay close; re-anchoring needs every sample's outputs and is refused."""
    import pytest

    from finetime.errors import ConfigError
    from finetime.kernel.update import subset_rows

    m, x, y, p = _setup(seed=3, n=10)
    params = [n for n, _ in m.named_parameters()]
    kernels = {}

    def full(mm):
        kernels["full"] = compute_kernel(mm, x, method="exact")
        return kernels["full"]

    def sub(mm, idx):
        kernels["sub"] = compute_kernel(mm, x[idx], method="exact")
        return kernels["sub"]

    net = Network(m, x, params, kernel=full, subset_kernel=sub)
    idx = torch.tensor([0, 2, 5, 6, 8])
    sgd = SGD(lr=1.0)
    a, _ = relinearized(p, sgd, 12, net, checkpoints=[4], reanchor="none")
    b, info = relinearized(p, sgd, 12, net, checkpoints=[4], reanchor="none", refresh_samples=idx)
    rows = subset_rows(idx, p.c)
    torch.testing.assert_close(kernels["sub"].theta, kernels["full"].theta[rows][:, rows])
    torch.testing.assert_close(a.loss[:, :5], b.loss[:, :5])
    assert (a.loss - b.loss).abs().max() < 0.1 * a.loss[0, 0]
    with pytest.raises(ConfigError, match="re-anchor"):
        relinearized(p, sgd, 12, net, checkpoints=[4], reanchor="all", refresh_samples=idx)


def _adam_setup(seed=0, n=6, linear=False, opt=None):
    """A network, its Adam preconditioner at w0 (``sqrt(P)`` scales and ``P`` in parameter shape) and ``Theta_P``."""
    from finetime.kernel import gradient_moments, parameter_preconditioner
    from finetime.losses import residual
    from finetime.predict import scales_from_moments

    m, x, y, _ = _setup(seed, n, linear)
    with torch.no_grad():
        f0 = m(x)
    scales = scales_from_moments(opt, gradient_moments(m, x, residual(f0, y, Loss.CE)))
    prec = {k: parameter_preconditioner(scales[k], p.shape) for k, p in m.named_parameters()}
    kernel = lambda mm: compute_kernel(mm, x, method="exact", scales=scales, with_jw0=True)  # noqa: E731
    k = kernel(m)
    net = Network(m, x, [k_ for k_, _ in m.named_parameters()], kernel=kernel, precondition=prec)
    return m, x, y, Problem(k.theta, f0, y, Loss.CE, jw0=k.jw0), net


def test_parameter_preconditioner_is_the_kernels_p():
    """``J diag(P) J^T`` with ``P`` mapped to parameter shape (convolutions, grouped convolutions, linear maps, norms)
    is the engine's preconditioned kernel."""
    from finetime.optim import AdamW

    m, x, y, p, net = _adam_setup(opt=AdamW(lr=1e-3, batch_size=3))
    j = jacobian(m, x)
    diag = torch.cat([net.precondition[k].reshape(-1) for k, _ in m.named_parameters()])
    torch.testing.assert_close(p.theta, (j * diag) @ j.T, rtol=1e-9, atol=1e-12)


def test_adam_tracked_coefficients_give_the_linear_models_weights():
    """AdamW with decoupled decay: ``w_t = shrink w0 + P J^T a_t``, so the simulated outputs are
    ``f0 + (shrink - 1) J w0 + Theta_P a``."""
    from finetime.optim import AdamW

    opt = AdamW(lr=0.05, weight_decay=0.3, batch_size=4, betas=(0.8, 0.95))
    m, x, y, p, _ = _adam_setup(opt=opt)
    plan = batch_plan(p.n, opt, 7, 2, torch.Generator().manual_seed(2))
    _, st = solve(ExactStepper(p, opt, 7, plan, track=True), 7, runs=2)
    shrink = st.slots["shrink"]
    assert 0 < shrink < 1
    want = p.f0.reshape(-1) + (shrink - 1) * p.jw0.reshape(-1) + st.a @ p.theta
    torch.testing.assert_close(st.f, want)


def test_adam_checkpoint_at_every_step_is_the_weight_space_rule():
    """With a checkpoint at every step (curve re-anchored on the network) and ``b1 = 0``, re-linearized AdamW is the
    weight-space rule it approximates Adam by: ``w <- (1 - lr wd) w - lr rho_t P g_t(w)``, ``rho_t`` from the
    ``b2`` average of ``g^T P g``, on the real network."""
    from finetime.losses import per_sample_loss
    from finetime.optim import AdamW

    opt = AdamW(lr=0.04, weight_decay=0.5, batch_size=3, betas=(0.0, 0.8))
    m, x, y, p, net = _adam_setup(seed=3, opt=opt)
    steps = 7
    plan = batch_plan(p.n, opt, steps, 1, torch.Generator().manual_seed(4))
    traj, info = relinearized(p, opt, steps, net, checkpoints=list(range(1, steps)), reanchor="all", plan=plan,
                              adam_step_bound=None)
    assert info.kernels == steps - 1
    ref = copy.deepcopy(m)
    params = list(ref.parameters())
    prec = [net.precondition[k] for k, _ in ref.named_parameters()]
    q_avg, q_ref, losses = 0.0, None, []
    for t in range(steps):
        with torch.no_grad():
            losses.append(float(per_sample_loss(ref(x), y, Loss.CE).mean()))
        idx = plan.indices[0, t]
        w = plan.weights[0, t].to(x.dtype)
        grads = torch.autograd.grad((per_sample_loss(ref(x[idx]), y[idx], Loss.CE) * w).sum(), params)
        q = sum(float((g * pp * g).sum()) for g, pp in zip(grads, prec))
        q_ref = q if q_ref is None else q_ref
        q_avg = 0.8 * q_avg + 0.2 * q
        rho = (q_ref / (q_avg / (1 - 0.8 ** (t + 1)))) ** 0.5
        with torch.no_grad():
            for w_, g, pp in zip(params, grads, prec):
                w_.mul_(1 - 0.04 * 0.5).sub_(0.04 * rho * pp * g)
    torch.testing.assert_close(traj.loss[0, :steps], torch.tensor(losses, dtype=traj.loss.dtype), rtol=1e-7,
                               atol=1e-10)


def test_adam_relinearizing_a_linear_model_changes_nothing():
    """A linear model is its own linearization: refreshed kernels equal the first, the curve is the one-kernel one."""
    from finetime.dynamics import simulate
    from finetime.optim import AdamW

    opt = AdamW(lr=0.1, weight_decay=0.2, batch_size=4)
    m, x, y, p, net = _adam_setup(seed=1, n=10, linear=True, opt=opt)
    b = simulate(p, opt, 15, runs=2, generator=torch.Generator().manual_seed(3))
    a, info = relinearized(p, opt, 15, net, checkpoints=[2, 6], runs=2, generator=torch.Generator().manual_seed(3),
                           reanchor="none", adam_step_bound=None)
    assert info.kernels == 2 and max(info.loss_gaps) < 1e-10
    torch.testing.assert_close(a.loss, b.loss)


def test_parameter_preconditioner_of_a_convolution_with_dead_taps():
    """A 5x5 convolution on 2x2 inputs: only 3x3 of its taps ever touch the input; the layout leaves the others out
    and ``P`` in parameter shape must still line up weight by weight (dead taps get ``P = 0``: zero gradient)."""
    from finetime.kernel import gradient_moments, parameter_preconditioner
    from finetime.losses import residual
    from finetime.optim import AdamW
    from finetime.predict import scales_from_moments

    torch.manual_seed(5)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 5, padding=2), torch.nn.Tanh(), torch.nn.Flatten(),
                            torch.nn.Linear(12, 3)).double().eval()
    x = torch.randn(6, 2, 2, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    with torch.no_grad():
        r = residual(m(x), y, Loss.CE)
    scales = scales_from_moments(AdamW(lr=1e-3, batch_size=2), gradient_moments(m, x, r))
    assert scales["0.weight"].taps is not None and scales["0.weight"].taps.numel() == 9
    prec = {k: parameter_preconditioner(scales[k], p.shape) for k, p in m.named_parameters()}
    assert prec["0.weight"][:, :, 0, 0].abs().max() == 0 and prec["0.weight"][:, :, 2, 2].min() > 0
    j = jacobian(m, x)
    diag = torch.cat([prec[k].reshape(-1) for k, _ in m.named_parameters()])
    k = compute_kernel(m, x, method="exact", scales=scales)
    torch.testing.assert_close(k.theta, (j * diag) @ j.T, rtol=1e-9, atol=1e-12)


def test_bounded_move_clips_each_weight_and_keeps_the_rest():
    from finetime.relinearize import apply_coefficients

    m, x, y, _ = _setup(seed=2, n=6)
    names = [n for n, _ in m.named_parameters()]
    a = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    free, bounded = copy.deepcopy(m), copy.deepcopy(m)
    apply_coefficients(free, x, a, names)
    apply_coefficients(bounded, x, a, names, bound=1e-3)
    clipped = 0
    for (n, w0), w1, w2 in zip(m.named_parameters(), free.parameters(), bounded.parameters()):
        d_free, d_bound = (w1 - w0).detach(), (w2 - w0).detach()
        assert d_bound.abs().max() <= 1e-3 + 1e-15
        torch.testing.assert_close(d_bound, d_free.clamp(-1e-3, 1e-3))
        clipped += int((d_free.abs() > 1e-3).sum())
    assert clipped > 0


def test_adam_preconditioner_follows_the_path():
    """``network_of``'s ``adapt`` mixes Adam's second moments along the path: weight 0 keeps ``P`` of ``w0``, weight 1
    is ``P`` of the moved network alone, and its kernels use the mixed ``P`` from then on."""
    from types import SimpleNamespace

    from finetime.config import RunConfig
    from finetime.kernel import parameter_preconditioner
    from finetime.predict import Task, network_of, preconditioner_scales

    m, x, y, _ = _setup(seed=4, n=8)
    names = [n for n, _ in m.named_parameters()]
    cfg = RunConfig.from_dict({"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "classes": 3})
    task = Task(cfg, SimpleNamespace(x=x, y=y, x_test=None), m, names)
    net = network_of(task)
    shapes = dict(m.named_parameters())
    p0 = {k: parameter_preconditioner(task.scales[k], shapes[k].shape) for k in names}
    for k in names:
        torch.testing.assert_close(net.precondition[k], p0[k])
    moved = copy.deepcopy(m)
    with torch.no_grad():
        for w in moved.parameters():
            w.add_(0.3 * torch.randn_like(w))
    same = net.adapt(moved, 0.0)
    for k in names:
        torch.testing.assert_close(same[k], p0[k])
    alone = Task(cfg, task.data, moved, names)
    p1 = {k: parameter_preconditioner(v, shapes[k].shape) for k, v in preconditioner_scales(alone).items()}
    got = net.adapt(moved, 1.0)
    assert any(not torch.allclose(got[k], p0[k]) for k in names)
    for k in names:
        torch.testing.assert_close(got[k], p1[k])
    k_new = net.kernel(moved)
    k_ref = compute_kernel(moved, x, scales=preconditioner_scales(alone), projection_dim=cfg.kernel.projection_dim,
                           seed=cfg.task.seed, method=cfg.kernel.method)
    torch.testing.assert_close(k_new.theta, k_ref.theta)


def test_adam_rule_restarts_rho_on_a_new_preconditioner():
    from finetime.optim import AdamW

    rule = AdamW(lr=0.1).function_space()
    state = rule.init(torch.zeros(2, 6, dtype=torch.float64), 6, True)
    g = torch.randn(2, 6, dtype=torch.float64)
    for _ in range(3):
        state = rule.step(state, g, g, 0.1, None)
    assert state.slots["q_ref"] is not None and state.slots["tq"] == 3
    table = torch.eye(6, dtype=torch.float64)
    kept = rule.rebase(state, table)
    assert kept.slots["q_ref"] is not None and kept.slots["tq"] == 3
    level = torch.tensor([2.0, 5.0], dtype=torch.float64)
    kept.slots["restart_q"] = level  # the expected q under the new kernel, per run
    reset = rule.rebase(kept, table)
    assert reset.slots["t"] == 3 and reset.slots["tq"] == 0 and not reset.slots["q"].any()
    assert "restart_q" not in reset.slots
    torch.testing.assert_close(reset.slots["q_ref"], level)
    # rho after the restart compares the next batch's q with the expected level, not with itself
    g2 = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0, 0]], dtype=torch.float64)
    f_before = reset.f.clone()
    after = rule.step(reset, g2, g2, 0.1, None)
    rho = (level / (g2 * g2).sum(1)).sqrt()  # sqrt(2 / 1), sqrt(5 / 16)
    m_hat = after.slots["m"] / (1 - rule.b1**4)
    torch.testing.assert_close(after.f, f_before - 0.1 * rho.unsqueeze(1) * m_hat)


def test_expected_gradient_square_averages_every_batch():
    """Adam's restart level: the mean of ``c^T Theta c`` over every batch the run can draw (all pairs of 5 samples
    without replacement, all ordered draws with replacement; the one full batch), at the current outputs."""
    import itertools

    from finetime.losses import residual
    from finetime.optim import AdamW, FunctionState

    g = torch.Generator().manual_seed(3)
    n, c, b = 5, 3, 2
    a = torch.randn(n * c, 7, generator=g, dtype=torch.float64)
    theta = a @ a.T
    prob = Problem(theta=theta, f0=torch.randn(n, c, generator=g, dtype=torch.float64), y=torch.tensor([0, 2, 1, 1, 0]))
    f = torch.randn(2, n * c, generator=g, dtype=torch.float64)  # two runs at different outputs
    r = residual(f.view(2, n, c), prob.y, prob.loss)

    def q(batch):
        coeff = torch.zeros(2, n, c, dtype=torch.float64)
        for i in batch:
            coeff[:, i] += r[:, i] / len(batch)
        flat = coeff.reshape(2, -1)
        return ((flat @ theta) * flat).sum(1)

    draws = {"shuffle": list(itertools.combinations(range(n), b)),
             "replacement": list(itertools.product(range(n), repeat=b))}
    for sampling, batches in draws.items():
        opt = AdamW(lr=1e-3, batch_size=b, sampling=sampling)
        plan = batch_plan(n, opt, 1, 2, torch.Generator().manual_seed(0))
        stepper = ExactStepper(prob, opt, 1, plan, track=True)
        want = torch.stack([q(batch) for batch in batches]).mean(0)
        torch.testing.assert_close(stepper.expected_gradient_square(FunctionState(f, {})), want)
    full = ExactStepper(prob, AdamW(lr=1e-3), 1, None, track=True)
    torch.testing.assert_close(full.expected_gradient_square(FunctionState(f, {})), q(range(n)))


def test_interpolated_kernels_of_a_linear_model_change_nothing():
    """Every refreshed kernel of a linear model is its kernel at w0, so the kernel interpolated between refreshes is
    too, and the second pass (SGD with momentum, its image rebased at every switch) is the linear model's run."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(seed=2, n=10, linear=True)
    sgd = SGD(lr=0.4, momentum=0.9, batch_size=5)
    b = simulate(p, sgd, 30, runs=2, generator=torch.Generator().manual_seed(3))
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    a, info = relinearized(p, sgd, 30, net, checkpoints=[2, 6, 14], runs=2, generator=torch.Generator().manual_seed(3),
                           reanchor="none", interpolate=True)
    assert info.kernels == 3
    torch.testing.assert_close(a.loss, b.loss)


def test_interpolated_kernel_grows_linearly_between_refreshes():
    """A network whose refreshed kernel is always twice the first: full-batch GD on the second pass runs on
    ``(1 + w) Theta0`` over the first interval, ``w`` the middle of each switch's sub-interval, then on
    ``2 Theta0`` (checked against the function-space update written out by hand)."""
    from finetime.kernel import Kernel
    from finetime.losses import residual
    from finetime.relinearize import INTERPOLATION_POINTS

    m, x, y, p = _setup(seed=3, n=6)
    sgd = SGD(lr=1.5)
    steps, knot = 40, 2 * INTERPOLATION_POINTS
    net = Network(m, x, [n for n, _ in m.named_parameters()],
                  kernel=lambda mm: Kernel(2 * p.theta, p.f0.clone()))
    traj, info = relinearized(p, sgd, steps, net, checkpoints=[knot], reanchor="none", interpolate=True)
    stepwise, info_s = relinearized(p, sgd, steps, net, checkpoints=[knot], reanchor="none")
    f = p.f0.clone()
    losses = [torch.nn.functional.cross_entropy(f, y)]
    for t in range(steps):
        if t < knot:
            lo = (t // 2) * 2  # INTERPOLATION_POINTS switches over 2 INTERPOLATION_POINTS steps: every 2 steps
            scale = 1 + (lo + 1) / knot
        else:
            scale = 2.0
        f = f - sgd.lr * scale * (p.theta @ residual(f, y, p.loss).reshape(-1) / p.n).view_as(f)
        losses.append(torch.nn.functional.cross_entropy(f, y))
    torch.testing.assert_close(traj.loss[0], torch.stack(losses))
    assert info.kernels == 1 and info.interpolated and not info_s.interpolated
    assert (traj.loss[0, 1:knot + 1] < stepwise.loss[0, 1:knot + 1]).all()  # the kernel grows before the refresh


def _scaled_kernel_run(factor: float, steps: int, knot: int, **kw):
    """Full-batch GD relinearized once at ``knot`` on a network whose refreshed kernel is ``factor`` times the
    first, and the same run written out by hand with the kernel ``scale(t) Theta0`` from ``scale``."""
    from finetime.kernel import Kernel
    from finetime.losses import residual

    m, x, y, p = _setup(seed=3, n=6)
    sgd = SGD(lr=1.5 / factor)
    net = Network(m, x, [n for n, _ in m.named_parameters()],
                  kernel=lambda mm: Kernel(factor * p.theta, p.f0.clone()))
    traj, info = relinearized(p, sgd, steps, net, checkpoints=[knot], reanchor="none", **kw)

    def by_hand(scale):
        f = p.f0.clone()
        losses = [torch.nn.functional.cross_entropy(f, y)]
        for t in range(steps):
            f = f - sgd.lr * scale(t) * (p.theta @ residual(f, y, p.loss).reshape(-1) / p.n).view_as(f)
            losses.append(torch.nn.functional.cross_entropy(f, y))
        return torch.stack(losses)

    return traj, info, by_hand


def test_geometric_interpolation_grows_the_trace_by_a_constant_factor():
    """A refreshed kernel 8 times the first: geometrically interpolated, the second pass runs on ``8**w Theta0``
    (``w`` the middle of each switch's sub-interval), then on ``8 Theta0``; the trace of the straight line at
    ``geometric_weight`` is exactly geometric."""
    from finetime.relinearize import INTERPOLATION_POINTS, geometric_weight

    steps, knot = 40, 2 * INTERPOLATION_POINTS
    traj, info, by_hand = _scaled_kernel_run(8.0, steps, knot, interpolate=True, interpolation="geometric")
    want = by_hand(lambda t: 8.0 ** (((t // 2) * 2 + 1) / knot) if t < knot else 8.0)
    torch.testing.assert_close(traj.loss[0], want)
    assert info.interpolated
    for w in (0.0, 0.1, 0.5, 0.9, 1.0):
        for r in (0.25, 3.0, 50.0):
            u = geometric_weight(w, r)
            assert (1 - u) + u * r == pytest.approx(r ** w)
    assert geometric_weight(0.3, 1.0) == 0.3 and geometric_weight(0.3, float("nan")) == 0.3


def test_min_growth_keeps_small_changes_stepwise():
    """With ``min_growth`` an interval over which the kernel grows less keeps its first kernel: no second pass at
    all when no interval qualifies, the same curve as stepwise kernels; a larger growth is interpolated."""
    steps, knot = 30, 10
    stepwise, info_s, _ = _scaled_kernel_run(2.0, steps, knot)
    kept, info_k, _ = _scaled_kernel_run(2.0, steps, knot, interpolate=True, interpolation="geometric",
                                         min_growth=10.0)
    assert not info_k.interpolated and not info_s.interpolated
    torch.testing.assert_close(kept.loss, stepwise.loss)
    grown, info_g, _ = _scaled_kernel_run(16.0, steps, knot, interpolate=True, interpolation="geometric",
                                          min_growth=10.0)
    assert info_g.interpolated and info_g.interpolation == "geometric" and info_g.interpolated_intervals == 1
    assert info_k.interpolation is None and info_k.to_dict()["interpolated_intervals"] == 0
    step16, _, _ = _scaled_kernel_run(16.0, steps, knot)
    assert (grown.loss[0, 2:knot + 1] < step16.loss[0, 2:knot + 1]).all()  # the kernel grows before the refresh


def test_a_kernel_without_trace_does_not_stop_interpolation():
    """A zero first kernel has no growth ratio (NaN, no division by zero): linear interpolation across every
    interval (``min_growth`` 0) still moves it, a ``min_growth`` keeps it, and the geometric weight falls back to
    the linear one."""
    from finetime.relinearize import _Interpolate

    _, _, _, p = _setup(seed=3, n=6)
    zero = dataclasses.replace(p, theta=torch.zeros_like(p.theta))
    every = _Interpolate([(0, zero), (8, p)], geometric=True)
    assert math.isnan(every.ratios[0]) and every.intervals == 1
    torch.testing.assert_close(every.problem_at(4).theta, torch.lerp(zero.theta, p.theta, 4.5 / 8))  # mid-step
    assert _Interpolate([(0, zero), (8, p)], geometric=True, min_growth=10.0).intervals == 0


def test_interpolation_needs_the_curve_not_reanchored():
    from finetime.config import PredictorConfig
    from finetime.errors import ConfigError
    from finetime.optim import AdamW

    m, x, y, p = _setup(n=4)
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    with pytest.raises(ConfigError, match="reanchor none"):
        relinearized(p, SGD(lr=0.1), 5, net, checkpoints=[2], reanchor="all", interpolate=True)
    with pytest.raises(ConfigError, match="reanchor none"):
        PredictorConfig(reanchor="all", interpolate=True)
    sgd, momentum, adamw = SGD(lr=0.1), SGD(lr=0.1, momentum=0.9), AdamW(lr=0.1)
    # the default: every interval, linearly, for Adam and AdamW and for SGD without momentum; with momentum
    # geometrically, only across a GROWTH_JUMP-fold growth
    from finetime.config import GROWTH_JUMP

    assert PredictorConfig().interpolates(adamw) and PredictorConfig().interpolates(sgd)
    assert PredictorConfig().interpolation_for(adamw) == PredictorConfig().interpolation_for(sgd) == ("linear", 0.0)
    assert PredictorConfig().interpolates(momentum)
    assert PredictorConfig().interpolation_for(momentum) == ("geometric", GROWTH_JUMP)
    assert PredictorConfig(interpolate=True).interpolation_for(momentum) == ("geometric", 0.0)
    assert PredictorConfig(interpolation="linear").interpolation_for(momentum) == ("linear", GROWTH_JUMP)
    assert not PredictorConfig(interpolate=False).interpolates(momentum)
    with pytest.raises(ConfigError, match="kernel-interpolation"):
        PredictorConfig(interpolation="cubic")
    assert not PredictorConfig(reanchor="first").interpolates(adamw)
    assert not PredictorConfig(reanchor="first").interpolates(sgd)
    assert PredictorConfig(interpolate=True).interpolates(momentum)
    assert not PredictorConfig(interpolate=False).interpolates(sgd)
    assert not PredictorConfig(interpolate=False).interpolates(adamw)


def test_interpolation_falls_back_to_stepwise_kernels_past_its_memory_bound(monkeypatch):
    import finetime.relinearize as rl

    m, x, y, p = _setup(seed=3, n=6)
    sgd = SGD(lr=1.5)
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    stepwise, _ = relinearized(p, sgd, 12, net, checkpoints=[3, 6], reanchor="none")
    monkeypatch.setattr(rl, "INTERPOLATION_MAX_BYTES", 3 * p.theta.numel() * p.theta.element_size())
    traj, info = relinearized(p, sgd, 12, net, checkpoints=[3, 6], reanchor="none", interpolate=True)
    assert not info.interpolated and info.kernels == 2
    torch.testing.assert_close(traj.loss, stepwise.loss)
    monkeypatch.undo()
    # the user's memory budget bounds the kernels kept too: four kernels (first, two refreshes, one interpolated)
    four = 4 * p.theta.numel() * p.theta.element_size()
    _, info = relinearized(p, sgd, 12, net, checkpoints=[3, 6], reanchor="none", interpolate=True,
                           max_memory=four - 1)
    assert not info.interpolated
    _, info = relinearized(p, sgd, 12, net, checkpoints=[3, 6], reanchor="none", interpolate=True, max_memory=four)
    assert info.interpolated


def test_validate_replays_with_the_predictions_linearity_decision():
    """The 'same order' replay keeps the prediction's check outcome: one kernel where it passed, refreshes (no check)
    where it failed; untouched for predictors without a check."""
    from finetime.config import Predictor, RunConfig
    from finetime.validate import replay_config

    cfg = RunConfig.from_dict({"lr": 1e-3, "batch_size": 8})
    kept = replay_config(cfg, {"linear_regime": True})
    assert kept.predictor.kind is Predictor.LINEAR
    refreshed = replay_config(cfg, {"linear_regime": False})
    assert refreshed.predictor.kind is Predictor.RELINEARIZED and refreshed.predictor.tolerance(cfg.optimizer) == 0
    assert refreshed.predictor.relinearize == cfg.predictor.relinearize
    assert replay_config(cfg, None) is cfg
    ended = replay_config(cfg, {"linear_regime": False, "end_check": {"step": 149, "gap": 0.5, "refreshed": True}})
    assert ended.predictor.tolerance(cfg.optimizer) > 1e300 and 0 < ended.predictor.end_tol < 1e-300
    lin = RunConfig.from_dict({"lr": 1e-3, "batch_size": 8, "predictor": "linear"})
    assert replay_config(lin, {"linear_regime": True}) is lin


def test_adam_second_moments_average_the_path_by_the_trapezoid_rule():
    """Adam's bias-corrected ``v`` averages the squared gradients of the whole run: ``adapt`` at step ``t`` with
    weight ``(t - s) / t`` adds the interval since the last refresh ``s`` at the mean of its two ends' second moments
    (the trapezoid rule; ``w0``'s at the start), and the kernels use the averaged ``P``."""
    from types import SimpleNamespace

    from finetime.config import RunConfig
    from finetime.kernel import parameter_preconditioner
    from finetime.predict import (Task, loss_gradient_moments, network_of, scales_from_second_moments,
                                  second_moments)

    m, x, y, _ = _setup(seed=5, n=8)
    names = [n for n, _ in m.named_parameters()]
    cfg = RunConfig.from_dict({"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "classes": 3})
    task = Task(cfg, SimpleNamespace(x=x, y=y, x_test=None), m, names)
    net = network_of(task)
    opt, shapes = cfg.optimizer, dict(m.named_parameters())
    moved = []
    for scale in (0.2, 0.4):
        w = copy.deepcopy(m)
        with torch.no_grad():
            for p in w.parameters():
                p.add_(scale * torch.randn_like(p))
        moved.append(w)
    v0 = second_moments(opt, task.moments)
    v1, v2 = (second_moments(opt, loss_gradient_moments(task, w), 8) for w in moved)
    mix = lambda a, b, wa, wb: {k: tuple(wa * p + wb * q for p, q in zip(a[k], b[k])) for k in a}  # noqa: E731
    avg1 = mix(v0, v1, 0.5, 0.5)  # steps 0..10 at the mean of their ends
    avg2 = mix(avg1, mix(v1, v2, 0.5, 0.5), 10 / 30, 20 / 30)  # then steps 10..30
    for w, weight, want in ((moved[0], 1.0, avg1), (moved[1], 20 / 30, avg2)):
        got = net.adapt(w, weight)
        scales = scales_from_second_moments(opt, want, task.moments)
        for k in names:
            torch.testing.assert_close(got[k], parameter_preconditioner(scales[k], shapes[k].shape))


def test_end_check_keeps_one_kernel_for_a_linear_model():
    """A linear model at its own linear model's weights has its loss at the end too: the end check passes, no
    kernel is computed and the curve is the one-kernel simulation."""
    from finetime.dynamics import simulate

    m, x, y, p = _setup(n=10, linear=True)
    sgd = SGD(lr=0.5, momentum=0.5, batch_size=4)
    calls = []
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: calls.append(1))
    a, info = relinearized(p, sgd, 20, net, checkpoints=[3, 9], runs=3, generator=torch.Generator().manual_seed(0),
                           linearity_tol=1e-6, end_tol=1e-6)
    b = simulate(p, sgd, 20, runs=3, generator=torch.Generator().manual_seed(0))
    assert info.linear_regime and info.kernels == 0 and not calls
    assert info.end_check["step"] == 19 and not info.end_check["refreshed"] and info.end_check["gap"] < 1e-8
    torch.testing.assert_close(a.loss, b.loss)


def _end_setup():
    m, x, y, p = _setup(n=8)
    params = [n for n, _ in m.named_parameters()]
    net = Network(m, x, params, kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    return m, x, y, p, params, net


def test_end_check_refreshes_the_kernel_at_the_end_and_moves_it_geometrically():
    """A check that passes and an end check that fails: the same curves as one refresh at step T-1 with the kernel
    interpolated geometrically from w0's (and no check); the end gap is the network's loss at the linear model's
    final weights against the linear model's, over the loss decrease the linear model predicts."""
    from finetime.dynamics import simulate
    from finetime.relinearize import apply_coefficients

    m, x, y, p, params, net = _end_setup()
    sgd = SGD(lr=0.5, momentum=0.5)
    steps = 16
    got, info = relinearized(p, sgd, steps, net, checkpoints=[2, 6], reanchor="none", linearity_tol=10.0,
                             end_tol=1e-9)
    one, one_info = relinearized(p, sgd, steps, net, checkpoints=[steps - 1], reanchor="none", interpolate=True,
                                 interpolation="geometric")
    assert info.loss_gaps[0] < 10.0 and not info.linear_regime and info.kernels == 1
    assert info.end_check["refreshed"] and info.end_check["step"] == steps - 1
    assert info.interpolated and info.interpolation == "geometric"
    torch.testing.assert_close(got.loss, one.loss)
    assert info.trace_ratios == pytest.approx(one_info.trace_ratios)
    lin = simulate(p, sgd, steps)
    assert not torch.allclose(got.loss, lin.loss)
    _, st = solve(ExactStepper(p, sgd, steps - 1, None, track=True), steps - 1, runs=1)
    moved = copy.deepcopy(m)
    apply_coefficients(moved, x, st.a[0].view(p.n, p.c), params)
    with torch.no_grad():
        l_net = float(torch.nn.functional.cross_entropy(moved(x), y))
    l0, l_lin = float(lin.loss[0, 0]), float(lin.loss[0, steps - 1])
    assert info.end_check["gap"] == pytest.approx(abs(l_net - l_lin) / (l0 - l_lin), abs=1e-4)
    # a tolerance over the gap keeps the one kernel, and 0 turns the end check off
    kept, kept_info = relinearized(p, sgd, steps, net, checkpoints=[2, 6], reanchor="none", linearity_tol=10.0,
                                   end_tol=info.end_check["gap"] + 0.01)
    assert kept_info.linear_regime and not kept_info.end_check["refreshed"] and kept_info.kernels == 0
    torch.testing.assert_close(kept.loss, lin.loss)
    off, off_info = relinearized(p, sgd, steps, net, checkpoints=[2, 6], reanchor="none", linearity_tol=10.0)
    assert off_info.end_check is None and off_info.linear_regime
    torch.testing.assert_close(off.loss, lin.loss)


def test_end_check_only_after_a_passed_check():
    """A failed first check refreshes at the schedule's checkpoints only; no check (tolerance 0) means no end check."""
    m, x, y, p, params, net = _end_setup()
    sgd = SGD(lr=0.5)
    _, failed = relinearized(p, sgd, 16, net, checkpoints=[2, 6], reanchor="none", linearity_tol=1e-12,
                             end_tol=1e-9)
    assert not failed.linear_regime and failed.kernels == 2 and failed.end_check is None
    _, unchecked = relinearized(p, sgd, 16, net, checkpoints=[2, 6], reanchor="none", end_tol=1e-9)
    assert unchecked.kernels == 2 and unchecked.end_check is None


def test_no_end_check_where_the_last_step_is_a_checkpoint():
    """A run so short that its first checkpoint is its last step keeps the linearity check there, and has no end
    check."""
    m, x, y, p, params, net = _end_setup()
    _, info = relinearized(p, SGD(lr=0.01), 2, net, checkpoints=[1], reanchor="none", linearity_tol=10.0,
                           end_tol=1e-9)
    assert len(info.loss_gaps) == 1 and info.linear_regime and info.end_check is None


def test_progress_gap_without_a_predicted_decrease_is_none():
    from finetime.relinearize import _progress_gap

    y = torch.tensor([0, 1])
    f0 = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    worse = torch.zeros(2, 2, dtype=torch.float64)
    assert _progress_gap(worse, f0, f0, y, Loss.CE) is None
    assert _progress_gap(f0, worse, f0, y, Loss.CE) is None  # the linear model's loss went up
    better = 2 * f0
    g = _progress_gap(f0, better, f0, y, Loss.CE)  # the network stayed where it started: the whole decrease is off
    assert g == pytest.approx(1.0)


def test_end_tol_setting():
    from finetime.config import END_TOL, PRESETS, RunConfig
    from finetime.errors import ConfigError

    assert PRESETS["adaptive"].end_tol == END_TOL
    assert RunConfig.from_dict({"end_tol": 0.2}).predictor.end_tol == 0.2
    assert RunConfig.from_dict({"end_tol": 0.2}).to_dict()["end_tol"] == 0.2
    import numpy as np

    assert RunConfig.from_dict({"end_tol": np.float32(0.25)}).predictor.end_tol == 0.25
    for bad in (-0.1, float("nan"), float("inf"), "x", True):
        with pytest.raises(ConfigError, match="--end-tol"):
            RunConfig.from_dict({"end_tol": bad})


def test_stability_cap_clips_the_refreshed_kernels_only():
    """The cap leaves the curve before the first refresh alone, records each refreshed kernel's sharpness over the
    limit, and changes nothing where the limit is far above it."""
    m, x, y, p = _setup(n=8)
    sgd = SGD(lr=0.5, momentum=0.5)
    net = Network(m, x, [n for n, _ in m.named_parameters()], kernel=lambda mm: compute_kernel(mm, x, method="exact"))
    kw = dict(checkpoints=[2, 5], reanchor="none")
    plain, plain_info = relinearized(p, sgd, 12, net, **kw)
    loose, info = relinearized(p, sgd, 12, net, stability_cap=1e9, **kw)
    assert not plain_info.sharpness_ratios and "sharpness_ratios" not in plain_info.to_dict()
    assert len(info.sharpness_ratios) == 2 and max(info.sharpness_ratios) < 1
    torch.testing.assert_close(loose.loss, plain.loss)
    cap = 0.5 * info.sharpness_ratios[0] * 1e9  # half the first refreshed kernel's sharpness over the limit
    capped, capped_info = relinearized(p, sgd, 12, net, stability_cap=cap, **kw)
    assert capped_info.sharpness_ratios[0] == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(capped.loss[:, :3], plain.loss[:, :3])
    assert torch.isfinite(capped.loss).all() and not torch.allclose(capped.loss[:, 4:], plain.loss[:, 4:])


def test_stability_cap_setting():
    from finetime.cli import build_parser
    from finetime.config import PRESETS, RunConfig
    from finetime.errors import ConfigError

    assert PRESETS["adaptive"].stability_cap == 0.0
    assert RunConfig.from_dict({"stability_cap": 1}).to_dict()["stability_cap"] == 1.0
    for bad in (-0.5, float("nan"), "x", True):
        with pytest.raises(ConfigError, match="--stability-cap"):
            RunConfig.from_dict({"stability_cap": bad})
    assert build_parser().parse_args(["predict", "--stability-cap", "0.9"]).stability_cap == 0.9
