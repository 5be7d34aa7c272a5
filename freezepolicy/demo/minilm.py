"""The review demo's model: MiniLM (all-MiniLM-L6-v2, a 6-block BERT, hidden size 384) with mean
pooling and a linear head, pretrained or from random weights, and its tokenizer.

Parameter names are `bert.embeddings...`, `bert.encoder.layer.0..5...` and `head.weight`,
`head.bias`: the policies in policies/minilm_*.freeze select these. Lint them against the same
architecture built on the meta device (no weights read):

    freezepolicy lint --model freezepolicy.demo.minilm:minilm_classifier policies/minilm_*.freeze
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from .reviews_data import LABELS, Snippet, model_dir

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

Init = Literal["pretrained", "random"]


class MiniLMClassifier(nn.Module):
    """BERT encoder -> mean of the token vectors (padding left out) -> `head` (one logit per class).

    Mean pooling is how all-MiniLM-L6-v2 was trained to embed sentences (its sentence-transformers
    configuration), so BERT's own pooler is not part of the model.
    """

    def __init__(self, bert: BertModel, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def bert_config(folder: Path | None = None):  # -> transformers.BertConfig
    """The architecture of the pretrained model, read from its config.json."""
    from transformers import BertConfig

    folder = model_dir() if folder is None else folder
    return BertConfig.from_dict(json.loads((folder / "config.json").read_text(encoding="utf-8")))


def minilm_classifier() -> MiniLMClassifier:
    """The demo's architecture on the meta device (shapes, no storage, nothing read but
    config.json): the model spec `freezepolicy.demo.minilm:minilm_classifier` for lint and show."""
    from transformers import BertModel

    with torch.device("meta"):
        return MiniLMClassifier(BertModel(bert_config(), add_pooling_layer=False))


def build_classifier(init: Init, seed: int, folder: Path | None = None) -> MiniLMClassifier:
    """The classifier with pretrained or random encoder weights and a new head.

    The head's initial weights depend on `seed` alone, so every run starts it from the same point;
    the random encoder is the config's own initialisation, also from `seed`.
    """
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    folder = model_dir() if folder is None else folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if init == "pretrained":
            # The weights bar of from_pretrained would interleave with the demo's own lines.
            hf_logging.disable_progress_bar()
            try:
                # Loaded with its pooler, the checkpoint matches the model exactly (no report of
                # unused weights); mean pooling replaces the pooler, so it is dropped.
                bert = BertModel.from_pretrained(folder)
            finally:
                hf_logging.enable_progress_bar()
            bert.pooler = None
        elif init == "random":
            bert = BertModel(bert_config(folder), add_pooling_layer=False)
        else:
            raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
        torch.manual_seed(seed + 1)
        return MiniLMClassifier(bert)


@dataclass(frozen=True)
class Encoded:
    """Token ids and attention masks, padded to `max_tokens`, and the labels."""

    input_ids: Tensor  # (n, max_tokens) int64
    attention_mask: Tensor  # (n, max_tokens) int64, 1 for real tokens
    labels: Tensor  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows of `index`, cut to the longest of them: no work is spent on columns that
        are padding in every row."""
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max())
        return self.input_ids[index, :width], mask[:, :width], self.labels[index]


def tokenizer(folder: Path | None = None) -> PreTrainedTokenizerBase:
    """The model's own WordPiece tokenizer (lower-casing), from its tokenizer.json."""
    # In transformers 5 BertTokenizerFast is an alias of BertTokenizer, which type checkers
    # do not see; in 4 it is the fast (Rust) tokenizer.
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]

    return BertTokenizerFast.from_pretrained(model_dir() if folder is None else folder)


def encode(tok: PreTrainedTokenizerBase, snippets: Sequence[Snippet], max_tokens: int) -> Encoded:
    """Tokenize once; longer snippets are cut to `max_tokens` tokens ([CLS] and [SEP] included)."""
    out = tok(
        [s.text for s in snippets],
        max_length=max_tokens,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    labels = torch.tensor([s.label for s in snippets], dtype=torch.long)
    return Encoded(out["input_ids"], out["attention_mask"], labels)
