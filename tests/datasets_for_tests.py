"""Small map-style torch datasets for ``--data torch:datasets_for_tests:...`` (the tests' directory is on sys.path)."""

import numpy as np
import torch
from torch.utils.data import Dataset

FEATURES = 6


class Features(Dataset):
    """Float feature vectors of three well-separated classes: model-ready inputs, with torchvision's ``targets`` and
    ``classes``."""

    classes = ["alpha", "beta", "gamma"]

    def __init__(self, n: int = 60, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.targets = [i % 3 for i in range(n)]
        means = torch.randn(3, FEATURES, generator=g)
        self.x = means[self.targets] + 0.5 * torch.randn(n, FEATURES, generator=g)
        self.reads = 0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.targets[i]


features = Features(60)


def features_pair():
    """A (train, test) pair."""
    return Features(45, seed=1), Features(15, seed=2)


class Pictures(Dataset):
    """uint8 images of two sizes (the pool makes them square at --image-size); labels are strings, read item by item
    (no ``targets``)."""

    def __init__(self, n: int = 24):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        side = 20 if i % 2 else 28
        img = np.full((side, side + 4, 3), 40 * (i % 3), np.uint8)
        return img, ["cat", "dog", "owl"][i % 3]


def pictures(image_size):
    """A factory that is handed --image-size."""
    pictures.asked = image_size
    return Pictures()


def channel_first():
    """torch uint8 images (C, H, W), grey, in dict items."""
    return [{"image": torch.full((1, 9, 9), 10 * (i % 2), dtype=torch.uint8), "label": i % 2} for i in range(20)]


texts = [("good food " * (1 + i % 3), i % 2) for i in range(20)]

not_a_dataset = 3
bad_items = [1, 2, 3, 4]
float_labels = [(torch.zeros(2), 0.5), (torch.zeros(2), 1.5)]
ragged = [(torch.zeros(2 + (i == 7)), i % 2) for i in range(20)]
with_nan = [(torch.full((2,), float("nan") if i == 13 else 0.0), i % 2) for i in range(20)]


class Lopsided(Features):
    """Classes of 30, 12 and 6 items (a real dataset's imbalance), same features."""

    def __init__(self):
        super().__init__(48, seed=3)
        self.targets = [0] * 30 + [1] * 12 + [2] * 6
        g = torch.Generator().manual_seed(4)
        means = 2 * torch.randn(3, FEATURES, generator=g)
        self.x = means[self.targets] + 0.5 * torch.randn(48, FEATURES, generator=g)


lopsided = Lopsided()


class Augmented(Features):
    """Features with fresh noise on every read: a random transform."""

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(FEATURES), self.targets[i]


augmented = Augmented(60)


class Columns:
    """Shaped like a Hugging Face ``datasets.Dataset``: rows are dicts, ``ds["label"]`` a whole column."""

    column_names = ["text", "label"]

    def __init__(self):
        self.rows = [{"text": f"review number {i}", "label": i % 2} for i in range(20)]
        self.row_reads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r[key] for r in self.rows]
        self.row_reads += 1
        return self.rows[key]


columns = Columns()


images_as_tensors = [(torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(i)), i % 2) for i in range(20)]
