"""Normalization layers: frozen ones keep their running statistics; `stats` statements opt out."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import freezepolicy as fp
from freezepolicy.runtime import norm

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Small(nn.Module):
    """One of each kind of normalization layer, in a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.sync = nn.SyncBatchNorm(4)
        self.inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.plain = nn.BatchNorm2d(4, affine=False)  # no parameters: nothing to select
        self.fc = nn.Linear(4, 3)
        self.bn1d = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.plain(self.inorm(self.sync(self.bn(self.conv(x)))))
        return self.bn1d(self.fc(x.mean((2, 3))))


NORMS = ("bn", "sync", "inorm", "plain", "bn1d")


def stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def same_stats(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(model: nn.Module, steps: int = 2) -> None:
    """Train steps in train mode, with an optimizer over everything that trains."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.BatchNorm1d(3), True),
        (nn.BatchNorm2d(3), True),
        (nn.BatchNorm3d(3), True),
        (nn.SyncBatchNorm(3), True),
        (nn.BatchNorm2d(3, affine=False), True),
        (nn.BatchNorm2d(3, track_running_stats=False), False),
        (nn.InstanceNorm2d(3, track_running_stats=True), True),
        (nn.InstanceNorm2d(3), False),
        (nn.LayerNorm(3), False),
        (nn.GroupNorm(1, 3), False),
    ],
)
def test_which_layers_have_running_statistics(module, expected):
    assert norm.has_running_stats(module) is expected


def test_hold_survives_train_and_release_follows_the_model():
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(bn)
    norm.hold(bn)
    norm.hold(bn)  # idempotent: one hook
    assert sum(h is norm._hold_eval for h in bn._forward_pre_hooks.values()) == 1
    model.train()
    assert bn.training  # model.train() sets it; the next forward undoes it
    before = stats(bn)
    model(torch.randn(2, 4, 3, 3))
    assert not bn.training and same_stats(before, stats(bn))
    norm.release(bn, training=True)
    assert not norm.is_held(bn) and bn.training
    model(torch.randn(2, 4, 3, 3))
    assert bn.num_batches_tracked.item() == 1


def test_held_layer_copies_and_pickles_as_held():
    bn = nn.BatchNorm2d(4)
    norm.hold(bn)
    twin = copy.deepcopy(bn)
    assert norm.is_held(twin)
    twin.train()
    bn.train()
    twin(torch.randn(2, 4, 3, 3))
    assert not twin.training and bn.training  # the copy's hook acts on the copy only
    buffer = io.BytesIO()
    torch.save(bn, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert norm.is_held(loaded)


def test_frozen_layers_keep_statistics_in_train_mode():
    model = Small()
    report = fp.apply_policy(model, fp.parse("freeze *"))
    assert set(report.held_norm) == {"bn", "sync", "inorm", "bn1d"}  # `plain` has no parameters
    before = {n: stats(getattr(model, n)) for n in NORMS}
    params = {n: p.clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        out = model(X).square().mean()
        assert not out.requires_grad  # everything frozen: no graph at all
        opt.step()
    for n in ("bn", "sync", "inorm", "bn1d"):
        assert same_stats(before[n], stats(getattr(model, n))), n
        assert not getattr(model, n).training
    assert not same_stats(before["plain"], stats(model.plain))  # unmanaged: follows the model
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_resnet18_batchnorm_statistics_bit_for_bit():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    fp.apply_policy(model, fp.parse("freeze *\nunfreeze layer4, fc"))
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    before = {n: stats(m) for n, m in bns.items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(2, 3, 32, 32)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    for name, module in bns.items():
        if name.startswith("layer4"):
            assert module.training and module.num_batches_tracked.item() == 1, name
        else:
            assert same_stats(before[name], stats(module)), name
            assert module.num_batches_tracked.item() == 0


def test_unfreeze_releases_the_layer():
    model = Small()
    policy = fp.parse("freeze *\nunfreeze bn at epoch 2")
    fp.apply_policy(model, policy, epoch=0)
    assert norm.is_held(model.bn)
    model.eval()
    report = fp.apply_policy(model, policy, epoch=2)
    assert "bn" not in report.held_norm and not norm.is_held(model.bn)
    assert not model.bn.training  # takes the model's mode: eval
    fp.apply_policy(model, policy, epoch=0)
    model.train()
    fp.apply_policy(model, policy, epoch=2)
    assert model.bn.training  # the model is training: so is the released layer
    before = stats(model.bn)
    run(model, 1)
    assert not same_stats(before, stats(model.bn))


def test_stats_update_keeps_a_frozen_layer_updating():
    model = Small()
    report = fp.apply_policy(model, fp.parse("freeze *\nstats update for bn, type:SyncBatchNorm"))
    assert set(report.held_norm) == {"inorm", "bn1d"}
    before = {n: stats(getattr(model, n)) for n in NORMS}
    model.train()
    with torch.no_grad():
        model(X)
    for n in ("bn", "sync"):
        assert not same_stats(before[n], stats(getattr(model, n))), n
    for n in ("inorm", "bn1d"):
        assert same_stats(before[n], stats(getattr(model, n))), n
    assert not model.bn.weight.requires_grad  # still frozen: only the statistics move


def test_stats_freeze_holds_a_training_layer():
    model = Small()
    report = fp.apply_policy(model, fp.parse("stats freeze for bn1d"))
    assert report.held_norm == ("bn1d",)
    assert model.bn1d.weight.requires_grad
    before_stats, before_weight = stats(model.bn1d), model.bn1d.weight.detach().clone()
    run(model, 2)
    assert same_stats(before_stats, stats(model.bn1d))
    assert not torch.equal(before_weight, model.bn1d.weight)  # the affine parameters train
    assert model.bn.num_batches_tracked.item() == 2  # the others go on as usual


def test_layer_with_a_trainable_parameter_is_not_held():
    model = Small()
    report = fp.apply_policy(model, fp.parse("freeze bn.weight"))
    assert report.held_norm == ()
    run(model, 1)
    assert model.bn.num_batches_tracked.item() == 1


def test_layer_the_policy_does_not_touch_is_left_alone():
    model = Small()
    for p in model.bn.parameters():
        p.requires_grad_(False)  # frozen by the user, not by the policy
    report = fp.apply_policy(model, fp.parse("freeze fc"))
    assert "bn" not in report.held_norm and "bn1d" not in report.held_norm


def test_last_applied_stats_statement_decides_a_layer():
    model = Small()
    # Both parameters of `bn` get a stats decision; the statement applied last wins.
    report = fp.apply_policy(
        model, fp.parse("stats freeze for bn.weight\nstats update for bn.bias")
    )
    assert "bn" not in report.held_norm
    policy = fp.parse("stats freeze for bn.weight at epoch 1\nstats update for bn.bias")
    assert "bn" not in fp.apply_policy(model, policy, epoch=0).held_norm
    assert "bn" in fp.apply_policy(model, policy, epoch=1).held_norm  # later in time: wins


def test_hold_is_released_when_the_stats_statement_goes():
    model = Small()
    fp.apply_policy(model, fp.parse("stats freeze for bn"))
    model.train()
    report = fp.apply_policy(model, fp.parse("freeze fc"))
    assert report.held_norm == () and model.bn.training and not norm.is_held(model.bn)
