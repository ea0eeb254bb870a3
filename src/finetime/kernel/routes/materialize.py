"""``materialize``: exact per-sample gradients stored as features; ``Theta += Phi Phi^T``."""

from __future__ import annotations

from ._base import ParamShape, Route, flat_gradient, register_route


@register_route
class Materialize(Route):
    name = "materialize"
    exact = True

    @classmethod
    def flops(cls, shape: ParamShape, rows: int, cols: int, c: int) -> float:
        return rows * cols * c * c * shape.dim

    @property
    def feature_dim(self) -> int:
        return self.shape.dim

    @property
    def working_width(self) -> int:
        return self.shape.dim

    def add(self, stores, t, start, stop, c):
        stores.feats[start * c : stop * c, self.offset : self.offset + self.shape.dim] = flat_gradient(
            t, stop - start, c)
