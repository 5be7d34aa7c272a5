"""Schedules in the language (gradual unfreezing with `then ... every`, warm-ups) and in a
training loop (FreezeScheduler with an optimizer built from param_groups)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import freezepolicy
from freezepolicy.lang.checks import check_names
from freezepolicy.lang.nodes import Duration, NamePattern, When

NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trainable(policy: freezepolicy.Policy, **moment) -> set[str]:
    return {n for n, d in policy.resolve(NAMES, **moment).items() if d.trainable}


# --- the language ------------------------------------------------------------------------------


def test_gradual_statement_parses_into_groups() -> None:
    policy = freezepolicy.parse(
        "unfreeze out then fc2 then fc1, fc2 at epoch 1 every 2 epochs warmup 1 epoch"
    )
    (st,) = policy.statements
    assert [tuple(str(s) for s in g) for g in st.selection.groups] == [
        ("out",),
        ("fc2",),
        ("fc1", "fc2"),
    ]
    assert st.when == When("epoch", 1)
    assert st.every == Duration(2, "epoch")
    assert st.warmup == Duration(1, "epoch")
    starts = [(r.group, r.start) for r in policy.rules]
    assert starts == [(0, When("epoch", 1)), (1, When("epoch", 3)), (2, When("epoch", 5))]
    assert policy.events() == [("epoch", 1), ("epoch", 3), ("epoch", 5)]


def test_canonical_form_of_schedules() -> None:
    text = "unfreeze  out then fc2  every epoch warmup 10 STEPS".replace("STEPS", "steps")
    assert freezepolicy.parse(text).format() == (
        "unfreeze out then fc2 every 1 epoch warmup 10 steps\n"
    )
    # Plural or singular, the same clock; printed by count.
    assert freezepolicy.parse("unfreeze a then b at epochs 2 every 3 epoch").format() == (
        "unfreeze a then b at epoch 2 every 3 epochs\n"
    )


def test_gradual_unfreezing_from_the_top() -> None:
    """ULMFiT: the head trains from the start, then one group after another joins, every 2
    epochs, from the top; `except` applies to every group."""
    policy = freezepolicy.parse(
        "freeze *\nunfreeze out\nunfreeze fc2 then fc1 except bias at epoch 2 every 2 epochs"
    )
    assert trainable(policy, epoch=0) == {"out.weight", "out.bias"}
    assert trainable(policy, epoch=1) == {"out.weight", "out.bias"}
    assert trainable(policy, epoch=2) == {"out.weight", "out.bias", "fc2.weight"}
    assert trainable(policy, epoch=3) == {"out.weight", "out.bias", "fc2.weight"}
    assert trainable(policy, epoch=4) == {"out.weight", "out.bias", "fc2.weight", "fc1.weight"}
    decision = policy.resolve(NAMES, epoch=4)["fc1.weight"]
    assert decision.line == 3


def test_gradual_without_at_starts_with_the_first_group() -> None:
    policy = freezepolicy.parse("freeze *\nunfreeze out then fc2 every 3 steps")
    assert trainable(policy, step=0) == {"out.weight", "out.bias"}
    assert trainable(policy, step=2) == {"out.weight", "out.bias"}
    assert trainable(policy, step=3) == {"out.weight", "out.bias", "fc2.weight", "fc2.bias"}


def test_warmup_ramps_the_rate_of_what_is_unfrozen() -> None:
    policy = freezepolicy.parse("freeze *\nunfreeze fc1 at epoch 1 warmup 1 epoch")
    # With steps per epoch known, the ramp moves every step: 1/4, 2/4, 3/4, then the full rate.
    factors = []
    for step in range(4, 9):
        d = policy.resolve(NAMES, epoch=1, step=step, steps_per_epoch=4)["fc1.weight"]
        assert d.trainable is True
        factors.append((d.lr.value if d.lr else 1.0, d.lr.relative if d.lr else True, d.warmup))
    assert factors == [
        (0.25, True, 0.25),
        (0.5, True, 0.5),
        (0.75, True, 0.75),
        (1.0, True, None),
        (1.0, True, None),
    ]
    # Parameters the warm-up does not decide keep no rate of their own.
    assert policy.resolve(NAMES, epoch=1, step=4, steps_per_epoch=4)["out.weight"].lr is None


def test_warmup_scales_an_absolute_rate_and_per_epoch_without_steps() -> None:
    policy = freezepolicy.parse("lr 1e-3 for out at epoch 2 warmup 2 epochs")
    rates = [policy.resolve(NAMES, epoch=e)["out.weight"].lr for e in (2, 3, 4)]
    assert [(r.value, r.relative) for r in rates] == [(0.5e-3, False), (1e-3, False), (1e-3, False)]


def test_warmup_in_steps_after_an_epoch_needs_steps_per_epoch() -> None:
    text = "freeze fc1\nunfreeze fc1 at epoch 1 warmup 10 steps"
    policy = freezepolicy.parse(text, source="w.freeze")
    with pytest.raises(freezepolicy.PolicyResolveError) as info:
        policy.resolve(NAMES, epoch=1, step=3)
    assert info.value.code == "FP207"
    assert str(info.value).startswith("w.freeze:2:25: ")  # at `warmup`
    d = policy.resolve(NAMES, epoch=1, step=13, steps_per_epoch=10)["fc1.weight"]
    assert d.lr == freezepolicy.Rate(0.4, relative=True)


def test_an_unfreeze_warmup_ramps_only_what_it_turns_from_frozen_to_trainable() -> None:
    # fc2 and out trained all along (out untouched, fc2 unfrozen at the start): only fc1, which
    # the statement unfreezes, ramps; the others keep their rate at epoch 2 (issue 13 item 6).
    policy = freezepolicy.parse(
        "freeze * except out\nunfreeze fc2\nunfreeze * at epoch 2 warmup 2 epochs"
    )
    at = {e: policy.resolve(NAMES, epoch=e) for e in (1, 2, 3)}
    assert at[2]["fc1.weight"].lr == freezepolicy.Rate(0.5, relative=True)
    assert at[2]["fc1.weight"].warmup == 0.5
    assert at[2]["fc2.weight"].lr is None and at[2]["out.weight"].lr is None
    assert all(d.lr is None for d in at[3].values())
    # Applied to an optimizer: the trained-all-along groups keep the base rate through epoch 2.
    model = nn.ModuleDict({n: nn.Linear(2, 2) for n in ("fc1", "fc2", "out")})
    groups = freezepolicy.param_groups(model, policy, lr=0.1)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    rates = {}
    for epoch in (1, 2, 3):
        freezepolicy.apply_policy(model, policy, optimizer, epoch=epoch)
        rates[epoch] = {
            n: g["lr"]
            for g in optimizer.param_groups
            for n, p in model.named_parameters()
            if any(p is q for q in g["params"])
        }
    assert rates[2]["fc1.weight"] == pytest.approx(0.05) and rates[3]["fc1.weight"] == 0.1
    assert {rates[e]["out.weight"] for e in (1, 2, 3)} == {0.1}
    assert {rates[e]["fc2.weight"] for e in (1, 2, 3)} == {0.1}


def test_lr_zero_is_not_warmed_up() -> None:
    policy = freezepolicy.parse("lr 0 for fc1\nunfreeze fc1 at epoch 1 warmup 2 epochs")
    d = policy.resolve(NAMES, epoch=1)["fc1.weight"]
    assert d.trainable is False and d.lr == freezepolicy.Rate(0.0)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("unfreeze a then b", "FP130"),
        ("unfreeze a every 2 epochs", "FP131"),
        ("freeze a warmup 2 epochs", "FP132"),
        ("decay 0 for a warmup 2 epochs", "FP132"),
        ("unfreeze a then b at step 3 every 2 epochs", "FP133"),
        ("unfreeze a then b every 0 epochs", "FP105"),
        ("unfreeze a warmup 0 steps", "FP105"),
        ("unfreeze a warmup epochs", "FP104"),
        ("freeze then", "FP108"),
        ("unfreeze a then", "FP102"),
    ],
)
def test_schedule_errors(text: str, code: str) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(text)
    assert info.value.code == code


def test_lint_sees_every_group_of_a_gradual_statement() -> None:
    policy = freezepolicy.parse("freeze *\nunfreeze out then fc9 every 2 epochs")
    found = check_names(policy, NAMES)
    assert [(d.code, d.line, d.column) for d in found] == [("FP201", 2, 19)]
    # A gradual statement whose groups all take effect is not reported as dead.
    policy = freezepolicy.parse("freeze *\nunfreeze out then fc2 then fc1 every 2 epochs")
    assert check_names(policy, NAMES) == []


def test_keywords_of_schedules_may_not_be_selectors_but_other_words_may() -> None:
    (st,) = freezepolicy.parse("freeze stats, step").statements
    assert st.selection.include == (NamePattern("stats"), NamePattern("step"))


# --- in a training loop ------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _group_lr(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return float(group["lr"])


def test_training_loop_with_gradual_unfreezing_and_warmup() -> None:
    torch.manual_seed(0)
    model = MLP()
    policy = freezepolicy.parse(
        "freeze * except out\nunfreeze fc2 then fc1 at epoch 1 every 1 epoch warmup 1 epoch"
    )
    steps_per_epoch = 4
    optimizer = torch.optim.SGD(
        freezepolicy.param_groups(model, policy, lr=0.1, steps_per_epoch=steps_per_epoch),
        lr=0.1,
    )
    fs = freezepolicy.FreezeScheduler(model, policy, optimizer, steps_per_epoch=steps_per_epoch)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    lrs: dict[str, list[float]] = {"fc2": [], "fc1": []}
    moved_by_epoch = []
    for epoch in range(3):
        fs.start_epoch(epoch)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for b in range(steps_per_epoch):
            lrs["fc2"].append(_group_lr(optimizer, model.fc2.weight))
            lrs["fc1"].append(_group_lr(optimizer, model.fc1.weight))
            loss = nn.functional.cross_entropy(model(x[b * 4 : b * 4 + 4]), y[b * 4 : b * 4 + 4])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            fs.step()
        moved_by_epoch.append(
            {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        )
    assert moved_by_epoch == [{"out"}, {"out", "fc2"}, {"out", "fc2", "fc1"}]
    # Each group's rate ramps over the epoch it is unfrozen in (lr of frozen groups unused).
    assert lrs["fc2"][4:12] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert lrs["fc1"][8:12] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert not torch.equal(start["fc1.weight"], model.fc1.weight)
    # One phase per change of the trainable set: the start, then each unfreeze (the warm-up
    # changes rates at every step, which is not a new phase).
    assert [(r.epoch, r.step) for r in fs.history] == [(0, 0), (1, 4), (2, 8)]


def test_scheduler_state_round_trip_restores_the_same_state() -> None:
    torch.manual_seed(0)
    policy = freezepolicy.parse("freeze * except out\nunfreeze fc1 at step 5 warmup 4 steps")
    model = MLP()
    opt = torch.optim.SGD(freezepolicy.param_groups(model, policy, lr=0.1), lr=0.1)
    fs = freezepolicy.FreezeScheduler(model, policy, opt)
    for _ in range(6):
        fs.step()
    saved = fs.state_dict()
    assert saved["step"] == 6
    lr_at_6 = _group_lr(opt, model.fc1.weight)
    assert lr_at_6 == pytest.approx(0.05)

    fresh = MLP()
    fresh.load_state_dict(model.state_dict())
    opt2 = torch.optim.SGD(freezepolicy.param_groups(fresh, policy, lr=0.1), lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    fs2 = freezepolicy.FreezeScheduler(fresh, policy, opt2)
    fs2.load_state_dict(saved)
    assert fresh.fc1.weight.requires_grad and not fresh.fc2.weight.requires_grad
    assert _group_lr(opt2, fresh.fc1.weight) == pytest.approx(lr_at_6)


def test_resuming_with_an_edited_policy_warns_and_history_restarts() -> None:
    model = MLP()
    policy = freezepolicy.parse("freeze *\nunfreeze out\nunfreeze fc1 at step 3")
    fs = freezepolicy.FreezeScheduler(model, policy)
    for _ in range(4):
        fs.step()
    saved = fs.state_dict()
    # Same statements, other layout and comments: no warning, and history restarts at the
    # loaded position.
    same = freezepolicy.parse("# comment\nfreeze *;  unfreeze out\nunfreeze fc1 at step 3\n")
    fs2 = freezepolicy.FreezeScheduler(MLP(), same)
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        fs2.load_state_dict(saved)
    assert [(r.epoch, r.step) for r in fs2.history] == [(0, 4)]
    edited = freezepolicy.parse("freeze *\nunfreeze out\nunfreeze fc2 at step 3")
    fs3 = freezepolicy.FreezeScheduler(MLP(), edited)
    with pytest.warns(UserWarning, match="changed since this checkpoint"):
        fs3.load_state_dict(saved)
