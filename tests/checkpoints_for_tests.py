"""Tiny Hugging Face checkpoints written to disk for the tests (random weights; transformers is imported lazily)."""

import json

import torch

WORDS = ["good", "bad", "great", "awful", "tasty", "stale", "love", "hate", "it", "this"]
IMAGE_MEAN, IMAGE_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_bert(path, sentence_transformers: bool = False):
    """A random tiny BERT with a word-level tokenizer; with ``sentence_transformers`` marked as one (``modules.json``).
    Returns its words."""
    import transformers

    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=15, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=12, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(str(path))
    if sentence_transformers:
        (path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                        "type": "sentence_transformers.models.Transformer"}]))
    return WORDS


def tiny_vit(path):
    """A random tiny ViT image classifier (16 px, patches of 8) with ImageNet normalization."""
    import transformers

    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=12, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=20, num_labels=10)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": IMAGE_MEAN, "image_std": IMAGE_STD}))
    return path


def tiny_resnet(path):
    """A random tiny ResNet image classifier (no preprocessor config)."""
    import transformers

    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="basic", num_labels=7)
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(cfg).save_pretrained(path)
    return path
