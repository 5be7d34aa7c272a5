"""PEFT-wrapped models for the tests and for `package.module:factory` specs, e.g.
`freezepolicy show policies/lora.freeze --model tests.peft_factories:lora_bert`.

A tiny BERT with a 3-label classifier (random weights, nothing downloaded), wrapped by PEFT's own
`get_peft_model` with LoRA on the attention's query and value and the classifier in
`modules_to_save`, as a LoRA fine-tune of a sequence classifier is usually set up.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertForSequenceClassification

try:  # imported by pytest, which puts tests/ on sys.path
    from model_factories import tiny_bert_config
except ImportError:  # imported as a spec, `tests.peft_factories:lora_bert`, from the checkout
    from tests.model_factories import tiny_bert_config


def lora_config(**overrides) -> LoraConfig:
    fields = dict(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    return LoraConfig(**{**fields, **overrides})


def lora_bert(**overrides) -> PeftModel:
    """The tiny BERT with LoRA adapters; `overrides` changes the LoraConfig."""
    base = BertForSequenceClassification(
        tiny_bert_config(max_position_embeddings=16, num_labels=3)
    )
    return get_peft_model(base, lora_config(**overrides))
