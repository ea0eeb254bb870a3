"""The function-space problem: a kernel, initial outputs and labels (training set, optionally a test set)."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..losses import Loss, LossSpec, loss_spec

__all__ = ["Problem"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything the function-space dynamics need; no network.

    Shapes (``N`` training samples, ``M`` test samples, ``C`` outputs; flat index ``i * C + c``):

    * ``theta``: ``(N*C, N*C)`` empirical NTK ``J J^T`` on the training set.
    * ``f0``: ``(N, C)`` outputs at the pretrained weights; ``y``: ``(N,)`` integer labels.
    * ``theta_test``: ``(M*C, N*C)`` cross-kernel ``J_test J^T``; ``f0_test`` ``(M, C)``; ``y_test`` ``(M,)``.
    * ``jw0`` / ``jw0_test``: ``J w0`` (``(N, C)`` / ``(M, C)``), the Jacobian-vector product with the pretrained
      weights as tangent; needed only with weight decay, since ``J w_t = J w0 + (f_t - f0)`` for the linear model.
    * ``norm_scale``: a gradient's squared weight-space norm per unit of its squared norm in the kernel's metric,
      ``|g|^2 / c^T theta c`` for ``g = J^T c`` (what gradient clipping measures): 1 for ``J J^T``; for a
      preconditioned kernel ``J P J^T`` (Adam) an estimate at ``w0`` (``optim.adam``).
    """

    theta: torch.Tensor
    f0: torch.Tensor
    y: torch.Tensor
    loss: Loss | LossSpec = Loss.CE
    theta_test: torch.Tensor | None = None
    f0_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    jw0: torch.Tensor | None = None
    jw0_test: torch.Tensor | None = None
    norm_scale: float = 1.0

    def __post_init__(self):
        spec = loss_spec(self.loss)  # a plain Loss where it has no settings
        object.__setattr__(self, "loss", spec if spec.label_smoothing else spec.kind)
        n, c = self.f0.shape
        if self.theta.shape != (n * c, n * c):
            raise ConfigError(f"kernel shape {tuple(self.theta.shape)} does not match outputs {n}x{c}")
        if self.y.shape != (n,):
            raise ConfigError(f"labels shape {tuple(self.y.shape)} does not match {n} samples")
        if self.has_test:
            m = self.f0_test.shape[0]
            if self.theta_test.shape != (m * c, n * c) or self.y_test.shape != (m,):
                raise ConfigError("test cross-kernel, outputs and labels have inconsistent shapes")
        if not torch.isfinite(self.theta).all() or not torch.isfinite(self.f0).all():
            raise ConfigError("kernel or initial outputs contain NaN/inf; check the model and the data")

    @property
    def n(self) -> int:
        return self.f0.shape[0]

    @property
    def c(self) -> int:
        return self.f0.shape[1]

    @property
    def has_test(self) -> bool:
        return self.theta_test is not None and self.f0_test is not None and self.y_test is not None

    @property
    def device(self) -> torch.device:
        """Where the simulator runs on this problem: the device of its kernel (every tensor of it is there)."""
        return self.theta.device

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Problem":
        """The problem in another floating dtype and/or on another device (labels move, keeping their dtype)."""
        def conv(v):
            if not isinstance(v, torch.Tensor):
                return v
            return v.to(device=device, dtype=dtype if v.is_floating_point() else None)

        return Problem(**{f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)})
