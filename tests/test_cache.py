"""`cache_frozen` computes what the model computes: exactness over several optimizer steps for a
convnet with BatchNorm and skip connections and for BERT with a padding mask (keyword inputs),
the dropout policy, and parts that cannot be cached (randomness, batch statistics)."""

from __future__ import annotations

import pytest
import torch
from cache_models import (
    DropoutMLP,
    NoisyMLP,
    TinyResNet,
    assert_same_runs,
    assert_same_state,
    bert_loss,
    eval_frozen_modules,
    images,
    policy_apply,
    tiny_bert,
    tokens,
    train_twins,
    twins,
)
from torch import nn

import freezepolicy


def _resnet(policy: str) -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    policy_apply(model, policy)
    return model.train()


def test_head_only_convnet_is_exact_and_skips_the_frozen_part() -> None:
    ref, cached = twins(_resnet("freeze *\nunfreeze fc"))
    x, y = images(12)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    a, b = train_twins(ref, cached, [batches] * 3)
    # Same batches every epoch: each sample's frozen value is reused in the batch it was
    # computed in, so everything is equal bit for bit.
    assert_same_runs(a, b)
    assert_same_state(ref, cached.model)
    s = cached.stats()
    assert (s.misses, s.hits, s.captures, s.uncached_calls) == (12, 24, 1, 0)
    assert s.bytes == 12 * 16 * 4 == s.entries * 64  # one 16-float vector per image
    assert s.fill_seconds > 0 and s.capture_seconds > 0


def test_trainable_block_reads_the_frozen_value_twice_and_updates_its_batch_norm() -> None:
    # layer2 trains: its conv and its downsample both read layer1's output (a skip
    # connection), and its BatchNorm layers run in train mode (batch statistics, running
    # statistics and num_batches_tracked updated every step, also from the cache).
    ref, cached = twins(_resnet("freeze *\nunfreeze layer2, fc"))
    x, y = images(8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    epochs = [
        [(x[:4], y[:4]), (x[4:], y[4:])],
        [(x[perm[:4]], y[perm[:4]]), (x[perm[4:]], y[perm[4:]])],  # shuffled: other batches
    ]
    a, b = train_twins(ref, cached, epochs)
    assert_same_runs(a, b, exact=False)
    assert_same_state(ref, cached.model, exact=False)
    assert cached.model.layer2.bn1.num_batches_tracked.item() == 4
    part = next(iter(next(iter(cached._captures.values()))[0].partitions.values()))
    assert part.boundary == 1  # one value, layer1's output, read by both paths of layer2
    assert cached.stats().hits == 8


def test_bert_with_padding_mask_by_keyword_is_exact() -> None:
    model = tiny_bert()
    policy_apply(model, "freeze *\nunfreeze encoder.layer.2, pooler, classifier")
    model.train()
    eval_frozen_modules(model)  # no dropout in the frozen part: what the cache does
    ref, cached = twins(model)
    batch = tokens(6)
    halves = [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}]
    a, b = train_twins(ref, cached, [halves] * 3, bert_loss)
    assert_same_runs(a, b)  # the live part's dropout draws the same numbers on both sides
    assert_same_state(ref, cached.model)
    s = cached.stats()
    assert (s.misses, s.hits) == (6, 12) and not s.reasons
    # The mask is recomputed from `attention_mask` each step, not cached: one cached value
    # (block 1's output, 12 x 32 floats) per sample.
    assert s.bytes == 6 * 12 * 32 * 4
    # Samples are identified by the inputs the frozen part reads: other labels still hit.
    relabeled = {**halves[0], "labels": 1 - halves[0]["labels"]}
    losses = []
    for side in (cached, ref):
        torch.manual_seed(7)  # the live part's dropout
        losses.append(side(**relabeled).loss)
    assert torch.equal(*losses)
    assert (cached.stats().misses, cached.stats().hits) == (6, 15)


def test_frozen_dropout_eval_turns_it_off_and_keeps_the_heads_dropout_random() -> None:
    torch.manual_seed(0)
    model = DropoutMLP()
    policy_apply(model, "freeze *\nunfreeze head")
    model.train()
    ref, cached = twins(model)
    ref.drop.eval()  # the hand-written equivalent: the frozen part's dropout in eval mode
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    a, b = train_twins(ref, cached, [[(x, y)]] * 3, lr=1e-1)
    # head_drop reads a frozen value but only the head reads it: it stays random, and draws
    # the same numbers as the model's (same seed), so the runs agree.
    assert_same_runs(a, b)
    assert cached.stats().hits == 16
    out = cached(x)
    assert not torch.equal(out, cached(x))  # head_drop is still random


