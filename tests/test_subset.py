"""The kernel on a subset (--kernel-samples): sample counts, the class-balanced subset, the time map from the
spectrum, and the curves carried to the whole set."""

import json

import pytest
import torch

from finetime.cli import main
from finetime.config import RunConfig
from finetime.errors import ConfigError
from finetime.extrapolate import progress_map, warp_curves
from finetime.predict import predict, prepare
from finetime.subset import AUTO_ALL_UP_TO, AUTO_SAMPLES, class_balanced_subset, kernel_sample_count

TINY = dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3, per_class=40, image_size=12,
            steps=40, lr=0.05, batch_size=4, runs=8)


def test_sample_counts():
    assert kernel_sample_count("auto", AUTO_ALL_UP_TO, 5, 32) == AUTO_ALL_UP_TO
    assert kernel_sample_count("auto", 2500, 5, 32) == AUTO_SAMPLES
    assert kernel_sample_count("auto", 20000, 10, 256) == 1020  # four batches, rounded down to whole classes
    assert kernel_sample_count("all", 2500, 5, 32) == 2500
    assert kernel_sample_count(203, 2500, 5, None) == 200
    assert kernel_sample_count(5000, 2500, 5, 32) == 2500
    with pytest.raises(ConfigError, match="at least 4 batches"):
        kernel_sample_count(100, 2500, 5, 32)
    assert kernel_sample_count(50, 2500, 5, None) == 50  # ten per class: the least the extrapolation takes
    for few in (49, 25, 3):
        with pytest.raises(ConfigError, match="at least 10 per class"):
            kernel_sample_count(few, 2500, 5, None)
    assert kernel_sample_count(3, 3, 5, None) == 3  # the whole set, however small, is no subset


def test_config_checks_the_setting():
    assert RunConfig.from_dict({"kernel_samples": "300"}).kernel_samples == 300
    assert RunConfig.from_dict({"kernel_samples": 300}).to_dict()["kernel_samples"] == 300
    for bad in ("1", "some", 0, 1.5):
        with pytest.raises(ConfigError, match="--kernel-samples must be"):
            RunConfig.from_dict({"kernel_samples": bad})
    with pytest.raises(ConfigError, match="give one of them"):
        RunConfig.from_dict({"kernel_samples": 100, "extrapolate_to": 1000})


def test_subset_is_class_balanced_and_keeps_the_sampled_order():
    task = prepare(RunConfig.from_dict(TINY))
    d = task.data
    sub = class_balanced_subset(d, 30)
    assert torch.bincount(sub.y).tolist() == [10, 10, 10]
    for k in range(3):
        members = torch.nonzero(d.y == k).flatten()[:10]
        torch.testing.assert_close(sub.x[sub.y == k], d.x[members])
        assert [sub.train_index[i] for i in torch.nonzero(sub.y == k).flatten()] == [d.train_index[i] for i in members]
    assert class_balanced_subset(d, 31).train_index == sub.train_index  # m / C of each class, rounded down


def test_progress_map_is_exact_on_straight_curves():
    here = 1 - 0.02 * torch.arange(41, dtype=torch.float64)  # the subset: 2% of the start per step
    there = 1 - 0.005 * torch.arange(41, dtype=torch.float64)  # the whole set: four times slower
    torch.testing.assert_close(progress_map(here, there), 0.25 * torch.arange(41, dtype=torch.float64))
    torch.testing.assert_close(progress_map(here, here), torch.arange(41, dtype=torch.float64))
    # an unstable subset curve counts as flat after its minimum; levels it never reaches map to the last step
    up = torch.tensor([1.0, 0.5, 0.8, 2.0])
    assert progress_map(up, torch.tensor([1.0, 0.75, 0.5, 0.25])).tolist() == [0.0, 0.5, 1.0, 3.0]


def test_warp_reads_curves_between_steps():
    curves = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, float("nan"), float("nan")]])
    out = warp_curves(curves, torch.tensor([0.0, 0.5, 1.5, 3.0]))
    assert out[0].tolist() == [4.0, 3.5, 2.5, 1.0]
    assert out[1, :2].tolist() == [1.0, 1.5] and out[1, 2:].isnan().all()


