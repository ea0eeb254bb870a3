"""The command line, end to end, on real data (the shipped Fashion-MNIST subset)."""

import json

import pytest
import torch

from finetime.cli import main

FAST = ["--data", "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3", "--per-class", "4",
        "--image-size", "12", "--steps", "30", "--quiet"]


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_json_has_the_contract_fields(capsys, tmp_path):
    path = tmp_path / "p.json"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.05", "--batch-size", "4", "--runs", "8",
                       "--target-loss", "0.9", "--json", str(path))
    assert code == 0
    assert "training time" in out and "eps=0.1" in out
    r = json.loads(path.read_text())
    p = r["predicted"]
    for key in ("loss", "loss_low", "loss_high", "accuracy", "training_time", "seconds_per_step", "seconds"):
        assert key in p
    assert len(p["loss"]) == 31 and p["loss_low"][10] <= p["loss"][10] <= p["loss_high"][10]
    assert set(p["training_time"]) == {"eps=0.01", "eps=0.1", "eps=0.4", "target=0.9"}
    assert {"step", "low", "high", "interval"} <= set(p["training_time"]["eps=0.1"])
    iv = p["training_time"]["eps=0.1"]["interval"]
    assert iv[0] <= p["training_time"]["eps=0.1"]["step"] <= (iv[1] if iv[1] is not None else 31)
    assert "(90%: " in out
    assert set(r["cost_seconds"]) >= {"kernel", "simulation", "total"}
    c = r["config"]
    assert c["lr"] == 0.05 and len(c["chosen_classes"]) == 3 and len(c["train_indices"]) == 12
    assert c["sample_seed"] == 0


def test_json_is_never_overwritten_silently(capsys, tmp_path):
    path = tmp_path / "p.json"
    path.write_text("keep me")
    code, _, err = run(capsys, "predict", *FAST, "--json", str(path))
    assert code == 2 and "refusing to overwrite" in err
    assert path.read_text() == "keep me"


def test_kernel_reuse_and_mismatch(capsys, tmp_path):
    k = tmp_path / "k.ftk"
    assert run(capsys, "predict", *FAST, "--kernel-out", str(k))[0] == 0
    code, out, _ = run(capsys, "predict", *FAST, "--kernel-in", str(k), "--lr", "0.01")
    assert code == 0 and "training time" in out
    code, _, err = run(capsys, "predict", *FAST, "--kernel-in", str(k), "--seed", "3")
    assert code == 2 and "recompute" in err


@pytest.mark.parametrize("args,message", [
    (["--lr", "-1"], "learning rate must be a positive"),
    (["--batch-size", "99"], "larger than the training set"),
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "models_for_tests:returns_tuple"], "logits of shape"),
    (["--data", "nope"], "unknown dataset"),
    (["--momentum", "1.5"], "momentum must be in"),
    (["--epsilon", "0,2"], "epsilon values"),
    (["--classes", "11"], "exceeds"),
])
def test_bad_flags_give_one_clear_line(capsys, args, message):
    code, out, err = run(capsys, "predict", *FAST, *args)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_empty_image_folder(capsys, tmp_path):
    (tmp_path / "cats").mkdir()
    code, _, err = run(capsys, "predict", *FAST, "--data", f"imagefolder:{tmp_path}")
    assert code == 2 and "holds no images" in err
    code, _, err = run(capsys, "predict", *FAST, "--data", f"imagefolder:{tmp_path / 'missing'}")
    assert code == 2 and "does not exist" in err


def test_image_folder_end_to_end(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    code, out, _ = run(capsys, "predict", *FAST, "--data", f"imagefolder:{tmp_path}", "--classes", "2",
                       "--per-class", "3")
    assert code == 0 and "6 images, 2 classes (a, b)" in out


def test_divergent_learning_rate_is_reported(capsys):
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "500")
    assert code == 0 and "PREDICTED TO DIVERGE" in out
    assert "no linearity check: the simulated runs diverged before step 2" in out  # not an empty re-linearization
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "500", "--bn", "batch")
    assert code == 0 and "PREDICTED TO DIVERGE" in out and "the real run diverged at step" in out


