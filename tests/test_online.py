"""finetime.online: the refiner against exact answers (warped curves, exact priors), its inputs, the log reader and
`finetime watch`, and the HF / Lightning callbacks in real trainer runs."""

import json
import math

import pytest
import torch

from finetime import RunConfig, validate
from finetime.cli import main
from finetime.errors import ConfigError, DataError
from finetime.online import (Calibration, Refiner, extend_curve, fit_exponential, fit_power_law, load_calibration,
                             refine_curve, warp_posterior)
from finetime.online._fit import SPEED_PERSISTENCE
from finetime.online.refiner import time_interval
from finetime.online.logs import read_log
from finetime.training_time import Threshold, steps_to_threshold

T = 150


def curve(rate, floor=0.05, top=1.6, steps=T, at=None):
    """``floor + top exp(-rate t)`` at ``t = 0..steps`` (or at the real positions ``at``)."""
    t = torch.arange(steps + 1, dtype=torch.float64) if at is None else at
    return floor + top * torch.exp(-rate * t)


def real_times(c):
    return {e: int(steps_to_threshold(c.unsqueeze(0), Threshold.eps(e))[0]) for e in (0.01, 0.1, 0.4)}


def behind(rate, speed, s, persistence):
    """The run the refiner's model describes for the prediction ``curve(rate)``: ``curve(rate)`` at ``speed t`` up
    to step ``s``, then on at ``speed^persistence`` times the prediction's pace from where it got to."""
    t = torch.arange(T + 1, dtype=torch.float64)
    return curve(rate, at=torch.where(t <= s, speed * t, speed * s + speed ** persistence * (t - s)))


@pytest.mark.parametrize("speed", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("persistence", [0.0, 0.5, 1.0])
def test_a_run_that_follows_the_refiners_model_is_recovered(speed, persistence):
    """The default (persistence 0): a run slower or faster than predicted over the observed steps that then goes on
    at the prediction's pace; persistence 1: a run that is a time-warp of the prediction throughout."""
    prior, real = curve(0.02), behind(0.02, speed, 15, persistence)
    r = Refiner(prior, steps=T, calibration=None, persistence=persistence)
    for s in range(1, 16):
        r.observe(s, float(real[s]))
    est = r.estimate()
    assert est.method == "warp" and est.speed == pytest.approx(speed, rel=0.03)
    for e, step in real_times(real).items():
        assert abs(est.thresholds[f"eps={e}"].step - step) <= max(1, 0.02 * step)


def test_persistence_is_checked_and_zero_by_default():
    assert Refiner(curve(0.02), steps=T).persistence == SPEED_PERSISTENCE == 0.0
    with pytest.raises(ConfigError, match="persistence"):
        Refiner(curve(0.02), steps=T, persistence=1.5)


def test_nothing_observed_is_the_prediction_and_an_exact_prior_is_kept():
    prior = curve(0.03)
    r = Refiner(prior, steps=T, calibration=None)
    est = r.estimate()
    assert est.method == "prior" and est.observed_step == 0
    assert {int(k[4:] == k[4:]) for k in est.thresholds} and all(
        est.thresholds[f"eps={e}"].step == s for e, s in real_times(prior).items())
    for s in range(1, 40):
        r.observe(s, float(prior[s]))
    est = r.estimate()
    assert est.speed == pytest.approx(1.0, abs=0.02)
    assert all(est.thresholds[f"eps={e}"].step == s for e, s in real_times(prior).items())


def test_exact_prediction_of_a_real_run_is_kept_by_the_refiner():
    """Head-only fine-tuning is its own linearization: the prediction is the real run, so observing 30% of the real
    run must leave the training times where the real run has them."""
    cfg = RunConfig.from_dict(dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3,
                                   per_class=4, image_size=12, steps=40, runs=1, lr=0.1, freeze_backbone=True))
    val = validate(cfg)
    real = val.real.loss.double()
    r = Refiner.from_prediction(val.prediction, calibration=None)
    for s in range(1, 13):
        r.observe(s, float(real[s]))
    est = r.estimate()
    assert est.speed == pytest.approx(1.0, abs=0.03)
    for key, th in est.thresholds.items():
        assert abs(th.step - int(steps_to_threshold(real.unsqueeze(0), Threshold.parse(key))[0])) <= 1


