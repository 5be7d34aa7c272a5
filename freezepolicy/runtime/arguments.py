"""Checking what a caller passes to `apply_policy`, `param_groups` and `FreezeScheduler`.

Every public entry point checks its arguments before it looks at the model, so a wrong type
gets a message that says what was expected (not "cannot create weak reference to 'str'"), and a
value that means something else (a learning rate of -1 or NaN, an epoch that disagrees with the
step) is refused rather than silently giving a wrong state. Wrong types raise TypeError, wrong
values ValueError, each naming the argument.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import torch
from torch import nn


def _kind(value: Any) -> str:
    """What was passed, for a message: `'resnet' (str)`, `1.5 (float)`, `SGD`."""
    if isinstance(value, (str, bytes, int, float, complex)) or value is None:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return f"{text} ({type(value).__name__})"
    return type(value).__name__


def check_model(model: Any, where: str) -> nn.Module:
    """`model` as an nn.Module, or TypeError naming what was passed."""
    if isinstance(model, nn.Module):
        return model
    hint = ""
    if hasattr(model, "statements"):
        hint = f": the arguments are {where}(model, policy, ...), the model first"
    elif isinstance(model, (str, bytes, os.PathLike)):
        hint = ": pass the model object itself (build it first), not its name or path"
    raise TypeError(f"{where}: model must be a torch.nn.Module, not {_kind(model)}{hint}")


def check_optimizer(optimizer: Any, where: str) -> torch.optim.Optimizer | None:
    """`optimizer` (None allowed) as a torch Optimizer, or TypeError naming what was passed."""
    if optimizer is None or isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    hint = ""
    if is_scheduler(optimizer):
        hint = ": that is a learning-rate scheduler; pass it as scheduler=, and its optimizer here"
    elif isinstance(optimizer, str):
        hint = ": build the optimizer first, e.g. torch.optim.AdamW(freezepolicy.param_groups(...))"
    raise TypeError(
        f"{where}: optimizer must be a torch.optim.Optimizer or None, not {_kind(optimizer)}{hint}"
    )


def is_scheduler(value: Any) -> bool:
    """Whether `value` is a learning-rate scheduler: one of torch's (LRScheduler,
    ReduceLROnPlateau), or any object with a `step` method driving a torch Optimizer (timm's
    schedulers and other libraries' keep `.optimizer` the same way)."""
    if isinstance(
        value, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    ):
        return True
    return callable(getattr(value, "step", None)) and isinstance(
        getattr(value, "optimizer", None), torch.optim.Optimizer
    )


def as_schedulers(scheduler: Any, optimizer: torch.optim.Optimizer | None, where: str) -> list[Any]:
    """`scheduler` (None, one, or a list or tuple of them) as a list, each checked."""
    if scheduler is None:
        return []
    schedulers = list(scheduler) if isinstance(scheduler, (list, tuple)) else [scheduler]
    for sched in schedulers:
        if not is_scheduler(sched):
            raise TypeError(
                f"{where}: scheduler must be a learning-rate scheduler (a torch.optim.lr_scheduler "
                f"object, or one with .optimizer and .step()), or a list of them, not "
                f"{_kind(sched)}"
            )
    if schedulers and optimizer is None:
        raise ValueError(
            f"{where}: a scheduler is passed but no optimizer: pass the optimizer it drives"
        )
    return schedulers


def check_flag(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, not {_kind(value)}")
    return value


def check_count(value: Any, name: str, where: str, *, minimum: int = 0) -> int:  # 0 or 1
    """A whole number >= `minimum`, else ValueError (also for a bool, a float or a str: 2.7
    epochs is not 2, and these have always been ValueErrors here)."""
    what = "a non-negative" if minimum == 0 else "a positive"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{where}: {name} must be {what} whole number, not {_kind(value)}")
    return int(value)


def check_steps_per_epoch(steps_per_epoch: Any, where: str = "apply_policy") -> int | None:
    if steps_per_epoch is None:
        return None
    return check_count(steps_per_epoch, "steps_per_epoch", where, minimum=1)


def resolve_moment(
    epoch: Any, step: Any, steps_per_epoch: int | None, where: str = "apply_policy"
) -> tuple[int, int]:
    """The moment (epoch, step) a caller means, checked.

    Without `steps_per_epoch` the clocks are independent and a missing one is 0. With it, the
    clocks must agree: epoch `e` covers the optimizer steps `e * N` to `(e + 1) * N` (`N` steps per
    epoch), both ends included: `step == e * N` is the start of epoch `e`, and
    `step == (e + 1) * N` is after its last optimizer step, before epoch `e + 1` starts. A missing
    step is the start of the epoch, a missing epoch is `step // N`. Anything else is a
    ValueError: `epoch=3, step=0` would run a warm-up that should be over, `epoch=0, step=30` keep
    an `at epoch 1` group frozen.
    """
    e = None if epoch is None else check_count(epoch, "epoch", where)
    s = None if step is None else check_count(step, "step", where)
    n = steps_per_epoch
    if n is None:
        return (e or 0, s or 0)
    if e is None:
        return ((s or 0) // n, s or 0)
    if s is None:
        return (e, e * n)
    if not e * n <= s <= (e + 1) * n:
        raise ValueError(
            f"{where}: epoch {e} and step {s} disagree with steps_per_epoch={n}: epoch {e} covers "
            f"optimizer steps {e * n} to {(e + 1) * n}, and step {s} is in epoch {s // n} (steps "
            "count optimizer steps from the start of training). Check steps_per_epoch (optimizer "
            "steps, so batches / gradient accumulation), or pass only one of epoch and step"
        )
    return (e, s)


def check_rate(value: Any, name: str, where: str) -> float:
    """A learning rate or weight decay: a finite number >= 0 (what FP106 / FP107 ask of a
    file). A one-element real tensor is read as its value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, not {_kind(value)}")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"{where}: {name} must be a finite number, not {number}")
    if number < 0:
        raise ValueError(f"{where}: {name} must be 0 or more, not {number}")
    return number