@pytest.mark.slow
def test_default_model_runs(capsys, tmp_path):
    """The built-in EfficientNet-Lite0 (real ImageNet weights) through the whole pipeline, small."""
    code, out, _ = run(capsys, "predict", "--data", "fashion-mnist-mini", "--per-class", "3", "--image-size", "32",
                       "--steps", "20", "--quiet", "--json", str(tmp_path / "d.json"))
    assert code == 0
    r = json.loads((tmp_path / "d.json").read_text())
    assert r["config"]["model"] == "efficientnet-lite0" and r["config"]["trained_weights"] > 3_000_000
    assert r["predicted"]["loss"][20] < r["predicted"]["loss"][0]


def test_validate_freeze_backbone_is_exact(capsys, tmp_path):
    """Linear probing: the linearized model is the model, so the replay on the real batch order must match the real
    run to float32 precision, and the JSON carries actual curves, times and errors."""
    path, png = tmp_path / "v.json", tmp_path / "v.png"
    code, out, _ = run(capsys, "validate", *FAST, "--freeze-backbone", "--lr", "0.05", "--batch-size", "4",
                       "--runs", "4", "--json", str(path), "--plot", str(png))
    assert code == 0 and "same order" in out
    r = json.loads(path.read_text())
    real, replay = r["actual"]["loss"], r["predicted"]["replay"]["loss"]
    assert len(real) == 31
    assert max(abs(a - b) / b for a, b in zip(real, replay)) < 1e-5
    assert all(e["relative"] == 0 for e in r["error_replay"].values())
    assert {"loss", "accuracy", "training_time", "train_seconds"} <= set(r["actual"])
    assert set(r["error"]["eps=0.1"]) == {"predicted", "actual", "difference", "relative", "in_interval"}
    for key, e in r["error"].items():  # whether the printed 90% interval holds the real step
        iv, a = r["predicted"]["training_time"][key]["interval"], e["actual"]
        assert e["in_interval"] == (None if iv is None or a is None else iv[0] <= a <= (iv[1] or a))
    assert "real in the 90% interval" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run(capsys, "report", str(path), "--out", str(tmp_path / "rep"))[0] == 0
    assert "real in the interval" in (tmp_path / "rep" / "report.html").read_text()


def test_sweep_equals_individual_predictions(capsys, tmp_path):
    path, png = tmp_path / "s.json", tmp_path / "s.png"
    code, out, _ = run(capsys, "sweep", *FAST, "--lr", "0.02,0.2", "--batch-size", "0,4", "--runs", "4",
                       "--target-loss", "0.9", "--json", str(path), "--plot", str(png))
    assert code == 0 and "4 configurations" in out
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 4
    for r in rows:
        p = tmp_path / f"p{r['settings']['lr']}_{r['settings']['batch_size']}.json"
        assert run(capsys, "predict", *FAST, "--lr", str(r["settings"]["lr"]), "--batch-size",
                   str(r["settings"]["batch_size"]), "--runs", "4", "--target-loss", "0.9", "--json", str(p))[0] == 0
        single = json.loads(p.read_text())["predicted"]["training_time"]["target=0.9"]
        assert single["step"] == r["steps_to_target"]["step"] and single["high"] == r["steps_to_target"]["high"]
    secs = [r["seconds_to_target"] for r in rows if r["seconds_to_target"] is not None]
    assert secs == sorted(secs)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweep_budgets_share_one_simulation_exactly(capsys, tmp_path):
    path = tmp_path / "s.json"
    args = [a for a in FAST if a not in ("--steps", "30")]
    sched = ["--lr", "0.05", "--schedule", "step", "--step-size", "5", "--target-loss", "0.9", "--runs", "4"]
    code, _, _ = run(capsys, "sweep", *args, *sched, "--steps", "12,30", "--batch-size", "0,4", "--json", str(path))
    assert code == 0
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 4
    for r in rows:
        st = r["settings"]
        p = tmp_path / f"p{st['steps']}_{st['batch_size']}.json"
        assert run(capsys, "predict", *args, *sched, "--steps", str(st["steps"]), "--batch-size", str(st["batch_size"]),
                   "--json", str(p))[0] == 0
        single = json.loads(p.read_text())["predicted"]
        assert single["training_time"]["target=0.9"]["step"] == r["steps_to_target"]["step"]
        assert single["training_time"]["target=0.9"]["high"] == r["steps_to_target"]["high"]
        assert single["loss"][-1] == pytest.approx(r["final_loss"], rel=1e-6)  # the JSON curve is stored in float32


