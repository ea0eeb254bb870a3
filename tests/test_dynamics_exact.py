"""The simulator against real torch.optim.SGD on models that are their own linearization (float64)."""

import math

import pytest
import torch

from finetime.batches import batch_plan
from finetime.dynamics import Problem, simulate
from finetime.finetune import finetune
from finetime.kernel import brute_force_ntk, jacobian_weight_product
from finetime.losses import Loss, LossSpec
from finetime.optim import SGD, Constant, Cosine, StepDecay
from models_for_tests import SmallConvNet, SoftmaxRegression

CONFIGS = {
    "gd": SGD(lr=0.5),
    "gd-momentum": SGD(lr=0.2, momentum=0.9),
    "sgd": SGD(lr=0.3, batch_size=4),
    "sgd-momentum": SGD(lr=0.1, momentum=0.8, batch_size=5),
    "nesterov": SGD(lr=0.1, momentum=0.9, nesterov=True, batch_size=4),
    "weight-decay": SGD(lr=0.2, momentum=0.5, weight_decay=0.05, batch_size=4),
    "step": SGD(lr=0.4, batch_size=6, schedule=StepDecay(step_size=7, gamma=0.5)),
    "cosine-warmup": SGD(lr=0.4, momentum=0.5, batch_size=6, schedule=Cosine(warmup_steps=5)),
    "warmup-constant": SGD(lr=0.4, schedule=Constant(warmup_steps=3)),
    "replacement": SGD(lr=0.3, batch_size=4, sampling="replacement"),
    "drop-last": SGD(lr=0.3, batch_size=4, drop_last=True),
    "clip-gd": SGD(lr=0.5, max_grad_norm=0.1),
    "clip-sgd-momentum": SGD(lr=0.1, momentum=0.8, batch_size=5, max_grad_norm=0.05),
    "clip-weight-decay": SGD(lr=0.2, momentum=0.5, weight_decay=0.05, batch_size=4, max_grad_norm=0.1),
}


