"""The kernel engine against brute-force J J^T (float64), for every layer path, and its projections."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetime.errors import KernelError, MemoryBudgetError, ModelError
from finetime.kernel import Kernel, brute_force_ntk, compute_kernel, jacobian, jacobian_weight_product
from models_for_tests import SmallConvNet


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_exact(model, x, **kw):
    """Both exact routes against brute force; the engine must use eval mode itself and restore the mode."""
    model = model.double()
    mode = model.training
    ref = brute_force_ntk(model, x)
    for method in ("exact", "factored"):
        k = compute_kernel(model, x, method=method, **kw)
        assert rel(k.theta, ref) < 1e-10, (method, k.meta["plan"])
        assert model.training == mode
        torch.testing.assert_close(k.f0, model.eval()(x))
        model.train(mode)
    return k


class ConvHead(nn.Module):
    def __init__(self, conv, c=3):
        super().__init__()
        self.conv = conv
        self.fc = nn.Linear(conv.out_channels, c)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(2).mean(-1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.sampled_from([1, 2, 4]),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, 2, "same", "valid"]),
    bias=st.booleans(),
    size=st.integers(5, 9),
    mode=st.sampled_from(["zeros", "reflect"]),
)
def test_conv2d_matches_brute_force(groups, k, stride, dilation, padding, bias, size, mode):
    if padding == "same":
        stride = 1
    if mode == "reflect" and (padding in ("same", "valid") or padding == 0 or padding >= size):
        mode = "zeros"
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                     padding_mode=mode)
    if (size + 2 * (padding if isinstance(padding, int) else 0) - dilation * (k - 1) - 1) < 0:
        return
    x = torch.randn(5, 4, size, size, dtype=torch.float64)
    check_exact(ConvHead(conv), x, chunk_size=2)


@settings(max_examples=15, deadline=None)
@given(k=st.integers(1, 5), stride=st.integers(1, 2), padding=st.sampled_from([0, 2, "same"]), groups=st.sampled_from([1, 3]))
def test_conv1d_matches_brute_force(k, stride, padding, groups):
    if padding == "same":
        stride = 1
    torch.manual_seed(1)
    x = torch.randn(4, 3, 11, dtype=torch.float64)
    check_exact(ConvHead(nn.Conv1d(3, 6, k, stride=stride, padding=padding, groups=groups)), x)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.gn = nn.GroupNorm(3, 6)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.dw = nn.Conv2d(6, 6, 3, groups=6, bias=False)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 4)
        self.bn1d = nn.BatchNorm1d(4)

    def forward(self, x):
        x = self.gn(torch.relu(self.bn(self.conv(x))))
        x = self.dw(self.pad(x))
        return self.bn1d(self.fc(self.ln(x.mean((2, 3)))))


def test_norm_layers_padding_and_depthwise():
    torch.manual_seed(2)
    m = Norms()
    with torch.no_grad():
        for bn in (m.bn, m.bn1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    m.train()  # the engine must switch to running statistics by itself
    check_exact(m, torch.randn(6, 3, 7, 7, dtype=torch.float64), chunk_size=4)
    assert m.training


class Seq(nn.Module):
    """Token ids -> embedding (padding row) -> LayerNorm -> shared Linear applied twice -> tied output projection."""

    def __init__(self, vocab=11, d=5, c=3, tie=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.tie = tie
        self.out = nn.Linear(d, c)

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        h = torch.tanh(self.mix(torch.tanh(self.mix(h))))  # one module, two calls
        if self.tie:
            h = h + 0.1 * (h @ self.emb.weight.T) @ self.emb.weight  # weight reused outside any rule
        return self.out(h.mean(1))


@pytest.mark.parametrize("tie", [False, True])
def test_embeddings_shared_modules_and_reused_weights(tie):
    torch.manual_seed(3)
    ids = torch.randint(0, 11, (5, 7))
    ids[0, :3] = 0
    check_exact(Seq(tie=tie), ids)


class Scaled(nn.Module):
    """A module with its own parameter used outside any recognized op (needs the torch.func fallback)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor([1.5, -0.5, 2.0]))
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.gain + self.gain**2


def test_fallback_module_with_custom_parameter():
    torch.manual_seed(4)
    check_exact(nn.Sequential(nn.Linear(6, 4), nn.Tanh(), Scaled()), torch.randn(5, 6, dtype=torch.float64))


@pytest.mark.parametrize("block_rows", [1024, 4])  # one product, or the symmetric training Gram in blocks
def test_test_cross_kernel_and_jw0(monkeypatch, block_rows):
    from finetime.kernel import engine

    monkeypatch.setattr(engine, "GRAM_BLOCK_ROWS", block_rows)
    torch.manual_seed(5)
    m = SmallConvNet(3).double().eval()
    x, xt = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randn(3, 3, 6, 6, dtype=torch.float64)
    k = compute_kernel(m, x, x_test=xt, method="exact", with_jw0=True)
    j, jt = jacobian(m, x), jacobian(m, xt)
    torch.testing.assert_close(k.theta, j @ j.T)
    torch.testing.assert_close(k.theta_test, jt @ j.T)
    w0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    torch.testing.assert_close(k.jw0.reshape(-1), j @ w0)
    torch.testing.assert_close(k.jw0_test.reshape(-1), jt @ w0)
    torch.testing.assert_close(jacobian_weight_product(m, x, [n for n, _ in m.named_parameters()]), k.jw0)


