"""Reshaping and updating an optimizer to fit a policy, planned first and carried out after.

A policy group is a set of tensors whose learning rate and weight decay are the same at every
moment of the policy's timeline, so the groups never change while training runs: an unfreeze or a
rate change at epoch 5 only changes requires_grad and each group's `lr` / `weight_decay`, never
which group a tensor is in. That is what keeps `optimizer.load_state_dict` working after a resume.

Every group freezepolicy shapes carries a marker under the key `"freezepolicy"` (saved with the
optimizer's state dict):

- `key`: the group's rate timeline (a short hash), so a later apply recognises the layout;
- `origin`: which of the user's original groups its hyperparameters came from;
- `base_lr`, `base_weight_decay`: what `0.1x` multiplies;
- `lr`, `weight_decay`: the policy's (unscheduled) values at the last apply.

Learning rates compose with `torch.optim.lr_scheduler` by ratio: when the policy moves a group
from rate `a` to rate `b`, every learning-rate key of the group (`lr`, `initial_lr`, `max_lr`,
`min_lr`) is multiplied by `b / a`, so whatever factor a scheduler has applied is kept, and
schedulers that read those keys at every step (the recursive ones, OneCycleLR) follow the new rate.
Schedulers that cache base rates on themselves (LambdaLR, CyclicLR, CosineAnnealingWarmRestarts)
are adjusted when passed to `apply_policy(..., scheduler=...)` (schedulers.py). docs/applying.md
has the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .binding import Binding
from .optimizer_state import check_groups
from .rates import LR_KEYS, MARKER, Rates, as_float, nominal_decay, nominal_lr
from .schedulers import (
    can_split_scheduler,
    has_attached_scheduler,
    scale_scheduler,
    split_scheduler,
)


def _set_value(group: dict[str, Any], key: str, value: float) -> None:
    # Tensor learning rates (capturable / fused optimizers) are updated in place, as the
    # schedulers do, so compiled optimizer steps keep pointing at the same tensor.
    old = group.get(key)
    if isinstance(old, torch.Tensor):
        old.fill_(value)
    else:
        group[key] = value


def _update_fresh(group: dict[str, Any], values: dict[str, float]) -> None:
    """Set values in a new group. A tensor learning rate gets a tensor of its own: groups split
    from one source must not share one, or updating one group's rate would move the others."""
    for key, value in values.items():
        old = group.get(key)
        if isinstance(old, torch.Tensor):
            group[key] = old.detach().clone().fill_(value)
        else:
            group[key] = value


# --- applying to an optimizer ------------------------------------------------------------------


@dataclass
class OptimizerPlan:
    """What apply will do to an optimizer, computed without touching it."""

    optimizer: torch.optim.Optimizer
    #: The new param_groups list when the optimizer must be reshaped, else None.
    reshape: list[dict[str, Any]] | None = None
    #: (group index, key, value) assignments when the layout is kept.
    updates: list[tuple[int, str, Any]] = field(default_factory=list)
    #: Group index -> ratio by which its learning rates were scaled (for scheduler base rates).
    lr_ratios: dict[int, float] = field(default_factory=dict)
    #: For a reshape that schedulers passed to apply_policy follow: per new group, the index of
    #: the old group it came from and the ratio its learning rates were scaled by (None when
    #: the group restarted from a rate of 0).
    split: list[tuple[int, float | None]] | None = None
    #: (code, message) of each problem that is not an error (FP211-FP213).
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.reshape is not None or bool(self.updates)

    def execute(self, schedulers: Sequence[Any]) -> None:
        opt = self.optimizer
        if self.reshape is not None:
            old_count = len(opt.param_groups)
            # In place, so anything holding the list (a scheduler, a logger) sees the new groups.
            opt.param_groups[:] = self.reshape
            if self.split is not None:
                for sched in schedulers:
                    split_scheduler(sched, self.split, old_count, opt.param_groups)
        for index, key, value in self.updates:
            group = opt.param_groups[index]
            if key == MARKER:
                group[key] = value  # a new dict: never mutate one a saved state_dict may share
            else:
                _set_value(group, key, value)
        for sched in schedulers:
            scale_scheduler(sched, self.lr_ratios)


def _layout_ok(optimizer: torch.optim.Optimizer, key_of: dict[int, str]) -> bool:
    """Whether every group is already one policy group (or holds no tensor of the model)."""
    for group in optimizer.param_groups:
        marker = group.get(MARKER)
        want = marker.get("key") if isinstance(marker, dict) else None
        for p in group["params"]:
            if key_of.get(id(p)) != want:
                return False
    return True


def _base_lr(group: dict[str, Any]) -> float:
    """The unscheduled learning rate of a group the user built: `initial_lr` once a scheduler
    has run over it, else `lr`."""
    value = group.get("initial_lr", group.get("lr"))
    try:
        return as_float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"an optimizer group has lr={value!r}, and the policy's groups need a learning rate "
            "to start from: give the optimizer a numeric lr, or build it with "
            "freezepolicy.param_groups"
        ) from None


