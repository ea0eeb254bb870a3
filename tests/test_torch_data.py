"""``--data torch:module.path:attr``: a user's own map-style torch Dataset as the data (datasets_for_tests.py)."""

import sys

import pytest
import torch

import datasets_for_tests as dft
from finetime import RunConfig, validate
from finetime.cli import main
from finetime.errors import ConfigError, DataError
from finetime.zoo import build_model, load_raw, sample_task


def test_model_ready_tensors_are_sampled_as_they_are():
    raw = load_raw("torch:datasets_for_tests:features")
    assert raw.class_names == ["alpha", "beta", "gamma"]  # the dataset's own classes
    assert len(raw.train_x) == 48 and len(raw.test_x) == 12  # a fifth of each class held out
    before = dft.features.reads
    d = sample_task(raw, classes=3, per_class=5, test_per_class=2, seed=0)
    assert dft.features.reads - before == 15 + 6  # labels from `targets`; inputs read for the sampled items only
    assert d.inputs == "tensors" and d.x.dtype == torch.float32 and d.x.shape == (15, dft.FEATURES)
    torch.testing.assert_close(d.x, dft.features.x[d.train_index])
    torch.testing.assert_close(d.x_test, dft.features.x[d.test_index])
    names = [raw.class_names[c] for c in range(3)]
    assert [names[dft.features.targets[i]] for i in d.train_index] == [d.class_names[int(c)] for c in d.y]
    assert not set(d.train_index) & set(d.test_index)


def test_a_train_test_pair_keeps_its_split():
    raw = load_raw("torch:datasets_for_tests:features_pair")
    assert len(raw.train_x) == 45 and len(raw.test_x) == 15 and "45 train + 15 test items" in raw.source
    d = sample_task(raw, classes=2, per_class=4, test_per_class=3, seed=1)
    train, test = dft.features_pair()
    torch.testing.assert_close(d.x_test, test.x[d.test_index])
    torch.testing.assert_close(d.x, train.x[d.train_index])


def test_images_are_made_square_at_the_image_size():
    raw = load_raw("torch:datasets_for_tests:pictures", image_size=12)
    assert dft.pictures.asked == 12  # the factory is handed --image-size
    assert raw.class_names == ["cat", "dog", "owl"]  # string labels, read item by item
    d = sample_task(raw, classes=3, per_class=3, image_size=12, seed=0)
    assert d.inputs == "images" and d.x.shape == (9, 3, 12, 12)
    for x, i in zip(d.x, d.train_index):  # every picture is one grey level, normalized as built-in images are
        torch.testing.assert_close(x, torch.full_like(x, (40 * (i % 3) - 127) / 128))
    grey = sample_task(load_raw("torch:datasets_for_tests:channel_first", image_size=8), classes=2, per_class=3,
                       image_size=8, seed=0)
    assert grey.x.shape == (6, 3, 8, 8)
    for x, i in zip(grey.x, grey.train_index):  # torch uint8 (C, H, W) in dict items
        torch.testing.assert_close(x, torch.full_like(x, (10 * (i % 2) - 127) / 128))


def test_texts_are_a_text_pool():
    raw = load_raw("torch:datasets_for_tests:texts")
    assert raw.is_text and raw.class_names == ["0", "1"] and isinstance(raw.train_x[0], str)
    with pytest.raises(ConfigError, match="text model"):
        sample_task(raw, classes=2, per_class=2)


@pytest.mark.parametrize("spec,error,message", [
    ("torch:datasets_for_tests", ConfigError, "expected torch:module.path:attr"),
    ("torch:no_such_module_here:x", DataError, "cannot import module"),
    ("torch:datasets_for_tests:missing", DataError, "has no 'missing'"),
    ("torch:datasets_for_tests:not_a_dataset", DataError, "expected a dataset"),
    ("torch:datasets_for_tests:bad_items", DataError, "expected an (input, label) pair"),
    ("torch:datasets_for_tests:float_labels", DataError, "labels must be integers or strings"),
])
def test_bad_datasets_name_the_problem(spec, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_raw(spec)


@pytest.mark.parametrize("attr,message", [("ragged", "must all have one shape"), ("with_nan", "NaN or infinite")])
def test_bad_inputs_name_the_item(attr, message):
    raw = load_raw(f"torch:datasets_for_tests:{attr}")
    with pytest.raises(DataError, match=message):
        sample_task(raw, classes=2, per_class=8, seed=0)


LINEAR = dict(data="torch:datasets_for_tests:features", model="models_for_tests:linear_features", classes=3,
              per_class=10, steps=25)


@pytest.mark.parametrize("batch_size,momentum", [(0, 0.0), (6, 0.9)])
def test_a_linear_model_on_torch_data_is_predicted_exactly(batch_size, momentum):
    """Softmax regression on the dataset's own features is its own linearization: the prediction replayed on the real
    batch order is the real run."""
    cfg = RunConfig.from_dict({**LINEAR, "lr": 0.3, "batch_size": batch_size, "momentum": momentum})
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)
    assert val.real.loss[-1] < 0.5 * val.real.loss[0]  # it trains