def test_sweep_reports_invalid_and_nothing_to_sweep(capsys):
    code, out, _ = run(capsys, "sweep", *FAST, "--lr", "0.05", "--momentum", "0,0.9", "--nesterov")
    assert code == 0 and "invalid: Nesterov momentum needs" in out
    code, _, err = run(capsys, "sweep", *FAST, "--lr", "0.05")
    assert code == 2 and "nothing to sweep" in err


def test_report_from_predict_and_config_roundtrip(capsys, tmp_path):
    res = tmp_path / "r.json"
    assert run(capsys, "predict", *FAST, "--lr", "0.07", "--test-per-class", "3", "--report", str(tmp_path / "rep"),
               "--json", str(res))[0] == 0
    for name in ("report.html", "curves.png", "spectrum.png", "gradients.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000
    r = json.loads(res.read_text())
    assert "test_loss" in r["predicted"] and len(r["diagnostics"]["gradients"]["pca"]) == 12
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "90% model-error interval" in page and "None" not in page.split("<h2>Settings")[0]
    for v in r["predicted"]["training_time"].values():  # each threshold's interval is on the page
        iv = v["interval"]
        assert iv is None or f"<td>{iv[0]}-{'&gt;T' if iv[1] is None else iv[1]}</td>" in page
    code, _, err = run(capsys, "report", str(res), "--out", str(tmp_path / "rep"))
    assert code == 2 and "refusing to overwrite" in err
    assert run(capsys, "report", str(res), "--out", str(tmp_path / "rep2"))[0] == 0
    # the result's config reproduces the run
    again = tmp_path / "again.json"
    assert run(capsys, "predict", "--config", str(res), "--quiet", "--json", str(again))[0] == 0
    assert json.loads(again.read_text())["predicted"]["loss"] == r["predicted"]["loss"]


def test_config_file_with_flag_override(capsys, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data = "fashion-mnist-mini"\nmodel = "models_for_tests:tiny_cnn"\nclasses = 3\n'
                    'per-class = 4\nimage_size = 12\nsteps = 10\nlr = 0.3\n')
    code, out, _ = run(capsys, "predict", "--config", str(toml), "--lr", "0.01", "--quiet")
    assert code == 0 and "lr 0.01" in out and "10 steps" in out
    toml.write_text("learning_rate = 3\n")
    code, _, err = run(capsys, "predict", "--config", str(toml))
    assert code == 2 and "unknown setting(s)" in err
    toml.write_text('data = "fashion-mnist-mini"\nmodel = "models_for_tests:tiny_cnn"\nclasses = 3\nsteps = 1.5\n')
    code, _, err = run(capsys, "predict", "--config", str(toml))
    assert code == 2 and "--steps must be a whole number, got 1.5" in err
    code, _, err = run(capsys, "report", str(tmp_path / "missing.json"), "--out", str(tmp_path))
    assert code == 2 and "does not exist" in err


def test_extrapolate_to_larger_dataset(capsys, tmp_path):
    path = tmp_path / "e.json"
    code, out, _ = run(capsys, "predict", *FAST, "--loss", "mse", "--lr", "0.5", "--extrapolate-to", "60",
                       "--json", str(path))
    assert code == 0 and "extrapolated to 60 samples" in out
    ex = json.loads(path.read_text())["predicted"]["extrapolated"]
    assert ex["n"] == 60 and ex["from_n"] == 12 and len(ex["mse_loss"]) == 31


def test_relinearize_flag(capsys, tmp_path):
    path = tmp_path / "r.json"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.1", "--relinearize", "2", "--json", str(path))
    assert code == 0
    pr = json.loads(path.read_text())["predicted"]
    assert pr["method"] == "relinearized" and pr["relinearization"]["checkpoints"] == [2, 6]
    assert len(pr["relinearization"]["loss_gaps"]) >= 1
    # the ODE (and weight decay) use the one kernel at w0, whatever --relinearize says
    path2 = tmp_path / "ode.json"
    code, _, err = run(capsys, "predict", *FAST, "--relinearize", "2", "--predictor", "paper", "--json", str(path2))
    assert code == 0 and "relinearization" not in json.loads(path2.read_text())["predicted"]


def test_refresh_samples_flag(capsys, tmp_path):
    """--refresh-samples M: each refresh computes its kernel on M samples (recorded, and said in the summary);
    re-anchoring with a subset is refused with the flags named."""
    path = tmp_path / "rs.json"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.5", "--linearity-tol", "0", "--refresh-samples", "6",
                       "--json", str(path))
    assert code == 0 and "on 6 samples each, carried to all" in out
    rl = json.loads(path.read_text())["predicted"]["relinearization"]
    assert rl["refresh_samples"] == 6 and rl["kernels"] == 3
    assert json.loads(path.read_text())["config"]["refresh_samples"] == 6
    # without momentum the default interpolates the refreshed kernels in time, with momentum it keeps them stepwise
    assert rl["interpolated"] and "the kernel moving linearly in time between them" in out
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.05", "--momentum", "0.9", "--linearity-tol", "0",
                       "--refresh-samples", "6", "--json", str(path), "--overwrite")
    rl = json.loads(path.read_text())["predicted"]["relinearization"]
    assert code == 0 and rl["kernels"] == 3 and not rl["interpolated"] and "interpolated" not in out
    code, _, err = run(capsys, "predict", *FAST, "--lr", "0.5", "--linearity-tol", "0", "--refresh-samples", "6",
                       "--reanchor", "all")
    assert code != 0 and "--refresh-samples all" in err
    code, _, err = run(capsys, "predict", *FAST, "--refresh-samples", "some")
    assert code != 0 and "--refresh-samples must be" in err


