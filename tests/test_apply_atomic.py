"""Every check before the first change: an apply that raises leaves the model, the optimizer
and the scheduler exactly as they were (issue 11, item 4 and its siblings)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import freezepolicy as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_with_counter() -> nn.Module:
    """Two layers and an integer parameter (a step counter, as quantized layers also hold)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model.register_parameter(
        "count", nn.Parameter(torch.zeros(2, dtype=torch.long), requires_grad=False)
    )
    return model


def state_of(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple:
    flags = tuple((n, p.requires_grad) for n, p in model.named_parameters())
    groups = () if opt is None else tuple(
        (tuple(id(p) for p in g["params"]), g["lr"]) for g in opt.param_groups
    )
    return flags, groups


def test_an_integer_parameter_made_trainable_is_an_error_before_any_change() -> None:
    model = model_with_counter()
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = state_of(model, opt)
    policy = fp.parse("lr 0.5x for 1\nunfreeze *", "q.freeze")
    with pytest.raises(fp.PolicyResolveError) as error:
        fp.apply_policy(model, policy, opt)
    assert error.value.code == "FP210" and error.value.line == 2
    assert "`count` (int64)" in str(error.value) and "floating-point" in str(error.value)
    assert state_of(model, opt) == before  # no flag set, the optimizer not reshaped
    # The same from param_groups, and from a FreezeScheduler.
    with pytest.raises(fp.PolicyResolveError, match="FP210"):
        fp.param_groups(model, policy, lr=0.1)
    with pytest.raises(fp.PolicyResolveError, match="FP210"):
        fp.FreezeScheduler(model, policy, opt)
    assert state_of(model, opt) == before
    # Left out, it applies.
    fp.apply_policy(model, fp.parse("unfreeze * except count"), opt)
    assert model[0].weight.requires_grad and not model.count.requires_grad


def test_a_later_unfreeze_of_an_integer_parameter_fails_at_the_start() -> None:
    model = model_with_counter()
    with pytest.raises(fp.PolicyResolveError, match=r"FP210[\s\S]*unfreeze \* at epoch 5"):
        fp.apply_policy(model, fp.parse("freeze *\nunfreeze * at epoch 5"), epoch=0)
    assert all(p.requires_grad for p in model.parameters() if p.is_floating_point())


def test_a_tensor_changed_in_place_after_binding_is_checked_at_the_apply() -> None:
    """The timeline check runs once per model and policy; each apply checks again what it sets
    (here a dtype changed in place, which keeps the tensor and so the binding)."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    policy = fp.parse("freeze 1\nunfreeze * at epoch 1")
    fp.apply_policy(model, policy)
    model[1].bias.data = torch.zeros(2, dtype=torch.long)
    with pytest.raises(fp.PolicyResolveError, match=r"`1\.bias` \(int64\)"):
        fp.apply_policy(model, policy, epoch=1)
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]


def test_a_tensor_changed_after_param_groups_bound_the_policy_is_checked_at_the_apply() -> None:
    """param_groups binds the policy first; what that binding found of the tensors' dtypes is
    not reused by the first apply after the change."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    policy = fp.parse("freeze 1\nunfreeze * at epoch 1")
    fp.param_groups(model, policy, lr=0.1)
    model[1].bias.requires_grad_(False)  # torch allows integer data only on a frozen tensor
    model[1].bias.data = torch.zeros(2, dtype=torch.long)
    with pytest.raises(fp.PolicyResolveError, match=r"`1\.bias` \(int64\)"):
        fp.apply_policy(model, policy, epoch=1)
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, False]


def test_freezing_a_non_leaf_parameter_is_an_error_before_any_change() -> None:
    model = nn.Linear(2, 2)
    # A computed tensor in a parameter slot (reparametrization done by hand).
    model._parameters["scale"] = torch.ones(2, requires_grad=True) * 2
    opt = torch.optim.SGD([model.weight, model.bias], lr=0.1)
    before = state_of(model, opt)
    with pytest.raises(fp.PolicyResolveError) as error:
        fp.apply_policy(model, fp.parse("freeze *"), opt)
    assert error.value.code == "FP210" and "`scale`" in str(error.value)
    assert "not a leaf" in str(error.value)
    assert state_of(model, opt) == before
    # `scale` stays trainable, and the optimizer never held it.
    with pytest.warns(fp.PolicyWarning, match=r"no optimizer group .*: scale \[FP211\]"):
        fp.apply_policy(model, fp.parse("freeze * except scale"), opt)
    assert not model.weight.requires_grad


def test_a_warning_turned_into_an_error_stops_the_apply_before_any_change() -> None:
    model = model_with_counter()
    opt = torch.optim.SGD([model[0].weight], lr=0.1)  # model[1] is in no group: FP211
    before = state_of(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fp.PolicyWarning)
        with pytest.raises(fp.PolicyWarning) as caught:
            fp.apply_policy(model, fp.parse("lr 0.1x for 0\nunfreeze 1"), opt)
    assert caught.value.code == "FP211"
    assert state_of(model, opt) == before


def test_a_wrong_scheduler_is_refused_before_any_change() -> None:
    model = model_with_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = state_of(model, opt)
    for scheduler in ("cosine", opt, [torch.optim.lr_scheduler.StepLR(opt, 1), 3]):
        with pytest.raises(TypeError, match="scheduler must be a learning-rate scheduler"):
            fp.apply_policy(model, fp.parse("freeze 0\nlr 0.1x for 1"), opt, scheduler=scheduler)
    assert state_of(model, opt) == before


def test_an_optimizer_group_without_a_numeric_rate_is_refused_before_any_change() -> None:
    transformers = pytest.importorskip("transformers")
    model = model_with_counter()
    opt = transformers.optimization.Adafactor(
        [p for p in model.parameters() if p.is_floating_point()], lr=None, relative_step=True
    )
    before = state_of(model, opt)
    with pytest.raises(ValueError, match="lr=None"):
        fp.apply_policy(model, fp.parse("freeze 0\nlr 0.1x for 1"), opt)
    assert state_of(model, opt) == before
