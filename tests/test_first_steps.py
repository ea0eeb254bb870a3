"""The first real steps (``finetime.first_steps``): the real run's prefix, the time-warp, and the CLI around them."""

import copy
import json
import math

import pytest
import torch

from finetime.batches import batch_plan
from finetime.config import RunConfig
from finetime.dynamics import Trajectory
from finetime.errors import ConfigError
from finetime.finetune import finetune
from finetime.first_steps import FirstSteps, apply_first_steps, fit_speed, warp_curves, warp_trajectory
from finetime.network import BatchNormMode
from models_for_tests import SmallConvNet
from test_cli import FAST, run


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_stop_after_is_the_prefix_of_the_whole_run():
    """``finetune(stop_after=k)``: the first k steps of the same run, schedule included (warm-up over all steps)."""
    x, y = _data()
    torch.manual_seed(0)
    m = SmallConvNet(3)
    sgd = RunConfig.from_dict({"lr": 0.2, "momentum": 0.9, "batch_size": 3, "schedule": "linear",
                               "warmup_steps": 4, "steps": 12}).optimizer
    plan = batch_plan(8, sgd, 12, 1, torch.Generator().manual_seed(3))
    whole = finetune(copy.deepcopy(m), x, y, sgd, 12, plan, bn=BatchNormMode.BATCH)
    first = finetune(copy.deepcopy(m), x, y, sgd, 12, plan, bn=BatchNormMode.BATCH, stop_after=5)
    torch.testing.assert_close(first.loss[:6], whole.loss[:6])
    assert torch.isnan(first.loss[6:]).all()
    with pytest.raises(ConfigError, match="stop_after"):
        finetune(copy.deepcopy(m), x, y, sgd, 12, plan, stop_after=13)


def test_curves_on_a_subset_of_the_training_samples():
    x, y = _data(n=9)
    torch.manual_seed(0)
    m = SmallConvNet(3)
    sgd = RunConfig.from_dict({"lr": 0.1, "batch_size": 3, "steps": 4}).optimizer
    plan = batch_plan(9, sgd, 4, 1, torch.Generator().manual_seed(1))
    sub = torch.tensor([0, 4, 7])
    run_sub = finetune(copy.deepcopy(m), x, y, sgd, 4, plan, eval_samples=sub)
    with torch.no_grad():
        m.eval()
        expected = torch.nn.functional.cross_entropy(m(x[sub]), y[sub])
    assert float(run_sub.loss[0]) == pytest.approx(float(expected), rel=1e-5)
    whole = finetune(copy.deepcopy(m), x, y, sgd, 4, plan)
    assert float(whole.loss[0]) != pytest.approx(float(run_sub.loss[0]), rel=1e-3)


def test_warp_curves_runs_a_curve_faster_or_slower():
    t = torch.arange(21, dtype=torch.float64)
    c = torch.exp(-0.1 * t)[None]
    torch.testing.assert_close(warp_curves(c, 1.0), c)
    torch.testing.assert_close(warp_curves(c, 0.5)[0, ::2][:11], c[0, :11])  # half as fast: c(t/2)
    fast = warp_curves(c, 2.0)[0]  # twice as fast: c(2t), continued past the end by the geometric tail
    torch.testing.assert_close(fast[:11], c[0, ::2])
    assert (torch.diff(fast[10:]) < 0).all() and math.isfinite(float(fast[-1]))


def test_warped_divergence_moves_with_the_speed():
    c = torch.tensor([[1.0, 0.9, 0.8, 0.7, math.nan, math.nan, math.nan, math.nan, math.nan]], dtype=torch.float64)
    slow = warp_curves(c, 0.5)
    assert torch.isfinite(slow[0, :7]).all() and torch.isnan(slow[0, 7:]).all()  # c(t/2) finite up to t/2 <= 3
    traj = Trajectory(c.clone(), torch.zeros_like(c), torch.tensor([4]))
    assert int(warp_trajectory(traj, 0.5).diverged_at[0]) == 7


def test_fit_speed_recovers_a_known_warp():
    t = torch.arange(101, dtype=torch.float64)
    predicted = 0.1 + 1.5 * torch.exp(-0.05 * t)
    for a in (0.3, 1.0, 2.5):
        measured = (0.1 + 1.5 * torch.exp(-0.05 * a * t))[:6]
        assert fit_speed(predicted, measured) == pytest.approx(a, rel=0.05)


