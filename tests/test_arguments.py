"""Wrong types and values passed to apply_policy, param_groups, FreezeScheduler and the Trainer
callback get a message that says what was expected (issue 11, runtime parts of items 9, 10)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import freezepolicy as fp
from freezepolicy.integrations.hf import FreezePolicyCallback

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POLICY = fp.parse("freeze 0\nlr 0.1x for 1")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "value", [-1, -1e-9, math.nan, math.inf, -math.inf, "0.1", None, True, [0.1], 1j]
)
def test_param_groups_refuses_a_rate_a_policy_file_could_not_hold(value: object) -> None:
    kind = TypeError if not isinstance(value, (int, float)) or isinstance(value, bool) else (
        ValueError
    )
    with pytest.raises(kind, match="param_groups: lr must be"):
        fp.param_groups(mlp(), POLICY, lr=value)  # type: ignore[arg-type]
    if value is not None:  # weight_decay=None: the optimizer's own
        with pytest.raises(kind, match="param_groups: weight_decay must be"):
            fp.param_groups(mlp(), POLICY, lr=0.1, weight_decay=value)  # type: ignore[arg-type]


def test_param_groups_takes_numbers_of_any_kind() -> None:
    import numpy as np

    for lr in (0, 1, 0.5, np.float32(0.5), torch.tensor(0.5)):
        groups = fp.param_groups(mlp(), POLICY, lr=lr)  # type: ignore[arg-type]
        assert all(isinstance(g["lr"], float) for g in groups)
    with pytest.raises(ValueError, match="group_lrs: value must be 0 or more"):
        fp.group_lrs(torch.optim.SGD(groups), -1e-2)


def test_a_model_that_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, not 'resnet' \(str\)"):
        fp.apply_policy("resnet", POLICY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"the arguments are apply_policy\(model, policy"):
        fp.apply_policy(POLICY, mlp())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="param_groups: model must be"):
        fp.param_groups(None, POLICY, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FreezeScheduler: model must be"):
        fp.FreezeScheduler("resnet", POLICY)  # type: ignore[arg-type]


def test_an_optimizer_that_is_not_an_optimizer() -> None:
    model = mlp()
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer or None, "
                       r"not 'adam' \(str\): build the optimizer first"):
        fp.apply_policy(model, POLICY, "adam")  # type: ignore[arg-type]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(TypeError, match="that is a learning-rate scheduler; pass it as scheduler="):
        fp.apply_policy(model, POLICY, sched)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FreezeScheduler: optimizer must be"):
        fp.FreezeScheduler(model, POLICY, "adam")  # type: ignore[arg-type]
    assert all(p.requires_grad for p in model.parameters())


def test_an_optimizer_of_another_model_is_refused() -> None:
    model = mlp()
    other = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="holds none of the model's 4 parameters"):
        fp.apply_policy(model, POLICY, other)
    assert all(p.requires_grad for p in model.parameters())
    assert len(other.param_groups) == 1


def test_a_scheduler_of_the_wrong_kind_or_without_optimizer() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="scheduler must be a learning-rate scheduler"):
        fp.FreezeScheduler(model, POLICY, opt, scheduler="linear")
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match="a scheduler is passed but no optimizer"):
        fp.apply_policy(model, POLICY, scheduler=sched)
    # One that is not torch's but drives the optimizer (as timm's do) is accepted.

    class Custom:
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

        def step(self) -> None:
            pass

    fp.apply_policy(model, fp.parse("freeze 0"), opt, scheduler=Custom(opt))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_strict_is_a_flag(value: object) -> None:
    with pytest.raises(TypeError, match="strict must be True or False"):
        fp.apply_policy(mlp(), POLICY, strict=value)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="FreezePolicyCallback: strict must be True or False"):
        FreezePolicyCallback(POLICY, strict=value)  # type: ignore[arg-type]


def test_a_policy_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="policy must be a Policy or a path, not int"):
        fp.apply_policy(mlp(), 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="policy must be a Policy or a path"):
        FreezePolicyCallback(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("steps", [0, -3, 2.5, "10", True])
def test_steps_per_epoch_everywhere(steps: object) -> None:
    match = "steps_per_epoch must be a positive whole number"
    with pytest.raises(ValueError, match=match):
        fp.apply_policy(mlp(), POLICY, steps_per_epoch=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        fp.param_groups(mlp(), POLICY, lr=0.1, steps_per_epoch=steps)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        fp.FreezeScheduler(mlp(), POLICY, steps_per_epoch=steps)  # type: ignore[arg-type]
