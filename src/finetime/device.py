"""Where finetime runs the user's network (``--device``) and in what precision the real steps run (``--precision``).

* The network (kernel engine, re-linearization, real fine-tuning in ``validate``, step timing) runs on the resolved
  device; data stay on the CPU and move chunk by chunk. The kernel is computed in the model's own dtype (float32 or
  better) whatever ``--precision`` says: precision is how the *real* steps run.
* The function-space simulator runs on the CPU in float64 (float32 from 2000 outputs on): its matrices are
  ``(N C)^2`` and it is a fraction of a second to a few seconds at the sizes finetime predicts.
* ``--precision bf16|fp16`` times (and, in ``validate``, trains) the real step under ``torch.autocast``, fp16 with a
  ``GradScaler`` as mixed-precision training does.
"""

from __future__ import annotations

import contextlib
import enum
import re

import torch

from .errors import ConfigError

__all__ = ["Precision", "resolve_device", "model_device", "synchronize", "autocast", "grad_scaler",
           "check_device_spec", "describe"]


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.value)


_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str:
    """``spec`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:I`` (availability is checked when it is used)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:I, got {spec!r}")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; ``cuda[:I]`` must exist."""
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device is available here (torch {torch.__version__} sees none); "
                          "use --device cpu or auto")
    dev = torch.device(spec)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA ...)``."""
    if device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{i} ({torch.cuda.get_device_name(i)})"
    return str(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; timings must not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: Precision | str):
    """``torch.autocast`` for ``bf16`` / ``fp16``; a no-op context for ``fp32``."""
    precision = Precision(precision)
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def grad_scaler(device: torch.device, precision: Precision | str):
    """A ``torch.amp.GradScaler`` for fp16 (``None`` otherwise)."""
    if Precision(precision) is not Precision.FP16:
        return None
    return torch.amp.GradScaler(device.type)
