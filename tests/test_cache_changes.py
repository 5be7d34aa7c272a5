"""`cache_frozen` under change: unfreeze and re-freeze events, changed frozen tensors, random
augmentation, the memory bound, anticipating a policy's later phases, and freezepolicy's own
tools used on the wrapper or on the model."""

from __future__ import annotations

import copy

import pytest
import torch
from cache_models import (
    TinyResNet,
    assert_same_runs,
    assert_same_state,
    images,
    policy_apply,
    train_twins,
    twins,
)
from model_factories import MLP
from torch import nn

import freezepolicy
from freezepolicy.runtime.cache.store import Store

SCHEDULE = "freeze *\nunfreeze fc\nunfreeze layer2 at epoch 1\nfreeze layer2 at epoch 2\n"


def test_unfreeze_and_refreeze_by_a_freeze_scheduler_stay_exact() -> None:
    torch.manual_seed(0)
    policy = freezepolicy.parse(SCHEDULE)
    ref, cached = twins(TinyResNet().train())
    x, y = images(8)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    # The scheduler and the optimizer's groups on the model for one, on the wrapper for the other.
    sides = []
    for model in (ref, cached):
        opt = torch.optim.Adam(freezepolicy.param_groups(model, policy, 1e-2), lr=1e-2)
        sides.append((model, opt, freezepolicy.FreezeScheduler(model, policy, opt)))
    losses: list[list[torch.Tensor]] = [[], []]
    misses = []
    for epoch in range(4):
        before = cached.stats().misses
        for k, (model, opt, fs) in enumerate(sides):
            fs.start_epoch(epoch)
            for xb, yb in batches:
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                opt.zero_grad()
                fs.step()
                losses[k].append(loss.detach())
        misses.append(cached.stats().misses - before)
    assert all(torch.equal(a, b) for a, b in zip(*losses, strict=True))
    assert_same_state(ref, cached.model)
    # epoch 0 fills; epoch 1 trains layer2 (its input, layer1's output, is new: filled);
    # epoch 2 freezes it again, changed: the values cached in epoch 0 are stale and refilled;
    # epoch 3 hits.
    assert misses == [8, 8, 8, 0]
    assert cached.stats().invalidated >= 1


def _head_only() -> tuple[nn.Module, freezepolicy.CachedModule]:
    torch.manual_seed(0)
    model = TinyResNet()
    policy_apply(model, "freeze *\nunfreeze fc")
    return model, freezepolicy.cache_frozen(model)


def test_changed_frozen_tensors_invalidate_exactly_what_they_change() -> None:
    model, cached = _head_only()
    x, _ = images(4)
    assert torch.equal(cached(x), model(x))
    with torch.no_grad():
        model.fc.weight.mul_(2)  # the live part: cached values stay valid
    assert torch.equal(cached(x), model(x)) and cached.stats().misses == 4
    with torch.no_grad():
        model.layer2.conv2.weight.mul_(0.5)  # an in-place edit of a frozen tensor
    assert torch.equal(cached(x), model(x)) and cached.stats().misses == 8
    other = TinyResNet().state_dict()
    cached.load_state_dict(other)  # the wrapper's state dict is the model's, same keys
    assert cached.state_dict().keys() == model.state_dict().keys() == other.keys()
    assert torch.equal(cached(x), model(x)) and cached.stats().misses == 12
    # `.data` edits bypass the version counters; `invalidate()` is for them (it drops the
    # capture too, for the plain attributes a capture holds as constants).
    model.layer1.conv1.weight.data.mul_(3)
    cached.invalidate()
    assert torch.equal(cached(x), model(x)) and cached.stats().misses == 16
    assert cached.stats().captures == 2
    model.fc = nn.Linear(16, 5)  # a replaced module: a new capture with its tensors
    assert torch.equal(cached(x), model(x)) and cached.stats().captures == 3


def test_random_augmentation_misses_and_stays_exact() -> None:
    ref, cached = twins(_head_only()[0])
    x, y = images(8)
    g = torch.Generator().manual_seed(5)
    epochs = []
    for _ in range(3):  # new flips and noise every epoch, the same for both sides
        flip = torch.rand(8, generator=g) < 0.5
        aug = torch.where(flip[:, None, None, None], x.flip(3), x) + 0.01 * torch.randn(
            x.shape, generator=g
        )
        epochs.append([(aug[:4], y[:4]), (aug[4:], y[4:])])
    a, b = train_twins(ref, cached, epochs)
    assert_same_runs(a, b)
    s = cached.stats()
    assert (s.hits, s.misses) == (0, 24)