def test_default_relinearizes_with_batch_statistics(capsys, tmp_path):
    """--bn batch without the first real steps: the moved network is evaluated (and re-linearized) with batch
    statistics, and the summary says what the linearity check found (with them, the default keeps one kernel)."""
    path = tmp_path / "bn.json"
    code, out, _ = run(capsys, "predict", *FAST[:-1], "--bn", "batch", "--lr", "0.5", "--linearity-tol", "0",
                       "--first-steps", "0", "--json", str(path))
    assert code == 0 and "re-linearized at steps" in out
    rl = json.loads(path.read_text())["predicted"]["relinearization"]
    assert rl["kernels"] == 3 and not rl["linear_regime"] and len(rl["trace_ratios"]) == 3
    cs = json.loads(path.read_text())["cost_seconds"]
    assert cs["relinearization"] > 0 and cs["total"] >= cs["kernel"] + cs["relinearization"]


# ------------------------------------------------------------------------------------------ bad input, new user
@pytest.mark.parametrize("flag", ["--json", "--kernel-out"])
def test_output_into_a_missing_folder_fails_before_any_work(capsys, tmp_path, flag):
    code, out, err = run(capsys, "predict", *FAST, flag, str(tmp_path / "no" / "such" / "file"))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    assert "training time" not in out  # refused before the kernel was computed


def test_validate_plot_into_missing_folder_fails_before_training(capsys, tmp_path):
    code, out, err = run(capsys, "validate", *FAST, "--plot", str(tmp_path / "missing" / "p.png"),
                         "--json", str(tmp_path / "v.json"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "v.json").exists() and out == ""


def test_one_failing_output_does_not_lose_the_others(capsys, tmp_path, monkeypatch):
    import finetime.plots as plots

    def broken(result, path):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "plot_validation", broken)
    path = tmp_path / "v.json"
    code, out, err = run(capsys, "validate", *FAST, "--plot", str(tmp_path / "p.png"), "--json", str(path))
    assert code == 2 and "could not write --plot: disk full" in err
    assert json.loads(path.read_text())["actual"]["loss"]


def test_report_pictures_are_not_overwritten(capsys, tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "curves.png").write_text("keep me")
    code, _, err = run(capsys, "predict", *FAST, "--report", str(rep))
    assert code == 2 and "curves.png" in err and (rep / "curves.png").read_text() == "keep me"
    res = tmp_path / "r.json"
    assert run(capsys, "predict", *FAST, "--json", str(res))[0] == 0
    code, _, err = run(capsys, "report", str(res), "--out", str(rep))
    assert code == 2 and "curves.png" in err and (rep / "curves.png").read_text() == "keep me"
    # the report drawn from a plain --json has its spectrum and gradient map
    assert run(capsys, "report", str(res), "--out", str(tmp_path / "rep2"))[0] == 0
    assert (tmp_path / "rep2" / "spectrum.png").exists() and (tmp_path / "rep2" / "gradients.png").exists()
    page = (tmp_path / "rep2" / "report.html").read_text()
    assert "step timing" in page