def plan_optimizer(
    optimizer: torch.optim.Optimizer,
    binding: Binding,
    rates: dict[str, Rates],
    trainable: Sequence[bool],
    schedulers: Sequence[Any] = (),
) -> OptimizerPlan:
    """Compute what applying the policy's current `rates` (group key -> rates) does to `optimizer`.

    `schedulers` are the ones passed to apply_policy: when the groups must be split, torch's own
    schedulers among them follow the split (see `split_scheduler`).
    Raises ValueError, before anything is changed, when the optimizer cannot take the policy or
    holds none of the model's tensors.
    """
    plan = OptimizerPlan(optimizer)
    key_of = {id(binding.params[i]): binding.keys[i] for i in range(len(binding.params))}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if binding.params and not any(id(p) in in_optimizer for p in binding.params):
        # Built over another model, or a deep copy of this one: every change would miss it.
        raise ValueError(
            f"the optimizer ({type(optimizer).__name__}) holds none of the model's "
            f"{len(binding.params)} parameters: pass the optimizer built over this model's "
            "parameters (a deep copy of a model has parameters of its own)"
        )
    missing = [
        binding.names[i]
        for i, p in enumerate(binding.params)
        if trainable[i] and id(p) not in in_optimizer
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        plan.warnings.append(
            (
                "FP211",
                f"{len(missing)} trainable parameter(s) are in no optimizer group and will not "
                f"be updated: {shown}",
            )
        )
    if "weight_decay" not in optimizer.defaults and any(wd is not None for _, wd in rates.values()):
        plan.warnings.append(
            (
                "FP212",
                f"the policy sets weight decay, but {type(optimizer).__name__} has no "
                "weight_decay",
            )
        )
    if _layout_ok(optimizer, key_of):
        _plan_updates(plan, rates, binding)
    else:
        plan.reshape, split = _reshaped(optimizer, binding, rates, key_of)
        check_groups(optimizer, len(plan.reshape))
        old = optimizer.param_groups
        relabel = len(plan.reshape) == len(old) and all(
            [id(p) for p in n["params"]] == [id(p) for p in o["params"]]
            for n, o in zip(plan.reshape, old, strict=True)
        )
        if relabel:
            # Every group keeps its tensors (a policy with one rate for all, say): only markers
            # and rates change, which a scheduler follows like any later rate change.
            for index, (n, o) in enumerate(zip(plan.reshape, old, strict=True)):
                before, after = as_float(o["lr"]), as_float(n["lr"])
                if before and after != before:
                    plan.lr_ratios[index] = after / before
        elif schedulers and all(can_split_scheduler(s) for s in schedulers):
            # The schedulers take one entry per new group from the group it came from.
            plan.split = split
        elif schedulers:
            names = ", ".join(sorted({type(s).__name__ for s in schedulers}))
            raise ValueError(
                "the optimizer's parameter groups must be split to fit the policy, but the "
                f"scheduler ({names}) cannot follow a split (torch's own scheduler classes can): "
                "call apply_policy before creating the scheduler, or build the optimizer with "
                "freezepolicy.param_groups"
            )
        elif has_attached_scheduler(optimizer):
            raise ValueError(
                "the optimizer's parameter groups must be split to fit the policy, but a "
                "learning-rate scheduler is already attached to it (its per-group rates would "
                "no longer line up): pass it as apply_policy(..., scheduler=...) if it is one of "
                "torch's schedulers, call apply_policy before creating the scheduler, or build "
                "the optimizer with freezepolicy.param_groups"
            )
    if plan.lr_ratios and not schedulers and has_attached_scheduler(optimizer):
        plan.warnings.append(
            (
                "FP213",
                "the policy changed learning rates of an optimizer with a scheduler attached: "
                "pass the scheduler as apply_policy(..., scheduler=...) if it keeps its own base "
                "rates (LambdaLR, CyclicLR, CosineAnnealingWarmRestarts)",
            )
        )
    return plan


def _plan_updates(plan: OptimizerPlan, rates: dict[str, Rates], binding: Binding) -> None:
    opt = plan.optimizer
    for index, group in enumerate(opt.param_groups):
        marker = group.get(MARKER)
        if not isinstance(marker, dict) or marker.get("key") not in rates:
            continue
        key = marker["key"]
        lr_rate, wd_rate = rates[key]
        new_lr = nominal_lr(lr_rate, binding.idle[key], marker["base_lr"])
        base_wd = marker.get("base_weight_decay")
        if base_wd is None:
            # No base given: the optimizer's default, what the group had before any `decay`.
            base_wd = opt.defaults.get("weight_decay")
        new_wd = nominal_decay(wd_rate, base_wd)
        old_lr = marker.get("lr")
        changed: dict[str, Any] = {}
        if new_lr != old_lr:
            for k, v in _scaled_lrs(group, old_lr, new_lr).items():
                plan.updates.append((index, k, v))
            if old_lr:
                plan.lr_ratios[index] = new_lr / old_lr
            changed["lr"] = new_lr
        if new_wd is not None and new_wd != marker.get("weight_decay"):
            plan.updates.append((index, "weight_decay", new_wd))
            changed["weight_decay"] = new_wd
        if changed:
            plan.updates.append((index, MARKER, {**marker, **changed}))


def _scaled_lrs(group: dict[str, Any], old: float | None, new: float) -> dict[str, float]:
    """Every learning-rate key of `group`, moved from policy rate `old` to `new`.

    Scaling by the ratio keeps the factor a scheduler has applied. From a rate of 0 there is no
    factor to keep; the group restarts at the new rate.
    """
    out: dict[str, float] = {}
    for k in LR_KEYS:
        if k not in group:
            continue
        if old:
            out[k] = as_float(group[k]) * (new / old)
        elif k in ("lr", "initial_lr"):
            out[k] = new
    return out


def _reshaped(
    optimizer: torch.optim.Optimizer,
    binding: Binding,
    rates: dict[str, Rates],
    key_of: dict[int, str],
) -> tuple[list[dict[str, Any]], list[tuple[int, float | None]]]:
    """New param_groups: each original group split by policy group, its state kept.

    Optimizer state is keyed by tensor, not by group, so moving tensors between groups keeps
    every tensor's state. Groups freezepolicy made before (another policy, a changed model) are
    merged back by their `origin`; tensors that are not the model's stay in a group of their own
    with the original hyperparameters.

    Also returns, per new group, the index of the old group its hyperparameters came from and the
    ratio its learning rates were scaled by (None when restarted from 0), for `split_scheduler`.
    """
    index_of = {id(g): i for i, g in enumerate(optimizer.param_groups)}
    split: list[tuple[int, float | None]] = []
    # origin id -> [(tensor, source group)], in order of first appearance
    origins: dict[tuple, list[tuple[torch.Tensor, dict[str, Any]]]] = {}
    for gi, group in enumerate(optimizer.param_groups):
        marker = group.get(MARKER)
        if isinstance(marker, dict):
            oid: tuple = ("m", marker.get("origin"), marker.get("base_lr"))
        else:
            oid = ("u", gi)
        origins.setdefault(oid, []).extend((p, group) for p in group["params"])

    names = _param_names(optimizer)
    out: list[dict[str, Any]] = []
    for number, members in enumerate(origins.values()):
        buckets: dict[str | None, list[tuple[torch.Tensor, dict[str, Any]]]] = {}
        for p, source in members:
            buckets.setdefault(key_of.get(id(p)), []).append((p, source))
        for key, entries in buckets.items():
            source = entries[0][1]
            new = {k: v for k, v in source.items() if k not in ("params", "param_names", MARKER)}
            params = [p for p, _ in entries]
            new["params"] = params
            if names is not None:
                new["param_names"] = [names[id(p)] for p in params]
            if key is None:
                ratio: float | None = 1.0
                if MARKER in source:  # not the model's: keep the values, drop the claim
                    marker = source[MARKER]
                    _update_fresh(new, _scaled_lrs(source, marker.get("lr"), marker.get("base_lr")))
                    ratio = _ratio(marker.get("lr"), marker.get("base_lr"))
                out.append(new)
                split.append((index_of[id(source)], ratio))
                continue
            marker = source.get(MARKER)
            if isinstance(marker, dict):
                base_lr, base_wd, old_lr = (
                    marker["base_lr"],
                    marker.get("base_weight_decay"),
                    marker.get("lr"),
                )
            else:
                base_lr = _base_lr(source)
                base_wd = source.get("weight_decay")
                base_wd = None if base_wd is None else as_float(base_wd)
                old_lr = base_lr
            lr_rate, wd_rate = rates[key]
            new_lr = nominal_lr(lr_rate, binding.idle[key], base_lr)
            new_wd = nominal_decay(wd_rate, base_wd)
            _update_fresh(new, _scaled_lrs(source, old_lr, new_lr))
            split.append((index_of[id(source)], _ratio(old_lr, new_lr)))
            if new_wd is not None:
                new["weight_decay"] = new_wd
            new[MARKER] = {
                "key": key,
                "origin": number,
                "base_lr": float(base_lr),
                "base_weight_decay": base_wd,
                "lr": new_lr,
                "weight_decay": new_wd,
            }
            out.append(new)
    return out, split


def _ratio(old: float | None, new: float | None) -> float | None:
    """The factor `_scaled_lrs` moved learning rates by (None: restarted from a rate of 0)."""
    if not old or new is None:
        return None
    return new / old


def _param_names(optimizer: torch.optim.Optimizer) -> dict[int, str] | None:
    """Tensor id -> name when the optimizer was built from named parameters (torch >= 2.5)."""
    if not any("param_names" in g for g in optimizer.param_groups):
        return None
    out: dict[int, str] = {}
    for g in optimizer.param_groups:
        for p, n in zip(g["params"], g.get("param_names", ()), strict=False):
            out[id(p)] = n
    return out


# --- schedulers ----------------------------------------------------------------------------------


