"""The kernel object: the expensive thing, computed once, saved and reloaded with a checksum."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import torch

from ..errors import KernelError

__all__ = ["Kernel", "fingerprint_model", "fingerprint_data"]

FORMAT_VERSION = 1


def _hash_tensors(items) -> str:
    h = hashlib.sha256()
    for name, t in items:
        h.update(name.encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_model(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer (names, shapes, dtypes, values)."""
    return _hash_tensors(list(model.state_dict().items()))


def fingerprint_data(*tensors: torch.Tensor) -> str:
    """Hash of the inputs and labels a kernel was computed on."""
    return _hash_tensors([(str(i), t) for i, t in enumerate(tensors) if t is not None])


@dataclasses.dataclass
class Kernel:
    """Empirical NTK of a model on a training set (and optionally a test set), with its provenance.

    * ``theta``: ``(N*C, N*C)``, flat index ``i * C + c``.
    * ``f0``: ``(N, C)`` outputs at the pretrained weights.
    * ``theta_test``: ``(M*C, N*C)`` cross-kernel, ``f0_test``: ``(M, C)`` (optional).
    * ``jw0`` / ``jw0_test``: ``J w0`` (optional; needed to predict weight decay).
    * ``meta``: method, projection dimension, seed, dtype, fingerprints of the model and the data, timings.
    """

    theta: torch.Tensor
    f0: torch.Tensor
    theta_test: torch.Tensor | None = None
    f0_test: torch.Tensor | None = None
    jw0: torch.Tensor | None = None
    jw0_test: torch.Tensor | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.f0.shape[0]

    @property
    def c(self) -> int:
        return self.f0.shape[1]

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the kernel with a SHA-256 checksum. Refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise KernelError(f"{path} exists; refusing to overwrite it (choose another path or pass overwrite)")
        tensors = {k: getattr(self, k) for k in ("theta", "f0", "theta_test", "f0_test", "jw0", "jw0_test")}
        buf = io.BytesIO()
        torch.save({k: (v.cpu() if v is not None else None) for k, v in tensors.items()}, buf)
        payload = buf.getvalue()
        header = {"format": "finetime-kernel", "version": FORMAT_VERSION, "meta": self.meta,
                  "sha256": hashlib.sha256(payload).hexdigest()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            head = json.dumps(header, default=str).encode()
            fh.write(len(head).to_bytes(8, "little"))
            fh.write(head)
            fh.write(payload)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, model_fingerprint: str | None = None,
             data_fingerprint: str | None = None, expect: dict | None = None) -> "Kernel":
        """Read a kernel, verify its checksum, and refuse it if it was computed for another model, data or
        method (``expect``: meta keys that must match)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise KernelError(f"cannot read kernel file {path}: {exc.strerror or exc}") from exc
        try:
            hl = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + hl])
            payload = raw[8 + hl :]
        except (ValueError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("format") != "finetime-kernel":
            raise KernelError(f"{path} is not a finetime kernel file (write one with --kernel-out)")
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise KernelError(f"kernel file {path} is corrupt (checksum mismatch)")
        meta = header["meta"]
        checks = dict(expect or {})
        if model_fingerprint is not None:
            checks["model_fingerprint"] = model_fingerprint
        if data_fingerprint is not None:
            checks["data_fingerprint"] = data_fingerprint
        for k, v in checks.items():
            if meta.get(k) != v:
                raise KernelError(
                    f"kernel file {path} was computed with {k}={meta.get(k)!r}, this run has {v!r}; "
                    "recompute it (or drop --kernel-in)"
                )
        tensors = torch.load(io.BytesIO(payload), weights_only=True)
        return cls(meta=meta, **tensors)