@pytest.mark.parametrize("args,message", [
    (["--model", "os:getcwd"], "calling getcwd(num_classes=3) failed"),
    (["--model", "torch.nn:Linear"], "must accept num_classes"),
    (["--extrapolate-to", "5"], "must be larger than the training set"),
    (["--max-memory", "1e-9"], "fewer samples (--kernel-samples M)"),
])
def test_more_bad_input_gives_one_line(capsys, args, message):
    code, _, err = run(capsys, "predict", *FAST, *args)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_max_memory_message_does_not_suggest_the_method_in_use(capsys):
    code, _, err = run(capsys, "predict", *FAST, "--max-memory", "1e-9")
    assert code == 2 and "--kernel-method factored" not in err
    code, _, err = run(capsys, "predict", *FAST, "--max-memory", "1e-9", "--kernel-method", "exact")
    assert code == 2 and "--kernel-method factored" in err


def test_report_and_out_paths_that_are_the_wrong_kind(capsys, tmp_path):
    code, _, err = run(capsys, "report", str(tmp_path), "--out", str(tmp_path / "r"))
    assert code == 2 and "is a folder" in err
    res = tmp_path / "r.json"
    assert run(capsys, "predict", *FAST, "--json", str(res))[0] == 0
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run(capsys, "report", str(res), "--out", str(afile))
    assert code == 2 and "is a file" in err
    code, _, err = run(capsys, "predict", *FAST, "--report", str(afile))
    assert code == 2 and "is a file" in err
    code, _, err = run(capsys, "predict", *FAST, "--json", str(tmp_path))
    assert code == 2 and "is a folder" in err


def test_kernel_in_that_is_not_a_kernel(capsys, tmp_path):
    bad = tmp_path / "k.ftk"
    bad.write_bytes(bytes(range(256)) * 4)
    code, _, err = run(capsys, "predict", *FAST, "--kernel-in", str(bad))
    assert code == 2 and "is not a finetime kernel file" in err and "codec" not in err


