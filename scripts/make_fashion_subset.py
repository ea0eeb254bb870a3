"""Build the Fashion-MNIST subset shipped inside the package (src/finetime/zoo/_data/fashion_mnist_subset.npz).

Source: Debian package dataset-fashion-mnist (MIT licence, Zalando Research), /usr/share/datasets/fashion-mnist.
Keeps the first PER_CLASS_TRAIN training images and the first PER_CLASS_TEST test images of every class, in file
order, with their original indices.
"""

import gzip
import sys
from pathlib import Path

import numpy as np

PER_CLASS_TRAIN = 300
PER_CLASS_TEST = 100
SRC = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "src/finetime/zoo/_data/fashion_mnist_subset.npz"


def read(split):
    prefix = "train" if split == "train" else "t10k"
    x = np.frombuffer(gzip.open(SRC / f"{prefix}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    y = np.frombuffer(gzip.open(SRC / f"{prefix}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x.reshape(-1, 28, 28), y


def first_per_class(y, k):
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(10)]))


def main():
    if not SRC.exists():
        sys.exit(f"{SRC} not found: apt-get install dataset-fashion-mnist")
    arrays = {}
    for split, k in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
        x, y = read(split)
        idx = first_per_class(y, k)
        arrays.update({f"{split}_x": x[idx], f"{split}_y": y[idx], f"{split}_index": idx.astype(np.int32)})
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
