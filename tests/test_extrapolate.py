import torch

from finetime.dynamics import mse_curve, spectral_projections
from finetime.extrapolate import extrapolate_spectrum, mse_loss_at
from finetime.spectrum import fit_power_law


def test_power_law_fit_recovers_known_exponents():
    ks = torch.arange(1, 400, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for c, s in ((3.0, 1.2), (0.5, 2.0)):
        noisy = c * ks ** (-s) * torch.exp(0.05 * torch.randn(ks.shape, generator=g, dtype=torch.float64))
        ch, sh = fit_power_law(noisy, 5, 300)
        assert abs(sh - s) < 0.02 and abs(ch / c - 1) < 0.1


def _kernel_with_spectrum(n, c, s, r, seed):
    """A kernel whose normalized eigenvalues follow k^-s and whose residual projections follow k^-r exactly."""
    from finetime.losses import one_hot

    g = torch.Generator().manual_seed(seed)
    k = n * c
    vec, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    ks = torch.arange(1, k + 1, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    delta = vec @ (n * ks ** (-r)).sqrt()
    f0 = delta.view(n, c) + one_hot(y, c, torch.float64)
    return (vec * (n * ks ** (-s))) @ vec.T, f0, y


def test_extrapolation_keeps_the_subset_curve_and_adds_slow_modes():
    theta, f0, y = _kernel_with_spectrum(40, 3, 1.5, 1.3, 0)
    same = extrapolate_spectrum(theta, f0, y, 40)
    assert abs(same.eig_power[1] - 1.5) < 0.05 and abs(same.proj_power[1] - 1.3) < 0.1
    lam, proj = spectral_projections(theta, f0, y)
    ref = mse_curve(lam, proj, 0.5, 50, n_outputs=120)
    # at N' itself, the measured head plus the fitted tail reproduce the subset's own curve closely
    torch.testing.assert_close(mse_loss_at(same, 0.5, 50), ref, rtol=0.05, atol=1e-4)
    bigger = extrapolate_spectrum(theta, f0, y, 400)
    assert bigger.mu.numel() == 1200
    # more samples: more slow modes, so the loss decays more slowly
    assert mse_loss_at(bigger, 0.5, 50)[-1] > mse_loss_at(same, 0.5, 50)[-1] * 0.99