def _data(n=14, d=5, c=3, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = torch.randn(m, d, generator=g, dtype=torch.float64)
    return x, torch.randint(0, c, (n,), generator=g), xt, torch.randint(0, c, (m,), generator=g)


def _predict_and_train(model, x, y, xt, yt, sgd, loss, steps, names=None):
    names = names or [n for n, p in model.named_parameters() if p.requires_grad]
    plan = batch_plan(x.shape[0], sgd, steps, 1, torch.Generator().manual_seed(3))
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    xa = torch.cat([x, xt])
    theta_all = brute_force_ntk(model, xa, names)
    nc = x.shape[0] * f0.shape[1]
    jw = jacobian_weight_product(model, xa, names)
    prob = Problem(theta_all[:nc, :nc], f0, y, loss, theta_all[nc:, :nc], f0t, yt, jw[: len(x)], jw[len(x):])
    traj = simulate(prob, sgd, steps, plan=plan)
    real = finetune(model, x, y, sgd, steps, plan, loss=loss, params=names, x_test=xt, y_test=yt)
    return traj, real


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("loss", [Loss.CE, Loss.MSE, LossSpec(Loss.CE, 0.1)])
def test_linear_model_matches_real_sgd(name, loss):
    torch.manual_seed(0)
    x, y, xt, yt = _data()
    model = SoftmaxRegression(5, 3).double()
    traj, real = _predict_and_train(model, x, y, xt, yt, CONFIGS[name], loss, steps=25)
    torch.testing.assert_close(traj.loss[0], real.loss, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(traj.accuracy[0], real.accuracy, rtol=0, atol=1e-12)
    torch.testing.assert_close(traj.test_loss[0], real.test_loss, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", ["clip-gd", "clip-sgd-momentum"])
def test_clipping_binds_in_the_clipped_configurations(name):
    """The clipped configurations above clip: without clipping the same run's curve is another one."""
    x, y, xt, yt = _data()
    clipped = CONFIGS[name]
    free = SGD(**{f: getattr(clipped, f) for f in ("lr", "momentum", "batch_size")})
    curves = []
    for opt in (clipped, free):
        torch.manual_seed(0)
        curves.append(_predict_and_train(SoftmaxRegression(5, 3).double(), x, y, xt, yt, opt, Loss.CE, 25)[1].loss)
    assert (curves[0] - curves[1]).abs().max() > 1e-2


def test_start_gradient_norm_is_the_real_one():
    """Full batch: the norm clipping compares at the start is the real gradient's; for batches of 4, its root mean
    square over every batch of 4 (drawn with replacement: independent samples)."""
    from itertools import product

    from finetime.predict import start_gradient_norm

    x, y, _, _ = _data(n=6)
    model = SoftmaxRegression(5, 3).double()
    with torch.no_grad():
        f0 = model(x)
    problem = Problem(brute_force_ntk(model, x), f0, y, Loss.CE)

    def norm_sq(idx):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[list(idx)]), y[list(idx)]).backward()
        return sum(float((p.grad ** 2).sum()) for p in model.parameters())

    assert start_gradient_norm(problem, SGD(lr=0.1)) == pytest.approx(math.sqrt(norm_sq(range(6))), rel=1e-9)
    rms = math.sqrt(sum(norm_sq(b) for b in product(range(6), repeat=4)) / 6 ** 4)
    got = start_gradient_norm(problem, SGD(lr=0.1, batch_size=4, sampling="replacement"))
    assert got == pytest.approx(rms, rel=1e-9)


@pytest.mark.parametrize("name", ["gd", "sgd-momentum", "weight-decay", "cosine-warmup", "clip-sgd-momentum"])
def test_frozen_backbone_with_trainable_head_matches_real_sgd(name):
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64)
    xt = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    y, yt = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (5,), generator=g)
    model = SmallConvNet(3).double().eval()
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("head"))
    traj, real = _predict_and_train(model, x, y, xt, yt, CONFIGS[name], Loss.CE, steps=20)
    torch.testing.assert_close(traj.loss[0], real.loss, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(traj.test_loss[0], real.test_loss, rtol=1e-6, atol=1e-10)


def test_ensemble_runs_are_independent_batch_orders():
    x, y, _, _ = _data(n=20)
    model = SoftmaxRegression(5, 3).double()
    theta = brute_force_ntk(model, x)
    with torch.no_grad():
        f0 = model(x)
    prob = Problem(theta, f0, y, Loss.CE)
    traj = simulate(prob, SGD(lr=0.5, batch_size=4), 30, runs=8, generator=torch.Generator().manual_seed(0))
    assert traj.loss.shape == (8, 31)
    assert torch.allclose(traj.loss[:, 0], traj.loss[0, 0])
    assert traj.loss[:, -1].std() > 0
    gd = simulate(prob, SGD(lr=0.5), 30, runs=8)
    assert gd.loss.shape == (1, 31)


def test_divergence_is_flagged_and_curve_stops():
    x, y, _, _ = _data(n=10)
    model = SoftmaxRegression(5, 3).double()
    theta = brute_force_ntk(model, x)
    with torch.no_grad():
        f0 = model(x)
    prob = Problem(theta, f0, y, Loss.MSE)
    from finetime.spectrum import max_stable_lr, sharpness

    bound = max_stable_lr(sharpness(theta, f0, Loss.MSE))
    ok = simulate(prob, SGD(lr=0.95 * bound), 300)
    bad = simulate(prob, SGD(lr=1.05 * bound), 300)
    assert ok.diverged_at.item() == -1
    assert bad.diverged_at.item() > 0
    assert math.isnan(bad.loss[0, -1].item())
    mom_bound = max_stable_lr(sharpness(theta, f0, Loss.MSE), momentum=0.5)
    assert simulate(prob, SGD(lr=0.95 * mom_bound, momentum=0.5), 400).diverged_at.item() == -1
    assert simulate(prob, SGD(lr=1.05 * mom_bound, momentum=0.5), 400).diverged_at.item() > 0


@pytest.mark.parametrize("sgd", [SGD(lr=0.4, momentum=0.5), SGD(lr=0.4, schedule=StepDecay(7, 0.5))])
def test_full_batch_prefix_equals_the_shorter_budget(sgd):
    x, y, xt, yt = _data(n=12)
    model = SoftmaxRegression(5, 3).double()
    with torch.no_grad():
        f0, ft = model(x), model(xt)
    theta_all = brute_force_ntk(model, torch.cat([x, xt]))
    nc = f0.numel()
    theta = theta_all[:nc, :nc]
    prob = Problem(theta, f0, y, Loss.CE, theta_all[nc:, :nc], ft, yt)
    short, long = simulate(prob, sgd, 15), simulate(prob, sgd, 40).prefix(15)
    for a, b in ((short.loss, long.loss), (short.accuracy, long.accuracy), (short.test_loss, long.test_loss)):
        assert torch.equal(a, b)
    fast = SGD(lr=1e3)  # diverges early: the flag survives a prefix that contains it, and only then
    div = simulate(Problem(theta, f0, y, Loss.MSE), fast, 30)
    at = div.diverged_at.item()
    assert 0 < at < 30 and div.prefix(at).diverged_at.item() == at and div.prefix(at - 1).diverged_at.item() == -1


def test_full_batch_curve_from_training_forward_equals_separate_evaluation():
    x, y, xt, yt = _data()
    sgd = SGD(lr=0.5, momentum=0.5)
    plan = batch_plan(x.shape[0], sgd, 15, 1, torch.Generator())
    torch.manual_seed(0)
    a = finetune(SoftmaxRegression(5, 3).double(), x, y, sgd, 15, plan)  # reuses the training forward
    torch.manual_seed(0)
    b = finetune(SoftmaxRegression(5, 3).double(), x, y, sgd, 15, plan, x_test=xt, y_test=yt)  # evaluates
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.accuracy, b.accuracy)
    torch.manual_seed(0)
    bad = finetune(SoftmaxRegression(5, 3).double(), x * 30, y, SGD(lr=50.0, momentum=0.9), 40, plan)
    assert bad.diverged and math.isnan(bad.loss[-1].item()) and bad.diverged_at > 0


