"""The kernel sharded over two local gloo processes equals the one-process kernel (engine and `torchrun ... predict`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from finetime.kernel import compute_kernel, gradient_moments
from finetime.kernel.distributed import shutdown
from models_for_tests import tiny_cnn

ROOT = Path(__file__).resolve().parents[1]


def _inputs():
    torch.manual_seed(3)
    return torch.randn(13, 3, 12, 12), torch.randn(13, 3)  # 13 samples: the ranks get 6 and 7


def _kernels(model, x, r):
    out = {}
    for method, flops in (("factored", 0), ("factored", None), ("exact", None)):
        # exact_flops=0: every weight projected by the Kronecker sketch; otherwise the exact routes where cheap
        k = compute_kernel(model, x[:10], x_test=x[10:], method=method, projection_dim=64, seed=5,
                           exact_flops=flops)
        out[f"{method}{flops}"] = (k.theta, k.theta_test, k.f0, k.f0_test, k.meta["plan"]["strategies"], k.meta["ranks"])
    mom = gradient_moments(model, x, r)
    out["moments"] = (mom.mean, mom.sq, mom.sq_rows, mom.sq_cols)
    return out


def _worker(rank, world, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        x, r = _inputs()
        result = _kernels(tiny_cnn(3, image_size=12), x, r)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        shutdown()
    assert not dist.is_initialized()  # the group is gone before interpreter exit


def test_two_gloo_ranks_give_the_one_process_kernel(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, r = _inputs()
    single = _kernels(tiny_cnn(3, image_size=12), x, r)
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    routes = set().union(*(single[m][4] for m in single if m != "moments"))
    assert {"kron", "materialize"} <= routes, routes
    for got in ranks:
        for method in (m for m in single if m != "moments"):
            a, b = got[method], single[method]
            assert a[5] == 2 and b[5] == 1  # the sharded kernel says so
            for x_sharded, x_single in zip(a[:4], b[:4]):
                torch.testing.assert_close(x_sharded, x_single, rtol=1e-5, atol=1e-6)
        for d_sharded, d_single in zip(got["moments"], single["moments"]):
            for name in d_single:
                torch.testing.assert_close(d_sharded[name], d_single[name], rtol=1e-5, atol=1e-8)


def _torchrun():
    return shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}


needs_torchrun = pytest.mark.skipif(not Path(_torchrun()).exists(), reason="torchrun not installed")


@needs_torchrun
def test_torchrun_predict_equals_one_process(tmp_path):
    args = ["predict", "--data", "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3",
            "--per-class", "4", "--image-size", "12", "--steps", "20", "--lr", "0.1", "--quiet", "--predictor",
            "linear"]
    env, torchrun = _env(), _torchrun()
    sharded = tmp_path / "sharded.json"
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "finetime", *args, "--json",
                           str(sharded)], env=env, capture_output=True, text=True, timeout=300)
    # the ranks' own errors come first in stderr, torchrun's summary of the failure last: show both
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    assert proc.stdout.count("training time") == 1  # rank 0 prints, rank 1 does not
    one = tmp_path / "one.json"
    proc = subprocess.run([sys.executable, "-m", "finetime", *args, "--json", str(one)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = json.loads(sharded.read_text()), json.loads(one.read_text())
    assert a["config"]["kernel"]["ranks"] == 2 and b["config"]["kernel"]["ranks"] == 1
    for u, v in zip(a["predicted"]["loss"], b["predicted"]["loss"]):
        assert u == pytest.approx(v, rel=1e-5)
    for key, v in b["predicted"]["training_time"].items():
        assert a["predicted"]["training_time"][key]["step"] == v["step"]


@needs_torchrun
def test_torchrun_validate_is_refused_by_every_rank_cleanly(tmp_path):
    """An error raised on every rank exits with the CLI's message and code 2, not an abort in the backend's
    teardown."""
    proc = subprocess.run([_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "finetime", "validate", "--data",
                           "fashion-mnist-mini", "--model", "models_for_tests:tiny_cnn", "--classes", "3",
                           "--per-class", "4", "--image-size", "12", "--steps", "5", "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("run it without torchrun") == 2, proc.stderr[-2000:]
    assert "exitcode: 2" in proc.stderr and "SIGABRT" not in proc.stderr, proc.stderr[-2000:]