def test_apply_first_steps_meets_the_measured_loss_and_records_it():
    t = torch.arange(51, dtype=torch.float64)
    runs = torch.stack([1.6 * torch.exp(-0.08 * t) + 0.02 * k for k in range(3)])
    traj = Trajectory(runs.clone(), 1 - runs / 2, torch.full((3,), -1), method="exact", info={"kernels": 3})
    measured = [float(1.6 * math.exp(-0.02 * s) + 0.02) for s in range(6)]  # 4x slower than predicted
    out = apply_first_steps(traj, FirstSteps(5, measured, 0.1))
    fs = out.info["first_steps"]
    assert out.info["kernels"] == 3 and fs["speed"] == pytest.approx(0.25, rel=0.1)
    assert float(out.loss[:, 5].mean()) == pytest.approx(measured[5], rel=1e-9)
    assert float(out.loss[0, 0]) == pytest.approx(float(runs[0, 0]))
    # a measured divergence is a divergence, whatever the kernel said
    traj.test_loss = runs.clone()
    bad = apply_first_steps(traj, FirstSteps(5, measured[:3] + [100.0, math.nan, math.nan], 0.1, diverged_at=3))
    assert bad.diverged_fraction == 1.0 and bad.info["first_steps"]["speed"] is None
    for c in (bad.loss, bad.accuracy, bad.test_loss):  # every curve ends where the measured run diverged
        assert torch.isnan(c[:, 3:]).all() and torch.isfinite(c[:, :3]).all()


def test_first_steps_setting_is_checked():
    assert RunConfig.from_dict({"bn": "batch"}).first_steps() == 5
    frozen = RunConfig.from_dict({"bn": "frozen"})
    assert frozen.first_steps() == 0 and frozen.first_steps(0.5) == 0
    assert frozen.first_steps(1.0) == 5  # far from linear at the check: measure the start
    assert RunConfig.from_dict({"bn": "frozen", "first_steps": "3"}).first_steps() == 3
    assert RunConfig.from_dict({"bn": "frozen", "first_steps": 0}).first_steps(50.0) == 0
    assert RunConfig.from_dict({"bn": "batch", "predictor": "linear"}).first_steps() == 0  # a kernel-only preset
    # with batch statistics the measured steps replace the refreshes, and only when there are steps to measure
    assert RunConfig.from_dict({"bn": "batch"}).batch_statistics_fitted
    assert not RunConfig.from_dict({"bn": "batch"}).relinearizes
    assert RunConfig.from_dict({"bn": "batch", "first_steps": 0}).relinearizes
    assert RunConfig.from_dict({"bn": "batch", "steps": 1}).relinearizes  # no step to measure before the last
    for bad, msg in ((-1, "number of steps"), ("some", "number of steps or auto"), (150, "fewer than --steps")):
        with pytest.raises(ConfigError, match=msg):
            RunConfig.from_dict({"first_steps": bad, "steps": 150})


def test_predict_with_batch_statistics_runs_the_first_steps(capsys, tmp_path):
    """--bn batch: the default measures 5 real steps and warps the curves to them; --first-steps 0 does not."""
    path = tmp_path / "bn.json"
    code, out, _ = run(capsys, "predict", *FAST[:-1], "--bn", "batch", "--lr", "0.05", "--batch-size", "4",
                       "--json", str(path))
    assert code == 0 and "first 5 real steps" in out
    r = json.loads(path.read_text())
    fs = r["predicted"]["first_steps"]
    assert fs["steps"] == 5 and len(fs["losses"]) == 6 and fs["speed"] > 0 and fs["seconds"] > 0
    assert r["cost_seconds"]["first_steps"] > 0
    assert "relinearization" not in r["predicted"] and r["predicted"]["predictor"] == "adaptive"  # one kernel
    assert abs(r["predicted"]["loss"][0] - fs["losses"][0]) < 1e-4  # same start: batch statistics over the set
    path0 = tmp_path / "bn0.json"
    code, out, _ = run(capsys, "predict", *FAST[:-1], "--bn", "batch", "--lr", "0.05", "--batch-size", "4",
                       "--first-steps", "0", "--json", str(path0))
    assert code == 0 and "first_steps" not in json.loads(path0.read_text())["predicted"]
    assert "first 5 real steps" not in out


def test_far_from_linear_measures_the_first_steps(capsys, tmp_path):
    """Frozen statistics: the first steps run where the linearity check finds the network far from linear (loss gap
    >= FAR_FROM_LINEAR), and not where it is near."""
    far, near = tmp_path / "far.json", tmp_path / "near.json"
    base = [a for a in FAST if a not in ("--steps", "30")]
    assert run(capsys, "predict", *base, "--steps", "90", "--lr", "0.5", "--momentum", "0.9", "--json", str(far))[0] == 0
    assert run(capsys, "predict", *base, "--steps", "90", "--lr", "2", "--json", str(near))[0] == 0
    pf, pn = json.loads(far.read_text())["predicted"], json.loads(near.read_text())["predicted"]
    assert pf["relinearization"]["loss_gaps"][0] >= 1.0 and pf["first_steps"]["speed"] > 0
    assert pn["relinearization"]["loss_gaps"][0] < 1.0 and "first_steps" not in pn
