"""Optimizer integration: param_groups, reshaping a user's optimizer, rates over time, schedulers,
and checkpoints."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
from model_factories import tiny_bert_config
from torch import nn

import freezepolicy as fp
from freezepolicy.runtime.groups import group_lrs
from freezepolicy.runtime.rates import MARKER

X = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(self.norm(torch.relu(self.fc1(x))))))


@pytest.fixture
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def step(model: nn.Module, opt: torch.optim.Optimizer, sched=None) -> None:
    opt.zero_grad()
    model(X).square().mean().backward()
    opt.step()
    if sched is not None:
        sched.step()


def by_name(model: nn.Module, groups: list[dict]) -> dict[str, int]:
    """Parameter name -> index of the group that holds it (each must appear exactly once)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for p in g["params"]:
            name = ids[id(p)]
            assert name not in out, f"{name} in two groups"
            out[name] = gi
    assert set(out) == set(ids.values()), "some parameter is in no group"
    return out


# --- param_groups -------------------------------------------------------------------------------


def test_param_groups_share_by_settings_over_the_whole_timeline(mlp):
    policy = fp.parse(
        "freeze *\nunfreeze out\nlr 0.1x for fc1, fc2\ndecay 0 for bias, norm\n"
        "unfreeze fc2 at epoch 2\nlr 0.5x for fc2 at epoch 4"
    )
    groups = fp.param_groups(mlp, policy, lr=0.1, weight_decay=0.01, momentum=0.9)
    where = by_name(mlp, groups)
    # fc1 and fc2 share their lr until epoch 4 only: different timelines, different groups.
    assert where["fc1.weight"] != where["fc2.weight"]
    assert where["fc1.bias"] != where["fc1.weight"]  # decay differs
    assert where["norm.weight"] == where["norm.bias"] == where["out.bias"]
    assert where["out.weight"] != where["out.bias"]
    assert where["fc2.bias"] not in (where["fc2.weight"], where["fc1.bias"])
    assert len(groups) == 6  # fc1.w, fc1.b, fc2.w, fc2.b, out.w, {norm.*, out.b}
    lrs = {n: groups[gi]["lr"] for n, gi in where.items()}
    decays = {n: groups[gi]["weight_decay"] for n, gi in where.items()}
    assert lrs["fc1.weight"] == pytest.approx(0.01) and lrs["out.weight"] == 0.1
    assert lrs["fc2.weight"] == pytest.approx(0.01)  # its rate at epoch 0
    assert decays["fc1.weight"] == 0.01 and decays["fc1.bias"] == 0 and decays["norm.weight"] == 0
    assert all(g["momentum"] == 0.9 and MARKER in g for g in groups)
    # Deterministic: the same model and policy give the same layout.
    again = fp.param_groups(copy.deepcopy(mlp), policy, lr=0.1, weight_decay=0.01, momentum=0.9)
    assert [(g[MARKER]["key"], len(g["params"])) for g in again] == [
        (g[MARKER]["key"], len(g["params"])) for g in groups
    ]


def test_param_groups_without_base_decay_leave_the_optimizers_default(mlp):
    groups = fp.param_groups(mlp, fp.parse("decay 0 for bias"), lr=1e-3)
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0, 0.05]
    with pytest.raises(ValueError, match="weight_decay="):
        fp.param_groups(mlp, fp.parse("decay 0.5x for bias"), lr=1e-3)


def test_tied_tensor_appears_once():
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForMaskedLM(tiny_bert_config())
    groups = fp.param_groups(model, fp.parse("lr 0.1x for cls\ndecay 0 for bias"), lr=1e-3)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups)  # torch itself refuses a tensor in two groups
    # Decided under its decoder name, the tied word embedding sits in the 0.1x group.
    emb = model.bert.embeddings.word_embeddings.weight
    assert next(g for g in opt.param_groups if any(p is emb for p in g["params"]))["lr"] == 1e-4


def test_frozen_parameters_are_included_and_hold_no_state(mlp):
    policy = fp.parse("freeze *\nunfreeze out\nunfreeze fc2 at epoch 1")
    opt = torch.optim.AdamW(fp.param_groups(mlp, policy, lr=1e-2, weight_decay=0.1))
    layout = [list(g["params"]) for g in opt.param_groups]
    fp.apply_policy(mlp, policy, opt, epoch=0)
    for _ in range(2):
        step(mlp, opt)
    assert {id(p) for p in opt.state} == {id(mlp.out.weight), id(mlp.out.bias)}
    before = mlp.fc2.weight.detach().clone()
    report = fp.apply_policy(mlp, policy, opt, epoch=1)
    assert report.changed
    assert [list(g["params"]) for g in opt.param_groups] == layout  # no surgery
    step(mlp, opt)
    assert mlp.fc2.weight in opt.state and not torch.equal(before, mlp.fc2.weight)