def test_an_sgd_prediction_hands_its_runs_through_the_json_to_watch(tmp_path, capsys):
    """`finetime predict --json` of an SGD run keeps its simulated runs; `finetime watch` refines from them."""
    out = tmp_path / "p.json"
    assert main(["predict", "--data", "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3",
                 "--per-class", "4", "--image-size", "12", "--steps", "30", "--runs", "4", "--batch-size", "4",
                 "--lr", "0.05", "--predictor", "linear", "--json", str(out)]) == 0
    pred = json.loads(out.read_text())["predicted"]
    assert len(pred["loss_runs"]) == 4 and all(len(run) == 31 for run in pred["loss_runs"])
    r = Refiner.from_prediction(out, calibration=None)
    assert r.prior.shape == (4, 31) and r.steps == 30
    assert pred["interval_bin"] == "no check" == r.interval_bin  # --predictor linear makes no linearity check
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n" + "".join(f"{s},{pred['loss_runs'][2][s]}\n" for s in range(1, 11)))
    capsys.readouterr()
    assert main(["watch", str(log), "--prediction", str(out)]) == 0
    assert "step 10 of 30 observed" in capsys.readouterr().out
    # nothing observed yet: the refiner says what predict printed, training times and model-error intervals alike
    est = Refiner.from_prediction(out).estimate()
    assert est.method == "prediction" and est.calibrated and est.speed is None
    assert est.loss == pytest.approx(pred["loss"], rel=1e-5)
    for key, tt in pred["training_time"].items():
        got = est.thresholds[key]
        assert (got.step, [got.low, got.high], got.remaining_steps) == (tt["step"], tt["interval"], tt["step"])
    # a threshold the prediction did not print is read off the refined curves instead
    other = Refiner.from_prediction(out, thresholds=["eps=0.1", "target=0.5"]).estimate()
    assert other.method == "prior"
    # `watch` started with the run: nothing logged yet (an empty file, a header) is the prediction itself
    first = pred["training_time"]["eps=0.1"]
    for text in ("", "step,loss\n"):
        log.write_text(text)
        assert main(["watch", str(log), "--prediction", str(out)]) == 0
        said = capsys.readouterr().out
        assert "step 0 of 30 observed (0%), prediction" in said and f"step {first['step']} " in said
    log.write_text("when,what\n")  # a header without step and loss columns is still an error
    assert main(["watch", str(log), "--prediction", str(out)]) == 2
    assert "step and loss columns" in capsys.readouterr().err
    # a log that runs past the prediction's steps says so
    log.write_text("step,loss\n5,0.5\n45,0.1\n")
    assert main(["watch", str(log), "--prediction", str(out)]) == 0
    assert "reaches step 45, past the prediction's 30 steps" in capsys.readouterr().err


def test_divergence_observed_and_predicted():
    prior = curve(0.02)
    r = Refiner(prior, steps=T, calibration=None)
    for s, v in ((1, 1.7), (2, 5.0), (3, 40.0)):
        r.observe(s, v)
    est = r.estimate()
    assert est.diverged and all(t.step is None for t in est.thresholds.values())
    assert "diverged" in est.summary()
    # a prediction that diverges at step 30: a run that follows it is predicted to diverge; so is a run 10x slower
    # over its first 15 steps, which then goes on at the prediction's pace (it reaches the divergence at step 43);
    # stretched whole (persistence 1) the slow run would diverge at step 300 of 150, so it is not
    blowing = curve(0.02)
    blowing[30:] = math.nan
    follows = Refiner(blowing, steps=T, calibration=None)
    slow = Refiner(blowing, steps=T, calibration=None)
    stretched = Refiner(blowing, steps=T, calibration=None, persistence=1.0)
    slower_curve = curve(0.002)
    for s in range(1, 16):
        follows.observe(s, float(blowing[s]))
        slow.observe(s, float(slower_curve[s]))
        stretched.observe(s, float(slower_curve[s]))
    assert follows.estimate().diverged
    assert slow.estimate().diverged
    assert not stretched.estimate().diverged


