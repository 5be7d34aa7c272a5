"""Which tensors a policy trains at some moment, and whether an optimizer holds them.

Framework integrations check this once, before training starts: a tensor that was frozen when
the framework built its optimizer (many build it over `requires_grad` tensors only) and that the
policy unfreezes later would never be updated. `apply_policy` only warns at the moment it happens,
since another optimizer may own such a tensor; inside a framework there is no other optimizer.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..lang.policy import Policy
from .binding import Binding, ModelSnapshot, binding_for


def ever_trainable(snap: ModelSnapshot, binding: Binding) -> list[int]:
    """Indices (in the binding) of the tensors the policy makes trainable at some moment; a tensor
    no statement decides counts as the model had it before freezepolicy changed it."""
    out: set[int] = set()
    for epoch, step, fired in binding.moments:
        for i, decision in enumerate(binding.merged(epoch, step, fired)):
            trainable = decision.trainable
            if trainable is None:  # untouched: as the model had it before freezepolicy
                trainable = snap.original(binding.params[i])
            if trainable:
                out.add(i)
    return sorted(out)


def trainable_outside(
    model: nn.Module,
    policy: Policy | str | os.PathLike[str],
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None,
) -> list[str]:
    """Names of the tensors the policy trains at some moment that are in no group of
    `optimizer`, in model order."""
    snap, binding = binding_for(model, policy, steps_per_epoch)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    return [
        binding.names[i]
        for i in ever_trainable(snap, binding)
        if id(binding.params[i]) not in held
    ]


def require_covered(
    model: nn.Module,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int | None,
    *,
    optimizer_is: str,
    advice: str,
) -> None:
    """Raise ValueError, naming the first few, when `optimizer` lacks tensors the policy trains
    at some moment. The message reads "<policy>: the policy trains N parameter(s) that are in no
    group of <optimizer_is> (names)<advice>"."""
    missing = trainable_outside(model, policy, optimizer, steps_per_epoch)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{policy.source}: the policy trains {len(missing)} parameter(s) that are in no "
            f"group of {optimizer_is} ({shown}){advice}"
        )
