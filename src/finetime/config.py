"""One run's settings: every CLI flag, as a frozen dataclass that round-trips through JSON (``config`` in outputs)."""

from __future__ import annotations

import dataclasses
import math

from .errors import ConfigError
from .losses import Loss
from .optim import SGD, Constant, Cosine, Sampling, StepDecay

__all__ = ["RunConfig"]

DYNAMICS = ("exact", "ode", "sde")
SCHEDULES = ("constant", "step", "cosine")


REANCHOR = ("all", "first", "none")
"""Re-linearization checkpoints at which the predicted curve restarts from the network's true outputs."""

PREDICTOR_KEYS = ("relinearize", "reanchor", "linearity_tol")
"""Settings that choose how the prediction is made (not what is trained): their defaults are the default predictor."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of a prediction (and of the real run that ``validate`` compares it with)."""

    model: str = "efficientnet-lite0"
    data: str = "fashion-mnist"
    classes: int = 5
    per_class: int = 20
    test_per_class: int = 0
    image_size: int = 64
    seed: int = 0
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 0
    sampling: str = "shuffle"
    drop_last: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    step_size: int = 50
    gamma: float = 0.1
    steps: int = 150
    loss: str = "ce"
    target_loss: tuple[float, ...] = ()
    epsilon: tuple[float, ...] = (0.01, 0.1, 0.4)
    runs: int = 32
    dynamics: str = "exact"
    kernel_method: str = "factored"
    projection_dim: int = 4096
    freeze_backbone: bool = False
    bn: str = "frozen"
    max_memory_gb: float | None = None
    extrapolate_to: int = 0
    relinearize: int = 3  # with the next two: the default predictor (``adaptive``); 0: the paper's one kernel at w0
    reanchor: str = "none"
    linearity_tol: float = 0.01

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(msg)

        if self.steps < 1:
            bad(f"--steps must be >= 1, got {self.steps}")
        if self.runs < 1:
            bad(f"--runs must be >= 1, got {self.runs}")
        if self.batch_size < 0:
            bad(f"--batch-size must be >= 1 (or 0 for full-batch GD), got {self.batch_size}")
        if self.dynamics not in DYNAMICS:
            bad(f"--dynamics must be one of {', '.join(DYNAMICS)}, got {self.dynamics!r}")
        if self.schedule not in SCHEDULES:
            bad(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.loss not in [m.value for m in Loss]:
            bad(f"--loss must be ce or mse, got {self.loss!r}")
        if self.sampling not in [m.value for m in Sampling]:
            bad(f"--sampling must be shuffle or replacement, got {self.sampling!r}")
        if self.bn not in ("frozen", "batch"):
            bad(f"--bn must be frozen or batch, got {self.bn!r}")
        for e in self.epsilon:
            if not (0 < e < 1):
                bad(f"--epsilon values must be in (0, 1), got {e}")
        for t in self.target_loss:
            if not (t > 0 and math.isfinite(t)):
                bad(f"--target-loss must be positive, got {t}")
        if self.projection_dim < 1:
            bad(f"--projection-dim must be >= 1, got {self.projection_dim}")
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            bad(f"--max-memory must be positive (GB), got {self.max_memory_gb}")
        if self.relinearize < 0:
            bad(f"--relinearize must be >= 0, got {self.relinearize}")
        if self.reanchor not in REANCHOR:
            bad(f"--reanchor must be all, first or none, got {self.reanchor!r}")
        if not (self.linearity_tol >= 0 and math.isfinite(self.linearity_tol)):
            bad(f"--linearity-tol must be >= 0 (0 turns the check off), got {self.linearity_tol}")
        if self.extrapolate_to < 0:
            bad(f"--extrapolate-to must be a number of samples (or 0), got {self.extrapolate_to}")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            bad(f"--warmup-steps ({self.warmup_steps}) must be fewer than --steps ({self.steps})")
        self.sgd()  # validates lr, momentum, nesterov, weight decay

    @property
    def relinearizes(self) -> bool:
        """Whether the prediction re-linearizes: ``relinearize > 0`` with the exact simulator and no weight decay
        (the ODE/SDE and weight decay use the one kernel at ``w0``)."""
        return bool(self.relinearize) and self.dynamics == "exact" and not self.weight_decay

    def sgd(self) -> SGD:
        """The optimizer these settings describe."""
        if self.schedule == "step":
            sched = StepDecay(self.step_size, self.gamma, warmup_steps=self.warmup_steps)
        elif self.schedule == "cosine":
            sched = Cosine(warmup_steps=self.warmup_steps)
        else:
            sched = Constant(warmup_steps=self.warmup_steps)
        return SGD(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay,
                   batch_size=self.batch_size or None, sampling=Sampling(self.sampling), drop_last=self.drop_last,
                   schedule=sched)

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory_gb is None else int(self.max_memory_gb * 2**30)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown setting(s) in config: {', '.join(sorted(unknown))}")
        d = dict(d)
        for k in ("target_loss", "epsilon"):
            if k in d and d[k] is not None:
                d[k] = tuple(float(v) for v in (d[k] if isinstance(d[k], (list, tuple)) else [d[k]]))
        return cls(**d)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)