# --- a user's optimizer -----------------------------------------------------------------------


def test_reshape_keeps_state_and_hyperparameters(mlp):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    step(mlp, opt)
    momentum = {p: opt.state[p]["momentum_buffer"].clone() for p in mlp.parameters()}
    policy = fp.parse("lr 0.1x for fc1\nlr 1e-4 for out\ndecay 0 for bias")
    report = fp.apply_policy(mlp, policy, opt)
    where = by_name(mlp, opt.param_groups)
    # (lr, decay): fc1.w, fc1.b, out.w, out.b, {norm.w, fc2.w}, {norm.b, fc2.b}
    assert len(opt.param_groups) == 6 and len(report.groups) == 6
    assert where["norm.weight"] == where["fc2.weight"] and where["norm.bias"] == where["fc2.bias"]
    lr = {n: opt.param_groups[gi]["lr"] for n, gi in where.items()}
    assert lr["fc1.weight"] == pytest.approx(0.01) and lr["out.weight"] == 1e-4
    assert lr["fc2.weight"] == 0.1 and lr["norm.weight"] == 0.1
    assert opt.param_groups[where["fc2.bias"]]["weight_decay"] == 0
    assert opt.param_groups[where["fc2.weight"]]["weight_decay"] == 1e-3
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["nesterov"] is True
        assert g[MARKER]["base_lr"] == 0.1 and g[MARKER]["base_weight_decay"] == 1e-3
    for p, buf in momentum.items():
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)
    step(mlp, opt)  # the reshaped optimizer steps


def test_reshape_keeps_the_users_groups_and_foreign_tensors(mlp):
    extra = nn.Parameter(torch.zeros(3))  # e.g. a loss module's parameter, not the model's
    decay = [p for n, p in mlp.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in mlp.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay + [extra], "weight_decay": 0.0, "lr": 1e-2},
        ],
        lr=1e-3,
    )
    fp.apply_policy(mlp, fp.parse("lr 0.1x for out"), opt)
    where = by_name(mlp, [g for g in opt.param_groups if MARKER in g])
    groups = opt.param_groups
    assert groups[where["out.weight"]]["lr"] == pytest.approx(1e-4)
    assert groups[where["out.bias"]]["lr"] == pytest.approx(1e-3)  # 0.1x of its own group
    assert groups[where["fc1.bias"]]["weight_decay"] == 0.0
    foreign = [g for g in groups if MARKER not in g]
    assert len(foreign) == 1 and foreign[0]["params"] == [extra] and foreign[0]["lr"] == 1e-2
    # Applying again recognises the layout; a changed policy reshapes from the markers.
    assert not fp.apply_policy(mlp, fp.parse("lr 0.1x for out"), opt).changed
    fp.apply_policy(mlp, fp.parse("lr 0.5x for fc1"), opt)
    where = by_name(mlp, [g for g in opt.param_groups if MARKER in g])
    assert opt.param_groups[where["out.weight"]]["lr"] == pytest.approx(1e-3)
    assert opt.param_groups[where["fc1.weight"]]["lr"] == pytest.approx(5e-4)
    assert opt.param_groups[where["fc1.bias"]]["lr"] == pytest.approx(5e-3)


def test_scheduler_built_first_is_fine_when_no_group_must_split(mlp):
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    step(mlp, opt, sched)
    scheduled = opt.param_groups[0]["lr"]
    policy = fp.parse("freeze *\nunfreeze out\nunfreeze fc2 at epoch 1")
    report = fp.apply_policy(mlp, policy, opt, epoch=0)
    assert len(opt.param_groups) == 1 and MARKER in opt.param_groups[0]
    assert opt.param_groups[0]["lr"] == scheduled and not report.warnings
    assert opt.param_groups[0][MARKER]["base_lr"] == 1e-2  # its initial_lr
    step(mlp, opt, sched)
    fp.apply_policy(mlp, policy, opt, epoch=1)
    step(mlp, opt, sched)
    curve = 1e-2 * (1 + math.cos(math.pi * 3 / 4)) / 2
    assert math.isclose(opt.param_groups[0]["lr"], curve, rel_tol=1e-9)


