"""The kernel-route registry: a route added in its own file is planned and driven by the engine unchanged."""

import pytest
import torch

from finetime.kernel import brute_force_ntk, compute_kernel
from finetime.kernel.routes import ROUTES, Route, flat_gradient, register_route
from models_for_tests import SmallConvNet


class OwnFeatures(Route):
    """Exact per-sample gradients kept in a store of its own and multiplied out in ``gram``; claims zero cost so
    that every exact choice takes it."""

    name = "own-features"
    exact = True

    @classmethod
    def flops(cls, shape, rows, cols, c):
        return 0.0

    def allocate(self, rows, c, dtype, device):
        self.features = torch.zeros(rows * c, self.shape.dim, dtype=dtype, device=device)

    def add(self, stores, t, start, stop, c):
        self.features[start * c : stop * c] = flat_gradient(t, stop - start, c)

    def gram(self, theta, rows, cols, c, span=None):
        lo, hi = span if span is not None else (0, rows)
        theta[lo * c : hi * c] += self.features[lo * c : hi * c] @ self.features[: cols * c].T


@pytest.fixture
def own_route():
    register_route(OwnFeatures)
    yield OwnFeatures
    del ROUTES[OwnFeatures.name]


def test_registered_route_is_used_without_engine_changes(own_route):
    torch.manual_seed(0)
    m = SmallConvNet(3).double().eval()
    x, xt = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    k = compute_kernel(m, x, x_test=xt, method="exact", chunk_size=2)
    assert set(k.meta["plan"]["strategies"]) == {"own-features"}
    assert k.meta["plan"]["exact_weight_fraction"] == 1
    torch.testing.assert_close(k.theta, brute_force_ntk(m, x), rtol=1e-10, atol=1e-12)
    full = brute_force_ntk(m, torch.cat([x, xt]))
    torch.testing.assert_close(k.theta_test, full[x.shape[0] * 3 :, : x.shape[0] * 3], rtol=1e-10, atol=1e-12)


def test_builtin_routes_and_duplicate_names():
    assert list(ROUTES)[:5] == ["materialize", "ghost", "kron", "gaussian", "sparse"]
    with pytest.raises(ValueError, match="already registered"):
        register_route(ROUTES["kron"])


def test_factored_plan_reports_every_route_it_used():
    torch.manual_seed(1)
    m = SmallConvNet(3).double().eval()
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    plan = compute_kernel(m, x, projection_dim=16, exact_flops=2e4).meta["plan"]
    used = plan["strategies"]
    assert set(used) <= set(ROUTES) and len(used) >= 2
    exact = sum(v["weights"] for r, v in used.items() if ROUTES[r].exact)
    assert plan["exact_weight_fraction"] == pytest.approx(exact / sum(v["weights"] for v in used.values()))
