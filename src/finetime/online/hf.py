"""Hugging Face ``Trainer`` integration (needs ``pip install finetime[hf]``).

    from finetime.online.hf import FinetimeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[FinetimeCallback("prediction.json")])

At every log (``logging_steps``) the callback feeds the logged training loss (the mean over the steps since the
previous log) and the wall clock to a ``Refiner`` and adds ``finetime/remaining_steps``, ``finetime/eta_seconds``,
``finetime/eta_seconds_low`` / ``_high`` (90% interval), ``finetime/step`` and ``finetime/speed`` to the logs and to
``state.log_history``. Callbacks after this one (Trainer's reporters, when it is placed first with
``FinetimeCallback.attach(trainer, ...)``) see them too. The logged loss is the training-mode minibatch loss (dropout
on), not finetime's whole-training-set loss; the refiner fits its level from the run itself.
"""

from __future__ import annotations

import time

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("finetime.online.hf needs transformers: pip install 'finetime[hf]'") from e

from ._report import log_values
from .refiner import Refiner

__all__ = ["FinetimeCallback"]


class FinetimeCallback(TrainerCallback):
    """Refine a finetime prediction from the Trainer's logged losses. ``prediction``: a ``Prediction``, its JSON
    dict or file, or a ready ``Refiner``. ``threshold``: the key whose ETA is logged (default: the first)."""

    def __init__(self, prediction, *, threshold: str | None = None, **refiner_kw):
        self.refiner = prediction if isinstance(prediction, Refiner) else \
            Refiner.from_prediction(prediction, **refiner_kw)
        self.threshold = threshold
        self.estimate = None
        self._t0 = None
        self._last = 0

    @classmethod
    def attach(cls, trainer, prediction, **kw) -> "FinetimeCallback":
        """Create the callback and put it first, so that the Trainer's reporters log its values."""
        cb = cls(prediction, **kw)
        trainer.callback_handler.callbacks.insert(0, cb)
        return cb

    def on_train_begin(self, args, state, control, **kwargs):
        self.refiner.check_clipping(getattr(args, "max_grad_norm", None))
        self.refiner.check_label_smoothing(getattr(args, "label_smoothing_factor", None))
        self._t0 = time.perf_counter()
        self._last = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or state.global_step <= self._last:
            return
        window = state.global_step - self._last
        self._last = state.global_step
        # the logged loss averages the batches of updates last+1..step, each computed before its update, so the
        # losses after last..step-1 updates: a window of `window` steps ending at step - 1
        if state.global_step > 1:
            self.refiner.observe(state.global_step - 1, float(logs["loss"]), window=window,
                                 seconds=time.perf_counter() - self._t0 if self._t0 is not None else None)
        self.estimate = self.refiner.estimate()
        values = log_values(self.estimate, self.threshold)
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
