"""Adam/AdamW: gradient moments and the preconditioned kernel against brute force; the function-space rule against
real torch.optim where it is exact (the first update of full-batch Adam on a linear model)."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from finetime.config import RunConfig
from finetime.dynamics import Problem, simulate
from finetime.errors import ConfigError
from finetime.kernel import compute_kernel, gradient_moments, inverse_root_scale, jacobian
from finetime.losses import Loss, per_sample_loss, residual
from finetime.optim import SGD, Adam, AdamW, Linear, lr_factors


class TextLike(nn.Module):
    """Embedding bag -> LayerNorm -> MLP: every parameter layout the engine factors or keeps dense."""

    def __init__(self, vocab=13, d=6, c=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 5)
        self.fc2 = nn.Linear(5, c)

    def forward(self, ids):
        h = self.ln(self.emb(ids).mean(1))
        return self.fc2(torch.tanh(self.fc1(h)))


def _setup(seed=0, n=7):
    torch.manual_seed(seed)
    model = TextLike().double().eval()
    x = torch.randint(0, 13, (n, 4))
    y = torch.randint(0, 3, (n,))
    return model, x, y


def _per_sample_grads(model, x, r):
    j = jacobian(model, x)  # (N*C, D), parameters concatenated in order
    n, c = r.shape
    return (j.view(n, c, -1) * r.unsqueeze(-1)).sum(1)  # (N, D)


def test_gradient_moments_match_brute_force():
    model, x, y = _setup()
    with torch.no_grad():
        r = residual(model(x), y, Loss.CE)
    mom = gradient_moments(model, x, r, chunk_size=3, full_squares=True)
    fast = gradient_moments(model, x, r, chunk_size=3)  # row and column sums from position Gram matrices
    g = _per_sample_grads(model, x, r)
    start = 0
    for name, p in model.named_parameters():
        block = g[:, start : start + p.numel()]
        start += p.numel()
        torch.testing.assert_close(mom.mean[name], block.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast.mean[name], block.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mom.sq[name], (block**2).mean(0), rtol=1e-10, atol=1e-12)
        if mom.layout[name] is not None:
            sq = (block**2).mean(0).view(-1, mom.layout[name][2])
            for m in (mom, fast):
                torch.testing.assert_close(m.sq_rows[name], sq.sum(1), rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(m.sq_cols[name], sq.sum(0), rtol=1e-10, atol=1e-12)
    assert "emb.weight" not in fast.sq and "fc1.weight" not in fast.sq  # the squares were never formed
    assert mom.layout["fc1.weight"] == (1, 5, 6) and mom.layout["emb.weight"] == (1, 13, 6)
    assert mom.layout["fc1.bias"] is None and mom.layout["ln.weight"] is None


def test_square_sums_from_position_grams_match_the_squares():
    """Grouped factors over several positions, and one-hot rows with repeated tokens and padding (-1)."""
    from finetime.kernel._factors import Factors, IndexFactor
    from finetime.kernel._scales import gradient_sums

    g = torch.Generator().manual_seed(0)
    n, c, p = 4, 3, 2
    r = torch.randn(n, c, generator=g, dtype=torch.float64)
    dense = Factors(torch.randn(n, c, 2, p, 12, generator=g, dtype=torch.float64),
                    torch.randn(n, 1, 2, p, 13, generator=g, dtype=torch.float64))
    index = torch.tensor([[0, 3, 3, -1], [2, 2, 2, 2], [1, -1, 4, 1], [4, 0, 3, 2]])
    one_hot = Factors(IndexFactor(index, 5), torch.randn(n, c, 1, 4, 3, generator=g, dtype=torch.float64))
    for t in (dense, one_hot):
        fast, full = gradient_sums(t, r), gradient_sums(t, r, full=True)
        assert fast.sq is None and full.sq is not None
        for a, b in ((fast.total, full.total), (fast.rows, full.rows), (fast.cols, full.cols)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scales_from_row_and_column_sums_equal_the_full_ones():
    from finetime.predict import scales_from_moments

    model, x, y = _setup(4)
    with torch.no_grad():
        r = residual(model(x), y, Loss.CE)
    opt = AdamW(lr=1e-3, batch_size=3)
    full = scales_from_moments(opt, gradient_moments(model, x, r, full_squares=True))
    fast = scales_from_moments(opt, gradient_moments(model, x, r))
    for name, s in full.items():
        for part in ("left", "right", "dense"):
            if getattr(s, part) is not None:
                torch.testing.assert_close(getattr(fast[name], part), getattr(s, part), rtol=1e-9, atol=1e-12)


def test_subset_second_moments_use_the_runs_minibatch_noise():
    """Moments measured on a subset of the training set (a re-linearization refresh) get the minibatch noise of
    batches drawn from the whole set, for dense and factored parameters alike."""
    from finetime.predict import second_moments

    model, x, y = _setup(5, n=9)
    with torch.no_grad():
        r = residual(model(x), y, Loss.CE)
    opt = AdamW(lr=1e-3, batch_size=2)
    mom = gradient_moments(model, x[:5], r[:5], full_squares=True)  # measured on 5 of the 9 samples
    v = second_moments(opt, mom, 9)
    noise = opt.minibatch_noise(9)
    assert noise != opt.minibatch_noise(5)
    for name, mean in mom.mean.items():
        want = (1 - noise) * mean**2 + noise * mom.sq[name]
        lay = mom.layout[name]
        if lay is None:
            torch.testing.assert_close(v[name][0], want, rtol=1e-10, atol=1e-14)
        else:
            want = want.view(lay[0] * lay[1], lay[2])
            torch.testing.assert_close(v[name][0], want.sum(1), rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(v[name][1], want.sum(0), rtol=1e-10, atol=1e-14)


def _diag_p(scales, model):
    """The diagonal P the scales stand for, in parameter layout."""
    out = []
    for name, p in model.named_parameters():
        s = scales[name]
        root = s.dense if s.dense is not None else (s.left.reshape(-1, 1) * s.right.reshape(1, -1)).reshape(-1)
        out.append(root**2)
    return torch.cat(out)


@pytest.mark.parametrize("method,kw", [("exact", {}), ("factored", {})])
def test_preconditioned_kernel_matches_brute_force(method, kw):
    model, x, y = _setup(1)
    with torch.no_grad():
        r = residual(model(x), y, Loss.CE)
    mom = gradient_moments(model, x, r, full_squares=True)
    opt = AdamW(lr=1e-3, batch_size=3)
    scales = {k: inverse_root_scale(opt.second_moments(mom.mean[k], mom.sq[k], mom.n), mom.layout[k], 1e-8)
              for k in mom.mean}
    p = _diag_p(scales, model)
    j = jacobian(model, x)
    ref = (j * p) @ j.T
    k = compute_kernel(model, x, method=method, scales=scales, chunk_size=2, **kw)
    torch.testing.assert_close(k.theta, ref, rtol=1e-9, atol=1e-12)
    assert k.meta["preconditioner"] == "scaled"


def test_preconditioned_projection_is_unbiased():
    model, x, y = _setup(2)
    with torch.no_grad():
        r = residual(model(x), y, Loss.CE)
    mom = gradient_moments(model, x, r, full_squares=True)
    scales = {k: inverse_root_scale(mom.sq[k], mom.layout[k], 1e-8) for k in mom.mean}
    j = jacobian(model, x)
    ref = (j * _diag_p(scales, model)) @ j.T
    ests = torch.stack([compute_kernel(model, x, projection_dim=16, seed=s, exact_flops=0, scales=scales).theta
                        for s in range(48)])
    single = torch.stack([(e - ref).norm() / ref.norm() for e in ests]).mean()
    assert single > 0.02
    assert (ests.mean(0) - ref).norm() / ref.norm() < single / 3


def test_rank_one_second_moments_factor_exactly():
    v = torch.outer(torch.rand(4, dtype=torch.float64) + 0.1, torch.rand(5, dtype=torch.float64) + 0.1)
    s = inverse_root_scale(v.reshape(-1), (1, 4, 5), eps=1e-14)
    p = (s.left.reshape(-1, 1) * s.right.reshape(1, -1)) ** 2
    torch.testing.assert_close(p, 1 / v.sqrt(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("opt_cls,wd,clip", [(Adam, 0.0, None), (AdamW, 0.0, None), (AdamW, 0.3, None),
                                             (AdamW, 0.3, 0.01)])
def test_first_update_matches_torch(opt_cls, wd, clip):
    """Full batch, first step: v_hat = g^2 and m_hat = g, so Adam is exactly a diagonal preconditioner of the
    moments at w0 (dense parameters: a linear model's bias, and one sample for the rank-one weight). A clipped
    gradient gives the same first update (Adam is blind to its scale), and the gradient's norm that clipping measures
    is the kernel's ``g^T P g`` times ``norm_scale``, exactly at w0."""
    from finetime.dynamics.exact import expected_gradient_square

    torch.manual_seed(3)
    n, d, c = 1, 4, 3
    x, y = torch.randn(n, d, dtype=torch.float64), torch.randint(0, c, (n,))
    model = nn.Linear(d, c).double()
    opt = opt_cls(lr=0.05, weight_decay=wd, adam_eps=1e-12, betas=(0.8, 0.99), max_grad_norm=clip)
    with torch.no_grad():
        f0 = model(x)
    mom = gradient_moments(model, x, residual(f0, y, Loss.CE), full_squares=True)
    v = {k: opt.second_moments(mom.mean[k], mom.sq[k], mom.n) for k in mom.mean}
    scales = {k: inverse_root_scale(v[k], mom.layout[k], opt.adam_eps) for k in mom.mean}
    k = compute_kernel(model, x, scales=scales, with_jw0=bool(wd))
    problem = Problem(k.theta, k.f0, y, Loss.CE, jw0=k.jw0)
    norm_scale = float(sum(t.sum() for t in v.values()) / expected_gradient_square(problem, k.f0.reshape(1, -1)))
    traj = simulate(dataclasses.replace(problem, norm_scale=norm_scale), opt, steps=1)
    real = opt.torch_optimizer(model.parameters())
    loss = per_sample_loss(model(x), y, Loss.CE).mean()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip is not None else math.inf)
    q = expected_gradient_square(problem, k.f0.reshape(1, -1))
    assert abs(norm_scale * float(q) - float(norm) ** 2) < 1e-9 * float(norm) ** 2
    if clip is not None:
        assert norm > 10 * clip  # it clips
    real.step()
    with torch.no_grad():
        after = per_sample_loss(model(x), y, Loss.CE).mean()
    assert abs(traj.loss[0, 1].item() - after.item()) < 1e-6 * after.item()
    assert abs(traj.loss[0, 1].item() - loss.item()) > 1e-3  # it moved


