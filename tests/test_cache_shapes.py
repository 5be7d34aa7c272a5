"""`cache_frozen` with inputs of varying sizes: one capture serves every sequence length (token
batches cut to their longest sample) and every image size the model allows, exactly, with a
sample identified by its padded row; sizes the model's code branches on get captures of their
own."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sympy
import torch
from cache_models import (
    Run,
    TinyResNet,
    assert_same_runs,
    assert_same_state,
    eval_frozen_modules,
    images,
    policy_apply,
    tiny_bert,
    train_twins,
    twins,
)
from torch import nn

import freezepolicy
from freezepolicy.demo.minilm import Encoded, MiniLMClassifier
from freezepolicy.runtime.cache.shapes import ShapeSpec

#: Tokens per sample; batches of 4 by position are cut to widths 6, 9 and 14.
LENGTHS = [3, 6, 5, 4, 9, 7, 8, 2, 14, 10, 12, 11]
BATCHES = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
#: Other batches: samples 3 and 7 are cut to another width (9, 6) than before (6, 9), so they
#: are other samples for the cache; the rest keep their padded rows.
REBATCHED = [[0, 1, 2, 7], [3, 4, 5, 6], [8, 9, 10, 11]]


def _data() -> Encoded:
    g = torch.Generator().manual_seed(1)
    n, width = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(1, 100, (n, width), generator=g)
    mask = (torch.arange(width) < torch.tensor(LENGTHS)[:, None]).long()
    return Encoded(ids * mask, mask, torch.randint(0, 2, (n,), generator=g))


def _demo_classifier() -> nn.Module:
    """The review demo's classifier (mean pooling, a new head) on a tiny BERT: called
    positionally, `model(input_ids, attention_mask)`; head only."""
    from model_factories import tiny_bert_config
    from transformers import BertModel

    torch.manual_seed(0)
    config = tiny_bert_config(max_position_embeddings=32)
    model = MiniLMClassifier(BertModel(config, add_pooling_layer=False))
    policy_apply(model, "freeze *\nunfreeze head")
    return model


def _bert_last_block() -> nn.Module:
    """BertForSequenceClassification called with keywords; its last block, pooler and
    classifier train (with dropout)."""
    model = tiny_bert(layers=2)
    policy_apply(model, "freeze *\nunfreeze encoder.layer.1, pooler, classifier")
    return model


def _positional(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, labels = batch
    out = model(ids, mask)
    return nn.functional.cross_entropy(out, labels), out


def _keywords(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, labels = batch
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    return out.loss, out.logits


@pytest.mark.parametrize(
    "build, loss_of",
    [(_demo_classifier, _positional), (_bert_last_block, _keywords)],
    ids=["demo-classifier-head-positional", "bert-last-block-keywords"],
)
def test_one_capture_serves_every_sequence_length(build: Any, loss_of: Any) -> None:
    model = build().train()
    eval_frozen_modules(model)  # no dropout in the frozen part: what the cache does
    ref, cached = twins(model)
    data = _data()
    epochs = [[data.batch(torch.tensor(i)) for i in order] for order in (BATCHES,) * 2]
    epochs.append([data.batch(torch.tensor(i)) for i in REBATCHED])
    assert [b[0].shape[1] for b in epochs[0]] == [6, 9, 14]
    seen: list[tuple[int, int]] = []

    def count(epoch: int) -> None:
        s = cached.stats()
        seen.append((s.misses, s.hits))

    a, b = train_twins(ref, cached, epochs, loss_of, before_epoch=count)
    count(3)
    # The same batches twice: each sample's frozen value is reused in the batch it was computed
    # in, so the first two epochs are equal bit for bit; the third mixes samples computed in
    # other batches with samples computed in a smaller one (within float32 rounding).
    n = 2 * len(BATCHES)
    assert_same_runs(Run(a.losses[:n], a.outputs[:n]), Run(b.losses[:n], b.outputs[:n]))
    assert_same_runs(a, b, exact=False)
    assert_same_state(ref, cached.model, exact=False)
    s = cached.stats()
    assert (s.captures, s.uncached_calls, s.reasons) == (1, 0, ())
    # Epoch 1 fills, epoch 2 hits every sample, epoch 3 misses the two padded differently.
    per_epoch = [(m1 - m0, h1 - h0) for (m0, h0), (m1, h1) in zip(seen, seen[1:], strict=False)]
    assert per_epoch == [(12, 0), (0, 12), (2, 10)]


def test_one_capture_serves_every_image_size() -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    policy_apply(model, "freeze *\nunfreeze fc")
    ref, cached = twins(model.train())
    batches = [images(4, seed=s, size=size) for s, size in ((1, 8), (2, 12), (3, 10))]
    a, b = train_twins(ref, cached, [batches] * 2)
    assert_same_runs(a, b)
    assert_same_state(ref, cached.model)
    s = cached.stats()
    assert (s.captures, s.misses, s.hits) == (1, 12, 12)


class _Branches(nn.Module):
    """A frozen part whose code branches on the sequence length and on the batch size (the
    graph export captures holds one side of each, under a guard on the sizes), or on the data
    (which torch.export cannot capture)."""

    def __init__(self, on: str = "sizes") -> None:
        super().__init__()
        self.on = on
        self.enc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.enc.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        if self.on == "data":
            h = -h if h.sum() > 0 else h
        else:
            h = h * 2 if x.shape[1] > 4 else h
            h = h + 1 if x.shape[0] > 3 else h
        return self.head(h.mean(1))


def test_sizes_the_model_branches_on_or_fixes_get_captures_of_their_own() -> None:
    torch.manual_seed(0)
    model = _Branches()
    cached = freezepolicy.cache_frozen(model)
    captures = []
    # (batch, length): both sides of each branch, then sizes served by an earlier capture, a
    # length of 1 (export takes a symbolic size to be at least 2), and batches of one (a capture
    # of their own, which serves every length on the same side of the branch).
    calls = [(2, 3), (4, 3), (2, 6), (4, 6), (3, 5), (5, 2), (2, 1), (1, 3), (1, 6), (1, 2)]
    for batch, length in calls:
        x = torch.randn(batch, length, 4)
        assert torch.equal(cached(x), model(x)), (batch, length)
        captures.append(cached.stats().captures)
    assert captures == [1, 2, 3, 4, 4, 4, 5, 6, 7, 7]
    assert cached.stats().uncached_calls == 0


def test_shape_spec_checks_sizes_ranges_guards_and_rows_per_sample() -> None:
    b, t, u = sympy.symbols("b t u", positive=True, integer=True)
    spec = ShapeSpec(
        dims=((b, t), (b, t + 1, 4)),
        ranges=((b, 2, None), (t, 2, 32)),
        guards=(sympy.Gt(t, 4),),
    )
    assert spec.matches(((3, 6), (3, 7, 4)))
    assert not spec.matches(((3, 6), (2, 7, 4)))  # one symbol, two sizes
    assert not spec.matches(((3, 6), (3, 6, 4)))  # a derived size
    assert not spec.matches(((3, 6), (3, 7, 5)))  # a static size
    assert not spec.matches(((3, 40), (3, 41, 4)))  # out of range
    assert not spec.matches(((1, 6), (1, 7, 4)))  # a size of 1: export assumed at least 2
    assert not spec.matches(((3, 4), (3, 5, 4)))  # the guard
    # A guard that cannot be evaluated: the capture serves the sizes it was traced with only.
    odd = dataclasses.replace(spec, guards=(sympy.Eq(sympy.Function("f")(t), 1),))
    assert not odd.matches(((3, 6), (3, 7, 4)))
    assert odd.serving(((3, 6), (3, 7, 4))).matches(((3, 6), (3, 7, 4)))
    assert not odd.serving(((3, 6), (3, 7, 4))).matches(((3, 8), (3, 9, 4)))
    assert spec.serving(((3, 6), (3, 7, 4))) is spec
    batch = frozenset({b})
    for rows in (b, 3 * b, b * t, b * t**2, b * (t + 1), b * (t - 1)):
        assert spec.rows_per_sample(rows, batch), rows
    for rows in (t, b**2, b + 1, b * u, b * (t - 2), 2 * b * t / 3):
        assert not spec.rows_per_sample(rows, batch), rows


def test_a_model_export_cannot_capture_is_tried_once_for_all_sizes() -> None:
    model = _Branches(on="data")
    cached = freezepolicy.cache_frozen(model)
    with pytest.warns(UserWarning, match="caching is off for these inputs: torch.export could"):
        for length in (3, 5, 3):
            x = torch.randn(2, length, 4)
            assert torch.equal(cached(x), model(x))
    s = cached.stats()
    assert (s.captures, s.uncached_calls) == (1, 3)
