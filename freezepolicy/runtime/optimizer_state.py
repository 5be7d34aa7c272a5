"""Optimizer state across freezes and unfreezes, for every optimizer in `torch.optim`.

freezepolicy freezes a tensor by taking its gradient away (`grad = None`) and dropping its
optimizer state; an unfreeze gives it a gradient again, and its state starts fresh. That is
correct for an optimizer that skips tensors whose `grad` is None and keeps state per tensor,
created on the tensor's first step, which every optimizer of `torch.optim` does (checked against
torch's sources) but two:

- **LBFGS** treats a missing gradient as zeros and moves its whole parameter list along a
  direction built from its history (one state for all tensors, kept under the first). After a
  tensor trained, the history holds components for it, so the tensor would go on moving after a
  freeze. freezepolicy drops the history whenever a tensor of its list stops training (the next
  step starts L-BFGS afresh, as after a restart); from then on the frozen components of every
  direction are exactly 0 and the tensor stays bit-for-bit unchanged. An unfreeze keeps the
  history: its components for the new tensor are 0, which L-BFGS handles as for any direction.
  LBFGS has one parameter group only, so a policy that must split it (different learning rates or
  weight decays) is refused (ValueError naming LBFGS) before anything changes.
- **SGD with `fused=True` and momentum** needs either every tensor of a group that has a gradient
  to have a momentum buffer, or none (torch's fused step crashes on a mix). A tensor unfrozen into
  a group whose other tensors have trained has none, so freezepolicy gives it a zero buffer when
  it unfreezes. With `dampening=0` (torch's default) its first step is then exactly torch's first
  step (buffer = gradient); with `dampening=d` its first momentum is `(1 - d) * gradient` instead.

docs/applying.md ("Which optimizers") has the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


def is_lbfgs(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, torch.optim.LBFGS)


def _fused_momentum_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    if not isinstance(optimizer, torch.optim.SGD):
        return []
    return [g for g in optimizer.param_groups if g.get("fused") and g.get("momentum", 0) != 0]


@dataclass
class StatePlan:
    """What an apply does to optimizer state, besides dropping the state of frozen tensors."""

    #: Drop the whole state of an LBFGS (a tensor of its list stops training).
    drop_history: bool = False
    #: Tensors that get a zero momentum buffer (fused SGD groups).
    zero_buffers: list[torch.Tensor] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.drop_history or bool(self.zero_buffers)


def check_groups(optimizer: torch.optim.Optimizer, groups: int) -> None:
    """ValueError, before anything changes, when `optimizer` cannot have `groups` groups."""
    if is_lbfgs(optimizer) and groups != 1:
        raise ValueError(
            f"{type(optimizer).__name__} has a single parameter group, and the policy needs "
            f"{groups} (its learning rates or weight decays differ between parameters): use "
            "another optimizer, or a policy without `lr` / `decay` statements that single "
            "parameters out"
        )


def plan_state(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    current: Sequence[bool],
    targets: Sequence[bool],
) -> StatePlan:
    """What the apply that moves `params` from `current` to `targets` requires_grad must do to
    the state of `optimizer` (nothing for most optimizers)."""
    plan = StatePlan()
    if is_lbfgs(optimizer) and optimizer.state:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        plan.drop_history = any(
            now and not target and id(p) in held
            for p, now, target in zip(params, current, targets, strict=True)
        )
    groups = _fused_momentum_groups(optimizer)
    if groups:
        trainable = {id(p) for p, t in zip(params, targets, strict=True) if t}
        state = optimizer.state
        for group in groups:
            members = group["params"]
            has = [p in state and "momentum_buffer" in state[p] for p in members]
            if any(has):
                plan.zero_buffers.extend(
                    p for p, h in zip(members, has, strict=True) if not h and id(p) in trainable
                )
    return plan


def keeps_per_tensor_state(optimizer: torch.optim.Optimizer) -> bool:
    """False for LBFGS, whose one state (kept under its first tensor) is the history of the
    whole list: dropping it per tensor would restart L-BFGS at every apply that keeps its first
    tensor frozen. `plan_state` decides when it is dropped."""
    return not is_lbfgs(optimizer)


def execute_state(optimizer: torch.optim.Optimizer, plan: StatePlan) -> None:
    if plan.drop_history:
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state.pop(p, None)
    for p in plan.zero_buffers:
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(
            p, memory_format=torch.preserve_format
        )