def test_adam_settings_and_linear_schedule():
    cfg = RunConfig.from_dict({"optimizer": "adamw", "lr": 3e-5, "batch_size": 16, "weight_decay": 0.01,
                               "schedule": "linear", "warmup_steps": 4, "steps": 12, "betas": [0.9, 0.98]})
    assert isinstance(cfg.optimizer, AdamW) and cfg.optimizer.betas == (0.9, 0.98)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.relinearizes  # its decoupled decay is tracked
    assert not cfg.replace(relinearize_adam=False).relinearizes  # --no-relinearize-adam: the one kernel
    assert cfg.predictor.tolerance(cfg.optimizer) == 0.001  # Adam's linearity check is ten times tighter than SGD's
    assert cfg.predictor.tolerance(SGD(lr=0.1)) == 0.01
    assert cfg.replace(linearity_tol=0.05).predictor.tolerance(cfg.optimizer) == 0.05
    sgd_l2 = RunConfig.from_dict({"optimizer": "sgd", "lr": 1e-3, "weight_decay": 0.01, "steps": 12})
    assert not sgd_l2.relinearizes  # SGD's L2 decay is not in the range of J^T: one kernel
    torch.testing.assert_close(lr_factors(Linear(warmup_steps=4), 12)[3:].tolist(),
                               [1.0] + [1 - t / 8 for t in range(8)])
    with pytest.raises(ConfigError, match="momentum"):
        RunConfig.from_dict({"optimizer": "adamw", "momentum": 0.9})
    with pytest.raises(ConfigError, match="adamw"):
        Adam(lr=1e-3, weight_decay=0.1)
    with pytest.raises(ConfigError, match="betas"):
        AdamW(lr=1e-3, betas=(0.9, 1.0))


