"""Closed forms and the paper's ODE/SDE against the exact simulator."""

import torch

from finetime.dynamics import Problem, mse_curve, simulate, simulate_ode, simulate_sde, spectral_projections
from finetime.losses import Loss
from finetime.optim import SGD


def _problem(n=12, c=3, d=40, seed=0, loss=Loss.MSE):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(n * c, d, generator=g, dtype=torch.float64) / d**0.5
    f0 = 0.3 * torch.randn(n, c, generator=g, dtype=torch.float64)
    return Problem(j @ j.T, f0, torch.randint(0, c, (n,), generator=g), loss)


def test_mse_closed_form_equals_discrete_gd():
    p = _problem()
    lam, proj = spectral_projections(p.theta, p.f0, p.y)
    for momentum in (0.0, 0.7):
        sim = simulate(p, SGD(lr=0.5, momentum=momentum), 60).loss[0]
        closed = mse_curve(lam, proj, 0.5, 60, n_outputs=p.n * p.c, momentum=momentum)
        torch.testing.assert_close(sim, closed, rtol=1e-10, atol=1e-12)


def test_mse_continuous_closed_form_equals_ode():
    p = _problem()
    lam, proj = spectral_projections(p.theta, p.f0, p.y)
    ode = simulate_ode(p, SGD(lr=0.5), 40, substeps=8).loss[0]
    closed = mse_curve(lam, proj, 0.5, 40, n_outputs=p.n * p.c, continuous=True)
    torch.testing.assert_close(ode, closed, rtol=1e-8, atol=1e-12)


def test_ode_uses_effective_learning_rate():
    p = _problem(loss=Loss.CE)
    a = simulate_ode(p, SGD(lr=0.2, momentum=0.5), 20).loss[0]
    b = simulate_ode(p, SGD(lr=0.4), 20).loss[0]
    torch.testing.assert_close(a, b)


def test_sde_mean_agrees_with_exact_ensemble():
    """The paper's SDE models independent batches drawn with replacement. Under that sampling its ensemble mean must
    agree with the exact simulator's ensemble mean within the exact ensemble's run-to-run spread (fixed seeds)."""
    p = _problem(n=24, c=3, d=60, loss=Loss.CE)
    sgd = SGD(lr=1.0, batch_size=4, sampling="replacement")
    exact = simulate(p, sgd, 80, runs=400, generator=torch.Generator().manual_seed(0)).loss
    sde = simulate_sde(p, sgd, 80, runs=400, generator=torch.Generator().manual_seed(1)).loss
    for t in (10, 40, 80):
        spread = exact[:, t].std()
        assert spread > 0
        assert abs(sde[:, t].mean() - exact[:, t].mean()) < spread, t
    # and the noise is real: SDE runs spread out like SGD runs do
    assert 0.3 < sde[:, 40].std() / exact[:, 40].std() < 3.0


def test_full_batch_sde_is_deterministic_drift():
    p = _problem(loss=Loss.CE)
    a = simulate_sde(p, SGD(lr=0.3), 15, runs=5, generator=torch.Generator().manual_seed(0))
    b = simulate(p, SGD(lr=0.3), 15)
    assert a.loss.shape == (1, 16)
    torch.testing.assert_close(a.loss, b.loss)


def test_shuffled_epochs_are_less_noisy_than_independent_batches():
    """Epochs without replacement cancel batch noise within each epoch; the SDE (independent steps) cannot see this."""
    p = _problem(n=24, c=3, d=60, loss=Loss.CE)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    shuffle = simulate(p, SGD(lr=1.0, batch_size=4), 60, runs=200, generator=gen()).loss[:, 60]
    repl = simulate(p, SGD(lr=1.0, batch_size=4, sampling="replacement"), 60, runs=200, generator=gen()).loss[:, 60]
    assert shuffle.std() < 0.5 * repl.std()
