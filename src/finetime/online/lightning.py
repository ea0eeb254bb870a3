"""Lightning integration (needs ``pip install finetime[lightning]``).

    from finetime.online.lightning import FinetimeCallback
    trainer = lightning.Trainer(max_steps=200, callbacks=[FinetimeCallback("prediction.json")])

After every optimizer step (``on_train_batch_end``) the callback feeds the step's training loss (what
``training_step`` returned) and the wall clock to a ``Refiner``; every ``every`` steps it re-estimates and logs
``finetime/remaining_steps``, ``finetime/eta_seconds`` with its 90% interval, ``finetime/step`` and
``finetime/speed`` through ``pl_module.log``.
"""

from __future__ import annotations

import time
import warnings

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:
        raise ImportError("finetime.online.lightning needs lightning: pip install 'finetime[lightning]'") from e

import torch

from ._report import log_values
from .refiner import Refiner

__all__ = ["FinetimeCallback"]


class FinetimeCallback(Callback):
    """Refine a finetime prediction from a Lightning run's training losses. ``prediction``: a ``Prediction``, its
    JSON dict or file, or a ready ``Refiner``; ``every``: re-estimate every this many steps."""

    def __init__(self, prediction, *, every: int = 10, threshold: str | None = None, **refiner_kw):
        self.refiner = prediction if isinstance(prediction, Refiner) else \
            Refiner.from_prediction(prediction, **refiner_kw)
        self.every = max(int(every), 1)
        self.threshold = threshold
        self.estimate = None
        self._t0 = None
        self._last = 0

    def on_train_start(self, trainer, pl_module):
        clip = getattr(trainer, "gradient_clip_val", None)
        if clip and str(getattr(trainer, "gradient_clip_algorithm", "norm")).lower().endswith("value"):
            warnings.warn(f"this run clips its gradients by value ({clip:g}), which finetime does not predict "
                          "(it predicts clipping by norm, --max-grad-norm, or none)", stacklevel=2)
        else:
            self.refiner.check_clipping(clip)
        self._t0 = time.perf_counter()
        self._last = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        step = trainer.global_step
        if step <= self._last:
            return  # gradient accumulation: the optimizer has not stepped since the last observation
        self._last = step
        if step > 1:  # the batch loss was computed before this update: the loss after step - 1 updates
            self.refiner.observe(step - 1, loss,
                                 seconds=time.perf_counter() - self._t0 if self._t0 is not None else None)
        if step % self.every == 0:
            self.estimate = self.refiner.estimate()
            for k, v in log_values(self.estimate, self.threshold).items():
                pl_module.log(k, v, on_step=True, on_epoch=False, prog_bar=k == "finetime/eta_seconds")
