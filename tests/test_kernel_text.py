"""The kernel engine on a transformer (a tiny BERT: embeddings shared across the batch, LayerNorm, attention,
GELU, padding masks) against a per-sample brute-force J J^T, plain and Adam-preconditioned."""

import pytest
import torch

from finetime.kernel import compute_kernel, gradient_moments, inverse_root_scale, jacobian_loop
from finetime.losses import Loss, residual

transformers = pytest.importorskip("transformers")


class TinyText(torch.nn.Module):
    def __init__(self, c=3):
        super().__init__()
        cfg = transformers.BertConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=20, max_position_embeddings=12, hidden_dropout_prob=0.1,
                                      attention_probs_dropout_prob=0.1)
        self.encoder = transformers.BertModel(cfg, add_pooling_layer=False)
        self.head = torch.nn.Linear(12, c)

    def forward(self, x):
        ids, mask = x[:, 0], x[:, 1]
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def _data(n=5, length=6, seed=0):
    torch.manual_seed(seed)
    model = TinyText().double().train()  # the engine must switch dropout off itself
    ids = torch.randint(1, 40, (n, length))
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 3:] = 0
    mask[3, 4:] = 0
    return model, torch.stack([ids, mask], 1)


@pytest.mark.parametrize("method", ["exact", "factored"])
def test_tiny_bert_kernel_matches_brute_force(method):
    model, x = _data()
    k = compute_kernel(model, x, method=method, chunk_size=2)
    assert model.training
    j = jacobian_loop(model, x)
    torch.testing.assert_close(k.theta, j @ j.T, rtol=1e-9, atol=1e-12)


def test_tiny_bert_preconditioned_kernel_matches_brute_force():
    model, x = _data(seed=1)
    y = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        r = residual(model.eval()(x), y, Loss.CE)
    mom = gradient_moments(model, x, r, chunk_size=3, full_squares=True)
    fast = gradient_moments(model, x, r, chunk_size=3)  # row and column sums from position Gram matrices
    scales = {k: inverse_root_scale(mom.sq[k], mom.layout[k], 1e-8) for k in mom.mean}
    j = jacobian_loop(model, x)
    g = (j.view(5, 3, -1) * r.unsqueeze(-1)).sum(1)
    start, p = 0, []
    for name, param in model.named_parameters():
        block = g[:, start : start + param.numel()]
        start += param.numel()
        torch.testing.assert_close(mom.sq[name], (block**2).mean(0), rtol=1e-9, atol=1e-14)
        if mom.layout[name] is not None:  # attention's linear maps and the embeddings: never formed in full
            sq = (block**2).mean(0).view(-1, mom.layout[name][2])
            torch.testing.assert_close(fast.sq_rows[name], sq.sum(1), rtol=1e-9, atol=1e-14)
            torch.testing.assert_close(fast.sq_cols[name], sq.sum(0), rtol=1e-9, atol=1e-14)
        s = scales[name]
        root = s.dense if s.dense is not None else (s.left.reshape(-1, 1) * s.right.reshape(1, -1)).reshape(-1)
        p.append(root**2)
    k = compute_kernel(model, x, method="exact", scales=scales)
    torch.testing.assert_close(k.theta, (j * torch.cat(p)) @ j.T, rtol=1e-9, atol=1e-12)


def test_tiny_bert_jacobian_weight_product():
    """J w0 (for weight decay) by forward mode through attention, against the brute-force Jacobian."""
    from finetime.kernel import jacobian_weight_product

    model, x = _data(seed=2)
    names = [n for n, _ in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    jw0 = jacobian_weight_product(model, x, names, chunk_size=2)
    torch.testing.assert_close(jw0.reshape(-1), jacobian_loop(model, x) @ w0, rtol=1e-9, atol=1e-12)
