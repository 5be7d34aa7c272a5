"""Learning rates and weight decays over a policy's timeline, as optimizer groups carry them.

A policy group is a set of tensors whose rates agree at every moment of the timeline; its key
is a digest of that timeline. Every group freezepolicy shapes carries a marker dict under
`MARKER` (saved with the optimizer's state dict); optimizer_plan.py has what it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ..lang.rules import Rate

#: The key of the marker dict in every parameter group freezepolicy shapes.
MARKER = "freezepolicy"


#: Group keys that hold learning rates; a policy rate change scales them all by the same ratio.
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


# One moment of a group's timeline: (lr rate, weight decay rate); None = the base value.
Rates = tuple[Rate | None, Rate | None]


def normal_rate(rate: Rate | None) -> Rate | None:
    """`1x` is the base value itself; folding it into None keeps such tensors in the base group."""
    if rate is not None and rate.relative and rate.value == 1:
        return None
    return rate


def timeline_key(timeline: Sequence[Rates]) -> str:
    """A short, stable name for a rate timeline (the same in every process and Python version)."""
    text = ";".join(
        ",".join("-" if r is None else f"{r.value!r}{'x' if r.relative else ''}" for r in pair)
        for pair in timeline
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def idle_rate(timeline: Sequence[Rates]) -> Rate | None:
    """The learning rate a group carries while the policy says `lr 0` for it.

    `lr 0` is a freeze, not a rate: the tensors have no gradient, so the optimizer skips them
    whatever the group's `lr` says. The group keeps the first non-zero rate of its timeline, so
    its `lr` is a function of the moment alone and a later unfreeze resumes on the schedule.
    A group that is at `lr 0` at every moment carries 0.
    """
    for lr, _ in timeline:
        if lr is None or not lr.is_zero:
            return lr
    return Rate(0.0)


def nominal_lr(rate: Rate | None, idle: Rate | None, base: float) -> float:
    """The policy's learning rate for a group, before any scheduler factor."""
    if rate is not None and rate.is_zero:
        rate = idle
        if rate is not None and rate.is_zero:
            return 0.0
    return float(rate.of(base)) if rate is not None else float(base)


def nominal_decay(rate: Rate | None, base: float | None) -> float | None:
    """The policy's weight decay for a group; None leaves the optimizer's own value."""
    if rate is None:
        return base
    if rate.relative:
        if base is None:
            raise ValueError(
                f"the policy sets weight decay `{rate}` relative to a base, but there is no base "
                "weight decay: pass weight_decay= to param_groups, or use an optimizer with one"
            )
        return rate.of(base)
    return rate.value


def as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
