"""The kernel refreshed from a sub-block (``kernel.update.nystrom_update``) against exact answers."""

import pytest
import torch

from finetime.kernel.update import nystrom_update, subset_rows


def _psd(p, r, gen):
    g = torch.randn(p, r, generator=gen, dtype=torch.float64)
    return g @ g.T


def test_subset_rows_flat_index():
    assert subset_rows(torch.tensor([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]


def test_unchanged_block_gives_the_old_kernel_and_scaled_block_scales_it():
    gen = torch.Generator().manual_seed(0)
    k = _psd(12, 12, gen)
    rows = torch.tensor([1, 4, 5, 9])
    a = k[rows][:, rows]
    same, _, s = nystrom_update(k, rows, a)
    assert s == pytest.approx(1.0)
    torch.testing.assert_close(same, k)
    scaled, _, s = nystrom_update(k, rows, 3.5 * a)
    assert s == pytest.approx(3.5)
    torch.testing.assert_close(scaled, 3.5 * k)


def test_block_is_reproduced_and_result_is_psd():
    gen = torch.Generator().manual_seed(1)
    k = _psd(20, 20, gen)
    rows = torch.arange(0, 20, 3)
    b = _psd(rows.numel(), rows.numel(), gen)
    new, _, _ = nystrom_update(k, rows, b)
    torch.testing.assert_close(new[rows][:, rows], b)
    torch.testing.assert_close(new, new.T)
    assert torch.linalg.eigvalsh(new).min() > -1e-9 * torch.linalg.eigvalsh(new).max()


def test_exact_when_the_subset_spans_the_features():
    """Old kernel Phi Phi^T of rank r <= |S|, new kernel Phi M Phi^T (features moved linearly): recovered everywhere,
    test cross-kernel included."""
    gen = torch.Generator().manual_seed(2)
    r = 4
    phi = torch.randn(30, r, generator=gen, dtype=torch.float64)
    phi_test = torch.randn(7, r, generator=gen, dtype=torch.float64)
    m = _psd(r, r, gen) + torch.eye(r, dtype=torch.float64)
    old, old_test = phi @ phi.T, phi_test @ phi.T
    new_true, new_test_true = phi @ m @ phi.T, phi_test @ m @ phi.T
    rows = torch.tensor([0, 3, 8, 11, 17, 25])
    new, new_test, _ = nystrom_update(old, rows, new_true[rows][:, rows], old_test)
    torch.testing.assert_close(new, new_true)
    torch.testing.assert_close(new_test, new_test_true)


def test_block_shape_is_checked():
    k = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="expected"):
        nystrom_update(k, torch.tensor([0, 1]), torch.eye(3, dtype=torch.float64))
