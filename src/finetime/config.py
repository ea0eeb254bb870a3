"""One run's settings, nested by what they describe: the task (model and data), the optimizer, the kernel and the
predictor. Choices are enums and typed objects; the flat form (``to_dict`` / ``from_dict``) is the ``config``
section of every result JSON, the CLI's flags and the keys of configuration files.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers

from .device import Precision, check_device_spec
from .errors import ConfigError
from .kernel.projection import KernelMethod
from .losses import Loss, LossSpec
from .network import BatchNormMode
from .optim import OPTIMIZERS, SCHEDULES, SGD, Optimizer, Sampling, StepDecay

__all__ = ["TaskConfig", "KernelConfig", "PredictorConfig", "Predictor", "Reanchor", "RunConfig", "PRESETS"]


def sample_setting(value, flag: str) -> int | str:
    """A number-of-samples setting (``--kernel-samples``, ``--refresh-samples``): ``auto``, ``all`` or an integer
    >= 2 (a string of digits is read as one)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not (value in ("auto", "all") or (isinstance(value, int) and not isinstance(value, bool) and value >= 2)):
        raise ConfigError(f"{flag} must be auto, all or a number of samples >= 2, got {value!r}")
    return value


class Predictor(str, enum.Enum):
    """How the prediction is made from the kernel (``finetime.predictors`` maps each to its function)."""

    RELINEARIZED = "relinearized"
    """Exact simulation of the optimizer on the linearization, with the kernel recomputed along the predicted path
    (``relinearize`` checkpoints) unless a linearity check at the first checkpoint passes (``linearity_tol``)."""
    LINEAR = "linear"
    """Exact simulation on the linearization at the pretrained weights: one kernel (the paper's model)."""
    PAPER = "paper"
    """The paper's own integrators: gradient-flow ODE (full batch) or SDE (minibatches) with the effective
    learning rate ``lr / (1 - momentum)``; one kernel."""


class Reanchor(str, enum.Enum):
    """Re-linearization checkpoints at which the predicted curve restarts from the network's true outputs."""

    ALL = "all"
    FIRST = "first"
    NONE = "none"


INTEGER_SETTINGS = frozenset({"classes", "per_class", "test_per_class", "image_size", "seed", "max_length", "steps",
                              "runs", "batch_size", "warmup_steps", "step_size", "projection_dim", "extrapolate_to",
                              "relinearize"})
"""Flat settings that count something: a config file or dict must give whole numbers for them."""


ALL_SETTINGS = frozenset({"classes", "per_class", "test_per_class"})
"""Counts of the task that may also be ``all``: every class of the data, every sample of a class."""