def test_max_bytes_bounds_the_store_evicting_the_least_recently_used() -> None:
    model, _ = _head_only()
    ref, cached = twins(model, max_bytes=5 * 64)  # room for 5 of the 64-byte values
    x, y = images(12)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    a, b = train_twins(ref, cached, [batches] * 2)
    assert_same_runs(a, b)
    s = cached.stats()
    assert (s.bytes, s.entries, s.max_bytes) == (5 * 64, 5, 5 * 64)
    assert s.evicted == 24 - 5 and s.hits == 0  # a cyclic scan larger than the cache
    nothing = freezepolicy.cache_frozen(copy.deepcopy(model), max_bytes=0)
    assert torch.equal(nothing(x), model(x)) and nothing.stats().bytes == 0


def test_store_is_least_recently_used_and_drops_stale_slots() -> None:
    store = Store(max_bytes=3 * 4)
    for k in (b"a", b"b", b"c"):
        store.validate("slot", ("v1",))
        store.put("slot", k, torch.zeros(1))
    assert store.get("slot", b"a") is not None  # now the most recent
    store.put("slot", b"d", torch.zeros(1))
    assert store.get("slot", b"b") is None and store.get("slot", b"a") is not None
    assert store.counts.evicted == 1
    store.validate("slot", ("v2",))  # the frozen tensors changed
    assert store.counts.entries == store.counts.bytes == 0 and store.counts.invalidated == 1
    assert not store.put("slot", b"big", torch.zeros(4))  # larger than the whole cache


@pytest.mark.parametrize("anticipate", [True, False])
def test_anticipating_the_policy_keeps_the_next_phases_values(anticipate: bool) -> None:
    torch.manual_seed(0)
    policy = freezepolicy.parse("freeze *\nunfreeze out\nunfreeze fc2 at epoch 1\n")
    ref, cached = twins(MLP(), anticipate=policy if anticipate else None)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    misses = []

    def at(epoch: int) -> None:
        for model in (ref, cached):
            freezepolicy.apply_policy(model, policy, epoch=epoch)
        misses.append(cached.stats().misses)

    a, b = train_twins(ref, cached, [[(x[:4], y[:4]), (x[4:], y[4:])]] * 3, before_epoch=at)
    assert_same_runs(a, b)
    # With the policy, epoch 0 also stores fc1's output, which is all epoch 1 needs once fc2
    # trains: no refill. Without it, epoch 1 computes fc1 again for every sample.
    assert misses == ([0, 8, 8] if anticipate else [0, 8, 16])


def test_policy_tools_see_the_models_names_through_the_wrapper() -> None:
    model = TinyResNet()
    cached = freezepolicy.cache_frozen(model)
    report = freezepolicy.apply_policy(cached, "policies/resnet_head_only.freeze")
    assert report.trainable == ("fc.weight", "fc.bias")
    groups = freezepolicy.param_groups(cached, "policies/resnet_head_only.freeze", 0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters()}
    assert [id(p) for p in cached.parameters()] == [id(p) for p in model.parameters()]
    assert cached.fc is model.fc  # attributes of the model through the wrapper
    x, _ = images(4)
    cached.eval()  # eval mode is another capture, computed as the model in eval mode
    assert torch.equal(cached(x), model(x)) and not model.training
    assert cached.stats().captures == 1
    cached.train()
    assert torch.equal(cached(x), model(x)) and cached.stats().captures == 2


def test_values_filled_under_inference_mode_serve_training_steps() -> None:
    model, cached = _head_only()
    x, y = images(4)
    with torch.inference_mode():
        cached(x)
    loss = nn.functional.cross_entropy(cached(x), y)
    loss.backward()  # the cached values are ordinary tensors
    assert cached.stats().hits == 4 and model.fc.weight.grad is not None


def test_hooks_the_cached_forward_does_not_call_are_warned_about() -> None:
    model, cached = _head_only()
    seen = []
    model.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with pytest.warns(UserWarning, match=r"modules with hooks \(layer1\)"):
        cached(images(4)[0])  # (the capture traces the hook once, with fake tensors)
    traced = len(seen)
    cached(images(4)[0])
    cached(images(4, seed=2)[0])
    assert len(seen) == traced
