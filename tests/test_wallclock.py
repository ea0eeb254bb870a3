import pytest
import torch
import torch.nn as nn

import finetime.wallclock as wallclock
from finetime.batches import batch_plan
from finetime.optim import SGD
from finetime.wallclock import epoch_batch_sizes, seconds_per_step, step_times


@pytest.mark.parametrize("n, opt", [
    (50, SGD(lr=0.1, batch_size=16)), (48, SGD(lr=0.1, batch_size=16)), (50, SGD(lr=0.1, batch_size=16, drop_last=True)),
    (50, SGD(lr=0.1, batch_size=16, sampling="replacement")), (50, SGD(lr=0.1)), (40, SGD(lr=0.1, batch_size=40)),
])
def test_epoch_batch_sizes_are_the_plans(n, opt):
    """The sizes and counts are those of the batch plan's first epoch (a plan of many epochs has them in proportion)."""
    sizes = epoch_batch_sizes(n, opt)
    plan = batch_plan(n, opt, 60, 1, torch.Generator().manual_seed(0))
    per_epoch = sum(k for _, k in sizes)
    seen = [int((plan.weights[0, t] > 0).sum()) for t in range(plan.steps)][: per_epoch]
    assert sorted(seen) == sorted(b for b, k in sizes for _ in range(k))
    if n == 50 and opt.batch_size == 16 and not opt.drop_last and opt.sampling.value == "shuffle":
        assert sizes == [(16, 3), (2, 1)]


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.lin(x)


def test_every_batch_size_of_an_epoch_is_timed_and_weighted(monkeypatch):
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    model = _Recorder()
    times = step_times(model, x, y, SGD(lr=0.1, batch_size=4), 3)
    assert len(times) == 3 and all(t > 0 for t in times) and model.sizes == []  # a copy is trained, not the model

    calls = []

    def fake(model, x, y, optimizer, count, **kw):  # a step costs its batch size in seconds
        calls.append((optimizer.batch_size, count))
        return [float(optimizer.batch_size or x.shape[0])] * count

    monkeypatch.setattr(wallclock, "step_times", fake)
    # 10 samples in batches of 4: two batches of 4 and one of 2 per epoch
    assert seconds_per_step(model, x, y, SGD(lr=0.1, batch_size=4)) == pytest.approx((2 * 4 + 2) / 3)
    assert calls == [(4, 5), (2, 5)]  # two warm-up and three timed steps of each size
    calls.clear()
    assert seconds_per_step(model, x, y, SGD(lr=0.1, batch_size=4, drop_last=True)) == 4.0
    assert seconds_per_step(model, x, y, SGD(lr=0.1)) == 10.0 and calls[-1] == (None, 5)