def _whole(key: str, value):
    """``value`` as an int when it is a whole number (``150`` or ``150.0``; ``None`` kept), else a ``ConfigError``;
    ``all`` is kept for the counts of ``ALL_SETTINGS``."""
    if value is None or (key in ALL_SETTINGS and value == "all"):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or int(value) != value:
        raise ConfigError(f"--{key.replace('_', '-')} must be a whole number, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What is fine-tuned, on what: the kernel depends on these settings only."""

    model: str = "efficientnet-lite0"
    data: str = "fashion-mnist"
    classes: int | str = 5
    """Random classes to fine-tune on; ``all``: every class of the data, in label order."""
    per_class: int | str = 20
    """Random training samples of each class; ``all``: every one (the classes may then differ in size)."""
    test_per_class: int | str = 0
    """Held-out samples of each class for test-set curves; ``all``: every test sample of the chosen classes."""
    image_size: int = 64
    seed: int = 0
    freeze_backbone: bool = False
    bn: BatchNormMode = BatchNormMode.FROZEN
    max_length: int = 128  # text: tokens per sample at most

    def __post_init__(self):
        for key in ALL_SETTINGS:
            value = getattr(self, key)
            if (isinstance(value, str) and value.strip().isdigit()) or \
                    (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
                object.__setattr__(self, key, int(value))  # "20", or a numpy integer from a grid
            elif value != "all":
                raise ConfigError(f"--{key.replace('_', '-')} must be a whole number or all, got {value!r}")
        if self.max_length < 2:
            raise ConfigError(f"--max-length must be at least 2 tokens, got {self.max_length}")
        try:
            object.__setattr__(self, "bn", BatchNormMode(self.bn))
        except ValueError:
            raise ConfigError(f"--bn must be frozen or batch, got {self.bn!r}") from None


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How the kernel is computed (``finetime.kernel.compute_kernel``)."""

    method: KernelMethod = KernelMethod.FACTORED
    projection_dim: int = 4096
    max_memory_gb: float | None = None
    outputs: str = "all"
    """``all``: the kernel of every output (``C`` backward passes per sample); ``sum``: the sum-of-logits kernel
    times ``I_C`` (``kernel.summed_outputs_kernel``, one backward pass per sample)."""

    def __post_init__(self):
        if self.outputs not in ("all", "sum"):
            raise ConfigError(f"--kernel-outputs must be all or sum, got {self.outputs!r}")
        try:
            object.__setattr__(self, "method", KernelMethod(self.method))
        except ValueError:
            raise ConfigError(f"--kernel-method must be one of {', '.join(m.value for m in KernelMethod)}, "
                              f"got {self.method!r}") from None
        if self.projection_dim < 1:
            raise ConfigError(f"--projection-dim must be >= 1, got {self.projection_dim}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ConfigError(f"--max-memory must be positive (GB), got {self.max_memory_gb}")

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory_gb is None else int(self.max_memory_gb * 2**30)


LINEARITY_TOL = 0.01
"""The linearity check's tolerance for SGD: the network moved to the linear model's weights at step ~T/15 may differ
from the linear model's loss by this fraction before the kernel is refreshed (chosen on the paper suite)."""

ADAM_LINEARITY_TOL = 0.001
"""The same for Adam and AdamW, ten times tighter: Adam moves every weight by about ``lr`` per step, small-gradient
ones included, so a small gap at the check foretells a larger departure later (AdamW suites, BENCHMARKS.md sections
6-7: at 0.01, 7 of 12 lr 1e-5 image cells and every lr 3e-5 text cell kept one kernel and were predicted too slow)."""


END_TOL = 0.4
"""The end check's tolerance (``PredictorConfig.end_tol``): where the linearity check at ~T/15 keeps one kernel, the
network is moved to the linear model's weights at the end of the run and evaluated; if its loss differs from the
linear model's by this fraction of the loss decrease the linear model predicts or more, the kernel is refreshed
there and moves geometrically in time from ``w0``'s to it. The gap at ~T/15 is measured early, before momentum has
built up and before a slowly growing kernel has grown; the end check sees the whole run. Chosen on the benchmark
suites (BENCHMARKS.md, section 1, "The end check"): of the image cells whose first check passes, 32 of the 33 with
an end gap of 0.41-0.67 (lr 1e-4 with momentum 0.9, lr 1e-3 without it at 32 px, MNIST, AdamW lr 1e-5) were
predicted better with the end refresh, and those at 0.12-0.34 (lr 1e-4 without momentum) better without it; the
text cells at 0.09-0.28 would have gained from it too."""

FAR_FROM_LINEAR = 1.0
"""A linearity-check loss gap from which the network is far from linear: at step ~T/15, moved to the linear model's
weights, its loss is at least twice the linear model's (the summary warns; ``--first-steps auto`` measures the first
real steps)."""

INTERPOLATIONS = ("linear", "geometric")
"""How the kernel moves from one refresh to the next when interpolated: ``linear`` in time, or ``geometric``: the
straight line between the two kernels travelled so that the trace changes by the same factor at every step (for a
growing kernel slower than linear at first, faster at the end)."""

GROWTH_JUMP = 10.0
"""With momentum the default keeps each refreshed kernel stepwise, except across an interval over which the kernel's
trace grows this many times or more: there a jump makes the simulation run on a kernel far too small and then, at
once, on one too large for its step (the curve stalls, then spikes or diverges), and the kernel is interpolated
geometrically instead. Chosen on the benchmark suites: with the usual recipe (lr 1e-3, momentum 0.9) at 32 px the
trace grows 12-54 times between the first two refreshes, and geometric interpolation does better there; in every
64-224 px cell with momentum, where stepwise kernels do better, at most 6.8 times (BENCHMARKS.md, section 1)."""

FIRST_STEPS = 5
"""Real steps ``--first-steps auto`` runs with BatchNorm batch statistics, or where the linearity check finds the
network far from linear (``FAR_FROM_LINEAR``); about as many as the step timing runs (``finetime.first_steps``)."""


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """The predictor and its settings. The default is the ``adaptive`` preset."""

    kind: Predictor = Predictor.RELINEARIZED
    relinearize: int = 3
    reanchor: Reanchor = Reanchor.NONE
    linearity_tol: float | None = None
    """Relative loss gap under which the linearity check keeps one kernel (0: no check); ``None``: the optimizer's
    default, ``LINEARITY_TOL`` for SGD and ``ADAM_LINEARITY_TOL`` for Adam and AdamW (``tolerance``)."""
    refresh_samples: int | str = "auto"
    """Training samples each refresh computes the new kernel on (``finetime.subset.refresh_sample_count``; the rest
    follow by ``kernel.update.nystrom_update``): ``all``, ``auto`` or a number."""
    relinearize_adam: bool = True
    """Re-linearize Adam and AdamW too (``--no-relinearize-adam`` keeps their one preconditioned kernel at ``w0``):
    each refresh re-estimates Adam's ``P`` from the second moments along the path and moves no weight further than
    Adam could (BENCHMARKS.md, sections 6 and 7)."""
    interpolate: bool | None = None
    """Let the kernel move in time from one refresh to the next (a second, cheap simulation pass) instead of jumping
    at the checkpoints (``--interpolate-kernels``); ``None``: the default where the curve is not re-anchored: every
    interval for Adam and AdamW (whose refreshes also re-estimate ``P`` along the path) and for SGD and GD without
    momentum; with momentum only across the intervals over which the kernel's trace grows ``GROWTH_JUMP``-fold or
    more, the others stepwise (``interpolation_for``; BENCHMARKS.md, section 1, "The kernel between refreshes")."""
    interpolation: str | None = None
    """How an interpolated kernel moves between refreshes (``--kernel-interpolation``, ``INTERPOLATIONS``):
    ``linear`` in time, or ``geometric`` (its trace by the same factor every step); ``None``: geometric with
    momentum, linear otherwise."""

    first_steps: int | str = "auto"
    """Real steps run first on a copy of the model, the prediction time-warped to their measured losses
    (``finetime.first_steps``); 0: none; ``auto``: ``FIRST_STEPS`` with BatchNorm batch statistics or where the
    linearity check's loss gap is ``FAR_FROM_LINEAR`` or more, none otherwise. The other presets (``linear``,
    ``paper``, ``relinearized3``) run none: they are the kernel's predictions alone."""
    stability_cap: float = 0.0
    """Hold each refreshed kernel's sharpness (the batch's, for minibatches) at this fraction of the stable limit
    ``2 (1 + momentum) / lr`` (``relinearize``, ``spectrum.capped_kernel``; SGD and GD); 0: no cap."""
    end_tol: float = END_TOL
    """The end check's tolerance, as a fraction of the loss decrease the linear model predicts (``END_TOL``); 0: no
    end check. Only where the linearity check keeps one kernel."""

    def interpolates(self, optimizer) -> bool:
        """Whether refreshed kernels may be interpolated in time for ``optimizer`` (``interpolate``, or its default:
        wherever the curve is not re-anchored; which intervals, and how: ``interpolation_for``)."""
        if self.interpolate is None:
            return self.reanchor is Reanchor.NONE
        return self.interpolate

    def interpolation_for(self, optimizer) -> tuple[str, float]:
        """``(how, min_growth)`` of the interpolation for ``optimizer``: ``how`` one of ``INTERPOLATIONS``; an
        interval over which the kernel's trace grows less than ``min_growth``-fold keeps its first kernel. The
        default with momentum: geometric across the intervals with a ``GROWTH_JUMP``-fold growth, stepwise
        elsewhere; an explicit ``interpolate=True``, or no momentum: every interval."""
        momentum = not optimizer.preconditioned and bool(getattr(optimizer, "momentum", 0.0))
        how = self.interpolation or ("geometric" if momentum else "linear")
        return how, GROWTH_JUMP if momentum and self.interpolate is None else 0.0

    def tolerance(self, optimizer) -> float:
        """The linearity check's tolerance for ``optimizer``: ``linearity_tol``, or the optimizer's default."""
        if self.linearity_tol is not None:
            return self.linearity_tol
        return ADAM_LINEARITY_TOL if optimizer.preconditioned else LINEARITY_TOL

    def __post_init__(self):
        object.__setattr__(self, "refresh_samples", sample_setting(self.refresh_samples, "--refresh-samples"))
        for name, enum_ in (("kind", Predictor), ("reanchor", Reanchor)):
            try:
                object.__setattr__(self, name, enum_(getattr(self, name)))
            except ValueError:
                flag = "--predictor" if name == "kind" else "--reanchor"
                raise ConfigError(f"{flag} must be one of {', '.join(m.value for m in enum_)}, "
                                  f"got {getattr(self, name)!r}") from None
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"--kernel-interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got {self.interpolation!r}")
        if self.interpolate and self.reanchor is not Reanchor.NONE:
            raise ConfigError("--interpolate-kernels needs --reanchor none: a re-anchored curve jumps to the network's "
                              "outputs at each checkpoint")
        if self.relinearize < 0:
            raise ConfigError(f"--relinearize must be >= 0, got {self.relinearize}")
        fs = self.first_steps
        if isinstance(fs, str) and fs != "auto":
            try:
                fs = int(fs)
            except ValueError:
                raise ConfigError(f"--first-steps must be a number of steps or auto, got {fs!r}") from None
        if fs != "auto" and (isinstance(fs, bool) or not isinstance(fs, int) or fs < 0):
            raise ConfigError(f"--first-steps must be a number of steps (0: none) or auto, got {fs!r}")
        object.__setattr__(self, "first_steps", fs)
        if self.linearity_tol is not None and not (self.linearity_tol >= 0 and math.isfinite(self.linearity_tol)):
            raise ConfigError(f"--linearity-tol must be >= 0 (0 turns the check off), got {self.linearity_tol}")
        et = self.end_tol
        if isinstance(et, bool) or not isinstance(et, numbers.Real) or not (et >= 0 and math.isfinite(et)):
            raise ConfigError(f"--end-tol must be a number >= 0 (0 turns the end check off), got {et!r}")
        object.__setattr__(self, "end_tol", float(et))
        sc = self.stability_cap
        if isinstance(sc, bool) or not isinstance(sc, numbers.Real) or not (sc >= 0 and math.isfinite(sc)):
            raise ConfigError(f"--stability-cap must be a number >= 0 (0: no cap), got {sc!r}")
        object.__setattr__(self, "stability_cap", float(sc))


PRESETS: dict[str, PredictorConfig] = {
    "adaptive": PredictorConfig(),
    "linear": PredictorConfig(Predictor.LINEAR, first_steps=0),
    "paper": PredictorConfig(Predictor.PAPER, first_steps=0),
    "relinearized3": PredictorConfig(Predictor.RELINEARIZED, 3, Reanchor.ALL, 0.0, "all", first_steps=0),
}
"""Named predictors (``--predictor``, and the rows of the benchmark):

* ``adaptive`` (default): a linearity check at step ~T/15; where it fails, the kernel is refreshed at ~T/15, 3T/15 and
  7T/15 along the predicted path, the curve continuing from the linear model's own outputs; where it passes, the end
  check (``end_tol``) may refresh the kernel once, at the last step; where the check finds
  the network far from linear the curve is then time-warped to the first real steps (``first_steps``); with
  BatchNorm batch statistics no check and no refresh, the one kernel fitted to those steps.
* ``linear``: the exact simulator on the one kernel at the pretrained weights.
* ``paper``: the paper's ODE (full batch) / SDE (minibatches) with the effective learning rate.
* ``relinearized3``: three re-linearizations at the same points, the curve re-anchored each time on the real
  network's outputs, no linearity check.
"""

_TASK = [f.name for f in dataclasses.fields(TaskConfig)]
_SCHEDULE_KEYS = ("schedule", "warmup_steps", "step_size", "gamma")
_KERNEL = {"kernel_method": "method", "projection_dim": "projection_dim", "max_memory_gb": "max_memory_gb",
           "kernel_outputs": "outputs"}
_PREDICTOR = {"predictor": "kind", "relinearize": "relinearize", "reanchor": "reanchor",
              "linearity_tol": "linearity_tol", "end_tol": "end_tol", "refresh_samples": "refresh_samples",
              "relinearize_adam": "relinearize_adam", "interpolate_kernels": "interpolate",
              "kernel_interpolation": "interpolation",
              "first_steps": "first_steps", "stability_cap": "stability_cap"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Settings of a prediction (and of the real run that ``validate`` compares it with).

    Build it nested (``RunConfig(task=TaskConfig(...), optimizer=SGD(lr=...), ...)``) or from the flat keys of the
    CLI and the result JSON (``RunConfig.from_dict({"lr": 1e-3, "batch_size": 32, ...})``).
    """

    task: TaskConfig = TaskConfig()
    optimizer: Optimizer = SGD(lr=1e-3)
    steps: int = 150
    loss: Loss = Loss.CE
    label_smoothing: float = 0.0  # cross-entropy against (1 - a) onehot + a / C (the run's label smoothing)
    target_loss: tuple[float, ...] = ()
    epsilon: tuple[float, ...] = (0.01, 0.1, 0.4)
    runs: int = 32
    kernel: KernelConfig = KernelConfig()
    predictor: PredictorConfig = PRESETS["adaptive"]
    extrapolate_to: int = 0
    kernel_samples: int | str = "auto"  # the kernel on a class-balanced subset of this many samples (finetime.subset)
    device: str = "auto"  # where the network runs (finetime.device); not part of what is predicted
    precision: Precision = Precision.FP32  # how the real steps run (step timing, validate's fine-tuning)

    def __post_init__(self):
        def bad(msg):
            raise ConfigError(msg)

        check_device_spec(self.device)
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            bad(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")

        try:
            object.__setattr__(self, "loss", Loss(self.loss))
        except ValueError:
            bad(f"--loss must be ce or mse, got {self.loss!r}")
        object.__setattr__(self, "label_smoothing", float(self.label_smoothing))
        LossSpec(self.loss, self.label_smoothing)  # its checks
        object.__setattr__(self, "epsilon", tuple(float(e) for e in self.epsilon))
        object.__setattr__(self, "target_loss", tuple(float(t) for t in self.target_loss))
        if self.steps < 1:
            bad(f"--steps must be >= 1, got {self.steps}")
        if self.runs < 1:
            bad(f"--runs must be >= 1, got {self.runs}")
        for e in self.epsilon:
            if not (0 < e < 1):
                bad(f"--epsilon values must be in (0, 1), got {e}")
        for t in self.target_loss:
            if not (t > 0 and math.isfinite(t)):
                bad(f"--target-loss must be positive, got {t}")
        if self.extrapolate_to < 0:
            bad(f"--extrapolate-to must be a number of samples (or 0), got {self.extrapolate_to}")
        ks = sample_setting(self.kernel_samples, "--kernel-samples")
        object.__setattr__(self, "kernel_samples", ks)
        if self.extrapolate_to and ks not in ("auto", "all"):
            bad("--extrapolate-to and --kernel-samples both extrapolate from a subset; give one of them")
        fs = self.predictor.first_steps
        if fs != "auto" and fs >= self.steps:
            bad(f"--first-steps ({fs}) must be fewer than --steps ({self.steps})")
        w = self.optimizer.schedule.warmup_steps
        if w >= self.steps and w > 0:
            bad(f"--warmup-steps ({w}) must be fewer than --steps ({self.steps})")

    @property
    def relinearizes(self) -> bool:
        """Whether the prediction re-linearizes: the ``relinearized`` predictor with ``relinearize > 0`` and an
        optimizer whose weights the simulator can track (not SGD with L2 weight decay, predicted with the one kernel
        at ``w0``); Adam and AdamW only with ``relinearize_adam``; not with BatchNorm batch statistics when the first
        real steps are measured (``batch_statistics_fitted``)."""
        p, o = self.predictor, self.optimizer
        return (p.kind is Predictor.RELINEARIZED and p.relinearize > 0 and o.relinearizable
                and (p.relinearize_adam or not o.preconditioned) and not self.batch_statistics_fitted)

    @property
    def batch_statistics_fitted(self) -> bool:
        """BatchNorm batch statistics with the first real steps measured (``first_steps`` not 0): the prediction is
        the one kernel at ``w0`` fitted to them, no refreshes. The kernel refreshes would refresh is the
        running-statistics one, not the batch function that trains, and fitted to the first steps the one kernel did
        as well on the benchmark at a fraction of the cost (BENCHMARKS.md, section 1, "The first real steps")."""
        return self.task.bn is BatchNormMode.BATCH and self.first_steps() > 0

    def first_steps(self, loss_gap: float | None = None) -> int:
        """Real steps the prediction runs first (``PredictorConfig.first_steps``), ``auto`` resolved with the
        linearity check's ``loss_gap`` (``None``: no check was made)."""
        fs = self.predictor.first_steps
        if fs == "auto":
            far = loss_gap is not None and loss_gap >= FAR_FROM_LINEAR
            return min(FIRST_STEPS, self.steps - 1) if self.task.bn is BatchNormMode.BATCH or far else 0
        return fs

    @property
    def predictor_name(self) -> str:
        """The preset this predictor matches (``adaptive``, ``linear``, ...), or ``custom``."""
        p = self.predictor
        if p.kind is not Predictor.RELINEARIZED:
            return p.kind.value
        if not self.relinearizes and not self.batch_statistics_fitted:
            return "linear"
        return next((k for k, v in PRESETS.items() if v == p), "custom")

    @property
    def objective(self) -> "Loss | LossSpec":
        """The training loss with its settings, as the loss functions (``finetime.losses``) take it: the plain
        ``loss`` without label smoothing."""
        return LossSpec(self.loss, self.label_smoothing) if self.label_smoothing else self.loss

    # ------------------------------------------------------------------------------------------- flat form
    def to_dict(self) -> dict:
        """The flat, JSON-ready settings (the ``config`` section of results; the CLI's flag names)."""
        t, o, k, p = self.task, self.optimizer, self.kernel, self.predictor
        d = {name: getattr(t, name) for name in _TASK}
        d["bn"] = t.bn.value
        d["optimizer"] = o.name
        for f in dataclasses.fields(o):
            if f.name != "schedule":
                d[f.name] = getattr(o, f.name)
        d["batch_size"] = o.batch_size or 0
        d["sampling"] = o.sampling.value
        sched = o.schedule
        d["schedule"] = next(name for name, cls in SCHEDULES.items() if isinstance(sched, cls))
        d["warmup_steps"] = sched.warmup_steps
        d["step_size"] = sched.step_size if isinstance(sched, StepDecay) else StepDecay().step_size
        d["gamma"] = sched.gamma if isinstance(sched, StepDecay) else StepDecay().gamma
        d.update(steps=self.steps, loss=self.loss.value, label_smoothing=self.label_smoothing, target_loss=self.target_loss, epsilon=self.epsilon,
                 runs=self.runs, extrapolate_to=self.extrapolate_to, kernel_samples=self.kernel_samples,
                 device=self.device,
                 precision=self.precision.value)
        for flat, name in _KERNEL.items():
            v = getattr(k, name)
            d[flat] = v.value if isinstance(v, enum.Enum) else v
        for flat, name in _PREDICTOR.items():
            v = getattr(p, name)
            d[flat] = v.value if isinstance(v, enum.Enum) else v
        d["predictor"] = next((name for name, preset in PRESETS.items() if preset == p), p.kind.value)
        return d

    @classmethod
    def flat_keys(cls) -> set[str]:
        """Every key ``from_dict`` accepts, for every optimizer."""
        keys = set(_TASK) | set(_SCHEDULE_KEYS) | set(_KERNEL) | set(_PREDICTOR) | {
            "optimizer", "steps", "loss", "label_smoothing", "target_loss", "epsilon", "runs", "extrapolate_to", "kernel_samples", "device",
            "precision"}
        for opt in OPTIMIZERS.values():
            keys |= {f.name for f in dataclasses.fields(opt)} - {"schedule"}
        return keys

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Settings from flat keys (a result JSON's ``config``, a config file, the CLI); missing keys take their
        defaults. Results written before the ``predictor`` key (``dynamics: exact|ode|sde``) are read too."""
        d = dict(d)
        legacy = d.pop("dynamics", None)
        if legacy is not None and "predictor" not in d:
            if legacy in ("ode", "sde"):
                d["predictor"] = Predictor.PAPER.value
            elif legacy == "exact":
                d["predictor"] = (Predictor.LINEAR if d.get("relinearize", 1) == 0 else Predictor.RELINEARIZED).value
            else:
                raise ConfigError(f"unknown dynamics {legacy!r} in config")
        unknown = set(d) - cls.flat_keys()
        if unknown:
            raise ConfigError(f"unknown setting(s) in config: {', '.join(sorted(unknown))}")
        for k in INTEGER_SETTINGS & set(d):
            d[k] = _whole(k, d[k])
        for k in ("target_loss", "epsilon"):
            if k in d and d[k] is not None:
                d[k] = tuple(float(v) for v in (d[k] if isinstance(d[k], (list, tuple)) else [d[k]]))
        default = RunConfig().to_dict()
        opt_name = d.pop("optimizer", default["optimizer"])
        if opt_name not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {opt_name!r}")
        get = lambda k: d.get(k, default.get(k))  # noqa: E731
        task = TaskConfig(**{k: get(k) for k in _TASK})
        opt_cls = OPTIMIZERS[opt_name]
        own = {f.name for f in dataclasses.fields(opt_cls)}
        for other in OPTIMIZERS.values():
            for f in dataclasses.fields(other):
                if f.name not in own and f.name in d and d[f.name] != f.default:
                    raise ConfigError(f"--{f.name.replace('_', '-')} is a setting of --optimizer {other.name}, "
                                      f"not of {opt_name}")
        opt_kwargs = {f.name: d[f.name] for f in dataclasses.fields(opt_cls) if f.name != "schedule" and f.name in d}
        if "betas" in opt_kwargs:
            opt_kwargs["betas"] = tuple(opt_kwargs["betas"])
        opt_kwargs.setdefault("lr", default["lr"])
        if not opt_kwargs.get("batch_size"):
            opt_kwargs["batch_size"] = None
        sched = get("schedule")
        if sched not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {sched!r}")
        if sched == "step":
            schedule = StepDecay(get("step_size"), get("gamma"), warmup_steps=get("warmup_steps"))
        else:
            schedule = SCHEDULES[sched](warmup_steps=get("warmup_steps"))
        try:
            opt_kwargs["sampling"] = Sampling(opt_kwargs.get("sampling", Sampling.SHUFFLE))
        except ValueError:
            raise ConfigError(f"--sampling must be shuffle or replacement, got {opt_kwargs['sampling']!r}") from None
        optimizer = opt_cls(schedule=schedule, **opt_kwargs)
        kernel = KernelConfig(**{name: get(flat) for flat, name in _KERNEL.items()})
        kind = d.get("predictor", "adaptive")  # a preset's name gives its settings; explicit keys override them
        base = PRESETS[kind] if kind in PRESETS else PredictorConfig(kind=kind)
        predictor = PredictorConfig(**{name: d.get(flat, getattr(base, name)) for flat, name in _PREDICTOR.items()
                                       if flat != "predictor"}, kind=base.kind)
        return cls(task=task, optimizer=optimizer, steps=get("steps"), loss=get("loss"),
                   label_smoothing=get("label_smoothing"),
                   target_loss=get("target_loss"), epsilon=get("epsilon"), runs=get("runs"), kernel=kernel,
                   predictor=predictor, extrapolate_to=get("extrapolate_to"), kernel_samples=get("kernel_samples"),
                   device=get("device"),
                   precision=get("precision"))

    def replace(self, **flat_changes) -> "RunConfig":
        """A copy with some flat settings changed (``cfg.replace(lr=1e-2, batch_size=32)``)."""
        return RunConfig.from_dict({**self.to_dict(), **flat_changes})

