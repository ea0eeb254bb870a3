import math

import torch

from finetime.training_time import (first_crossing, normalized_threshold, steps_to_epsilon, steps_to_target,
                                    summarize_times)


def test_first_crossing_and_not_reached():
    c = torch.tensor([[3.0, 2.0, 1.0, 0.5], [3.0, 2.9, 2.8, 2.7]])
    assert steps_to_target(c, 1.0).tolist() == [2, -1]


def test_normalized_threshold_per_curve():
    c = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    assert abs(normalized_threshold(c, 0.4).item() - 0.8) < 1e-6
    assert steps_to_epsilon(c, 0.4).tolist() == [2]
    assert steps_to_epsilon(c, 0.01).tolist() == [3]


def test_diverged_curve_has_no_time():
    c = torch.tensor([[2.0, 1.0, math.nan, math.nan]])
    assert steps_to_epsilon(c, 0.1).tolist() == [-1]
    assert steps_to_target(c, 1.5).tolist() == [1]


def test_summary_median_band_and_unreached():
    s = summarize_times(torch.tensor([10, 11, 12, 13, -1]))
    assert s.step == 12 and s.low == 10 and s.high is None and s.reached_fraction == 0.8
    assert summarize_times(torch.tensor([-1, -1, 3])).step is None


def test_first_crossing_broadcast_threshold():
    c = torch.tensor([[1.0, 0.5], [1.0, 0.9]])
    assert first_crossing(c, torch.tensor([0.6, 0.95])).tolist() == [1, 1]


def test_model_error_intervals_follow_the_calibration():
    from finetime.intervals import gap_bin, model_interval, open_loop_margin

    assert gap_bin(None) == "no check" and gap_bin(0.004) == "0-0.01" and gap_bin(0.05) == "0.01-0.1"
    assert gap_bin(2.0) == ">= 0.1"
    small, large = open_loop_margin(0.001), open_loop_margin(0.5)
    assert 0 < small < large  # a failed linearity check means a wider interval
    lo, hi = model_interval(40, small, 150)
    assert lo <= 40 <= hi and lo == max(int(math.floor(41 * math.exp(-small) - 1)), 0)
    assert model_interval(140, large, 150)[1] is None  # beyond the run
    assert model_interval(None, small, 150) is None


def test_model_error_interval_widens_the_batch_order_band():
    """The interval is the 5-95% band over simulated orders, its log half-widths about the step scaled, widened by
    the margin: by hand; a band of zero width (full-batch GD) or a scale of 0 is the symmetric interval; a band
    whose upper end is never reached leaves the interval open above."""
    from finetime.intervals import band_scale, model_interval

    m = 0.2
    lo, hi = model_interval(40, m, 500, band=(35, 48), scale=3.0)
    assert lo == max(int(math.floor(41 * math.exp(-(3 * math.log(41 / 36) + m)) - 1)), 0)
    assert hi == int(math.ceil(41 * math.exp(3 * math.log(49 / 41) + m) - 1))
    assert lo < model_interval(40, m, 500, band=(35, 48), scale=1.0)[0] < 35  # wider with the scale, beyond the band
    symmetric = model_interval(40, m, 500)
    assert model_interval(40, m, 500, band=(40, 40), scale=3.0) == symmetric
    assert model_interval(40, m, 500, band=(35, 48), scale=0.0) == symmetric
    assert model_interval(40, m, 500, band=(35, None), scale=3.0)[1] is None
    assert model_interval(40, m, 500, band=(35, None), scale=0.0) == symmetric
    assert band_scale() > 0  # the shipped calibration scales the band
    assert model_interval(40, m, 500, band=(35, 48)) == model_interval(40, m, 500, band=(35, 48), scale=band_scale())


def test_validation_says_whether_the_interval_holds_the_real_step():
    from finetime.validate import compare_times

    predicted = {"a": {"step": 40, "interval": [30, 52]}, "b": {"step": 40, "interval": [30, None]},
                 "c": {"step": 40, "interval": [30, 52]}, "d": {"step": 40, "interval": None},
                 "e": {"step": 40, "interval": [30, 52]}}
    actual = {"a": {"step": 52}, "b": {"step": 140}, "c": {"step": 29}, "d": {"step": 41}, "e": {"step": None}}
    out = compare_times(predicted, actual, predicted_diverged=False, actual_diverged=False)
    assert [out[k]["in_interval"] for k in "abcde"] == [True, True, False, None, None]
    assert compare_times(predicted, actual, predicted_diverged=False, actual_diverged=True)["a"]["in_interval"] is None
