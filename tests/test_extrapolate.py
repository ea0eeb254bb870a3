import torch

from finetime.dynamics import mse_curve, spectral_projections
from finetime.extrapolate import extrapolate_spectrum, mse_loss_at, size_time_map
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


def test_time_map_slows_the_subset_down_on_a_larger_set():
    theta, f0, y = _kernel_with_spectrum(40, 3, 1.5, 1.3, 0)
    at = size_time_map(theta, f0, y, 400, 0.5, 60)
    assert at[0] == 0 and bool((at[1:] >= at[:-1]).all()) and bool((at <= torch.arange(61)).all())
    assert at[-1] < 59  # more samples: the late, slow modes hold the whole set back


def test_conserving_extrapolation_keeps_the_per_sample_trace_and_residual():
    theta, f0, y = _kernel_with_spectrum(40, 3, 1.5, 1.3, 0)
    lam, proj = spectral_projections(theta, f0, y)
    plain = extrapolate_spectrum(theta, f0, y, 400)
    kept = extrapolate_spectrum(theta, f0, y, 400, conserve=True)
    torch.testing.assert_close(kept.mu.sum(), lam.clamp_min(0).sum() / 40)
    torch.testing.assert_close(kept.q.sum(), proj.sum() / 40)
    assert plain.q.sum() > 1.1 * kept.q.sum()  # power-law tails to 1200 ranks add residual that is not there
    torch.testing.assert_close(kept.mu[: kept.k_fit], plain.mu[: plain.k_fit])