def test_only_trained_parameters():
    torch.manual_seed(6)
    m = SmallConvNet(3).double().eval()
    for n, p in m.named_parameters():
        p.requires_grad_(n.startswith("head"))
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    k = compute_kernel(m, x, method="exact")
    ref = brute_force_ntk(m, x, ["head.weight", "head.bias"])
    torch.testing.assert_close(k.theta, ref)


@pytest.mark.parametrize("method,kw", [("factored", {"exact_flops": 0}), ("gaussian", {}), ("sparse", {})])
def test_projections_are_unbiased_and_chunk_invariant(method, kw):
    torch.manual_seed(7)
    m = SmallConvNet(3).double().eval()
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    ref = brute_force_ntk(m, x)
    ests = torch.stack([compute_kernel(m, x, method=method, projection_dim=32, seed=s, **kw).theta
                        for s in range(64)])
    single = torch.tensor([rel(e, ref) for e in ests]).mean()
    assert single > 0.02  # really projected
    # The mean of 64 independent unbiased estimates has error ~ single / 8.
    assert rel(ests.mean(0), ref) < single / 4
    again = compute_kernel(m, x, method=method, projection_dim=32, seed=5, chunk_size=1, **kw).theta
    torch.testing.assert_close(again, ests[5])
    one = compute_kernel(m, x, method=method, projection_dim=32, seed=5, **kw)
    assert one.meta["plan"]["exact_weight_fraction"] < 1


