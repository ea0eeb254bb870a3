"""The benchmark harness on a seconds-long configuration: run, resume, report."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402
import suite  # noqa: E402


def test_suite_runs_resumes_and_reports(tmp_path):
    out = tmp_path / "smoke.jsonl"
    cfg = ROOT / "bench" / "configs" / "smoke.toml"
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet", "--limit", "2"]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    cells = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(cells) == 3 and len({c["id"] for c in cells}) == 3  # GD once, SGD with two batch orders
    for c in cells:
        assert set(c["predictors"]) == {"linear", "paper"}
        assert len(c["real"]["loss"]) == 13
    text = report.render(cells, ["linear", "paper", "replay"], include_fast=True)
    assert "| linear |" in text and "noise floor" in text
    png = tmp_path / "s.png"
    report.scatter(cells, ["linear", "paper"], png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_repredict_keeps_real_runs(tmp_path):
    out = tmp_path / "smoke.jsonl"
    cfg = ROOT / "bench" / "configs" / "smoke.toml"
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet", "--limit", "1"]) == 0
    before = json.loads(out.read_text())
    before["predictors"].pop("paper")
    out.write_text(json.dumps(before) + "\n")
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet", "--repredict", "paper"]) == 0
    after = json.loads(out.read_text())
    assert after["real"] == before["real"] and "paper" in after["predictors"]


def test_repredict_can_keep_the_stored_timings(tmp_path):
    """``--keep-seconds``: the same predictions re-run to store their simulated runs keep the timings they had."""
    out = tmp_path / "smoke.jsonl"
    cfg = ROOT / "bench" / "configs" / "smoke.toml"
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    before = [json.loads(line) for line in out.read_text().splitlines()]
    for c in before:
        c["predictors"]["linear"]["seconds"] = 123.0
    out.write_text("".join(json.dumps(c) + "\n" for c in before))
    assert suite.main(["--config", str(cfg), "--out", str(out), "--quiet", "--repredict", "linear",
                       "--keep-seconds"]) == 0
    after = [json.loads(line) for line in out.read_text().splitlines()]
    for b, a in zip(before, after):
        got = a["predictors"]["linear"]
        assert got["seconds"] == 123.0 and got["seconds_kept"] is True
        assert got["training_time"] == b["predictors"]["linear"]["training_time"]
        sgd = b["config"].get("batch_size", 0) > 0
        assert ("loss_runs" in got) == sgd and (not sgd or len(got["loss_runs"]) == b["config"]["runs"])


def test_noise_bench_retrains_other_orders_and_scores_the_floor(tmp_path):
    """``bench/noise_bench.py`` on the smoke suite: the other batch orders and the re-run of order 0 are trained
    for real; the re-run of a deterministic run matches it, so the ``same order`` error is 0."""
    import noise_bench

    source = tmp_path / "smoke.jsonl"
    assert suite.main(["--config", str(ROOT / "bench" / "configs" / "smoke.toml"), "--out", str(source),
                       "--quiet"]) == 0
    out = tmp_path / "noise.jsonl"
    args = ["--source", str(source), "--predictor", "linear", "--every-sgd", "--out", str(out), "--orders", "1"]
    assert noise_bench.main(args) == 0
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["order"] for r in runs) == [0, 1]  # one SGD configuration: order 1, then order 0 again
    stored = [json.loads(line) for line in source.read_text().splitlines()]
    sgd = [c for c in stored if c["config"]["batch_size"] == 4]
    by_order = {r["order"]: r for r in runs}
    # order 1 is the suite's own repeat 1 (the same batch order), order 0 the suite's repeat 0
    assert by_order[1]["real"]["loss"] == next(c for c in sgd if c["repeat"] == 1)["real"]["loss"]
    assert by_order[0]["real"]["loss"] == next(c for c in sgd if c["repeat"] == 0)["real"]["loss"]
    assert noise_bench.main(args) == 0  # resumes: nothing left to train
    assert len(out.read_text().splitlines()) == 2
    cells = noise_bench.selected(report.load([source]), every_sgd=True)
    rows = noise_bench.score(cells, runs, "linear", min_real_tt=0)
    same = [r for r in rows if r["method"] == "same order"]
    assert same and all(r["error"] == 0.0 for r in same)
    for r in rows:  # two orders: each predicts the other
        if r["method"] == "other orders" and r["actual"] is not None and r["predicted"] is not None:
            other = [x["actual"] for x in rows if x["method"] == "other orders" and x["eps"] == r["eps"]
                     and x["order"] != r["order"]]
            assert other == [r["predicted"]]
    assert "other orders median / p95" in "\n".join(noise_bench.table(rows))
    band = noise_bench.bands(cells, runs, "linear")
    assert len(band) == 3 and band[2].startswith("| SGD, other |")  # one SGD configuration, all its orders


def test_noise_bench_pair_floor_is_the_least_worst_case_error():
    import noise_bench
    from finetime.training_time import relative_error

    def run(step, diverged=False):
        return {"diverged": diverged, "training_time": {"eps=0.1": {"step": step}}}

    floor = noise_bench.pair_floor(run(40), run(60), 0.1)
    assert floor == 0.2
    # the estimate 48 errs by exactly the floor on both runs, and any other is worse on one of them
    assert relative_error(48, 40) == relative_error(48, 60) == 0.2
    assert all(max(relative_error(x, 40), relative_error(x, 60)) >= floor for x in range(30, 70))
    assert noise_bench.pair_floor(run(None, True), run(50), 0.1) == 1.0
    assert noise_bench.pair_floor(run(None, True), run(None, True), 0.1) == 0.0
    assert noise_bench.pair_floor(run(None), run(50), 0.1) == 1.0
    assert noise_bench.pair_floor(run(None), run(None), 0.1) == 0.0


def test_open_loop_band_scale_is_the_narrowest_held_out_interval():
    """The open-loop calibration's band scale: scores by hand, margins per bin, and the scale whose held-out
    intervals are narrowest is chosen. Two groups of minibatch rows whose real times lie two band half-widths from
    the step, the bands of many widths: scale 2 holds every one with no margin, and is narrower than the others."""
    import math

    import online_bench as ob

    r = {"d": 0.5, "below": 0.1, "above": 0.2, "bin": "b", "group": "g", "default": True, "sgd": True}
    assert ob.open_loop_score(r, 0.0) == 0.5 and ob.open_loop_score(r, 2.0) == 0.5 - 0.4
    assert ob.open_loop_score({**r, "d": -0.5}, 1.0) == 0.5 - 0.1
    assert ob.open_loop_score({**r, "above": math.inf}, 1.0) == 0.0
    assert ob.open_loop_score({**r, "above": math.inf}, 0.0) == 0.5  # no band: symmetric about the step
    assert ob.open_loop_score({**r, "d": None}, 1.0) is None
    rows = []
    for g in ("g1", "g2"):
        for i in range(40):
            half = 0.05 + 0.01 * i
            rows.append({"d": (-1) ** i * 2 * half, "below": half, "above": half, "bin": "b", "group": g,
                         "default": True, "sgd": True})
    study = ob.band_scale_study(rows)
    assert min(study, key=lambda k: study[k][1]) == 2.0  # two half-widths out: scale 2 needs no margin
    cov, width = ob.open_loop_coverage(rows, 2.0)
    assert cov["all"][0] == 1.0 and cov["SGD"] == cov["all"] and "GD" not in cov
    assert width < study[0.0][1]
    assert ob.spread([4.0, 1.0, 3.0, 2.0, math.inf]) == (3.0, 4.0, math.inf)  # nearest rank, open intervals last
    widths = ob.open_loop_width_spread(rows, 2.0)  # margin 0 at scale 2: each width is the scaled band, e^(4 half)
    assert widths["scaled"]["all"] == ob.spread([math.exp(4 * r["below"]) for r in rows])
    m = ob.open_loop_margins(rows, 0.0)["b"]  # symmetric: every interval as wide
    assert widths["symmetric"]["SGD"] == (math.exp(2 * m),) * 3


def test_refiner_band_scale_is_the_narrowest_held_out_interval():
    """The refiner's posterior-band scale: the needed margin by hand, and the scale whose held-out intervals are
    narrowest once anything is observed is chosen: real times two band half-widths from the median, bands of many
    widths, in two groups, at each observed fraction: scale 2 holds them all with no margin."""
    import math

    import online_bench as ob
    import pytest

    def row(group, f, h, sign):
        return {"method": "refiner", "fraction": f, "group": group, "bin": "b", "error": 0.0, "diverged": False,
                "predicted": 99.0, "low": 100 * math.exp(-h) - 1, "high": 100 * math.exp(h) - 1,
                "actual": 100 * math.exp(sign * 2 * h) - 1}

    r = row("g", 0.1, 0.2, 1)
    assert ob.needed_margin(r) == pytest.approx(0.2) and ob.needed_margin(r, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert ob.needed_margin({**r, "high": None}, 1.0) == 0.0
    assert ob.needed_margin({**r, "as_predicted": True}) is None
    before = {**r, "method": "open-loop", "fraction": 0.0}  # nothing observed: the prior's band, not scaled
    assert ob.needed_margin(before, 2.0) == ob.needed_margin(before) == pytest.approx(0.2)
    rows = [row(g, f, 0.05 + 0.01 * i, (-1) ** i) for g in ("g1", "g2") for f in ob.FRACTIONS[1:] for i in range(40)]
    study = ob.refiner_band_scale_study(rows)
    assert min(study, key=lambda k: study[k][2]) == 2.0
    cov, width, _ = study[2.0]
    assert all(cov[f] == 1.0 for f in ob.FRACTIONS[1:]) and width[0.1] < study[1.0][1][0.1]


def test_stability_cap_bench_selects_its_groups_and_scores_them():
    """The cells the stability-cap bench re-predicts are exactly its two groups, with only the compared predictions;
    its summary scores each predictor per group from the stored runs."""
    import stability_cap_bench as b

    stored = ROOT / "bench" / "results" / "paper.jsonl"
    cells = b.select(stored)
    everything = [json.loads(line) for line in stored.read_text().splitlines() if line.strip()]
    assert {c["id"] for c in cells} == {c["id"] for c in everything if b.gd_grows(c) or b.diverging(c)}
    assert all(set(c["predictors"]) <= set(b.PREDICTORS) for c in cells)
    text = b.render(cells)
    for title, rule in b.GROUPS.items():
        assert f"| {title} ({sum(map(rule, cells))}) | adaptive |" in text
    assert "divergence: predicted against real, per cell" in text and len(text.splitlines()) > len(cells)


def test_divergence_orders_bench_scores_each_run_by_the_other_orders():
    """Three runs of one configuration (two diverged, one trained) and one of another: the default's call is scored
    on every run, the order-blind floor by the configuration's other runs only (the re-run of order 0 left out)."""
    import divergence_orders_bench as b

    def real(diverged, last=0.5):
        return {"loss": [2.0, last], "diverged": diverged, "training_time": {"eps=0.1": {"step": 1}}}

    cfg = {"image_size": 32, "per_class": 10, "seed": 1, "batch_size": 8, "lr": 1e-2, "momentum": 0.9}
    cells = [{"id": "a", "config": cfg, "real": real(True), "predictors": {"adaptive": {"diverged_fraction": 1.0}}},
             {"id": "b", "config": cfg, "real": real(False, 3.0),
              "predictors": {"adaptive": {"diverged_fraction": 0.0}}}]
    runs = [{"id": "a", "order": 1, "real": real(True)}, {"id": "a", "order": 2, "real": real(False)},
            {"id": "a", "order": 0, "real": real(False)}]
    assert b.selected(cells) == cells
    text = b.render(cells, runs)
    # real divergence, every order: runs of "a" (called divergent, 2 of 3 diverged) and "b" (called finite, it did not)
    assert "| adaptive (the stored default) | 2 | 1 | 0 | 1 | 100% | 67% |" in text
    # "a"'s runs by the others: diverged <- [T, F] (half: yes, majority: no), diverged <- [T, F], trained <- [T, T]
    assert "| other orders, majority | 0 | 1 | 2 | 1 | 0% | 0% |" in text
    assert "| other orders, half or more | 2 | 1 | 0 | 1 | 100% | 67% |" in text
    assert "did not train" in text  # "b" ended above its start
    # the stored order 0 of "a" diverged, its re-run did not: the same batches call it finite
    assert "| order 0 run again (same batches; scores order 0 only) | 0 | 0 | 1 | 0 | 0% | - |" in text
