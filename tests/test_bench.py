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