@pytest.mark.parametrize("opt_cls,wd,batch,clip", [(AdamW, 0.05, 4, None), (Adam, 0.0, None, None),
                                                   (AdamW, 0.05, 4, 0.05), (Adam, 0.0, None, 0.05)])
def test_head_only_simulation_matches_real_adam(opt_cls, wd, batch, clip):
    """A trained head on a frozen backbone: the weight-space simulator reproduces torch.optim.Adam/AdamW run by
    run, schedule and gradient clipping included."""
    from finetime.batches import batch_plan
    from finetime.dynamics import simulate_head
    from finetime.finetune import finetune
    from finetime.network import linear_head

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    for p in model[0].parameters():
        p.requires_grad_(False)
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    trained = ["2.weight", "2.bias"]
    opt = opt_cls(lr=0.05, weight_decay=wd, batch_size=batch, schedule=Linear(warmup_steps=3), max_grad_norm=clip)
    module, features = linear_head(model, trained, x)
    assert module is model[2] and features.shape == (10, 8)
    k = compute_kernel(model, x)
    problem = Problem(k.theta, k.f0, y, Loss.CE)
    plan = batch_plan(10, opt, 20, 1, torch.Generator().manual_seed(0)) if batch else None
    traj = simulate_head(problem, features, module.weight, module.bias, opt, 20, plan=plan)
    real_plan = plan if plan is not None else batch_plan(10, opt, 20, 1, torch.Generator())
    untouched = copy.deepcopy(model)
    real = finetune(model, x, y, opt, 20, real_plan, params=trained)
    torch.testing.assert_close(traj.loss[0], real.loss, rtol=1e-10, atol=1e-12)
    if clip is not None:  # the clip binds: without it the run is another one
        free = finetune(untouched, x, y, dataclasses.replace(opt, max_grad_norm=None), 20, real_plan, params=trained)
        assert (free.loss - real.loss).abs().max() > 1e-3
    assert real.loss[-1] < 0.8 * real.loss[0]
    assert linear_head(model, ["0.weight", "2.weight"], x) is None
