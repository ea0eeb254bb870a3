"""``--data torch:module.path:attr``: your own map-style torch ``Dataset`` as the pool the paper's protocol samples.

``attr`` names a dataset (anything with ``__len__`` and ``__getitem__``: a ``torch.utils.data.Dataset``, a list of
pairs), or a callable returning one or a ``(train, test)`` pair of them; a callable that takes ``image_size`` is
given ``--image-size``, so that it can build its transforms at that size.

Items are ``(input, label)`` pairs (tuples or lists; further elements are ignored) or dicts with the label under one
of ``LABEL_KEYS`` and the input under the first of ``INPUT_KEYS`` present. The kind of input is the first item's:

* a floating-point tensor or array: **model-ready**, fed to the model as it is (every item the same shape and
  finite; your transform decides size and normalization, ``--image-size`` does not apply; an ``hf:`` image
  classifier takes them as its ``pixel_values``);
* a PIL image, a ``uint8`` array ``(H, W)`` or ``(H, W, 3)``, or a ``uint8`` tensor ``(C, H, W)`` with ``C`` 1 or 3:
  an **image**, made square at ``--image-size`` (shorter side resized, centre crop) and normalized as the built-in
  images are;
* a string: a **text**, tokenized by the text model (``--model minilm`` or ``hf:PATH``).

Labels are integers (or one-element tensors) or strings. Class names come from the dataset's ``classes`` where it
has them (torchvision's convention), else from the labels. The labels are read from a ``targets`` or ``labels``
sequence (or column) where the dataset has one, otherwise by reading every item once. Inputs are read for the
sampled items only. Without a test dataset the first fifth of every class is held out as the test split, as for
image folders.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ._imports import import_user_module

__all__ = ["load_torch_dataset", "TensorPool", "LABEL_KEYS", "INPUT_KEYS"]

LABEL_KEYS = ("label", "labels", "target", "y")
"""Keys a dict item may hold its label under (the first present is used)."""

INPUT_KEYS = ("image", "img", "pixel_values", "input", "inputs", "x", "text")
"""Keys a dict item may hold its input under (the first present is used)."""


def _is_dataset(obj: Any) -> bool:
    return (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")
            and not isinstance(obj, (str, bytes, dict, np.ndarray, torch.Tensor)))


def _resolve(spec: str, size: int) -> tuple[Any, Any | None]:
    """The ``(train, test)`` datasets named by ``module.path:attr`` (``test`` None when it names one dataset)."""
    if ":" not in spec or not all(spec.split(":", 1)):
        raise ConfigError(f"--data torch:{spec}: expected torch:module.path:attr")
    mod_name, attr = spec.split(":", 1)
    try:
        module = import_user_module(mod_name)
    except ImportError as exc:
        raise DataError(f"cannot import module {mod_name!r} for --data torch:{spec}: {exc}") from exc
    if not hasattr(module, attr):
        raise DataError(f"module {mod_name!r} has no {attr!r} (--data torch:{spec})")
    obj = getattr(module, attr)
    if not _is_dataset(obj):
        if not callable(obj):
            raise DataError(f"--data torch:{spec} is a {type(obj).__name__}: expected a dataset (with __len__ and "
                            "__getitem__) or a callable returning one")
        kwargs = {"image_size": size} if _takes(obj, "image_size") else {}
        try:
            obj = obj(**kwargs)
        except TypeError as exc:
            raise DataError(f"--data torch:{spec}: calling {attr}() failed: {exc}") from exc
    if isinstance(obj, tuple) and len(obj) == 2 and all(_is_dataset(o) for o in obj):
        return obj
    if not _is_dataset(obj):
        raise DataError(f"--data torch:{spec} gave a {type(obj).__name__}: expected a dataset (with __len__ and "
                        "__getitem__) or a (train, test) pair of them")
    return obj, None


def _takes(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _split(item: Any, where: str) -> tuple[Any, Any]:
    """``(input, label)`` of one item."""
    if isinstance(item, dict):
        label = next((item[k] for k in LABEL_KEYS if k in item), None)
        x = next((item[k] for k in INPUT_KEYS if k in item), None)
        if label is None or x is None:
            raise DataError(f"{where} is a dict with keys {sorted(item)}: it needs a label under one of "
                            f"{', '.join(LABEL_KEYS)} and an input under one of {', '.join(INPUT_KEYS)}")
        return x, label
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(f"{where} is a {type(item).__name__}: expected an (input, label) pair or a dict")


def _label(v: Any, where: str) -> int | str:
    if isinstance(v, str):
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
        return int(v.item())
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    raise DataError(f"{where} has label {v!r} ({type(v).__name__}): labels must be integers or strings")


def _labels(ds: Any, name: str) -> list:
    """Every item's label: from a ``targets`` / ``labels`` sequence (or column) of the right length, else read item
    by item."""
    columns = getattr(ds, "column_names", None)  # a Hugging Face datasets.Dataset: its label column
    if isinstance(columns, list):
        key = next((k for k in LABEL_KEYS if k in columns), None)
        if key is not None:
            return [_label(v, f"{name} item {i}") for i, v in enumerate(ds[key])]
    for attr in ("targets", "labels"):
        seq = getattr(ds, attr, None)
        if seq is None or callable(seq):
            continue
        try:
            if len(seq) != len(ds):
                continue
        except TypeError:
            continue
        seq = seq.tolist() if isinstance(seq, (torch.Tensor, np.ndarray)) else list(seq)
        return [_label(v, f"{name}.{attr}[{i}]") for i, v in enumerate(seq)]
    return [_label(_split(ds[i], f"{name} item {i}")[1], f"{name} item {i}") for i in range(len(ds))]


def _kind(x: Any, where: str) -> str:
    """``tensor`` (model-ready), ``image`` or ``text``."""
    if isinstance(x, str):
        return "text"
    if isinstance(x, (torch.Tensor, np.ndarray)):
        floating = x.is_floating_point() if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.floating)
        if floating:
            return "tensor"
        if x.dtype in (torch.uint8, np.uint8):
            return "image"
        raise DataError(f"{where}: an input of dtype {x.dtype} is neither a model-ready floating-point tensor nor a "
                        "uint8 image")
    if hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode"):  # a PIL image
        return "image"
    raise DataError(f"{where}: inputs must be floating-point tensors (model-ready), images (PIL or uint8) or "
                    f"strings; got {type(x).__name__}")


def _to_pil(x: Any, where: str):
    from PIL import Image

    if hasattr(x, "convert") and hasattr(x, "mode"):
        return x.convert("RGB")
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if isinstance(x, torch.Tensor) and a.ndim == 3:  # torch images are (C, H, W)
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        raise DataError(f"{where}: expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise DataError(f"{where}: a uint8 image must be (H, W) or (H, W, 3) (torch: (C, H, W), C 1 or 3); got shape "
                        f"{tuple(x.shape)}")
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


class TensorPool:
    """Model-ready inputs of a dataset's items ``rows``, read when indexed: ``pool[indices]`` is a float32 tensor
    ``(len(indices), *shape)``."""

    model_ready = True
    dtype = np.dtype(np.float32)

    def __init__(self, ds: Any, rows: np.ndarray, name: str):
        self.ds, self.rows, self.name = ds, rows, name
        self.item_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        from .data import check_input_memory

        idx = np.atleast_1d(np.arange(len(self.rows))[index])
        out = []
        for k, i in enumerate(idx):
            where = f"{self.name} item {int(self.rows[i])}"
            x, _ = _split(self.ds[int(self.rows[i])], where)
            if _kind(x, where) != "tensor":
                raise DataError(f"{where}: a {type(x).__name__} among model-ready tensors (the first item's kind)")
            t = torch.as_tensor(x).detach().to(torch.float32).cpu()
            if self.item_shape is None:
                self.item_shape = tuple(t.shape)
            if k == 0:
                check_input_memory(len(idx), 4 * t.numel(), f"inputs of shape {tuple(t.shape)}")
            if tuple(t.shape) != self.item_shape:
                raise DataError(f"{where} has shape {tuple(t.shape)}, other items {self.item_shape}: model-ready "
                                "inputs must all have one shape")
            if not bool(torch.isfinite(t).all()):
                raise DataError(f"{where} has NaN or infinite values")
            out.append(t)
        if not out:
            return torch.zeros((0, *(self.item_shape or ())), dtype=torch.float32)
        return torch.stack(out)


def load_torch_dataset(spec: str, size: int):
    """The ``RawImages`` pool of ``--data torch:spec`` (images read lazily at ``size``; see the module docstring)."""
    from .data import LazyImages, RawImages, _holdout, _square

    train, test = _resolve(spec, size)
    if len(train) == 0:
        raise DataError(f"--data torch:{spec} is empty")
    y_train = _labels(train, "the dataset")
    y_test = _labels(test, "the test dataset") if test is not None else None
    values = set(y_train)
    if len({type(v) for v in values}) > 1:
        raise DataError(f"--data torch:{spec} mixes integer and string labels")
    order = sorted(values)
    if y_test is not None:
        unseen = sorted(set(y_test) - values, key=str)
        if unseen:
            raise DataError(f"the test dataset of --data torch:{spec} has labels the training set lacks: "
                            f"{', '.join(map(str, unseen[:5]))}")
    classes = getattr(train, "classes", None)
    named = isinstance(order[0], int) and isinstance(classes, (list, tuple))
    if named and min(order) >= 0 and len(classes) > max(order):
        names = [str(classes[v]) for v in order]
    else:
        names = [str(v) for v in order]
    code = {v: i for i, v in enumerate(order)}
    ytr = np.array([code[v] for v in y_train], dtype=np.int64)
    if test is None:
        held = _holdout(ytr)
        idx = np.arange(len(ytr))
        tr_rows, te_rows, te_ds, yte = idx[~held], idx[held], train, ytr[held]
        ytr = ytr[~held]
    else:
        tr_rows, te_rows, te_ds = np.arange(len(train)), np.arange(len(test)), test
        yte = np.array([code[v] for v in y_test], dtype=np.int64)
    x0, _ = _split(train[int(tr_rows[0])], f"the dataset item {int(tr_rows[0])}")
    kind = _kind(x0, f"the dataset item {int(tr_rows[0])}")
    test_name = "the test dataset" if test is not None else "the dataset"
    if kind == "tensor":
        pools = TensorPool(train, tr_rows, "the dataset"), TensorPool(te_ds, te_rows, test_name)
    elif kind == "image":
        def pool(ds, rows: np.ndarray, name: str) -> LazyImages:
            def make(i: int) -> np.ndarray:
                where = f"{name} item {int(rows[i])}"
                x, _ = _split(ds[int(rows[i])], where)
                if _kind(x, where) != "image":
                    raise DataError(f"{where}: a {type(x).__name__} among images (the first item's kind)")
                return _square(_to_pil(x, where), size)
            return LazyImages(len(rows), size, make)
        pools = pool(train, tr_rows, "the dataset"), pool(te_ds, te_rows, test_name)
    else:
        def texts(ds, rows: np.ndarray, name: str) -> np.ndarray:
            out = np.empty(len(rows), dtype=object)
            for k, i in enumerate(rows):
                x, _ = _split(ds[int(i)], f"{name} item {int(i)}")
                if not isinstance(x, str):
                    raise DataError(f"{name} item {int(i)}: a {type(x).__name__} among texts (the first item's kind)")
                out[k] = x
            return out
        pools = texts(train, tr_rows, "the dataset"), texts(te_ds, te_rows, test_name)
    counts = f"{len(tr_rows)} train + {len(te_rows)} test items" + ("" if test is not None else ", a fifth held out")
    notes = () if _same_twice(train, int(tr_rows[0])) else (RANDOM_TRANSFORMS,)
    return RawImages(pools[0], ytr, pools[1], yte, names, f"torch dataset {spec} ({counts})", tr_rows, te_rows,
                     notes)


RANDOM_TRANSFORMS = ("the dataset's inputs change from one read to the next (random transforms: data augmentation?); "
                     "finetime predicts training on one draw of each sample, which real training with augmentation "
                     "usually reaches later")
"""The note a dataset whose items are random gets (``RawImages.notes``, printed by ``predict``)."""


def _same_twice(ds, i: int) -> bool:
    """Whether item ``i``'s input reads the same twice (``False`` for random transforms)."""
    a, _ = _split(ds[i], f"the dataset item {i}")
    b, _ = _split(ds[i], f"the dataset item {i}")
    if isinstance(a, (torch.Tensor, np.ndarray)) and isinstance(b, (torch.Tensor, np.ndarray)):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.shape == b.shape and bool(torch.equal(a, b))
    if hasattr(a, "tobytes") and hasattr(b, "tobytes"):  # PIL images
        return a.size == b.size and a.tobytes() == b.tobytes()
    return a == b
