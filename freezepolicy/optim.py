"""Optimizer integration: parameter groups shaped by a policy, and keeping them in step with it.

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
are adjusted when passed to `apply_policy(..., scheduler=...)`. docs/applying.md has the rules.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .policy import Policy, Rate

if TYPE_CHECKING:
    from .apply import _Binding

#: The key of the marker dict in every parameter group freezepolicy shapes.
MARKER = "freezepolicy"
#: Group keys that hold learning rates; a policy rate change scales them all by the same ratio.
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")

#: Every torch LRScheduler wraps its optimizer's `step` in a function carrying this attribute.
_SCHED_MARK = "_wrapped_by_lr_sched"

# One moment of a group's timeline: (lr rate, weight decay rate); None = the base value.
Rates = tuple[Rate | None, Rate | None]


def _normal(rate: Rate | None) -> Rate | None:
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


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


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
    """
    from .apply import _binding_for  # apply imports this module at load time

    _, binding = _binding_for(model, policy, steps_per_epoch)
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
    return groups


def group_lrs(optimizer: torch.optim.Optimizer, value: float) -> list[float]:
    """`value` for the base rate, scaled to each group as the policy scales the base rate.

    For schedulers that take one value per group, such as OneCycleLR's `max_lr`:
    `OneCycleLR(opt, max_lr=group_lrs(opt, 1e-2), ...)` peaks the base group at 1e-2 and a `0.1x`
    group at 1e-3. Groups freezepolicy does not manage get `value` unchanged.
    """
    out: list[float] = []
    for group in optimizer.param_groups:
        marker = group.get(MARKER)
        if marker is None or not marker["base_lr"]:
            out.append(value)
        else:
            out.append(value * marker["lr"] / marker["base_lr"])
    return out


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
    warnings: list[str] = field(default_factory=list)

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
                    _split_scheduler(sched, self.split, old_count, opt.param_groups)
        for index, key, value in self.updates:
            group = opt.param_groups[index]
            if key == MARKER:
                group[key] = value  # a new dict: never mutate one a saved state_dict may share
            else:
                _set_value(group, key, value)
        for sched in schedulers:
            _scale_scheduler(sched, self.lr_ratios)


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
    return _as_float(group.get("initial_lr", group["lr"]))


def plan_optimizer(
    optimizer: torch.optim.Optimizer,
    binding: _Binding,
    rates: dict[str, Rates],
    trainable: Sequence[bool],
    schedulers: Sequence[Any] = (),
) -> OptimizerPlan:
    """Compute what applying the policy's current `rates` (group key -> rates) does to `optimizer`.

    `schedulers` are the ones passed to apply_policy: when the groups must be split, torch's own
    schedulers among them follow the split (see `_split_scheduler`).
    Raises ValueError, before anything is changed, when the optimizer cannot take the policy.
    """
    plan = OptimizerPlan(optimizer)
    key_of = {id(binding.params[i]): binding.keys[i] for i in range(len(binding.params))}
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [
        binding.names[i]
        for i, p in enumerate(binding.params)
        if trainable[i] and id(p) not in in_optimizer
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        plan.warnings.append(
            f"{len(missing)} trainable parameter(s) are in no optimizer group and will not be "
            f"updated: {shown}"
        )
    if "weight_decay" not in optimizer.defaults and any(wd is not None for _, wd in rates.values()):
        plan.warnings.append(
            f"the policy sets weight decay, but {type(optimizer).__name__} has no weight_decay"
        )
    if _layout_ok(optimizer, key_of):
        _plan_updates(plan, rates, binding)
    else:
        plan.reshape, split = _reshaped(optimizer, binding, rates, key_of)
        old = optimizer.param_groups
        relabel = len(plan.reshape) == len(old) and all(
            [id(p) for p in n["params"]] == [id(p) for p in o["params"]]
            for n, o in zip(plan.reshape, old, strict=True)
        )
        if relabel:
            # Every group keeps its tensors (a policy with one rate for all, say): only markers
            # and rates change, which a scheduler follows like any later rate change.
            for index, (n, o) in enumerate(zip(plan.reshape, old, strict=True)):
                before, after = _as_float(o["lr"]), _as_float(n["lr"])
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
        elif hasattr(optimizer.step, _SCHED_MARK):
            raise ValueError(
                "the optimizer's parameter groups must be split to fit the policy, but a "
                "learning-rate scheduler is already attached to it (its per-group rates would "
                "no longer line up): pass it as apply_policy(..., scheduler=...) if it is one of "
                "torch's schedulers, call apply_policy before creating the scheduler, or build "
                "the optimizer with freezepolicy.param_groups"
            )
    if plan.lr_ratios and not schedulers and hasattr(optimizer.step, _SCHED_MARK):
        plan.warnings.append(
            "the policy changed learning rates of an optimizer with a scheduler attached: "
            "pass the scheduler as apply_policy(..., scheduler=...) if it keeps its own base "
            "rates (LambdaLR, CyclicLR, CosineAnnealingWarmRestarts)"
        )
    return plan


def _plan_updates(plan: OptimizerPlan, rates: dict[str, Rates], binding: _Binding) -> None:
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
            out[k] = _as_float(group[k]) * (new / old)
        elif k in ("lr", "initial_lr"):
            out[k] = new
    return out


def _reshaped(
    optimizer: torch.optim.Optimizer,
    binding: _Binding,
    rates: dict[str, Rates],
    key_of: dict[int, str],
) -> tuple[list[dict[str, Any]], list[tuple[int, float | None]]]:
    """New param_groups: each original group split by policy group, its state kept.

    Optimizer state is keyed by tensor, not by group, so moving tensors between groups keeps
    every tensor's state. Groups freezepolicy made before (another policy, a changed model) are
    merged back by their `origin`; tensors that are not the model's stay in a group of their own
    with the original hyperparameters.

    Also returns, per new group, the index of the old group its hyperparameters came from and the
    ratio its learning rates were scaled by (None when restarted from 0), for `_split_scheduler`.
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
                base_wd = None if base_wd is None else _as_float(base_wd)
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


def _scheduler_parts(sched: Any) -> Iterable[Any]:
    yield sched
    for inner in getattr(sched, "_schedulers", ()) or ():  # SequentialLR, ChainedScheduler
        yield from _scheduler_parts(inner)


def check_schedulers(schedulers: Sequence[Any], optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError (before anything changes) when a scheduler does not fit `optimizer`."""
    for sched in schedulers:
        for part in _scheduler_parts(sched):
            if getattr(part, "optimizer", optimizer) is not optimizer:
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


def _split_scheduler(
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


def _scale_scheduler(sched: Any, ratios: dict[int, float]) -> None:
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
