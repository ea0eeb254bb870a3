"""The stability cap (``spectrum.capped_kernel``) against sharpness computed directly."""

import math

import pytest
import torch

from finetime.losses import Loss
from finetime.spectrum import CAP_BATCHES, _loss_hessian_sqrt, capped_kernel, sharpness


def _kernel(n=12, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    j = torch.randn(n * c, 40, generator=g, dtype=torch.float64)
    return j @ j.T, torch.randn(n, c, generator=g, dtype=torch.float64)


def _batch_sharpness(theta, f, loss, batches):
    """Mean over the batches of lambda_max(H_B^1/2 Theta_BB H_B^1/2) / |B|, by brute force."""
    c = f.shape[1]
    out = []
    for s in batches:
        rows = (s.unsqueeze(-1) * c + torch.arange(c)).reshape(-1)
        out.append(sharpness(theta[rows][:, rows], f[s], loss))
    return sum(out) / len(out)


@pytest.mark.parametrize("loss", [Loss.CE, Loss.MSE])
def test_full_batch_cap_holds_the_sharpness_at_the_limit(loss):
    theta, f = _kernel()
    before = sharpness(theta, f, loss)
    capped, ratio = capped_kernel(theta, f, loss, before / 2.5)
    assert ratio == pytest.approx(2.5, rel=1e-9)
    after = sharpness(capped, f, loss)
    assert before / 2.5 * 0.97 <= after <= before / 2.5 * (1 + 1e-9)
    # only the top of the spectrum moved, along the kernel's own eigenvectors: PSD, below theta, commuting with it
    ev = torch.linalg.eigvalsh(capped)
    assert ev[0] > -1e-9 * ev[-1]
    assert torch.linalg.eigvalsh(theta - capped)[0] > -1e-8 * ev[-1]
    torch.testing.assert_close(capped @ theta, theta @ capped)
    unchanged = torch.linalg.eigvalsh(theta)[: theta.shape[0] // 2]
    torch.testing.assert_close(ev[: theta.shape[0] // 2], unchanged)


def test_mse_cap_is_the_top_eigenvalue_at_its_closed_form():
    """With MSE the loss Hessian is 2/C I: the sharpness is 2 lambda_max / (N C), so the capped kernel's top
    eigenvalue is limit N C / 2."""
    theta, f = _kernel(n=10, c=4, seed=1)
    limit = 0.3 * sharpness(theta, f, Loss.MSE)
    capped, _ = capped_kernel(theta, f, Loss.MSE, limit)
    assert float(torch.linalg.eigvalsh(capped)[-1]) == pytest.approx(limit * 10 * 4 / 2, rel=1e-2)


def test_kernel_below_the_limit_is_returned_as_it_is():
    theta, f = _kernel()
    s = sharpness(theta, f, Loss.CE)
    out, ratio = capped_kernel(theta, f, Loss.CE, 2 * s)
    assert out is theta and ratio == pytest.approx(0.5, rel=1e-9)
    out, ratio = capped_kernel(theta, f, Loss.CE, 20 * s, batch_size=4)  # a batch's sharpness is the larger
    assert out is theta and ratio < 1


def test_minibatch_cap_holds_the_mean_batch_sharpness():
    theta, f = _kernel(n=16, seed=2)
    n, b = 16, 4
    g = torch.Generator().manual_seed(5)
    batches = [torch.randperm(n, generator=g)[:b] for _ in range(CAP_BATCHES)]
    before = _batch_sharpness(theta, f, Loss.CE, batches)
    limit = before / 3
    capped, ratio = capped_kernel(theta, f, Loss.CE, limit, batch_size=b, generator=torch.Generator().manual_seed(5))
    assert ratio == pytest.approx(3.0, rel=1e-6)
    after = _batch_sharpness(capped, f, Loss.CE, batches)
    assert limit * 0.97 <= after <= limit * (1 + 1e-9)
    # a batch sees less of the kernel than the full batch does: its sharpness is the larger
    assert before > sharpness(theta, f, Loss.CE)


def test_hessian_sqrt_squares_to_the_softmax_hessian():
    f = torch.randn(5, 4, dtype=torch.float64)
    hs = _loss_hessian_sqrt(f, Loss.CE)
    p = torch.softmax(f, -1)
    torch.testing.assert_close(hs @ hs, torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2))


def test_outputs_that_blew_up_leave_the_kernel_alone():
    theta, f = _kernel()
    f[3, 1] = float("inf")
    out, ratio = capped_kernel(theta, f, Loss.CE, 1e-6)
    assert out is theta and math.isnan(ratio)
