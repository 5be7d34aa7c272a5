"""`param_groups`: optimizer parameter groups shaped by a policy, built before the optimizer."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..lang.policy import Policy
from .arguments import check_model, check_rate, check_steps_per_epoch
from .binding import as_policy, binding_for
from .rates import MARKER, nominal_decay, nominal_lr
from .warn import warn_once


def group_lrs(optimizer: torch.optim.Optimizer, value: float) -> list[float]:
    """`value` for the base rate, scaled to each group as the policy scales the base rate.

    For schedulers that take one value per group, such as OneCycleLR's `max_lr`:
    `OneCycleLR(opt, max_lr=group_lrs(opt, 1e-2), ...)` peaks the base group at 1e-2 and a `0.1x`
    group at 1e-3. Groups freezepolicy does not manage get `value` unchanged.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"group_lrs: optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}"
        )
    value = check_rate(value, "value", "group_lrs")
    out: list[float] = []
    for group in optimizer.param_groups:
        marker = group.get(MARKER)
        if marker is None or not marker["base_lr"]:
            out.append(value)
        else:
            out.append(value * marker["lr"] / marker["base_lr"])
    return out


def param_groups(
    model: nn.Module,
    policy: Policy | str | os.PathLike[str],
    lr: float,
    weight_decay: float | None = None,
    *,
    steps_per_epoch: int | None = None,
    **defaults: Any,
) -> list[dict[str, Any]]:
    """Parameter groups for any `torch.optim` constructor, shaped by `policy`.

    Tensors whose learning rate and weight decay agree at every moment of the policy's timeline
    share a group; every tensor of the model appears exactly once (a tied tensor once), frozen ones
    included, so a later unfreeze needs no optimizer surgery (a frozen tensor has no gradient and
    so gets no optimizer state until it trains). Groups come in model order of their first tensor,
    which makes the layout the same in every run of the same model and policy.

    `lr` and `weight_decay` are the base values that `0.1x` multiplies; `weight_decay=None` leaves
    the optimizer's default to groups the policy does not give a decay. Each group starts at the
    policy's values at epoch 0, step 0; `apply_policy(model, policy, optimizer, epoch=...)` keeps
    them and requires_grad up to date. `defaults` (betas, momentum, ...) are copied into each group.

    `lr` and `weight_decay` must be finite numbers >= 0 (as in a policy file). A selector that
    selects nothing, or a statement that never takes effect, is a `PolicyWarning`.
    """
    where = "param_groups"
    model = check_model(model, where)
    lr = check_rate(lr, "lr", where)
    if weight_decay is not None:
        weight_decay = check_rate(weight_decay, "weight_decay", where)
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch, where)
    policy = as_policy(policy)
    snap, binding = binding_for(model, policy, steps_per_epoch)
    groups: list[dict[str, Any]] = []
    for key, members in binding.groups().items():
        timeline = binding.timelines[key]
        lr_rate, wd_rate = timeline[0]
        nominal = nominal_lr(lr_rate, binding.idle[key], lr)
        decays = [nominal_decay(wd, weight_decay) for _, wd in timeline]  # validates them all
        group: dict[str, Any] = {"params": [binding.params[i] for i in members], **defaults}
        group["lr"] = nominal
        if decays[0] is not None:
            group["weight_decay"] = decays[0]
        group[MARKER] = {
            "key": key,
            "origin": 0,
            "base_lr": float(lr),
            "base_weight_decay": None if weight_decay is None else float(weight_decay),
            "lr": nominal,
            "weight_decay": decays[0],
        }
        groups.append(group)
    warn_once(snap.warned, policy.source, binding.diagnostics)
    return groups
