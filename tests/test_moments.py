"""Epochs and steps: they must agree when `steps_per_epoch` is known, a FreezeScheduler driven by
`step()` alone moves through epochs by itself, and a failed call leaves its position where it
was (issue 11, items 5 and 7)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import freezepolicy as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPE = 10
#: `at epoch 1` against a warm-up counted in steps: both clocks matter.
POLICY = fp.parse("freeze *\nunfreeze out at epoch 1\nunfreeze hidden warmup 20 steps\n")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("hidden", nn.Linear(3, 4))
    model.add_module("out", nn.Linear(4, 2))
    return model


@pytest.mark.parametrize(("epoch", "step"), [(3, 0), (0, 30), (1, 5), (2, 31)])
def test_an_epoch_and_a_step_that_disagree_are_refused(epoch: int, step: int) -> None:
    model = mlp()
    with pytest.raises(ValueError, match=f"epoch {epoch} and step {step} disagree"):
        fp.apply_policy(model, POLICY, epoch=epoch, step=step, steps_per_epoch=SPE)
    assert all(p.requires_grad for p in model.parameters())  # nothing applied


def test_what_agrees_and_what_is_derived() -> None:
    model = mlp()
    # Both ends of an epoch: its start, and after its last step (before the next one starts).
    for epoch, step in ((1, 10), (1, 15), (1, 20)):
        report = fp.apply_policy(model, POLICY, epoch=epoch, step=step, steps_per_epoch=SPE)
        assert (report.epoch, report.step) == (epoch, step)
    # One of the two is enough with steps_per_epoch.
    report = fp.apply_policy(model, POLICY, epoch=3, steps_per_epoch=SPE)
    assert (report.epoch, report.step) == (3, 30)
    report = fp.apply_policy(model, POLICY, step=25, steps_per_epoch=SPE)
    assert (report.epoch, report.step) == (2, 25)
    # Without it the clocks are independent, as before.
    report = fp.apply_policy(model, POLICY, epoch=3, step=0)
    assert (report.epoch, report.step) == (3, 0)


def test_the_warm_up_is_over_at_epoch_3_when_only_the_epoch_is_given() -> None:
    model = mlp()
    opt = torch.optim.SGD(fp.param_groups(model, POLICY, lr=0.1, steps_per_epoch=SPE))
    fp.apply_policy(model, POLICY, opt, epoch=3, steps_per_epoch=SPE)
    assert [g["lr"] for g in opt.param_groups] == [0.1] * len(opt.param_groups)


def test_step_alone_moves_through_epochs() -> None:
    """A loop that never calls start_epoch: `at epoch 1` takes effect after SPE steps."""
    model = mlp()
    fs = fp.FreezeScheduler(model, POLICY, steps_per_epoch=SPE)
    for _ in range(SPE - 1):
        fs.step()
    assert (fs.epoch, fs.global_step) == (0, SPE - 1)
    assert not model.out.weight.requires_grad
    fs.step()  # the epoch's last step: from here on, epoch 1
    assert (fs.epoch, fs.global_step) == (1, SPE)
    assert model.out.weight.requires_grad
    fs.start_epoch(1)  # calling it as well changes nothing
    assert (fs.epoch, fs.global_step) == (1, SPE)


def test_start_epoch_checks_the_steps_taken() -> None:
    model = mlp()
    fs = fp.FreezeScheduler(model, POLICY, steps_per_epoch=SPE)
    for _ in range(4):  # a loader shorter than steps_per_epoch says
        fs.step()
    with pytest.raises(ValueError, match="epoch 1 and step 4 disagree with steps_per_epoch=10"):
        fs.start_epoch(1)
    assert (fs.epoch, fs.global_step) == (0, 4)
    assert not model.out.weight.requires_grad


@pytest.mark.parametrize("epoch", [1.5, -1, True, "2", None])
def test_a_bad_epoch_leaves_the_scheduler_where_it_was(epoch: object) -> None:
    model = mlp()
    fs = fp.FreezeScheduler(model, POLICY, steps_per_epoch=SPE)
    with pytest.raises(ValueError, match="epoch must be a non-negative whole number"):
        fs.start_epoch(epoch)  # type: ignore[arg-type]
    assert (fs.epoch, fs.global_step) == (0, 0)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"epoch": -1, "step": 0}, "epoch must be a non-negative whole number, not -1"),
        ({"epoch": 2.7, "step": 27}, r"epoch must be a non-negative whole number, not 2\.7"),
        ({"epoch": 2, "step": "27"}, "step must be a non-negative whole number"),
        ({"epoch": 5, "step": 0}, "epoch 5 and step 0 disagree"),
        ({"step": 3}, "not a FreezeScheduler state"),
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(state: dict, message: str) -> None:
    model = mlp()
    fs = fp.FreezeScheduler(model, POLICY, steps_per_epoch=SPE)
    for _ in range(3):
        fs.step()
    history = list(fs.history)
    with pytest.raises(ValueError, match=message):
        fs.load_state_dict(state)
    assert (fs.epoch, fs.global_step) == (0, 3) and fs.history == history
    assert fs.state_dict()["epoch"] == 0
    with pytest.raises(TypeError, match="state must be a dict"):
        fs.load_state_dict([0, 3])  # type: ignore[arg-type]


def test_a_failing_apply_leaves_the_position_unchanged() -> None:
    """The apply at epoch 1 fails (its warning is an error here): step() and start_epoch()
    must not move the scheduler to a moment whose state was never set."""
    model = mlp()
    opt = torch.optim.SGD([model.hidden.weight, model.hidden.bias], lr=0.1)  # `out` in no group
    fs = fp.FreezeScheduler(model, POLICY, opt, steps_per_epoch=SPE)
    for _ in range(SPE - 1):
        fs.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fp.PolicyWarning)  # FP211 at epoch 1: `out` trains
        with pytest.raises(fp.PolicyWarning, match="FP211"):
            fs.step()
        assert (fs.epoch, fs.global_step) == (0, SPE - 1)
        with pytest.raises(fp.PolicyWarning, match="FP211"):
            fs.load_state_dict({"epoch": 1, "step": SPE})
        assert (fs.epoch, fs.global_step) == (0, SPE - 1)
    assert not model.out.weight.requires_grad
    with pytest.warns(
        fp.PolicyWarning, match=r"in no optimizer group .*: out\.weight, out\.bias \[FP211\]"
    ):
        fs.step()  # warnings as warnings again: it goes on from where it was
    assert (fs.epoch, fs.global_step) == (1, SPE) and model.out.weight.requires_grad
