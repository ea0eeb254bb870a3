"""The library API the README promises: predict, validate and sweep called directly, typed config and results."""

import dataclasses

import pytest
import torch

from finetime import PRESETS, RunConfig, predict, sweep, validate
from finetime.config import Predictor
from finetime.errors import ConfigError
from finetime.optim import SGD, StepDecay

SMALL = dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3, per_class=4, image_size=12,
             steps=20, runs=4)


def test_flat_config_round_trips_and_nests():
    cfg = RunConfig.from_dict({**SMALL, "lr": 0.05, "momentum": 0.9, "batch_size": 4, "schedule": "step",
                               "step_size": 5, "gamma": 0.5, "bn": "batch", "predictor": "relinearized3"})
    assert isinstance(cfg.optimizer, SGD) and cfg.optimizer.momentum == 0.9 and cfg.optimizer.batch_size == 4
    assert cfg.optimizer.schedule == StepDecay(5, 0.5) and cfg.task.bn.value == "batch"
    assert cfg.predictor == PRESETS["relinearized3"] and cfg.predictor_name == "relinearized3"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(lr=0.1).optimizer.lr == 0.1 and cfg.replace(lr=0.1).optimizer.momentum == 0.9
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ConfigError, match="--predictor"):
        RunConfig.from_dict({"predictor": "oracle"})


def test_schedule_reaches_every_learning_rate_reader():
    """The learning-rate table is the one place lr and schedule meet: the simulator, the real run and the
    stability ratio all see the warm-up."""
    opt = SGD(lr=0.2, schedule=StepDecay(3, 0.5, warmup_steps=2))
    table = opt.lr_table(8)
    assert table.tolist() == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1])  # decay counts after warm-up
    w = torch.nn.Parameter(torch.zeros(1))
    real = opt.torch_optimizer([w])
    sched = opt.scheduler(real, 8)
    seen = []
    for _ in range(8):
        seen.append(real.param_groups[0]["lr"])
        real.step()
        sched.step()
    assert seen == pytest.approx(table.tolist())
    assert opt.peak_lr(8) == pytest.approx(0.2)


def test_predict_returns_a_typed_result():
    cfg = RunConfig.from_dict({**SMALL, "lr": 0.05, "batch_size": 4, "target_loss": (0.9,)})
    pred = predict(cfg)
    assert pred.trajectory.loss.shape == (4, 21)
    assert set(pred.times) == {"eps=0.01", "eps=0.1", "eps=0.4", "target=0.9"}
    assert pred.seconds_per_step > 0 and pred.cost["total"] >= pred.cost["kernel"]
    d = pred.to_dict()
    assert d["predicted"]["predictor"] == "adaptive" and d["config"]["lr"] == 0.05
    assert d["predicted"]["training_time"]["eps=0.1"]["step"] == pred.times["eps=0.1"].step


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_predicts(name):
    cfg = dataclasses.replace(RunConfig.from_dict({**SMALL, "lr": 0.2}), predictor=PRESETS[name])
    d = predict(cfg).to_dict()["predicted"]
    assert d["loss"][-1] < d["loss"][0]
    assert d["method"] == {"adaptive": "relinearized", "relinearized3": "relinearized", "linear": "exact",
                           "paper": "ode"}[name]


def test_validate_head_only_is_exact():
    """A trained head on a frozen backbone is linear in its weights: the replay on the real batch order is the
    real run."""
    cfg = RunConfig.from_dict({**SMALL, "lr": 0.05, "batch_size": 4, "freeze_backbone": True})
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)
    d = val.to_dict()
    assert all(e["relative"] == 0 for e in d["error_replay"].values())
    assert d["cost_ratio"] == pytest.approx(val.cost_ratio, rel=1e-3)


def test_sweep_rows_match_predict():
    base = RunConfig.from_dict({**SMALL, "lr": 0.02, "target_loss": (0.9,)})
    out = sweep(base, {"lr": [0.02, 0.2], "batch_size": [0, 4]})
    assert len(out["rows"]) == 4
    for r in out["rows"]:
        single = predict(base.replace(predictor="linear", **r["settings"]))
        assert single.times["target=0.9"].step == r["steps_to_target"]["step"]