def test_reshape_keeps_parameter_names(mlp):
    opt = torch.optim.SGD(mlp.named_parameters(), lr=0.1)
    fp.apply_policy(mlp, fp.parse("lr 0.1x for out"), opt)
    params = dict(mlp.named_parameters())
    for g in opt.param_groups:
        assert [params[n] for n in g["param_names"]] == g["params"]
    assert opt.state_dict()["param_groups"][0]["param_names"]


def test_later_applies_update_rates(mlp):
    policy = fp.parse("lr 0.1x for out at epoch 2\ndecay 0 for out at epoch 3")
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.1)
    fp.apply_policy(mlp, policy, opt, epoch=0)
    out = by_name(mlp, opt.param_groups)["out.weight"]
    seen = []
    for epoch in (0, 2, 3, 0):
        fp.apply_policy(mlp, policy, opt, epoch=epoch)
        g = opt.param_groups[out]
        seen.append((round(g["lr"], 12), g["weight_decay"]))
    assert seen == [(1e-3, 0.1), (1e-4, 0.1), (1e-4, 0.0), (1e-3, 0.1)]


def test_warns_when_the_optimizer_has_no_weight_decay(mlp):
    opt = torch.optim.Rprop(mlp.parameters(), lr=0.01)
    with pytest.warns(fp.PolicyWarning, match=r"Rprop has no weight_decay \[FP212\]"):
        report = fp.apply_policy(mlp, fp.parse("decay 0 for bias"), opt)
    assert any("Rprop has no weight_decay" in w for w in report.warnings)
    with pytest.raises(ValueError, match="no base weight decay"):
        fp.apply_policy(mlp, fp.parse("decay 0.5x for bias"), torch.optim.Rprop(mlp.parameters()))


def test_warns_about_trainable_parameters_outside_the_optimizer(mlp):
    opt = torch.optim.SGD(mlp.out.parameters(), lr=0.1)
    with pytest.warns(
        fp.PolicyWarning,
        match=r"4 trainable parameter\(s\) are in no optimizer group and will not be updated: "
        r"norm\.weight, norm\.bias, fc2\.weight, fc2\.bias \[FP211\]",
    ):
        report = fp.apply_policy(mlp, fp.parse("freeze fc1"), opt)
    assert any("are in no optimizer group" in w for w in report.warnings)
    assert "norm.weight" in str(report)