def test_frozen_dropout_keep_caches_up_to_the_dropout_and_warns() -> None:
    torch.manual_seed(0)
    model = DropoutMLP()
    policy_apply(model, "freeze *\nunfreeze head")
    model.train()
    ref, cached = twins(model, frozen_dropout="keep")
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with pytest.warns(UserWarning, match=r"not cached: drop .*random: dropout \(p=0.5\)"):
        a, b = train_twins(ref, cached, [[(x, y)]] * 2, lr=1e-1)
    assert_same_runs(a, b)  # dropout in the frozen part draws as in the model
    assert cached.stats().hits == 8  # fc1 + relu, before the dropout, is still cached


def test_random_op_in_the_frozen_part_disables_caching_after_it_with_a_warning() -> None:
    torch.manual_seed(0)
    model = NoisyMLP()
    policy_apply(model, "freeze *\nunfreeze head")
    ref, cached = twins(model)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    with pytest.warns(UserWarning, match="random op aten.randn_like"):
        a, b = train_twins(ref, cached, [[(x, y)]] * 2)
    assert_same_runs(a, b)


def test_batch_norm_in_training_mode_in_the_frozen_part_is_not_cached() -> None:
    # Frozen parameters, but the layer is not held: it normalizes with batch statistics, so a
    # sample's value depends on the rest of its batch.
    torch.manual_seed(0)
    model = TinyResNet()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc"))
    model.train()
    ref, cached = twins(model)
    x, y = images(4)
    with pytest.warns(UserWarning, match="BatchNorm in training mode"):
        a, b = train_twins(ref, cached, [[(x, y)]] * 2)
    assert_same_runs(a, b)
    assert_same_state(ref, cached.model)  # running statistics updated as by the model
    # Only the stem's convolution, before the first BatchNorm, is cached (8 x 8 x 8 floats).
    s = cached.stats()
    assert (s.hits, s.bytes) == (4, 4 * 8 * 8 * 8 * 4)


class _Shifted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + shifts.sum(0)


def test_inputs_without_a_common_batch_dimension_run_uncached_with_a_warning() -> None:
    model = _Shifted().requires_grad_(False)
    cached = freezepolicy.cache_frozen(model)
    x, shifts = torch.randn(4, 3), torch.randn(2, 3)
    with pytest.warns(UserWarning, match=r"runs uncached: .*differ in their first dimension"):
        out = cached(x, shifts)
    assert torch.equal(out, model(x, shifts))
    assert cached.stats().uncached_calls == 1


class _Flattened(nn.Module):
    """Flattens (batch, tokens) into rows, as GPT-2's Conv1D does: a cached value with k rows
    per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        rows = torch.relu(self.a(x.reshape(b * t, h)))
        return self.b(rows).view(b, t, 2).sum(1)


def test_values_with_several_rows_per_sample_are_cached_per_sample() -> None:
    torch.manual_seed(0)
    model = _Flattened()
    model.a.requires_grad_(False)
    ref, cached = twins(model)
    # Samples of 3 tokens and of 5: rows per sample is the (symbolic) number of tokens.
    x, y = torch.randn(6, 3, 4), torch.randint(0, 2, (6,))
    x5 = torch.randn(4, 5, 4)
    order = [
        [(x[:3], y[:3]), (x5, y[:4]), (x[3:], y[3:])],
        [(x[[4, 0, 2]], y[[4, 0, 2]]), (x5[[3, 1]], y[:2]), (x[[1, 5, 3]], y[[1, 5, 3]])],
    ]
    a, b = train_twins(ref, cached, order)
    assert_same_runs(a, b, exact=False)
    s = cached.stats()
    assert (s.misses, s.hits, s.captures) == (10, 8, 1)
    assert s.bytes == (6 * 3 + 4 * 5) * 4 * 4  # 3 or 5 rows of 4 floats each


class _Mixing(nn.Module):
    """A frozen part in which each sample's value depends on the other samples of its batch."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc1 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.how == "softmax":
            h = torch.softmax(h, dim=0)
        elif self.how == "centered":
            h = h - h.mean(0, keepdim=True)
        elif self.how == "cat":  # the first halves of all samples, then the second halves
            h = torch.cat([h[:, :3], h[:, 3:]], 0).reshape(h.shape[0], 6)
        elif self.how == "repeat":  # each row gets the previous sample's values
            h = h.repeat(2, 1)[h.shape[0] - 1 : -1]
        elif self.how == "pad":  # the same, by a row of zeros in front
            h = nn.functional.pad(h, (0, 0, 1, 0))[:-1]
        else:
            h = h + torch.arange(h.shape[0])[:, None]
        return self.head(h)