def test_the_summary_names_the_inputs(capsys):
    code = main(["predict", "--data", "torch:datasets_for_tests:features",
                 "--model", "models_for_tests:linear_features",
                 "--classes", "3", "--per-class", "6", "--steps", "10", "--lr", "0.1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "data       18 samples, 3 classes (alpha, beta, gamma), inputs of shape (6,); torch dataset" in out
    code = main(["predict", "--data", "torch:datasets_for_tests:bad_items", "--model", "models_for_tests:tiny_cnn",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "expected an (input, label) pair" in err and "Traceback" not in err


def test_modules_next_to_the_command_are_found(tmp_path, monkeypatch):
    """The `finetime` script does not put the working directory on sys.path (`python -m` does): a module of the
    user's project, where the command runs, is found either way, for --data torch: and --model alike."""
    (tmp_path / "my_project_data.py").write_text(
        "import torch\nitems = [(torch.full((4,), float(i % 2)), i % 2) for i in range(20)]\n")
    (tmp_path / "my_project_model.py").write_text(
        "import torch\ndef make(num_classes):\n    return torch.nn.Linear(4, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    raw = load_raw("torch:my_project_data:items")
    assert raw.class_names == ["0", "1"] and str(tmp_path) == sys.path[-1]
    assert isinstance(build_model("my_project_model:make", num_classes=2, image_size=8), torch.nn.Linear)


def test_every_class_and_every_sample_of_an_imbalanced_dataset():
    raw = load_raw("torch:datasets_for_tests:lopsided")  # 24 + 10 + 5 training items, a fifth of each held out
    d = sample_task(raw, classes="all", per_class="all", test_per_class="all", seed=0)
    assert d.class_names == ["alpha", "beta", "gamma"] and torch.bincount(d.y).tolist() == [24, 10, 5]
    assert sorted(d.train_index) == sorted(int(i) for i in raw.train_index)  # each training item once
    assert sorted(d.test_index) == sorted(int(i) for i in raw.test_index)
    assert torch.bincount(d.y_test).tolist() == [6, 2, 1]
    again = sample_task(raw, classes="all", per_class="all", test_per_class="all", seed=0)
    assert again.train_index == d.train_index  # a random order, fixed by the seed
    with pytest.raises(ConfigError, match="too many"):
        sample_task(raw, classes="all", per_class=6)


def test_predict_on_a_whole_imbalanced_dataset(capsys):
    cfg = RunConfig.from_dict({**LINEAR, "data": "torch:datasets_for_tests:lopsided", "classes": "all",
                               "per_class": "all", "lr": 0.3, "batch_size": 8, "momentum": 0.9})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.task.per_class == "all"
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)  # still exact
    code = main(["predict", "--data", "torch:datasets_for_tests:lopsided",
                 "--model", "models_for_tests:linear_features", "--classes", "all", "--per-class", "all",
                 "--steps", "10", "--kernel-samples", "30", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "data       39 samples, 3 classes (alpha, beta, gamma)" in out
    assert "kernel on 30 of 39 training samples" in out
    with pytest.raises(SystemExit):
        main(["predict", "--data", "torch:datasets_for_tests:lopsided", "--per-class", "many"])
    assert "argument --per-class: expected a whole number or all, got 'many'" in capsys.readouterr().err


@pytest.mark.parametrize("data,model,message", [
    ("features", "tiny_cnn", "(a batch of inputs of shape (2, 6), 3 classes): the model cannot take these inputs "
                             "(Expected 3D (unbatched) or 4D (batched) input to conv2d"),
    ("pictures", "linear_features", "the model cannot take these inputs (mat1 and mat2 shapes cannot be multiplied"),
    ("features", "ignores_num_classes", "returns 10 logits per sample for 3 classes"),
])
def test_a_model_that_does_not_fit_the_data_is_named(capsys, data, model, message):
    code = main(["predict", "--data", f"torch:datasets_for_tests:{data}", "--model", f"models_for_tests:{model}",
                 "--classes", "3", "--per-class", "5", "--image-size", "16", "--steps", "5", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_script_names_its_own_dataset_and_model(tmp_path):
    """The README's script: `torch:__main__:train_set` and `__main__:make` are the running script's globals."""
    import subprocess

    script = tmp_path / "mine.py"
    script.write_text(
        "import torch\nfrom finetime import RunConfig, predict\n"
        "g = torch.Generator().manual_seed(0)\n"
        "train_set = [(torch.randn(6, generator=g) + (i % 3), i % 3) for i in range(60)]\n"
        "def make(num_classes):\n    return torch.nn.Linear(6, num_classes)\n"
        "cfg = RunConfig.from_dict({'data': 'torch:__main__:train_set', 'model': '__main__:make', 'classes': 'all',\n"
        "                           'per_class': 'all', 'lr': 0.1, 'steps': 20})\n"
        "d = predict(cfg).to_dict()\n"
        "print(len(d['config']['train_indices']), d['config']['data_source'])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "48 torch dataset __main__:train_set (48 train + 12 test items, a fifth held out)"


def test_random_transforms_are_noted(capsys):
    assert load_raw("torch:datasets_for_tests:features").notes == ()
    raw = load_raw("torch:datasets_for_tests:augmented")
    assert len(raw.notes) == 1 and "data augmentation" in raw.notes[0]
    code = main(["predict", "--data", "torch:datasets_for_tests:augmented", "--model",
                 "models_for_tests:linear_features", "--classes", "3", "--per-class", "6", "--steps", "10", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "\nnote:      the dataset's inputs change from one read to the next" in out


def test_inputs_that_would_not_fit_in_memory_are_refused_before_they_are_made(monkeypatch):
    import finetime.zoo.data as data

    monkeypatch.setattr(data, "free_memory", lambda: 100_000)
    raw = load_raw("fashion-mnist-mini")
    with pytest.raises(DataError, match=r"the 600 images at 64 px take about 0.1 GB .* take fewer"):
        sample_task(raw, classes=3, per_class=200, image_size=64)  # 600 x 3 x 64 x 64 floats, twice: 59 MB
    assert sample_task(raw, classes=3, per_class=2, image_size=8).x.shape == (6, 3, 8, 8)  # 6 KB fits
    features = load_raw("torch:datasets_for_tests:features")
    assert sample_task(features, classes=3, per_class="all").x.shape == (48, 6)  # 48 x 6 floats, twice: 2.3 KB
    monkeypatch.setattr(data, "free_memory", lambda: 2_000)
    with pytest.raises(DataError, match=r"the 48 inputs of shape \(6,\) take about"):
        sample_task(features, classes=3, per_class="all")


def test_a_kernel_subset_needs_only_its_own_inputs_in_memory(monkeypatch):
    """With --kernel-samples below the training set, predict makes the subset's inputs and the step timing's batches,
    not the whole set's; validate, whose real run reads them all, is refused where they would not fit."""
    import finetime.zoo.data as data
    from finetime import predict

    cfg = RunConfig.from_dict(dict(data="fashion-mnist-mini", model="models_for_tests:tiny_cnn", classes=3,
                                   per_class=100, image_size=12, steps=10, batch_size=4, kernel_samples=30, runs=2))
    monkeypatch.setattr(data, "free_memory", lambda: 500_000)  # 300 images at 12 px need 1 MB, 30 need 0.1 MB
    pred = predict(cfg)
    assert pred.task.data.x.shape == (30, 3, 12, 12) and pred.task.train_data.x.shape == (300, 3, 12, 12)
    assert pred.to_dict()["config"]["input_shape"] == [3, 12, 12] and pred.seconds_per_step > 0
    with pytest.raises(DataError, match="the 300 images at 12 px take about"):
        validate(cfg)
    monkeypatch.undo()
    from finetime.subset import class_balanced_subset

    every = sample_task(load_raw("fashion-mnist-mini"), classes=3, per_class=100, image_size=12, seed=0)
    torch.testing.assert_close(pred.task.data.x, class_balanced_subset(every, 30).x)  # as when all are made


def test_task_counts_take_all_numbers_and_numpy_integers():
    import numpy as np

    from finetime.config import TaskConfig

    assert TaskConfig(classes=np.int64(3), per_class="7", test_per_class="all").per_class == 7
    assert type(TaskConfig(classes=np.int64(3)).classes) is int
    for bad in (2.5, True, "many"):
        with pytest.raises(ConfigError, match="--classes must be a whole number or all"):
            TaskConfig(classes=bad)


def test_a_columnar_dataset_gives_its_label_column():
    raw = load_raw("torch:datasets_for_tests:columns")
    assert raw.is_text and raw.class_names == ["0", "1"] and list(raw.train_y[:4]) == [0, 1, 0, 1]
    assert dft.columns.row_reads == len(dft.columns) + 3  # texts, kind, determinism (twice); labels by column


def test_a_model_instance_is_used_as_a_copy_and_never_trained():
    import models_for_tests

    before = {k: v.clone() for k, v in models_for_tests.an_instance.state_dict().items()}
    cfg = RunConfig.from_dict({**LINEAR, "model": "models_for_tests:an_instance", "lr": 0.3})
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        first = torch.nn.functional.cross_entropy(models_for_tests.an_instance(val.prediction.task.data.x),
                                                  val.prediction.task.data.y)
    assert float(first) == pytest.approx(float(val.real.loss[0]), rel=1e-5)  # the run starts from the instance
    assert all(torch.equal(v, before[k]) for k, v in models_for_tests.an_instance.state_dict().items())