# --- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_of_the_same_policy_loads_and_resumes(mlp):
    policy = fp.parse("freeze *\nunfreeze out\nlr 0.1x for fc2\nunfreeze fc2 at epoch 1")
    opt = torch.optim.AdamW(fp.param_groups(mlp, policy, lr=1e-2, weight_decay=0.1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for epoch in range(3):
        fp.apply_policy(mlp, policy, opt, epoch=epoch)
        step(mlp, opt, sched)
    buffer = io.BytesIO()
    torch.save(
        {"model": mlp.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer)  # weights_only: the marker is plain data

    torch.manual_seed(1)
    fresh = MLP()
    fresh.load_state_dict(checkpoint["model"])
    opt2 = torch.optim.AdamW(fp.param_groups(fresh, policy, lr=1e-2, weight_decay=0.1))
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=10)
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    report = fp.apply_policy(fresh, policy, opt2, epoch=3)
    fp.apply_policy(mlp, policy, opt, epoch=3)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert report.trainable == fp.apply_policy(mlp, policy, opt, epoch=3).trainable
    step(mlp, opt, sched)
    step(fresh, opt2, sched2)
    for (n, a), b in zip(mlp.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), n


# --- schedulers -------------------------------------------------------------------------------


def lrs_by_name(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float]:
    where = by_name(model, opt.param_groups)
    return {n: opt.param_groups[gi]["lr"] for n, gi in where.items()}


def fp213_warning() -> pytest.WarningsRecorder:
    """Expects the warning about a rate change under an attached scheduler not passed in."""
    return pytest.warns(
        fp.PolicyWarning,
        match=r"changed learning rates of an optimizer with a scheduler attached: pass the "
        r"scheduler as apply_policy\(\.\.\., scheduler=\.\.\.\) .*\[FP213\]",
    )


def test_cosine_factor_applies_on_top_of_policy_rates(mlp):
    policy = fp.parse("lr 0.1x for fc1\nlr 0.5x for out at step 6")
    opt = torch.optim.SGD(fp.param_groups(mlp, policy, lr=0.2), momentum=0.9)
    fp.apply_policy(mlp, policy, opt, step=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    for t in range(12):
        # The change at step 6 is made under an attached scheduler that was not passed: FP213
        # says so (CosineAnnealingLR follows the group's rate, so here it need not be).
        with fp213_warning() if t == 6 else contextlib.nullcontext():
            fp.apply_policy(mlp, policy, opt, step=t)
        lr = lrs_by_name(mlp, opt)
        curve = 0.2 * (1 + math.cos(math.pi * t / 12)) / 2  # the base group's closed form
        assert math.isclose(lr["fc2.weight"], curve, rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(lr["fc1.weight"], 0.1 * curve, rel_tol=1e-9, abs_tol=1e-15)
        expected_out = 0.5 * curve if t >= 6 else curve  # the change keeps the current factor
        assert math.isclose(lr["out.weight"], expected_out, rel_tol=1e-9, abs_tol=1e-15)
        step(mlp, opt, sched)


def test_one_cycle_with_per_group_max_lr(mlp):
    policy = fp.parse("lr 0.1x for fc1\nlr 0.25x for out at step 4")
    opt = torch.optim.AdamW(fp.param_groups(mlp, policy, lr=1e-3, weight_decay=0.01))
    fp.apply_policy(mlp, policy, opt, step=0)
    # Groups: fc1 (0.1x), out (1x, then 0.25x from step 4), the rest (1x).
    assert sorted(group_lrs(opt, 1.0)) == [pytest.approx(0.1), 1.0, 1.0]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=group_lrs(opt, 1e-2), total_steps=10)
    reference_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=1e-2, total_steps=10)
    for t in range(10):
        # As above: the change at step 4, under OneCycleLR not passed, is told once (FP213).
        with fp213_warning() if t == 4 else contextlib.nullcontext():
            fp.apply_policy(mlp, policy, opt, step=t)
        lr = lrs_by_name(mlp, opt)
        curve = reference_opt.param_groups[0]["lr"]
        assert math.isclose(lr["fc2.weight"], curve, rel_tol=1e-9)
        assert math.isclose(lr["fc1.weight"], 0.1 * curve, rel_tol=1e-9)
        assert math.isclose(lr["out.weight"], (0.25 if t >= 4 else 1) * curve, rel_tol=1e-9)
        step(mlp, opt, sched)
        reference_opt.step()
        reference.step()


def test_lambda_lr_follows_rate_changes_when_passed(mlp):
    policy = fp.parse("lr 0.1x for out at step 2")
    opt = torch.optim.SGD(fp.param_groups(mlp, policy, lr=0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
    out = by_name(mlp, opt.param_groups)["out.weight"]
    for t in range(5):
        report = fp.apply_policy(mlp, policy, opt, step=t, scheduler=sched)
        assert not report.warnings
        expected = 0.1 * (0.1 if t >= 2 else 1) / (1 + t)
        assert math.isclose(opt.param_groups[out]["lr"], expected, rel_tol=1e-9)
        step(mlp, opt, sched)
    # Without the scheduler, the report says that LambdaLR would undo the change.
    opt = torch.optim.SGD(fp.param_groups(mlp, policy, lr=0.1))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    fp.apply_policy(mlp, policy, opt, step=0)
    with fp213_warning():
        report = fp.apply_policy(mlp, policy, opt, step=2)
    assert any("scheduler=" in w for w in report.warnings)


def test_scheduler_that_does_not_fit_is_refused(mlp):
    opt = torch.optim.SGD(fp.param_groups(mlp, fp.parse("lr 0.1x for out"), lr=0.1))
    other = torch.optim.SGD(mlp.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(other, step_size=1)
    with pytest.raises(ValueError, match="another optimizer"):
        fp.apply_policy(mlp, fp.parse("lr 0.1x for out"), opt, scheduler=sched)
    with pytest.raises(ValueError, match="no optimizer"):
        fp.apply_policy(mlp, fp.parse("lr 0.1x for out"), scheduler=sched)


def test_tensor_learning_rates_are_split_not_shared(mlp):
    opt = torch.optim.Adam(mlp.parameters(), lr=torch.tensor(0.01), foreach=False)
    policy = fp.parse("lr 0.1x for out at epoch 1")
    fp.apply_policy(mlp, policy, opt, epoch=0)
    lrs = [g["lr"] for g in opt.param_groups]
    assert all(torch.is_tensor(lr) for lr in lrs) and len({id(lr) for lr in lrs}) == len(lrs)
    fp.apply_policy(mlp, policy, opt, epoch=1)
    lr = lrs_by_name(mlp, opt)
    # float32 tensors: equal to float32 precision
    assert lr["out.weight"].item() == pytest.approx(1e-3, rel=1e-6)
    assert lr["fc1.weight"].item() == pytest.approx(0.01, rel=1e-6)
    step(mlp, opt)