def test_kernel_free_fits_recover_their_own_families():
    t = torch.arange(0, 30, dtype=torch.float64)
    expo = 0.2 + 1.4 * torch.exp(-0.05 * torch.arange(101, dtype=torch.float64))
    got = fit_exponential(t, expo[:30], 100)
    torch.testing.assert_close(got, expo, rtol=2e-2, atol=1e-3)
    power = 0.1 + 2.0 * (torch.arange(101, dtype=torch.float64) + 10.0) ** -0.5
    torch.testing.assert_close(fit_power_law(t, power[:30], 100), power, rtol=2e-2, atol=1e-3)
    # without a prediction the refiner uses the exponential fit
    r = refine_curve(None, t, expo[:30], 100)
    assert r.method == "exponential"


def test_exponential_tail_extension_is_exact_for_an_exponential():
    c = curve(0.03, steps=400)
    torch.testing.assert_close(extend_curve(c[:151], 400), c, rtol=1e-9, atol=1e-12)
    flat = torch.ones(20, dtype=torch.float64)
    assert torch.equal(extend_curve(flat, 40), torch.ones(41, dtype=torch.float64))


def test_posterior_weights_and_refined_curve_pass_through_the_observations():
    prior, real = curve(0.02), curve(0.03)
    t = torch.arange(11, dtype=torch.float64)
    r = warp_posterior(prior, t, real[:11], T)
    assert r.weights.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(r.curves[:, :11], real[:11].expand(r.curves.shape[0], -1))
    med = r.median_curve()
    assert med.shape == (T + 1,) and med[11:].le(real[10] + 1e-12).all()


def test_an_ensemble_of_identical_runs_is_the_single_curve():
    prior, real = curve(0.02), curve(0.03)
    t = torch.arange(16, dtype=torch.float64)
    one = refine_curve(prior, t, real[:16], T)
    many = refine_curve(prior.expand(4, -1), t, real[:16], T)  # on the ensemble's coarser speed grid
    assert abs(math.log(many.speed / one.speed)) <= 0.041  # half a step of the coarser grid
    for e in (0.01, 0.1, 0.4):
        th = Threshold.eps(e)
        for a, b in zip(time_interval(many, th, T, None)[:3], time_interval(one, th, T, None)[:3]):
            assert abs(a - b) <= 1


def test_the_observed_steps_pick_the_simulated_run_the_real_one_follows():
    """Two simulated batch orders, one with loss spikes at steps 20-30 and 38-60: a real run seen to step 35 without
    the first spike takes the other run's shape from there on (the mean of the two would carry half the second
    spike)."""
    smooth = curve(0.02)
    spiky = smooth.clone()
    spiky[20:31] += 1.5
    spiky[38:61] += 1.5
    ensemble = torch.stack([spiky, smooth])
    t = torch.arange(36, dtype=torch.float64)
    r = refine_curve(ensemble, t, smooth[:36], T)
    torch.testing.assert_close(r.median_curve()[36:70], smooth[36:70], rtol=0.01, atol=0.0)
    for e, step in real_times(smooth).items():
        assert abs(time_interval(r, Threshold.eps(e), T, None)[0] - step) <= 1
    # a run that diverges at step 40 in half the ensemble, against a real run that goes on smoothly: the diverging
    # half loses its weight once the real run is past 40 steps
    blowing = smooth.clone()
    blowing[40:] = math.nan
    mixed = torch.stack([blowing, smooth, blowing, smooth])
    assert refine_curve(mixed, t[:11], smooth[:11], T).diverged_weight == pytest.approx(0.5, abs=0.05)
    late = refine_curve(mixed, torch.arange(61, dtype=torch.float64), smooth[:61], T)
    assert not late.diverged and late.diverged_weight < 0.01
    # three quarters of the runs diverge at step 40: before training the estimate is divergence
    assert refine_curve(torch.stack([blowing, blowing, blowing, smooth]), t[:1], smooth[:1], T).diverged


def test_the_level_is_read_from_the_last_few_observations():
    """A run on the predicted curve with +-10% noise in its logged losses, last one high: the level the refined
    curves go on from follows that one point with ``level_points=1`` and the run's true level with 10."""
    prior = curve(0.02)
    t = torch.arange(21, dtype=torch.float64)
    noisy = prior[:21] * (1 + 0.1 * (-1.0) ** t)
    one = refine_curve(prior, t, noisy, T, level_points=1).median_curve()
    ten = refine_curve(prior, t, noisy, T, level_points=10).median_curve()
    assert float(one[-1] / prior[-1]) == pytest.approx(1.1, rel=0.02)
    assert float(ten[-1] / prior[-1]) == pytest.approx(1.0, rel=0.02)


