"""Typed errors. Every failure a user can cause is one of these, with a message that names the fix."""


class FinetimeError(Exception):
    """Base class: a problem with the user's input or configuration, reported in one line."""


class ConfigError(FinetimeError, ValueError):
    """A setting is invalid (negative learning rate, batch larger than the dataset, ...)."""


class DataError(FinetimeError):
    """The data cannot be loaded or is unusable (empty image folder, wrong shapes, NaN inputs)."""


class ModelError(FinetimeError):
    """The model cannot be built or is unusable (unknown name, wrong output shape, NaN outputs)."""


class KernelError(FinetimeError):
    """The kernel cannot be computed as asked (unsupported layer, not enough memory, corrupt file)."""


class MemoryBudgetError(KernelError, MemoryError):
    """The requested computation does not fit in the memory budget."""