def test_sweep_has_no_relinearization_flags_and_a_clean_help(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", *FAST, "--lr", "0.05,0.1", "--relinearize", "2"])
    assert "unrecognized arguments: --relinearize" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "25%" in out and "25%%" not in out and "--linearity-tol" not in out


def test_help_points_to_the_projects_own_definitions(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    assert "PROTOCOL.md" not in out and "README.md" in out


def test_summary_names_the_predictor_threads_and_same_order(capsys, tmp_path):
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.001", "--threads", "1")
    assert code == 0 and "predictor  adaptive (linearity checks passed: one kernel)" in out
    assert "end check at step 29: off by" in out and "one kernel kept" in out
    assert "threads    1 (--threads)" in out and "dynamics: relinearized" not in out
    code, out, _ = run(capsys, "validate", *FAST, "--batch-size", "4", "--runs", "2")
    assert code == 0 and "same order: the predictor replayed on the real run's batch order" in out


def test_automatic_threads_count_free_cores():
    from finetime.runtime import choose_threads

    c = choose_threads()
    assert 1 <= c.threads <= c.cores and c.busy is not None
    assert choose_threads(3).threads == 3


def test_negative_threads_is_a_clear_error(capsys):
    code, _, err = run(capsys, "predict", *FAST, "--threads", "-3")
    assert code == 2 and "--threads must be 0 (one per free core) or a positive number, got -3" in err


def test_adamw_flags_and_their_errors(capsys, tmp_path):
    path = tmp_path / "a.json"
    code, out, _ = run(capsys, "predict", *FAST, "--optimizer", "adamw", "--lr", "1e-3", "--batch-size", "4",
                       "--betas", "0.9,0.98", "--adam-eps", "1e-6", "--weight-decay", "0.01", "--schedule", "linear",
                       "--warmup-steps", "5", "--json", str(path))
    assert code == 0
    assert "AdamW batch 4" in out and "betas 0.9/0.98" in out and "preconditioned kernel" in out
    c = json.loads(path.read_text())["config"]
    assert c["optimizer"] == "adamw" and c["betas"] == [0.9, 0.98] and c["schedule"] == "linear"
    assert "momentum" not in c
    for args, msg in ((["--optimizer", "adamw", "--momentum", "0.9"], "--momentum is a setting of --optimizer sgd"),
                      (["--optimizer", "adam", "--weight-decay", "0.1"], "use --optimizer adamw"),
                      (["--optimizer", "adamw", "--betas", "0.9"], "--betas must be two numbers"),
                      (["--optimizer", "adamw", "--predictor", "paper"], "predicts SGD only")):
        code, _, err = run(capsys, "predict", *FAST, *args)
        assert code == 2 and msg in err, (args, err)


def test_gradient_clipping_is_predicted_and_validated(capsys, tmp_path):
    """--max-grad-norm: a trained head on a frozen backbone is its own linearization, so the clipped real run and
    the prediction agree to float precision; SGD and AdamW on the whole network run; the paper's SDE refuses it."""
    path = tmp_path / "v.json"
    code, out, err = run(capsys, "validate", *FAST, "--freeze-backbone", "--lr", "0.5", "--momentum", "0.9",
                         "--batch-size", "4", "--max-grad-norm", "0.05", "--json", str(path))
    assert code == 0, err
    assert "gradients clipped to norm 0.05" in out
    r = json.loads(path.read_text())
    assert r["config"]["max_grad_norm"] == 0.05
    gn = r["predicted"]["gradient_norm_start"]
    assert gn > 0.05 and f"a batch gradient's norm at the start is {gn:.3g}" in out and "clipped to 0.05" in out
    real, replay = r["actual"]["loss"], r["predicted"]["replay"]["loss"]
    assert max(abs(a - b) / b for a, b in zip(real, replay)) < 1e-5
    for args in (["--lr", "0.05", "--momentum", "0.9", "--batch-size", "4"],
                 ["--optimizer", "adamw", "--lr", "1e-3", "--batch-size", "4", "--schedule", "linear"]):
        code, out, err = run(capsys, "validate", *FAST, *args, "--max-grad-norm", "0.5")
        assert code == 0, (args, err)
    code, out, err = run(capsys, "sweep", *FAST, "--lr", "0.05,0.5", "--max-grad-norm", "0.5",
                         "--label-smoothing", "0.1", "--target-loss", "0.9")
    assert code == 0, err
    assert "fixed      sgd, constant schedule, 30 steps, gradients clipped to norm 0.5, ce loss with label " \
           "smoothing 0.1" in out
    for args, msg in ((["--max-grad-norm", "0"], "--max-grad-norm must be a positive number"),
                      (["--max-grad-norm", "1", "--predictor", "paper"], "does not model gradient clipping")):
        code, _, err = run(capsys, "predict", *FAST, *args)
        assert code == 2 and msg in err, (args, err)


def test_validate_evaluates_the_real_curve_every_k_steps_on_a_subset(capsys, tmp_path):
    """--eval-every / --eval-samples: the real loss at steps 0, 5, ..., 30 only, on 6 of the 12 samples (2 of each
    class); its training times fall on those steps; the plot draws the evaluated points."""
    path, png = tmp_path / "v.json", tmp_path / "v.png"
    code, out, err = run(capsys, "validate", *FAST, "--lr", "0.05", "--batch-size", "4", "--eval-every", "5",
                         "--eval-samples", "6", "--json", str(path), "--plot", str(png))
    assert code == 0, err
    assert "(the real loss evaluated every 5 steps (its training times late by less than 5) on 6 of the 12" in out
    ac = json.loads(path.read_text())["actual"]
    assert ac["eval_every"] == 5 and ac["eval_samples"] == 6
    assert [t for t, v in enumerate(ac["loss"]) if v is not None] == list(range(0, 31, 5))
    assert all(v["step"] is None or v["step"] % 5 == 0 for v in ac["training_time"].values())
    assert png.stat().st_size > 0
    code, _, err = run(capsys, "validate", *FAST, "--eval-every", "0")
    assert code == 2 and "--eval-every must be a whole number >= 1" in err


@pytest.mark.parametrize("opt", [["--lr", "0.5", "--momentum", "0.9"],
                                 ["--optimizer", "adamw", "--lr", "0.05", "--weight-decay", "0.01"]])
def test_label_smoothing_is_predicted_exactly_on_a_trained_head(capsys, tmp_path, opt):
    """--label-smoothing: the loss curves are of the smoothed cross-entropy, and on a frozen backbone the prediction
    replays the real run to float precision (SGD in function space, AdamW on the head's weights)."""
    path = tmp_path / "v.json"
    code, out, err = run(capsys, "validate", *FAST, "--freeze-backbone", *opt, "--batch-size", "4",
                         "--label-smoothing", "0.2", "--json", str(path))
    assert code == 0, err
    assert "ce loss with label smoothing 0.2" in out
    r = json.loads(path.read_text())
    assert r["config"]["label_smoothing"] == 0.2
    real, replay = r["actual"]["loss"], r["predicted"]["replay"]["loss"]
    assert max(abs(a - b) / b for a, b in zip(real, replay)) < 1e-5
    for args, msg in ((["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
                      (["--loss", "mse", "--label-smoothing", "0.1"], "not to mse")):
        code, _, err = run(capsys, "predict", *FAST, *args)
        assert code == 2 and msg in err, (args, err)


def test_text_model_and_csv_data(capsys, tmp_path):
    pytest.importorskip("transformers")
    from checkpoints_for_tests import tiny_bert

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    words = tiny_bert(ckpt)
    rows = ["text,label"] + [f"{words[i % 10]} {words[(3 * i) % 10]} it,{'great' if i % 2 else 'other'}"
                             for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    common = ["--model", f"hf:{ckpt}", "--data", f"csv:{tmp_path / 't.csv'}", "--classes", "2", "--per-class", "6",
              "--max-length", "8", "--steps", "15", "--quiet"]
    path = tmp_path / "v.json"
    code, out, err = run(capsys, "validate", *common, "--optimizer", "adamw", "--lr", "1e-2", "--batch-size", "4",
                         "--json", str(path))
    assert code == 0, err
    assert "12 texts, 2 classes (great, other), at most 8 tokens" in out
    r = json.loads(path.read_text())
    assert r["config"]["max_length"] == 8 and len(r["actual"]["loss"]) == 16
    for args, msg in ((["--model", f"hf:{tmp_path}"], "not a Hugging Face checkpoint"),
                      (["--model", "models_for_tests:tiny_cnn"], "holds texts but --model"),
                      (["--data", f"csv:{tmp_path / 'missing.csv'}"], "does not exist")):
        code, _, err = run(capsys, "predict", *common, *args)
        assert code == 2 and msg in err, (args, err)
    (tmp_path / "bad.csv").write_text("sentence,label\nx,y\n")
    code, _, err = run(capsys, "predict", *common, "--data", f"csv:{tmp_path / 'bad.csv'}")
    assert code == 2 and "'text' and 'label' columns" in err


def test_device_and_precision_flags(capsys, tmp_path):
    path = tmp_path / "p.json"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.05", "--device", "cpu", "--precision", "bf16",
                       "--json", str(path))
    assert code == 0 and "device     cpu, steps in bf16" in out
    r = json.loads(path.read_text())
    assert r["config"]["device"] == "cpu" and r["config"]["precision"] == "bf16"
    assert r["runtime"]["device"] == "cpu" and r["runtime"]["ranks"] == 1
    code, _, err = run(capsys, "predict", *FAST, "--device", "gpu")
    assert code == 2 and "--device must be auto, cpu, cuda or cuda:I" in err
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "predict", *FAST, "--device", "cuda")
        assert code == 2 and "no CUDA device is available" in err


def test_validate_trains_in_the_requested_precision(capsys, tmp_path):
    """bf16 autocast on the CPU: the real run's curve is close to, but not bit-equal to, the fp32 one."""
    curves = {}
    for precision in ("fp32", "bf16", "fp16"):
        path = tmp_path / f"{precision}.json"
        code, _, err = run(capsys, "validate", *FAST, "--freeze-backbone", "--lr", "0.05", "--runs", "1",
                           "--precision", precision, "--json", str(path))
        assert code == 0, err
        curves[precision] = json.loads(path.read_text())["actual"]["loss"]
    for p in ("bf16", "fp16"):
        diff = max(abs(a - b) for a, b in zip(curves[p], curves["fp32"]))
        assert 0 < diff < 0.05, (p, diff)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_prediction_matches_the_cpu_one(capsys, tmp_path):
    out = {}
    for dev in ("cpu", "cuda"):
        path = tmp_path / f"{dev}.json"
        code, _, err = run(capsys, "predict", *FAST, "--lr", "0.05", "--predictor", "linear", "--device", dev,
                           "--json", str(path))
        assert code == 0, err
        out[dev] = json.loads(path.read_text())["predicted"]
    assert out["cuda"]["training_time"]["eps=0.1"]["step"] == out["cpu"]["training_time"]["eps=0.1"]["step"]
    for a, b in zip(out["cuda"]["loss"], out["cpu"]["loss"]):
        assert a == pytest.approx(b, rel=1e-3)


def test_interpolate_kernels_flag_reaches_the_predictor():
    from finetime.cli import build_parser
    from finetime.cli._flags import config_from_args

    parse = lambda *a: config_from_args(build_parser().parse_args(["predict", *a]))  # noqa: E731
    default = parse("--optimizer", "adamw", "--lr", "1e-4")
    assert default.predictor.interpolate is None and default.predictor.interpolates(default.optimizer)
    off = parse("--optimizer", "adamw", "--lr", "1e-4", "--no-interpolate-kernels")
    assert not off.predictor.interpolates(off.optimizer)
    on = parse("--momentum", "0.9", "--interpolate-kernels")
    assert on.predictor.interpolates(on.optimizer) and on.to_dict()["interpolate_kernels"] is True
    assert on.predictor.interpolation_for(on.optimizer) == ("geometric", 0.0)
    momentum = parse("--momentum", "0.9")  # the default: geometric, only across a large growth
    assert momentum.predictor.interpolate is None and momentum.predictor.interpolates(momentum.optimizer)
    assert momentum.predictor.interpolation_for(momentum.optimizer)[1] > 1
    lin = parse("--momentum", "0.9", "--kernel-interpolation", "linear")
    assert lin.predictor.interpolation_for(lin.optimizer)[0] == "linear"
    assert lin.to_dict()["kernel_interpolation"] == "linear"


def test_summary_says_how_the_kernel_moved_between_refreshes():
    from finetime.cli._summary import _fmt_predictor

    rl = {"kernels": 3, "linear_regime": False, "interpolated": True, "interpolation": "geometric",
          "interpolated_intervals": 1}
    line = _fmt_predictor({"predictor": "adaptive", "method": "relinearized", "relinearization": rl})
    assert "moving geometrically in time across 1 of the 3 intervals (stepwise across the others)" in line
    rl.update(interpolation="linear", interpolated_intervals=3)
    line = _fmt_predictor({"predictor": "adaptive", "method": "relinearized", "relinearization": rl})
    assert line.endswith("the kernel moving linearly in time between them)")
    rl.update(interpolated=False)
    assert "moving" not in _fmt_predictor({"predictor": "adaptive", "method": "relinearized", "relinearization": rl})


def test_end_check_refresh_is_named_in_the_summary_and_the_json(capsys, tmp_path):
    out_json = tmp_path / "p.json"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.001", "--end-tol", "1e-9", "--json", str(out_json))
    assert code == 0 and "the kernel refreshed at the end of the run" in out
    assert "end check at step 29: off by" in out and "kernel refreshed there" in out
    rl = json.loads(out_json.read_text())["predicted"]["relinearization"]
    assert rl["end_check"]["refreshed"] and rl["kernels"] == 1 and rl["interpolation"] == "geometric"
    code, out, _ = run(capsys, "predict", *FAST, "--lr", "0.001", "--end-tol", "-1")
    assert code == 2 and "--end-tol must be a number >= 0" in out + _
    code, out, _ = run(capsys, "predict", *FAST, "--optimizer", "adamw", "--lr", "1e-3", "--batch-size", "4",
                       "--linearity-tol", "100", "--end-tol", "1e-9")
    assert code == 0 and "at the end of the run (end check), with P re-estimated there" in out
