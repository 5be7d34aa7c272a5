"""Optimizers and learning-rate schedulers inside wrappers: the torch objects they hold.

Training frameworks hand out wrappers: accelerate's `AcceleratedOptimizer` (which the Hugging Face
`Trainer` uses too) holds the torch optimizer as `.optimizer`, its `AcceleratedScheduler` the
torch scheduler as `.scheduler`; Lightning's `LightningOptimizer` has `.optimizer`, its
`LRSchedulerConfig` `.scheduler`. A policy's changes must reach the torch objects: a scheduler's
base rates live on the torch scheduler (a wrapper has none, so a rate change made through it
would be undone at the next `scheduler.step()`), and a scheduler's `.optimizer` is the torch
optimizer, not the wrapper the user passed. `apply_policy` therefore unwraps both first.

A torch scheduler may also have been created over the wrapper itself (the `Trainer` does this):
it then marks the wrapper's `step`, not the inner optimizer's. `attached_to` keeps, for each
optimizer unwrapped here, the wrappers it was reached through, so such a scheduler is still seen.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

#: Wrappers nest a few levels at most; the bound guards against a wrapper that holds itself.
_MAX_DEPTH = 8

#: Torch optimizer -> the wrappers it was last reached through (weakly: neither keeps the other).
_WRAPPERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[weakref.ref, ...]] = (
    weakref.WeakKeyDictionary()
)


def _is_torch_scheduler(obj: Any) -> bool:
    # ReduceLROnPlateau is an LRScheduler in recent torch, not in older ones.
    sched = torch.optim.lr_scheduler
    return isinstance(obj, (sched.LRScheduler, sched.ReduceLROnPlateau))


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside `optimizer`'s wrappers (each holding the next as `.optimizer`),
    or `optimizer` itself when it wraps none. Anything else (None, a wrong type, a scheduler
    passed where an optimizer belongs) is returned as it is, for the caller's own checks."""
    chain = [optimizer]
    for _ in range(_MAX_DEPTH):
        if _is_torch_scheduler(chain[-1]):
            break
        inner = getattr(chain[-1], "optimizer", None)
        if inner is None or any(inner is seen for seen in chain):
            break
        chain.append(inner)
    # The innermost torch optimizer: an optimizer can itself be a wrapper (AcceleratedOptimizer).
    depth = max((i for i, o in enumerate(chain) if isinstance(o, torch.optim.Optimizer)), default=0)
    found = chain[depth]
    if depth:
        refs: list[weakref.ref] = []
        for wrapper in chain[:depth]:
            try:
                refs.append(weakref.ref(wrapper))
            except TypeError:  # torch schedulers hold a weak reference to what they drive, so
                continue  # no scheduler can have been created over this one
        _WRAPPERS[found] = tuple(refs)
    return found


def unwrap_scheduler(scheduler: Any) -> Any:
    """The torch learning-rate scheduler inside `scheduler`'s wrappers (each holding it as
    `.scheduler`), or `scheduler` itself."""
    found = scheduler
    for _ in range(_MAX_DEPTH):
        if found is None or _is_torch_scheduler(found):
            break
        inner = getattr(found, "scheduler", None)
        if inner is None or inner is found:
            break
        found = inner
    return found


def unwrap_schedulers(scheduler: Any) -> Any:
    """`unwrap_scheduler` over one scheduler, or over each of a list or tuple of them (a list
    comes back); None stays None."""
    if isinstance(scheduler, (list, tuple)):
        return [unwrap_scheduler(s) for s in scheduler]
    return unwrap_scheduler(scheduler)


def attached_to(optimizer: torch.optim.Optimizer) -> list[Any]:
    """`optimizer` and the wrappers `unwrap_optimizer` last reached it through, outermost last:
    a scheduler created over any of them drives `optimizer`."""
    wrappers = [ref() for ref in _WRAPPERS.get(optimizer, ())]
    return [optimizer, *(w for w in reversed(wrappers) if w is not None)]
