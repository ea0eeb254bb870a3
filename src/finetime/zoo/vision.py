"""Image classifiers from local Hugging Face checkpoints (``--model hf:PATH`` where the checkpoint is a vision model:
ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet, ...): the pretrained network with a new ``num_classes`` head.

The checkpoint is loaded with ``AutoModelForImageClassification`` and its classifier replaced by a new one
(``num_labels``), initialized from the task seed like every finetime head. finetime's images are normalized as
``(pixel - 127) / 128``; the wrapper maps them back to ``[0, 1]`` and normalizes them as the checkpoint's
``preprocessor_config.json`` says (``image_mean``, ``image_std``; 0.5 and 0.5 where it has none, the Hugging Face
image processors' default). Models with position embeddings of a fixed size (ViT and its kin) take other sizes by
interpolating them (``interpolate_pos_encoding``). Needs ``pip install 'finetime[text]'`` (transformers).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ModelError
from .models import new_last_head

__all__ = ["HFImageClassifier", "hf_image_classifier", "is_vision_checkpoint"]

DEFAULT_MEAN_STD = (0.5, 0.5)
"""Normalization where the checkpoint has no ``preprocessor_config.json`` (Hugging Face's ``IMAGENET_STANDARD``)."""


def is_vision_checkpoint(path: str | Path) -> bool:
    """Whether ``path/config.json`` describes an image model (it has ``num_channels``)."""
    try:
        cfg = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "num_channels" in cfg


class HFImageClassifier(nn.Module):
    """A Hugging Face image classifier taking finetime's images ``(n, 3, S, S)``; returns its logits. The head is its
    last linear layer (``models.new_last_head``)."""

    def __init__(self, model: nn.Module, mean, std, source: str):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.source = source
        size = getattr(model.config, "image_size", None)
        self.native_size = size if isinstance(size, int) else None
        self.interpolates = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    normalize = True
    """Whether inputs are finetime's images, normalized here as the checkpoint expects; ``False`` for a torch
    dataset's model-ready tensors, already ``pixel_values`` (``predict.prepare`` sets it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {}
        if self.interpolates and self.native_size is not None and x.shape[-1] != self.native_size:
            kwargs["interpolate_pos_encoding"] = True
        if self.normalize:
            x = ((x * 128.0 + 127.0) / 255.0 - self.mean) / self.std
        return self.model(pixel_values=x, **kwargs).logits


def hf_image_classifier(path: str | Path, num_classes: int, seed: int = 0) -> HFImageClassifier:
    """A local Hugging Face image-classification checkpoint with a new ``num_classes`` head (eval mode, float32)."""
    from .text import _transformers

    path = Path(path).expanduser()
    tf = _transformers()
    try:
        model = tf.AutoModelForImageClassification.from_pretrained(str(path), num_labels=num_classes,
                                                                   ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the image classifier in {path}: {exc}") from exc
    mean, std = DEFAULT_MEAN_STD
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        try:
            spec = json.loads(pre.read_text())
        except ValueError as exc:
            raise ModelError(f"{pre} is not JSON: {exc}") from exc
        mean, std = spec.get("image_mean", mean), spec.get("image_std", std)
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    return new_last_head(HFImageClassifier(model.float(), mean, std, str(path)), num_classes, seed, str(path))