def test_curve_every_k_steps_is_the_full_curve_there():
    """eval_every=k: the same run, its curve evaluated at 0, k, 2k, ... and T only (NaN elsewhere)."""
    x, y, _, _ = _data()
    for sgd in (SGD(lr=0.5, momentum=0.5), SGD(lr=0.5, batch_size=4)):
        plan = batch_plan(x.shape[0], sgd, 10, 1, torch.Generator().manual_seed(1))
        torch.manual_seed(0)
        every = finetune(SoftmaxRegression(5, 3).double(), x, y, sgd, 10, plan)
        torch.manual_seed(0)
        some = finetune(SoftmaxRegression(5, 3).double(), x, y, sgd, 10, plan, eval_every=3)
        at = [0, 3, 6, 9, 10]
        torch.testing.assert_close(some.loss[at], every.loss[at])
        assert torch.isnan(some.loss[[1, 2, 4, 5, 7, 8]]).all()
    with pytest.raises(Exception, match="eval_every"):
        finetune(SoftmaxRegression(5, 3).double(), x, y, sgd, 10, plan, eval_every=0)


def test_recalibrated_batchnorm_equals_batch_statistics_on_the_training_set():
    from finetime.network import recalibrate_batchnorm

    torch.manual_seed(4)
    m = SmallConvNet(3).double()
    x = torch.randn(9, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        m.train()
        batch_out = m(x)
        recal = recalibrate_batchnorm(m, x)
        torch.testing.assert_close(recal(x), batch_out, rtol=1e-12, atol=1e-12)
    assert not m.training and m.bn1.momentum == 0.1
