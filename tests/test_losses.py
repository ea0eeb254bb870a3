import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from finetime.errors import ConfigError
from finetime.losses import Loss, LossSpec, accuracy, loss_floor, per_sample_loss, residual

LOSSES = [*Loss, LossSpec(Loss.CE, 0.1), LossSpec(Loss.CE, 0.5)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 7), c=st.integers(2, 6), seed=st.integers(0, 1000), loss=st.sampled_from(LOSSES))
def test_residual_is_gradient_of_per_sample_loss(n, c, seed, loss):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, c, (n,), generator=g)
    (grad,) = torch.autograd.grad(per_sample_loss(f, y, loss).sum(), f)
    torch.testing.assert_close(residual(f.detach(), y, loss), grad)


def test_mean_loss_matches_torch():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=g)
    torch.testing.assert_close(per_sample_loss(f, y, Loss.CE).mean(), F.cross_entropy(f, y))
    torch.testing.assert_close(per_sample_loss(f, y, Loss.MSE).mean(), F.mse_loss(f, F.one_hot(y, 4).double()))
    for a in (0.1, 0.3):
        torch.testing.assert_close(per_sample_loss(f, y, LossSpec(Loss.CE, a)).mean(),
                                   F.cross_entropy(f, y, label_smoothing=a))


def test_label_smoothing_settings_are_checked():
    assert LossSpec(Loss.CE, 0.0) == LossSpec("ce")
    for a in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="must be in"):
            LossSpec(Loss.CE, a)
    with pytest.raises(ConfigError, match="not to mse"):
        LossSpec(Loss.MSE, 0.1)


def test_batched_leading_dims_and_accuracy():
    f = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 1.0]]])
    y = torch.tensor([0, 1])
    assert per_sample_loss(f, y, Loss.CE).shape == (2, 2)
    torch.testing.assert_close(accuracy(f, y), torch.tensor([1.0, 0.5]))


def test_mean_loss_and_accuracy_match_separate_functions():
    from finetime.losses import mean_loss_and_accuracy

    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=g)
    for loss in LOSSES:
        lo, ac = mean_loss_and_accuracy(f, y, loss)
        torch.testing.assert_close(lo, per_sample_loss(f, y, loss).mean(-1))
        torch.testing.assert_close(ac, accuracy(f, y))


def test_loss_floor_is_the_least_loss():
    """With label smoothing the loss is least where the softmax is the smoothed target: the floor, and nothing lower
    (it is 0 without smoothing and for mse)."""
    c, a = 5, 0.1
    spec = LossSpec(Loss.CE, a)
    t = torch.full((c,), a / c, dtype=torch.float64)
    t[2] += 1 - a
    y = torch.tensor([2])
    assert float(per_sample_loss(t.log().unsqueeze(0), y, spec)) == pytest.approx(loss_floor(spec, c), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    assert (per_sample_loss(torch.randn(200, c, generator=g, dtype=torch.float64) * 3, y, spec)
            > loss_floor(spec, c)).all()
    assert loss_floor(Loss.CE, c) == 0 == loss_floor(Loss.MSE, c)
