"""Learning-rate schedulers that follow a policy: their per-group base rates scaled when the
policy changes a group's rate, and split when the policy splits the optimizer's groups."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .wrappers import attached_to, unwrap_optimizer

#: Every torch LRScheduler wraps its optimizer's `step` in a function carrying this attribute.
_SCHED_MARK = "_wrapped_by_lr_sched"


def has_attached_scheduler(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a torch learning-rate scheduler has been created over `optimizer`, or over a
    wrapper it was passed in (wrappers.py)."""
    return any(hasattr(o.step, _SCHED_MARK) for o in attached_to(optimizer))


def _scheduler_parts(sched: Any) -> Iterable[Any]:
    yield sched
    for inner in getattr(sched, "_schedulers", ()) or ():  # SequentialLR, ChainedScheduler
        yield from _scheduler_parts(inner)


def check_schedulers(schedulers: Sequence[Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError (before anything changes) when a scheduler does not fit `optimizer`."""
    for sched in schedulers:
        for part in _scheduler_parts(sched):
            # Created over the optimizer or over a wrapper of it (accelerate's, Lightning's).
            if unwrap_optimizer(getattr(part, "optimizer", optimizer)) is not optimizer:
                raise ValueError("the scheduler passed to apply_policy drives another optimizer")
            base = getattr(part, "base_lrs", None)
            if base is not None and len(base) != len(optimizer.param_groups):
                raise ValueError(
                    f"the scheduler has {len(base)} base rate(s) but the optimizer has "
                    f"{len(optimizer.param_groups)} group(s): create the scheduler after the "
                    "first apply_policy call"
                )


#: Schedulers whose per-group state is exactly the lists in `_PER_GROUP` (checked against torch's
#: sources), so a split of the optimizer's groups can be followed. Exact types only: a subclass
#: may keep per-group state of its own that a split would leave misaligned.
_SPLITTABLE = tuple(
    getattr(torch.optim.lr_scheduler, name)
    for name in (
        "LambdaLR",
        "MultiplicativeLR",
        "StepLR",
        "MultiStepLR",
        "ConstantLR",
        "LinearLR",
        "ExponentialLR",
        "PolynomialLR",
        "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts",
        "CyclicLR",
        "OneCycleLR",
        "ReduceLROnPlateau",
        "SequentialLR",
        "ChainedScheduler",
    )
    if hasattr(torch.optim.lr_scheduler, name)
)


#: Per-group lists a scheduler keeps on itself. Learning rates among them are rescaled with the
#: group; `lr_lambdas` and ReduceLROnPlateau's absolute `min_lrs` are copied from the old group.
_PER_GROUP = ("base_lrs", "max_lrs", "_last_lr", "lr_lambdas", "min_lrs")


def can_split_scheduler(sched: Any) -> bool:
    """Whether `sched` (and every scheduler inside it) can follow a split of its groups."""
    return all(type(part) in _SPLITTABLE for part in _scheduler_parts(sched))


def split_scheduler(
    sched: Any,
    split: Sequence[tuple[int, float | None]],
    old_count: int,
    groups: Sequence[dict[str, Any]],
) -> None:
    """Give a scheduler one entry per new group, taken from the old group each came from.

    The base rate of a new group is its `initial_lr` (what LRScheduler takes base rates from),
    so the rule "group lr = policy rate x scheduler factor" holds from the split on; `max_lrs`
    (CyclicLR) is scaled like the group's rates, and `_last_lr` is the group's current `lr`.
    """
    for part in _scheduler_parts(sched):
        for attr in _PER_GROUP:
            values = getattr(part, attr, None)
            if not isinstance(values, list) or len(values) != old_count:
                continue
            new = [values[source] for source, _ in split]
            if attr == "max_lrs":
                new = [v if r is None else v * r for v, (_, r) in zip(new, split, strict=True)]
            elif attr == "base_lrs":
                new = [
                    _copy_lr(g["initial_lr"]) if "initial_lr" in g else (v if r is None else v * r)
                    for v, g, (_, r) in zip(new, groups, split, strict=True)
                ]
            elif attr == "_last_lr":
                new = [_copy_lr(g["lr"]) for g in groups]
            setattr(part, attr, new)


def _copy_lr(value: Any) -> Any:
    # As torch's schedulers copy group values: a tensor rate is cloned, never shared.
    return value.clone() if isinstance(value, torch.Tensor) else value


def scale_scheduler(sched: Any, ratios: dict[int, float]) -> None:
    """Scale the base rates a scheduler keeps on itself, as the groups' rates were scaled."""
    if not ratios:
        return
    for part in _scheduler_parts(sched):
        for attr in ("base_lrs", "max_lrs"):  # max_lrs: CyclicLR's upper bounds
            values = getattr(part, attr, None)
            if not isinstance(values, list):
                continue
            # A new list, never scaled in place: a torch scheduler's `state_dict()` shares this
            # list with the dict it returns (and `load_state_dict()` adopts the caller's), and a
            # checkpoint held in memory or written in the background must not change with the
            # rates of the run that goes on.
            setattr(
                part,
                attr,
                [v * ratios[i] if i in ratios else v for i, v in enumerate(values)],
            )