def test_counts_in_a_config_dict_must_be_whole_numbers():
    assert RunConfig.from_dict({**SMALL, "steps": 20.0}).steps == 20  # JSON writes some counts as floats
    import numpy as np
    assert RunConfig.from_dict({**SMALL, "batch_size": np.int64(4)}).optimizer.batch_size == 4  # a numpy grid
    for key, value in (("classes", 2.5), ("batch_size", "8"), ("seed", True), ("steps", float("inf"))):
        with pytest.raises(ConfigError, match=f"--{key.replace('_', '-')} must be a whole number"):
            RunConfig.from_dict({**SMALL, key: value})


def test_sweep_ranks_unreached_before_divergent_settings():
    """Rows that reach the target come first by seconds; then those that do not within their budget, lowest final loss
    first; then the divergent ones, whatever order the grid lists them in."""
    base = RunConfig.from_dict({**SMALL, "steps": 6, "target_loss": (0.05,)})
    rows = sweep(base, {"lr": [1e9, 1e-4, 0.02, 1e8]})["rows"]
    assert [r["status"] for r in rows] == ["not reached", "not reached", "diverges", "diverges"]
    assert rows[0]["settings"]["lr"] == 0.02 and rows[0]["final_loss"] < rows[1]["final_loss"]
    reached = sweep(base.replace(target_loss=(0.99 * rows[0]["final_loss"] + 0.01 * rows[1]["final_loss"],)),
                    {"lr": [1e9, 1e-4, 0.02]})["rows"]
    assert [r["status"] for r in reached] == ["ok", "not reached", "diverges"]


def test_sweep_keeps_the_paper_predictor_and_refuses_unknown_grid_keys():
    base = RunConfig.from_dict({**SMALL, "predictor": "paper"})
    assert sweep(base, {"lr": [0.02, 0.2]})["config"]["predictor"] == "paper"
    with pytest.raises(ConfigError, match="cannot sweep"):
        sweep(base, {"classes": [2, 3]})
    assert RunConfig.from_dict({**SMALL}).predictor.kind is Predictor.RELINEARIZED


def test_summed_outputs_kernel_from_the_config():
    cfg = RunConfig.from_dict({**SMALL, "lr": 0.05, "kernel_outputs": "sum"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.kernel.outputs == "sum"
    pred = predict(cfg)
    assert pred.kernel.meta["outputs"] == "sum" and pred.times["eps=0.1"].step is not None
    with pytest.raises(ConfigError, match="kernel-outputs"):
        RunConfig.from_dict({**SMALL, "kernel_outputs": "max"})


def test_validate_head_only_adamw_is_exact():
    """Adam is not linear in the gradient, but a trained head on a frozen backbone is simulated in weight space
    by torch's own AdamW: the replay on the real batch order is the real run."""
    cfg = RunConfig.from_dict({**SMALL, "optimizer": "adamw", "lr": 0.1, "batch_size": 4, "weight_decay": 0.01,
                               "schedule": "linear", "warmup_steps": 3, "freeze_backbone": True})
    val = validate(cfg)
    assert val.prediction.trajectory.method == "head"
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)
    assert val.real.loss[-1] < val.real.loss[0] - 0.05  # it trained


def test_adamw_predicts_on_the_preconditioned_kernel_and_sweeps_per_batch_size():
    base = RunConfig.from_dict({**SMALL, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01,
                                "target_loss": (0.9,)})
    pred = predict(base.replace(batch_size=4, relinearize_adam=False))
    assert pred.kernel.meta["preconditioner"].startswith("adamw second moments at w0, batch 4")
    d = pred.to_dict()["predicted"]
    assert d["preconditioned"] and d["predictor"] == "linear" and d["loss"][-1] < d["loss"][0]
    relin = predict(base.replace(batch_size=4, linearity_tol=0.0)).to_dict()["predicted"]
    assert relin["relinearization"]["kernels"] == 3 and relin["loss"][-1] < relin["loss"][0]
    out = sweep(base, {"lr": [1e-3, 1e-2], "batch_size": [0, 4]})
    assert len(out["rows"]) == 4 and not any("error" in r for r in out["rows"])
    for r in out["rows"]:  # a sweep predicts each setting on the one kernel at w0, as --predictor linear does
        single = predict(base.replace(**r["settings"], predictor="linear"))
        assert single.times["target=0.9"].step == r["steps_to_target"]["step"]
