import pytest
import torch

from finetime.batches import batch_plan
from finetime.optim import SGD, Sampling


def test_shuffle_epochs_cover_each_sample_once():
    plan = batch_plan(10, SGD(lr=0.1, batch_size=4), steps=6, runs=2, generator=torch.Generator().manual_seed(0))
    for r in range(2):
        epoch = torch.cat([plan.batch(r, t) for t in range(3)])  # 4 + 4 + 2
        assert sorted(epoch.tolist()) == list(range(10))
        assert len(plan.batch(r, 2)) == 2
    torch.testing.assert_close(plan.weights.sum(-1), torch.ones(2, 6, dtype=torch.float64))


def test_drop_last_and_replacement():
    plan = batch_plan(10, SGD(lr=0.1, batch_size=4, drop_last=True), 5, 1, torch.Generator().manual_seed(1))
    assert all(len(plan.batch(0, t)) == 4 for t in range(5))
    plan = batch_plan(10, SGD(lr=0.1, batch_size=4, sampling="replacement"), 5, 1, torch.Generator().manual_seed(1))
    assert plan.indices.shape == (1, 5, 4)


def test_full_batch():
    plan = batch_plan(7, SGD(lr=0.1), 3, 2, torch.Generator())
    assert plan.batch(1, 2).tolist() == list(range(7))


@pytest.mark.parametrize("sgd", [SGD(lr=0.1, batch_size=3), SGD(lr=0.1, batch_size=4, drop_last=True),
                                 SGD(lr=0.1, batch_size=3, sampling=Sampling.REPLACEMENT)])
def test_shorter_budget_is_a_prefix_of_a_longer_one(sgd):
    short = batch_plan(10, sgd, 7, 4, torch.Generator().manual_seed(5))
    long = batch_plan(10, sgd, 20, 4, torch.Generator().manual_seed(5))
    assert torch.equal(short.indices, long.indices[:, :7]) and torch.equal(short.weights, long.weights[:, :7])
    assert not torch.equal(long.indices[0], long.indices[1])  # the runs are still different orders