def test_large_ensembles_stay_within_their_budget():
    from finetime.online._fit import ENSEMBLE_BUDGET, LOG_SPEEDS, _ensemble_grid
    runs, grid = _ensemble_grid(32, 150, 61, LOG_SPEEDS)  # the benchmark's runs: all of them
    assert runs == 32 and float(grid[1] - grid[0]) == pytest.approx(0.08) and torch.equal(grid, LOG_SPEEDS[::4])
    runs, grid = _ensemble_grid(32, 20_000, 61, LOG_SPEEDS)
    assert runs * grid.shape[0] * 20_001 <= ENSEMBLE_BUDGET and 1 <= runs < 32
    long_curve = curve(0.0005, steps=3000)
    r = refine_curve(long_curve.expand(32, -1), torch.arange(301, dtype=torch.float64), long_curve[:301], 3000)
    assert r.curves.numel() <= ENSEMBLE_BUDGET and r.speed == pytest.approx(1.0, abs=0.05)


def test_a_prediction_json_hands_its_simulated_runs_to_the_refiner():
    from finetime.predict import RUNS_JSON_BUDGET, runs_record
    smooth = curve(0.02)
    spiky = smooth.clone()
    spiky[20:31] += 1.5
    spiky[38:61] += 1.5
    runs = runs_record(torch.stack([spiky, smooth]))
    assert len(runs) == 2 and runs[1][0] == pytest.approx(float(smooth[0]), rel=1e-6)
    mean = ((spiky + smooth) / 2).tolist()
    r = Refiner.from_prediction({"predicted": {"loss": mean, "loss_runs": runs, "training_time": {"eps=0.1": {}}}},
                                calibration=None)
    assert r.prior.shape == (2, T + 1) and r.steps == T
    for s in range(1, 36):
        r.observe(s, float(smooth[s]))
    assert abs(r.estimate().thresholds["eps=0.1"].step - real_times(smooth)[0.1]) <= 1
    # one run (full-batch GD) is the curve itself; the JSON thins many runs to its budget
    assert runs_record(smooth.unsqueeze(0)) is None
    thinned = runs_record(curve(0.02, steps=RUNS_JSON_BUDGET // 10 - 1).expand(32, -1))
    assert len(thinned) == 10


def test_calibrated_intervals_contain_the_median_and_widen_with_the_margin():
    prior, real = curve(0.02), curve(0.025)
    narrow = Refiner(prior, steps=T, calibration=Calibration((0.0, 1.0), (0.0, 0.0)))
    wide = Refiner(prior, steps=T, calibration=Calibration((0.0, 1.0), (0.5, 0.5)))
    for r in (narrow, wide):
        for s in range(1, 11):
            r.observe(s, float(real[s]))
    a, b = narrow.estimate(), wide.estimate()
    for key in a.thresholds:
        n, w = a.thresholds[key], b.thresholds[key]
        assert n.step == w.step and w.low <= n.low <= n.step and n.step <= (n.high or T + 1) <= (w.high or T + 1)
        assert w.low <= math.floor((n.low + 1) * math.exp(-0.5))
    assert "(90%:" in b.summary()
    shipped = Refiner(prior, steps=T)
    assert shipped.calibration is not None and shipped.estimate().calibrated


def test_interval_margins_by_prediction_bin_fall_back_to_the_pooled_ones():
    cal = Calibration((0.0, 0.1, 0.2), (0.1, 0.2, 0.3), bins={"0-0.01": [0.05, None, 0.15], ">= 0.1": [0.4, 0.6, 0.8]})
    assert cal.margin(0.1) == pytest.approx(0.2)
    assert cal.margin(0.1, ">= 0.1") == pytest.approx(0.6)
    assert cal.margin(0.05, ">= 0.1") == pytest.approx(0.5)
    assert cal.margin(0.1, "0-0.01") == pytest.approx(0.2)  # too few rows of that bin there: the pooled margin
    assert cal.margin(0.15, "0-0.01") == pytest.approx((0.2 + 0.15) / 2)
    assert cal.margin(0.1, "no check") == pytest.approx(0.2)  # a bin the calibration does not have
    prior, real = curve(0.02), curve(0.025)
    easy = Refiner(prior, steps=T, calibration=cal, interval_bin="0-0.01")
    hard = Refiner(prior, steps=T, calibration=cal, interval_bin=">= 0.1")
    for r in (easy, hard):
        for s in range(1, 16):
            r.observe(s, float(real[s]))
    a, b = easy.estimate().thresholds["eps=0.1"], hard.estimate().thresholds["eps=0.1"]
    assert a.step == b.step and b.low < a.low and (b.high or T + 1) > (a.high or T + 1)


def test_the_posterior_band_is_scaled_about_its_median_before_the_margin():
    """``time_interval`` with ``scale``: the 5-95% band's log half-widths (of step + 1) about the median, scaled, then
    widened by the margin, by hand; scale 1 is the band widened as before; a Refiner takes the calibration's scale."""
    from finetime.online._fit import Refined

    curves = torch.ones(5, T + 1, dtype=torch.float64)
    for i, s in enumerate((20, 30, 40, 50, 60)):  # each run crosses eps=0.1 at a known step
        curves[i, s:] = 0.0
    r = Refined(curves, torch.full((5,), 0.2, dtype=torch.float64), "warp")
    th = Threshold.eps(0.1)
    med, lo, hi, p = time_interval(r, th, T, None)
    assert (med, lo, hi, p) == (40, 20, 60, 1.0)
    m = 0.1
    assert time_interval(r, th, T, m) == (40, math.floor(21 * math.exp(-m) - 1), math.ceil(61 * math.exp(m) - 1), 1.0)
    _, lo2, hi2, _ = time_interval(r, th, T, m, scale=2.0)
    assert lo2 == max(math.floor(41 * (21 / 41) ** 2 * math.exp(-m) - 1), 0)
    assert hi2 == math.ceil(41 * (61 / 41) ** 2 * math.exp(m) - 1)
    assert time_interval(r, th, 80, m, scale=2.0)[2] is None  # past the run's end
    assert Calibration((0.0, 1.0), (m, m)).band_scale == 1.0
    assert load_calibration().band_scale >= 1.0
    prior, real = curve(0.02), curve(0.025)
    ref = Refiner(prior, steps=T, calibration=Calibration((0.0, 1.0), (m, m), band_scale=2.0))
    for s in range(1, 16):
        ref.observe(s, float(real[s]))
    est = ref.estimate().thresholds["eps=0.1"]
    assert (est.step, est.low, est.high) == time_interval(ref.refined(), th, T, m, scale=2.0)[:3]
    bare = Refiner(prior, steps=T, calibration=Calibration((0.0, 1.0), (m, m), band_scale=2.0))
    est = bare.estimate().thresholds["eps=0.1"]  # nothing observed: the speed prior's band, not scaled
    assert (est.step, est.low, est.high) == time_interval(bare.refined(), th, T, m)[:3]


def test_the_prediction_bin_is_read_from_a_prediction_json_or_derived_for_older_ones():
    base = {"loss": curve(0.02).tolist(), "training_time": {"eps=0.1": {}}}
    assert Refiner.from_prediction({"predicted": {**base, "interval_bin": ">= 0.1"}}).interval_bin == ">= 0.1"
    older = {"predicted": {**base, "relinearization": {"loss_gaps": [0.05, 0.3]}}, "config": {"bn": "frozen"}}
    assert Refiner.from_prediction(older).interval_bin == "0.01-0.1"
    fitted = {"predicted": {**base, "relinearization": {"loss_gaps": [3.0]}, "first_steps": {"speed": 0.5}},
              "config": {"bn": "frozen"}}
    assert Refiner.from_prediction(fitted).interval_bin == "first steps, far from linear"
    batch = {"predicted": {**base, "first_steps": {"speed": 0.3}}, "config": {"bn": "batch"}}
    assert Refiner.from_prediction(batch).interval_bin == "first steps, batch statistics"
    assert Refiner.from_prediction({"predicted": base}).interval_bin == "no check"


def test_observe_checks_its_input_and_measures_the_step_time():
    r = Refiner(curve(0.02), steps=T, seconds_per_step=1.0, calibration=None)
    assert r.seconds_per_step() == (1.0, "predicted")
    for s in range(1, 6):
        r.observe(s, float(curve(0.02)[s]), seconds=0.25 * s + 3)
    assert r.seconds_per_step()[0] == pytest.approx(0.25) and r.seconds_per_step()[1] == "observed"
    est = r.estimate()
    e = est.thresholds["eps=0.1"]
    assert e.remaining_seconds == pytest.approx(0.25 * e.remaining_steps, abs=1e-3)
    with pytest.raises(DataError, match="in order"):
        r.observe(2, 1.0)
    with pytest.raises(DataError, match=">= 0"):
        r.observe(-1, 1.0)
    with pytest.raises(DataError, match="must be numbers"):
        r.observe(7, "abc")
    with pytest.raises(DataError, match="prediction"):
        Refiner.from_prediction({"config": {}})


def _prediction_json(path, prior, sps=0.1):
    path.write_text(json.dumps({"predicted": {
        "loss": [float(v) for v in prior], "seconds_per_step": sps, "diverged": False,
        "training_time": {"eps=0.1": {}, "target=0.5": {}}}}))


def test_log_formats(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("Step,Loss,seconds\n10,1.2,1.0\n5,1.4,0.5\n")
    assert [(r.step, r.loss, r.seconds) for r in read_log(csv)] == [(5, 1.4, 0.5), (10, 1.2, 1.0)]
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"step": 1, "loss": 1.5}\n{"step": 2, "eval_loss": 9}\n{"global_step": 3, "train_loss": 1.1}\n')
    assert [(r.step, r.loss) for r in read_log(jl)] == [(1, 1.5), (3, 1.1)]
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"loss": 1.3, "step": 10}, {"eval_loss": 1, "step": 10},
                                                 {"loss": 1.0, "step": 20}]}))
    assert [(r.step, r.loss) for r in read_log(state)] == [(10, 1.3), (20, 1.0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,acc\n1,0.5\n")
    with pytest.raises(DataError, match="no record with a step and a loss"):
        read_log(bad)
    with pytest.raises(DataError, match="not found"):
        read_log(tmp_path / "missing.csv")
    for text, says in (("", "empty"), ("not json\n", "neither JSON nor a CSV"), ("step,loss\n", "neither JSON nor")):
        odd = tmp_path / "odd.log"
        odd.write_text(text)
        with pytest.raises(DataError, match=says):
            read_log(odd)


def test_watch_command(capsys, tmp_path):
    prior, real = curve(0.02), behind(0.02, 1.5, 30, SPEED_PERSISTENCE)
    pred = tmp_path / "p.json"
    _prediction_json(pred, prior)
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n" + "".join(f"{s},{float(real[s])}\n" for s in range(1, 31)))
    out = tmp_path / "est.json"
    assert main(["watch", str(log), "--prediction", str(pred), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "step 30 of 150 observed (20%)" in text and "eps=0.1" in text and "target=0.5" in text
    est = json.loads(out.read_text())
    real_tt = real_times(real)[0.1]
    assert abs(est["thresholds"]["eps=0.1"]["step"] - real_tt) <= 2 and est["speed"] == pytest.approx(1.5, rel=0.03)
    assert est["seconds_per_step_source"] == "predicted"
    # --persistence 1: the whole prediction stretched by the observed speed (x1.5 here)
    out1 = tmp_path / "est1.json"
    assert main(["watch", str(log), "--prediction", str(pred), "--persistence", "1", "--json", str(out1)]) == 0
    capsys.readouterr()
    stretched = json.loads(out1.read_text())["thresholds"]["eps=0.1"]["step"]
    assert stretched < est["thresholds"]["eps=0.1"]["step"] - 5  # faster run: the stretched estimate is earlier
    assert main(["watch", str(log), "--prediction", str(pred), "--persistence", "2"]) == 2
    assert "persistence" in capsys.readouterr().err
    # never overwrites silently; a bad --window is one clear line
    assert main(["watch", str(log), "--prediction", str(pred), "--json", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["watch", str(log), "--prediction", str(pred), "--window", "0"]) == 2
    assert "--window" in capsys.readouterr().err
    assert main(["watch", str(log), "--prediction", str(tmp_path / "none.json")]) == 2
    assert "prediction file not found" in capsys.readouterr().err


# -- callbacks in real trainer runs: full-batch SGD on a linear softmax model, whose curve is deterministic; the
# prediction is that curve (computed here by a plain loop), so the refiner must keep speed 1 and the real times.

N, D, C, STEPS, LR = 32, 6, 3, 40, 0.5


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(D, C)

    def forward(self, x, labels=None):
        logits = self.fc(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def _plain_curve():
    x, y = _data()
    m = Linear()
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        loss = m(x, y)["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    losses.append(float(m(x, y)["loss"].detach()))
    return torch.tensor(losses, dtype=torch.float64)


def test_hugging_face_trainer_callback(tmp_path):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    from finetime.online.hf import FinetimeCallback

    prior = _plain_curve()
    x, y = _data()
    ds = [{"x": x[i], "labels": int(y[i])} for i in range(N)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=N, learning_rate=LR, optim="sgd",
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, logging_steps=5, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=Linear(), args=args, train_dataset=ds)
    cb = FinetimeCallback.attach(trainer, Refiner(prior, steps=STEPS, thresholds=["eps=0.1", "eps=0.4"],
                                                 seconds_per_step=0.01, calibration=None))
    cb.refiner.predicted_config = {"max_grad_norm": 1.0}  # a prediction of a clipped run, for this unclipped one
    with pytest.warns(UserWarning, match="this run has no clipping, but the prediction assumed gradients clipped "
                                         "to norm 1: predict without --max-grad-norm"):
        trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS // 5
    # the Trainer's logged losses are the plain run's, averaged over each window of 5 steps
    for h in logged:
        s = h["step"]
        assert h["loss"] == pytest.approx(float(prior[s - 5:s].mean()), rel=1e-4)
        assert {"finetime/remaining_steps", "finetime/eta_seconds", "finetime/eta_seconds_low"} <= set(h)
    est = cb.estimate
    assert est.speed == pytest.approx(1.0, abs=0.03)
    for key, th in est.thresholds.items():
        assert abs(th.step - int(steps_to_threshold(prior.unsqueeze(0), Threshold.parse(key))[0])) <= 1
    assert est.seconds_per_step_source == "observed"


def test_clipping_mismatch_between_run_and_prediction_is_named():
    prediction = {"predicted": {"loss": [1.0, 0.5, 0.2], "training_time": {}}, "config": {"max_grad_norm": None}}
    r = Refiner.from_prediction(prediction, calibration=None)
    with pytest.warns(UserWarning, match="has gradients clipped to norm 1, but the prediction assumed no clipping: "
                                         "predict with --max-grad-norm 1"):
        r.check_clipping(1.0)
    assert r.check_label_smoothing(0.0) is None and r.check_label_smoothing(None) is None  # absent key: none
    with pytest.warns(UserWarning, match="has label smoothing 0.1, but the prediction assumed no label smoothing: "
                                         "predict with --label-smoothing 0.1"):
        r.check_label_smoothing(0.1)
    assert r.check_clipping(None) is None and r.check_clipping(0.0) is None  # the Trainer's 0: no clipping
    r.predicted_config = {"max_grad_norm": 1.0}
    assert r.check_clipping(1.0) is None
    assert Refiner([1.0, 0.5], steps=1, calibration=None).check_clipping(1.0) is None  # no config: nothing known


def test_lightning_callback(tmp_path):
    lightning = pytest.importorskip("lightning")
    from finetime.online.lightning import FinetimeCallback

    prior = _plain_curve()
    x, y = _data()

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Linear()

        def training_step(self, batch, idx):
            return self.net(*batch)["loss"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=N)
    cb = FinetimeCallback(Refiner(prior, steps=STEPS, thresholds=["eps=0.1"], calibration=None), every=10)
    trainer = lightning.Trainer(max_steps=STEPS, callbacks=[cb], accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=str(tmp_path))
    trainer.fit(Module(), loader)
    r = cb.refiner
    assert r._steps == list(range(STEPS))  # the start from the prediction, then the losses after 1..STEPS-1
    torch.testing.assert_close(torch.tensor(r._losses[1:], dtype=torch.float64), prior[1:STEPS], rtol=1e-5,
                               atol=1e-6)
    assert "finetime/remaining_steps" in trainer.callback_metrics
    assert cb.estimate.speed == pytest.approx(1.0, abs=0.02)


def test_relinearizing_at_the_real_weights_continues_the_real_run_exactly():
    """Head-only full-batch SGD with momentum is its own linearization: the continuation from the real weights and
    momentum after step 12 must be the real run's remaining curve, and the refiner must then predict its times."""
    from finetime.finetune import finetune
    from finetime.batches import batch_plan
    from finetime.network import eval_mode
    from finetime.online.relinearize import continuation

    cfg = RunConfig.from_dict(dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3,
                                   per_class=4, image_size=12, steps=40, runs=1, lr=0.05, momentum=0.9,
                                   freeze_backbone=True))
    from finetime import predict

    pred = predict(cfg)
    task = pred.task
    refiner = Refiner.from_prediction(pred, calibration=None)
    got = {}

    def hook(t, model, opt):
        if t < 12:  # the run's whole-training-set loss after t updates, as a training loop would log it
            with torch.no_grad(), eval_mode(model):
                refiner.observe(t, float(torch.nn.functional.cross_entropy(model(task.data.x), task.data.y)))
        if t == 12:
            got["traj"], _ = continuation(pred, model, t, optimizer=opt)
            got["no_momentum"], _ = continuation(pred, model, t)
            refiner.relinearize(model, t, optimizer=opt)

    plan = batch_plan(task.data.x.shape[0], cfg.optimizer, cfg.steps, 1, torch.Generator().manual_seed(0))
    real = finetune(task.model, task.data.x, task.data.y, cfg.optimizer, cfg.steps, plan, params=task.trained,
                    on_step=hook)
    tail = got["traj"].loss[0]
    torch.testing.assert_close(tail, real.loss[12:].to(tail.dtype), rtol=2e-5, atol=1e-6)
    # the momentum carried over is what makes it exact: restarted from zero velocity the curve is another one
    assert (got["no_momentum"].loss[0] - tail).abs().max() > 1e-2
    torch.testing.assert_close(torch.tensor(refiner._losses[1:12]), real.loss[1:12].float(), rtol=1e-5, atol=1e-6)
    est = refiner.estimate()
    assert "re-linearized at step 12" in est.method
    for key, th in est.thresholds.items():
        assert th.step == int(steps_to_threshold(real.loss.unsqueeze(0), Threshold.parse(key))[0])
    with pytest.raises(ConfigError, match="live Prediction"):
        Refiner(curve(0.02), steps=T).relinearize(task.model, 3)


def test_relinearizing_with_batch_statistics_warns():
    """With BatchNorm batch statistics the kernel at the real weights is the running-statistics one, which the
    benchmark found worse than the curve-only refiner: re-linearizing says so (and still works)."""
    from finetime import predict

    cfg = RunConfig.from_dict(dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3,
                                   per_class=4, image_size=12, steps=20, runs=1, lr=0.05, bn="batch",
                                   first_steps=0))
    pred = predict(cfg)
    refiner = Refiner.from_prediction(pred, calibration=None)
    with pytest.warns(UserWarning, match="batch statistics"):
        refiner.relinearize(pred.task.model, 3)
    assert "re-linearized at step 3" in refiner.estimate().method


def test_watch_reads_a_trainer_state_like_the_callback(capsys, tmp_path):
    """`watch --window auto` on Trainer's log_history places each logged mean where the HF callback does: the same
    curve logged every 5 steps gives the speed of the exact warp."""
    prior, real = curve(0.02), curve(0.03)
    pred = tmp_path / "p.json"
    _prediction_json(pred, prior)
    state = tmp_path / "trainer_state.json"
    hist = [{"loss": float(real[s - 5:s].mean()), "step": s} for s in range(5, 41, 5)]
    state.write_text(json.dumps({"log_history": hist}))
    out = tmp_path / "e.json"
    assert main(["watch", str(state), "--prediction", str(pred), "--window", "auto", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["speed"] == pytest.approx(1.5, rel=0.05)