@pytest.mark.parametrize("k,d,dtype", [(64, 5000, torch.float32), (256, 30, torch.float64), (8, 3, torch.float32)])
def test_very_sparse_projection_is_the_coalesced_draw(k, d, dtype):
    """The CSR projection built from the sorted places equals the plain construction from the same draws (COO,
    coalesced, to CSR), repeated places summed."""
    import math
    from finetime.kernel.projection import param_generator, very_sparse

    got = very_sparse(k, d, param_generator(3, 1), dtype)
    gen = param_generator(3, 1)
    nnz = max(1, round(k * math.sqrt(d)))
    rows, cols = torch.randint(0, k, (nnz,), generator=gen), torch.randint(0, d, (nnz,), generator=gen)
    vals = (torch.randint(0, 2, (nnz,), generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(k / math.sqrt(d))
    ref = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals.to(dtype), (k, d)).coalesce()
    assert ref.values().numel() < nnz or d * k < 50  # repeated places do occur
    torch.testing.assert_close(got.to_dense(), ref.to_dense(), rtol=0, atol=0)
    assert torch.equal(got.col_indices(), ref.to_sparse_csr().col_indices())


@pytest.mark.parametrize("n", [5, 16, 23])
def test_symmetric_gram_blocks_equal_the_whole_product(monkeypatch, n):
    """The training Gram formed block by block above the diagonal and mirrored equals ``a a^T`` (blocks of 8 rows
    here: one block, exact multiples and a ragged last block)."""
    from finetime.kernel import engine

    monkeypatch.setattr(engine, "GRAM_BLOCK_ROWS", 8)
    a = torch.randn(n, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    out = torch.ones(n, n, dtype=torch.float64)
    engine._add_symmetric_outer(out, a)
    torch.testing.assert_close(out, 1 + a @ a.T, rtol=1e-12, atol=1e-12)


def test_projection_error_falls_with_dimension():
    torch.manual_seed(8)
    m = SmallConvNet(3, width=8).double().eval()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    ref = brute_force_ntk(m, x)
    err = [sum(rel(compute_kernel(m, x, projection_dim=k, seed=s, exact_flops=0).theta, ref) for s in range(8))
           for k in (16, 256)]
    assert err[1] < err[0] / 2.5


def test_save_load_checksum_and_provenance(tmp_path):
    torch.manual_seed(9)
    m = SmallConvNet(3).double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    k = compute_kernel(m, x, method="exact")
    path = k.save(tmp_path / "k.ftk")
    with pytest.raises(KernelError, match="refusing to overwrite"):
        k.save(path)
    back = Kernel.load(path, model_fingerprint=k.meta["model_fingerprint"], data_fingerprint=k.meta["data_fingerprint"])
    torch.testing.assert_close(back.theta, k.theta)
    assert back.meta["method"] == "exact"
    with pytest.raises(KernelError, match="model_fingerprint"):
        Kernel.load(path, model_fingerprint="0" * 16)
    with pytest.raises(KernelError, match="method"):
        Kernel.load(path, expect={"method": "factored"})
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "bad.ftk").write_bytes(bytes(raw))
    with pytest.raises(KernelError, match="corrupt"):
        Kernel.load(tmp_path / "bad.ftk")
    (tmp_path / "junk.ftk").write_bytes(b"hello")
    with pytest.raises(KernelError):
        Kernel.load(tmp_path / "junk.ftk")


def test_memory_budget_is_enforced():
    m = SmallConvNet(3).eval()
    with pytest.raises(MemoryBudgetError, match="budget"):
        compute_kernel(m, torch.randn(40, 3, 8, 8), method="exact", max_memory=10_000)


def test_bad_models_give_clear_errors():
    from models_for_tests import returns_tuple

    with pytest.raises(ModelError, match="logits of shape"):
        compute_kernel(returns_tuple(3), torch.randn(2, 3, 4, 4))
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(KernelError, match="no trainable"):
        compute_kernel(frozen, torch.randn(2, 3))
    nan_in = torch.randn(2, 3)
    nan_in[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        compute_kernel(nn.Linear(3, 2), nan_in)


@pytest.mark.slow
def test_efficientnet_lite0_exact_against_brute_force():
    """The real default model: every layer path of EfficientNet-Lite0 (static same-padding convs, depthwise convs,
    BatchNorm, the new head), float64, against vmap(jacrev)."""
    from finetime.zoo import build_model, load_raw, sample_task

    ds = sample_task(load_raw("fashion-mnist-mini"), classes=3, per_class=1, image_size=32, seed=0)
    m = build_model("efficientnet-lite0", num_classes=3, image_size=32).double()
    x = ds.x.double()
    ref = brute_force_ntk(m, x)
    k = compute_kernel(m, x, method="exact")
    assert rel(k.theta, ref) < 1e-9


def test_batch_function_kernel_matches_jacobian_of_the_whole_batch():
    """With BatchNorm batch statistics the network is a function of the whole batch: its kernel is J J^T of that
    function (torch.func over the batch as one input), which the per-sample kernel at the same statistics is not."""
    from torch.func import functional_call, jacrev

    from finetime.kernel.batch_function import batch_function_kernel, batch_statistics_network
    from finetime.network import batch_statistics_outputs, recalibrate_batchnorm

    torch.manual_seed(0)
    model = SmallConvNet(3).double()
    x = torch.randn(7, 3, 8, 8, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    theta, out = batch_function_kernel(model, x, names, chunk=4)
    m = batch_statistics_network(model)
    params = {n: p.detach() for n, p in m.named_parameters()}
    jac = jacrev(lambda p: functional_call(m, p, (x,)))(params)
    j = torch.cat([jac[n].reshape(7 * 3, -1) for n in names], 1)
    torch.testing.assert_close(theta, j @ j.T, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(out, batch_statistics_outputs(model, x))
    # before the BatchNorm the statistics' term is large: a bias there is subtracted out with the batch mean
    early = ["conv1.weight", "conv1.bias"]
    per_sample = brute_force_ntk(recalibrate_batchnorm(copy.deepcopy(model), x), x, early)
    assert rel(per_sample, batch_function_kernel(model, x, early)[0]) > 0.2
    assert batch_function_kernel(model, x, ["conv1.bias"])[0].abs().max() < 1e-10


def test_summed_outputs_kernel_is_the_pntk():
    """``Theta_s (x) I_C`` with ``Theta_s`` the kernel of ``sum_c f_c / sqrt(C)``, against the brute-force Jacobian;
    ``f0`` and ``J w0`` are the network's own C outputs."""
    from finetime.kernel import summed_outputs_kernel

    torch.manual_seed(0)
    m = SmallConvNet(3).double().eval()
    x, x_test = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    k = summed_outputs_kernel(m, x, x_test=x_test, method="exact", with_jw0=True)
    j, j_test = jacobian(m, x), jacobian(m, x_test)
    js = j.view(5, 3, -1).sum(1) / 3**0.5
    js_test = j_test.view(2, 3, -1).sum(1) / 3**0.5
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(k.theta, torch.kron(js @ js.T, eye), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(k.theta_test, torch.kron(js_test @ js.T, eye), rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(k.f0, m(x))
        torch.testing.assert_close(k.f0_test, m(x_test))
    torch.testing.assert_close(k.jw0, jacobian_weight_product(m, x, [n for n, _ in m.named_parameters()]))
    assert k.meta["outputs"] == "sum" and k.meta["classes"] == 3
    full = compute_kernel(m, x, method="exact")
    assert (k.theta - full.theta).norm() > 1e-3 * full.theta.norm()  # an approximation on a nonlinear network


def test_summed_outputs_kernel_is_exact_for_a_linear_head():
    """A linear map's class blocks are ``(x_i . x_j + 1) I_C``: the pNTK is the kernel."""
    from finetime.kernel import summed_outputs_kernel
    from models_for_tests import SoftmaxRegression

    torch.manual_seed(1)
    m = SoftmaxRegression(7, 4).double()
    x = torch.randn(6, 7, dtype=torch.float64)
    torch.testing.assert_close(summed_outputs_kernel(m, x, method="exact").theta,
                               compute_kernel(m, x, method="exact").theta, rtol=1e-10, atol=1e-12)