def test_predict_on_a_subset_reports_it_and_times_steps_on_all_samples():
    cfg = RunConfig.from_dict({**TINY, "kernel_samples": 30})
    res = predict(cfg)
    assert res.task.data.x.shape[0] == 30 and res.task.train_data.x.shape[0] == 120
    assert res.problem.n == 30
    d = res.to_dict()
    ks = d["predicted"]["kernel_samples"]
    assert ks["samples"] == 30 and ks["of"] == 120 and 0 < ks["subset_steps_at_end"] <= 40
    assert len(d["config"]["train_indices"]) == 120
    assert res.trajectory.loss.shape == (8, 41) and res.trajectory.f is None
    whole = predict(RunConfig.from_dict(TINY))
    assert "kernel_samples" not in whole.to_dict()["predicted"] and whole.task.full_data is None


def test_cli_prints_the_subset_and_validate_trains_on_all_samples(capsys, tmp_path):
    args = ["--data", "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3", "--per-class",
            "40", "--image-size", "12", "--steps", "30", "--lr", "0.05", "--batch-size", "4", "--quiet",
            "--kernel-samples", "30"]
    assert main(["predict", *args]) == 0
    assert "kernel on 30 of 120 training samples" in capsys.readouterr().out
    out = tmp_path / "v.json"
    assert main(["validate", *args, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["predicted"]["kernel_samples"]["of"] == 120 and len(res["config"]["train_indices"]) == 120
    assert len(res["actual"]["loss"]) == 31


def test_sweep_refuses_an_explicit_subset(capsys):
    code = main(["sweep", "--data", "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3",
                 "--per-class", "40", "--image-size", "12", "--steps", "30", "--quiet", "--kernel-samples", "30",
                 "--lr", "0.01,0.05"])
    assert code == 2 and "--kernel-samples is for predict and validate" in capsys.readouterr().err


def test_relinearizing_during_training_refuses_a_subset_prediction():
    from finetime.online import Refiner

    pred = predict(RunConfig.from_dict({**TINY, "kernel_samples": 30}))
    ref = Refiner.from_prediction(pred)
    with pytest.raises(ConfigError, match="saw 30 of 120"):
        ref.relinearize(pred.task.model, 10)


def test_refresh_sample_count_and_balanced_indices():
    from finetime.subset import balanced_indices, refresh_sample_count

    assert refresh_sample_count("all", 400, 5) == 400
    assert refresh_sample_count("auto", 400, 5) == 100  # a quarter
    assert refresh_sample_count("auto", 100, 5) == 80  # at least 16 per class
    assert refresh_sample_count("auto", 30, 5) == 30  # all where that is more than there are
    assert refresh_sample_count(52, 400, 5) == 50  # a multiple of the classes
    assert refresh_sample_count(900, 400, 5) == 400
    y = torch.tensor([0, 1, 2, 1, 0, 2, 0, 1, 2])  # three classes of three
    assert balanced_indices(y, 3, 6).tolist() == [0, 1, 2, 3, 4, 5]  # the first two of each
    assert balanced_indices(y, 3, 7).tolist() == [0, 1, 2, 3, 4, 5]  # m / C of each, rounded down
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 2])  # classes of 3, 2 and 4: in proportion, largest remainders
    assert balanced_indices(y, 3, 6).tolist() == [0, 1, 2, 3, 4, 7]  # 6 x (3, 2, 4) / 9 = 2, 1.33, 2.67 -> 2, 1, 3
    assert balanced_indices(y, 3, 9).tolist() == list(range(9))
    assert balanced_indices(torch.tensor([0, 0, 1]), 2, 4).tolist() == [0, 1, 2]  # all of a short class


def test_stratified_counts_keep_every_class_and_the_proportions():
    from finetime.subset import stratified_counts

    assert stratified_counts([50, 50, 50], 30) == [10, 10, 10]
    assert stratified_counts([900, 90, 10], 100) == [90, 9, 1]  # in proportion
    assert stratified_counts([990, 5, 5], 100) == [98, 1, 1]  # 99, 0.5, 0.5: every class keeps one
    assert stratified_counts([3, 2, 4], 100) == [3, 2, 4]  # no more than there are
    assert sum(stratified_counts([37, 101, 12, 250], 77)) == 77
