"""``--model hf:PATH`` for a local Hugging Face image-classification checkpoint (tiny ViT and ResNet configurations
saved to disk here): the new head, the checkpoint's normalization, the kernel against brute force, exact head-only
training."""

import json

import pytest
import torch

from finetime import RunConfig, validate
from finetime.cli import main
from finetime.errors import ModelError
from finetime.kernel import compute_kernel, jacobian_loop
from finetime.zoo import build_model

transformers = pytest.importorskip("transformers")
from checkpoints_for_tests import IMAGE_MEAN as MEAN, IMAGE_STD as STD, tiny_resnet, tiny_vit  # noqa: E402


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return tiny_vit(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return tiny_resnet(tmp_path_factory.mktemp("resnet"))


def test_a_vision_checkpoint_gets_a_new_seeded_head_and_its_own_normalization(vit):
    model = build_model(f"hf:{vit}", num_classes=3, image_size=16, seed=4)
    again = build_model(f"hf:{vit}", num_classes=3, image_size=16, seed=4)
    other = build_model(f"hf:{vit}", num_classes=3, image_size=16, seed=5)
    assert model.head_names == ("model.classifier.weight", "model.classifier.bias")
    head = model.model.classifier
    assert head.out_features == 3 and torch.equal(head.weight, again.model.classifier.weight)
    assert not torch.equal(head.weight, other.model.classifier.weight)
    ref = transformers.ViTForImageClassification.from_pretrained(vit).eval()
    body = {k: v for k, v in model.model.state_dict().items() if not k.startswith("classifier")}
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in body.items())  # the pretrained weights, untouched
    pixels = torch.rand(2, 3, 16, 16)
    x = (pixels * 255 - 127) / 128  # as finetime normalizes images
    ref.classifier = model.model.classifier
    want = ref(pixel_values=(pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).logits
    torch.testing.assert_close(model(x), want)
    assert model(torch.zeros(2, 3, 24, 24)).shape == (2, 3)  # other sizes: position embeddings interpolated


def test_the_kernel_of_a_vit_matches_brute_force(vit):
    model = build_model(f"hf:{vit}", num_classes=3, image_size=16).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    k = compute_kernel(model, x, chunk_size=2)
    j = jacobian_loop(model, x)
    torch.testing.assert_close(k.theta, j @ j.T, rtol=1e-9, atol=1e-12)


def test_head_only_training_of_a_checkpoint_is_predicted_exactly(resnet):
    cfg = RunConfig.from_dict(dict(data="fashion-mnist-mini", model=f"hf:{resnet}", classes=3, per_class=6,
                                   image_size=16, steps=15, lr=0.5, batch_size=6, momentum=0.9, freeze_backbone=True))
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)


def test_the_cli_predicts_with_a_vision_checkpoint(capsys, resnet, tmp_path):
    code = main(["predict", "--model", f"hf:{resnet}", "--data", "fashion-mnist-mini", "--classes", "3",
                 "--per-class", "4", "--image-size", "16", "--steps", "10", "--quiet"])
    assert code == 0 and f"model      hf:{resnet}" in capsys.readouterr().out
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "vit", "num_channels": 3}))
    with pytest.raises(ModelError, match="cannot load the image classifier"):
        build_model(f"hf:{bad}", num_classes=3, image_size=16)


def test_a_torch_datasets_tensors_are_the_checkpoints_pixel_values(vit):
    """Model-ready tensors (normalized by the user's own transform) reach the checkpoint unchanged."""
    from finetime.predict import prepare

    task = prepare(RunConfig.from_dict(dict(data="torch:datasets_for_tests:images_as_tensors", model=f"hf:{vit}",
                                            classes=2, per_class=3, steps=5)))
    assert task.model.normalize is False
    x = task.data.x[:2]
    torch.testing.assert_close(task.model(x), task.model.model(pixel_values=x).logits)
