"""Model and data zoo (I/O lives here, not in the numerical core)."""

from .data import DATASETS, Dataset, is_text_data, load_raw, sample_task, to_model_input
from .models import BUILTIN_MODELS, build_model, freeze_backbone, head_parameters

__all__ = ["DATASETS", "Dataset", "is_text_data", "load_raw", "sample_task", "to_model_input", "BUILTIN_MODELS", "build_model",
           "freeze_backbone", "head_parameters"]
