import numpy as np
import pytest
import torch

from finetime.errors import ConfigError, DataError
from finetime.zoo import load_raw, sample_task, to_model_input
from finetime.zoo.data import DEBIAN_FASHION, PHOTOGRAPHS, PLASMA_WALLPAPERS


def test_shipped_fashion_subset_and_protocol():
    raw = load_raw("fashion-mnist-mini")
    assert raw.train_x.shape == (3000, 28, 28) and raw.test_x.shape == (1000, 28, 28)
    a = sample_task(raw, classes=5, per_class=7, test_per_class=3, image_size=16, seed=4)
    b = sample_task(raw, classes=5, per_class=7, test_per_class=3, image_size=16, seed=4)
    assert a.x.shape == (35, 3, 16, 16) and a.x_test.shape == (15, 3, 16, 16)
    assert torch.equal(a.x, b.x) and a.train_index == b.train_index
    assert sorted(set(a.y.tolist())) == list(range(5)) and torch.bincount(a.y).tolist() == [7] * 5
    c = sample_task(raw, classes=5, per_class=7, image_size=16, seed=5)
    assert c.train_index != a.train_index


def test_normalization_and_resize():
    img = np.full((2, 28, 28), 255, np.uint8)
    x = to_model_input(img, 32)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 1.0))
    rgb = np.zeros((1, 10, 10, 3), np.uint8)
    assert to_model_input(rgb, 10).shape == (1, 3, 10, 10)


def test_too_many_per_class_names_the_fix():
    with pytest.raises(ConfigError, match="too many"):
        sample_task(load_raw("fashion-mnist-mini"), classes=2, per_class=301)


def test_mnist_5k():
    raw = load_raw("mnist")
    assert raw.train_x.shape == (4000, 28, 28) and raw.test_x.shape == (1000, 28, 28)
    assert sample_task(raw, classes=3, per_class=2, image_size=8).x.shape == (6, 3, 8, 8)


@pytest.mark.skipif(not DEBIAN_FASHION.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_full_fashion_mnist():
    raw = load_raw("fashion-mnist")
    assert raw.train_x.shape == (60000, 28, 28)


def test_shipped_text_data_and_csv(tmp_path):
    raw = load_raw("fine-foods")
    assert raw.is_text and raw.class_names == ["great", "other"]
    assert raw.train_x.shape == (4000,) and raw.test_x.shape == (1000,)

    def encode(texts):  # a stand-in tokenizer: word counts; sample_task encodes train and test texts at once
        return torch.tensor([[len(t.split())] for t in texts])

    a = sample_task(raw, classes=2, per_class=5, test_per_class=2, seed=3, encode_text=encode)
    b = sample_task(raw, classes=2, per_class=5, test_per_class=2, seed=3, encode_text=encode)
    assert a.x.shape == (10, 1) and a.x_test.shape == (4, 1) and torch.equal(a.x, b.x)
    assert a.x[0, 0] == len(raw.train_x[a.train_index[0]].split())
    with pytest.raises(ConfigError, match="text model"):
        sample_task(raw, classes=2, per_class=5)
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"a, b",x\nc,y\nd,x\ne,y\nf,x\ng,y\nh,x\ni,y\nj,x\nk,y\n')
    own = load_raw(f"csv:{path}")
    assert own.class_names == ["x", "y"] and len(own.train_x) == 8 and len(own.test_x) == 2
    assert "a, b" in list(own.train_x) + list(own.test_x)
    for bad, line in (('text,label\nc,y\nd\n', 3), ('text,label\nc,y\nd, \n', 3)):  # no label, a blank one
        path.write_text(bad)
        with pytest.raises(DataError, match=f"t.csv, line {line}: no label"):
            load_raw(f"csv:{path}")


def test_image_folder_is_read_at_the_requested_size(tmp_path):
    """Files are read when sampled, at the requested size: the shorter side resized and the centre square kept, so a
    128 px task sees 128 px detail (not an upscaled thumbnail)."""
    from PIL import Image

    for cls, colour in (("left", 0), ("right", 1)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            img = np.zeros((300, 500, 3), np.uint8)  # landscape: red left edge, green centre, blue right edge
            img[:, :100, 0] = img[:, 100:400, 1] = img[:, 400:, 2] = 200 + 10 * colour + i
            img[150, 250, :] = 255  # one white pixel at the centre survives only at full resolution
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "right" / "broken.png").write_bytes(b"not an image")
    raw = load_raw(f"imagefolder:{tmp_path}", 300)
    assert raw.class_names == ["left", "right"] and raw.train_x.shape == (9, 300, 300, 3)
    x = raw.train_x[np.array([0, 1])]
    assert x.shape == (2, 300, 300, 3) and x.dtype == np.uint8
    assert (x[..., 1] >= 200).all() and (x[..., [0, 2]] == 0).mean() > 0.99  # the centre square: green only
    assert (x[0, 150, 150] == 255).all()
    assert load_raw(f"imagefolder:{tmp_path}", 32).train_x[np.array([0])].shape == (1, 32, 32, 3)
    broken = int(np.flatnonzero(raw.train_y == 1)[-1])  # the unreadable file sorts last in its class
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        raw.train_x[np.array([broken])]


@pytest.mark.skipif(not (PLASMA_WALLPAPERS / "Path").exists(),
                    reason="Debian plasma-workspace-wallpapers not installed (scripts/setup.sh installs it as root)")
def test_photos_are_crops_of_real_photographs():
    raw = load_raw("photos", 64)
    assert raw.class_names == list(PHOTOGRAPHS) and raw.train_x.shape == (12 * 300, 64, 64, 3)
    assert raw.test_x.shape == (12 * 100, 64, 64, 3) and np.bincount(raw.train_y).tolist() == [300] * 12
    a = sample_task(raw, classes=5, per_class=4, test_per_class=2, image_size=64, seed=3)
    b = sample_task(load_raw("photos", 64), classes=5, per_class=4, test_per_class=2, image_size=64, seed=3)
    assert a.x.shape == (20, 3, 64, 64) and a.x_test.shape == (10, 3, 64, 64)
    assert torch.equal(a.x, b.x) and torch.equal(a.x_test, b.x_test)  # the crops are reproducible
    x = raw.train_x[np.arange(0, 3600, 300)]  # one crop of every photograph: colour, not constant
    assert x.std(axis=(1, 2)).mean() > 5 and np.abs(x[..., 0].astype(int) - x[..., 2]).mean() > 5


def test_photos_without_the_package_names_the_fix(monkeypatch, tmp_path):
    import finetime.zoo.data as data

    monkeypatch.setattr(data, "PLASMA_WALLPAPERS", tmp_path)
    with pytest.raises(DataError, match="apt-get install plasma-workspace-wallpapers"):
        load_raw("photos")