@pytest.mark.parametrize(
    "how, message",
    [
        ("softmax", "works along the batch dimension"),
        ("centered", "mixes or moves the batch dimension"),
        ("cat", "aten.cat.default works along the batch dimension"),
        ("repeat", "aten.repeat.default works along the batch dimension"),
        ("pad", r"gives s\d+ \+ 1 rows, not a whole number of rows per sample"),
        ("position", "position in the batch"),
    ],
)
def test_values_that_depend_on_the_rest_of_the_batch_are_not_cached(how: str, message: str) -> None:
    torch.manual_seed(0)
    model = _Mixing(how)
    model.fc1.requires_grad_(False)
    ref, cached = twins(model)
    x, y = torch.randn(6, 6), torch.randint(0, 2, (6,))
    epochs = [[(x[:3], y[:3]), (x[3:], y[3:])], [(x[[3, 0, 5]], y[[3, 0, 5]])]]
    with pytest.warns(UserWarning, match=message):
        a, b = train_twins(ref, cached, epochs)
    # Sample 0 comes back in another batch: its mixed value is recomputed (fc1 output reused:
    # equal up to float32 rounding, see RTOL).
    assert_same_runs(a, b, exact=False)
    assert cached.stats().hits == 3  # only fc1's output, before the mixing, is cached


def test_autocast_is_part_of_the_call_signature() -> None:
    """A capture made inside torch.autocast computes in its dtype: calls inside and outside
    autocast each get their own capture and values, in either order, and match the model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    freezepolicy.apply_policy(model, freezepolicy.parse("freeze *\nunfreeze 2"))
    x = torch.randn(8, 16) * 100  # large enough that bfloat16 rounding shows
    for first in (True, False):
        cached = freezepolicy.cache_frozen(model)
        for autocast in (first, not first, first, not first):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                got, want = cached(x), model(x)
            assert got.dtype == want.dtype == (torch.bfloat16 if autocast else torch.float32)
            assert torch.equal(got, want)
        stats = cached.stats()
        assert (stats.captures, stats.hits, stats.misses) == (2, 16, 16)


class _Scaled(nn.Module):
    """A forward that reads a plain attribute and a plain tensor attribute (no buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)
        self.temperature = 1.0
        self.shift = torch.ones(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x) * self.temperature + self.shift))


def test_invalidate_forgets_the_captures_that_hold_plain_attributes() -> None:
    """Plain attributes are constants of the capture (docs/caching.md, "What it cannot see"):
    after changing one, invalidate() makes the cached model compute what the model does."""
    torch.manual_seed(0)
    model = _Scaled()
    freezepolicy.apply_policy(model, freezepolicy.parse("freeze *\nunfreeze head"))
    cached = freezepolicy.cache_frozen(model)
    x = torch.randn(6, 8)
    assert torch.equal(cached(x), model(x))
    model.temperature = 2.0
    model.shift = torch.full((16,), 3.0)
    cached.invalidate()
    assert torch.equal(cached(x), model(x))
    assert cached.stats().captures == 2


def test_a_copy_after_use_starts_empty_and_computes_what_its_model_does() -> None:
    """copy.deepcopy (an EMA model) and torch.save of the whole wrapper work after it has
    cached: a copy drops the captures and values of the original's tensors and captures again;
    anticipated sets are bound to the copy's own tensors."""
    import copy
    import io

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    policy = freezepolicy.parse("freeze *\nunfreeze 3\nunfreeze 2 at epoch 1")
    freezepolicy.apply_policy(model, policy)
    cached = freezepolicy.cache_frozen(model, anticipate=policy)
    x = torch.randn(5, 8)
    cached(x)
    twin = copy.deepcopy(cached)
    with torch.no_grad():
        twin.model[0].weight.mul_(2)  # the copy's tensors are its own
    assert torch.equal(twin(x), twin.model(x)) and not torch.equal(twin(x), cached(x))
    assert torch.equal(cached(x), model(x))
    assert twin.stats().captures == 1 and len(twin._anticipated) == len(cached._anticipated)
    buffer = io.BytesIO()
    torch.save(cached, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), model(x))
