"""Applying a policy to a torch model (and optimizer): the only stage that changes torch state.

`apply_policy(model, policy, optimizer, epoch=..., step=...)` sets the state the policy gives at
that moment. The state is a function of the moment alone: "untouched" means as the model had it
before freezepolicy first touched it (recorded at the first apply), so the same call serves at the
start, at every epoch or step boundary, and after a resume, and applying twice equals once.

Everything is checked and computed first and changed after: a wrong argument, a policy that does
not fit the model (a tied tensor decided two ways, a `requires_grad` torch cannot set, a selector
that matches nothing under `strict=True`) or an optimizer that cannot take it raises before the
model or optimizer is touched. Problems that are not errors are `PolicyWarning`s, emitted after
the checks and before the first change (warn.py).

Repeated applies are cheap: the policy is matched against the model's names once per (model,
policy), and when the set of active statements has not changed since the last apply on this model
and optimizer, nothing is recomputed or changed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import weakref
from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Any

import torch
from torch import nn

from ..lang.bound import Moment
from ..lang.conditions import Fired
from ..lang.errors import Diagnostic, PolicyResolveError
from ..lang.policy import Policy
from ..lang.rules import Decision
from . import norm
from .arguments import (
    as_schedulers,
    check_flag,
    check_model,
    check_optimizer,
    check_steps_per_epoch,
    resolve_moment,
)
from .binding import Binding, ModelSnapshot, as_policy, bind, snapshot
from .optimizer_plan import OptimizerPlan, plan_optimizer
from .optimizer_state import StatePlan, execute_state, keeps_per_tensor_state, plan_state
from .rates import MARKER, as_float
from .report import ApplyReport, GroupReport, StatementReport
from .requires_grad import check_changes
from .schedulers import check_schedulers
from .warn import warn_once
from .wrappers import unwrap_optimizer, unwrap_schedulers

#: Optimizer -> (binding key, order key) of the last apply with it, and its group layout.
_OPTIMIZERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple] = weakref.WeakKeyDictionary()


def _layout(optimizer: torch.optim.Optimizer) -> tuple:
    # Cheap: which group lists, how long. Catches groups added, removed or replaced.
    return tuple((id(g["params"]), len(g["params"])) for g in optimizer.param_groups)


# --- apply ---------------------------------------------------------------------------------------


def apply_policy(
    model: nn.Module,
    policy: Policy | str | os.PathLike[str],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int | None = None,
    step: int | None = None,
    steps_per_epoch: int | None = None,
    strict: bool = False,
    scheduler: Any = None,
    fired: Mapping[int, Sequence[tuple[int, int]]] | None = None,
) -> ApplyReport:
    """Set `model` (and `optimizer`) to the state `policy` gives at (`epoch`, `step`).

    - requires_grad as resolved; a tensor no statement decides is left as the model had it
      before the first apply. `lr 0` is a freeze.
    - A tensor the policy freezes gets `grad = None` and loses its optimizer state, so neither
      momentum nor weight decay can move it.
    - Normalization layers with running statistics whose parameters are all frozen are held in
      eval mode (statistics fixed), even after `model.train()`; `stats update` / `stats freeze`
      statements decide otherwise.
    - With `optimizer`: its groups are reshaped to the policy's groups if needed (each tensor's
      state kept), and each group's lr and weight decay set. `scheduler` (one or a list) is only
      needed for schedulers that keep their own base rates (LambdaLR, ...), so they follow policy
      rate changes.

    `epoch` and `step` are 0-based; `step` counts optimizer steps from the start of training.
    `steps_per_epoch` lets `at epoch` and `at step` statements be ordered on one clock; with it
    the two must agree (epoch `e` covers steps `e * N` to `(e + 1) * N`), and a missing one is
    derived from the other; without it a missing one is 0. With `strict=True` a selector that
    selects nothing is an error; otherwise it, and every other problem that is not an error, is
    a `PolicyWarning` (once per policy and model). Every error (`PolicyError`; TypeError or
    ValueError for a wrong argument, or an optimizer or scheduler that cannot take the policy)
    is raised before anything changes.

    `fired` says which groups of `when ... stops ...` statements have taken effect, and when:
    the index of each such statement in `policy.statements` -> the moments (epoch, step) its
    groups took effect, in order. The state is a function of (epoch, step, fired); the loop
    helper `FreezeScheduler` and the framework callbacks keep `fired` and pass it. Without it,
    no metric-driven group is in effect.
    """
    # The torch objects inside framework wrappers (accelerate's, Lightning's): wrappers.py.
    optimizer, scheduler = unwrap_optimizer(optimizer), unwrap_schedulers(scheduler)
    model = check_model(model, "apply_policy")
    optimizer = check_optimizer(optimizer, "apply_policy")
    schedulers = as_schedulers(scheduler, optimizer, "apply_policy")
    strict = check_flag(strict, "strict", "apply_policy")
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch)
    epoch, step = resolve_moment(epoch, step, steps_per_epoch)
    policy = as_policy(policy)
    root, snap = snapshot(model)
    bkey, binding = bind(snap, policy, steps_per_epoch, keep_fixed=True)
    binding.raise_errors()
    fired_moments = binding.bound.fired(fired)
    if strict:
        nothing = [d for d in binding.diagnostics if d.code == "FP201"]
        if nothing:
            raise PolicyResolveError([dataclasses.replace(d, severity="error") for d in nothing])

    order = binding.order_key(epoch, step, fired_moments)
    # The optimizer is part of the key so the cached report's groups are this optimizer's.
    state_key = (bkey, order, None if optimizer is None else id(optimizer))
    if (
        snap.last == state_key
        and snap.last_report is not None
        and (optimizer is None or _OPTIMIZERS.get(optimizer) == (*state_key, _layout(optimizer)))
    ):
        return dataclasses.replace(snap.last_report, epoch=epoch, step=step, changed=False)

    decisions = binding.merged(epoch, step, fired_moments)
    params = binding.params
    # map/attrgetter: these passes run over every tensor, 100k in a large model.
    current = list(map(_requires_grad, params))
    snap.record_originals(params, current)
    original = snap.originals
    decided = list(map(_trainable, decisions))
    targets = [
        t if t is not None else original[id(p)] for t, p in zip(decided, params, strict=True)
    ]
    fixed = binding.take_fixed()  # None unless this call made the binding
    if current != targets:  # FP210: a flag torch cannot set, found before setting any
        check_changes(policy, binding.names, params, current, targets, decisions, fixed)
    # Tensors that must end with no gradient and no optimizer state: frozen by the policy, or
    # trainable until now and frozen by this apply (back to an untouched frozen original).
    cleared = [
        i
        for i, (t, now, target) in enumerate(zip(decided, current, targets, strict=True))
        if t is False or (now and not target)
    ]
    hold, release = _plan_norms(binding, snap, decisions, targets, epoch, step, fired_moments)
    plan = None
    state_plan = StatePlan()
    if optimizer is not None:
        # Raises (before any change) for an optimizer of another model, when the groups must be
        # split under a scheduler that cannot follow the split, or for an optimizer that cannot
        # have the policy's groups.
        rates = binding.rates(decisions)
        plan = plan_optimizer(optimizer, binding, rates, targets, schedulers)
        check_schedulers(schedulers, optimizer)
        state_plan = plan_state(optimizer, params, current, targets)
    dist = _distributed()
    if dist is not None:  # ranks must agree, and DDP must be able to follow (FP206)
        dist.check_apply(model, binding.params, targets, source=policy.source)
    found = _found(policy, binding, plan)
    # Shown before the change: a filter that turns PolicyWarning into an error stops the apply
    # with everything as it was.
    warn_once(snap.warned, policy.source, found)

    # --- nothing has changed up to here; from here on, change the model and optimizer ---
    changed = False
    if plan is not None and plan.changes:
        plan.execute(schedulers)
        changed = True
    for p, now, target in zip(params, current, targets, strict=True):
        if now != target:
            p.requires_grad_(target)
            changed = True
    per_tensor = optimizer is not None and keeps_per_tensor_state(optimizer)
    for i in cleared:
        p = binding.params[i]
        if p.grad is not None:
            p.grad = None
            changed = True
        if per_tensor and p in optimizer.state:  # type: ignore[union-attr]
            # Dropped, not kept: a frozen tensor holds no optimizer memory, and an unfreeze
            # starts it fresh, the same whether or not training was resumed in between.
            del optimizer.state[p]  # type: ignore[union-attr]
            changed = True
    if state_plan.changes:
        execute_state(optimizer, state_plan)  # type: ignore[arg-type]
        changed = True
    for module in hold:
        if not norm.is_held(module) or module.training:
            changed = True
        norm.hold(module)
    for module in release:
        norm.release(module, root.training)
        changed = True
    if dist is not None:
        dist.sync_after_apply(model, source=policy.source)

    report = _report(
        binding, snap, policy, decisions, targets, optimizer, found, (epoch, step, fired_moments)
    )
    report = dataclasses.replace(report, changed=changed)
    snap.last, snap.last_report = state_key, report
    if optimizer is not None:
        _OPTIMIZERS[optimizer] = (*state_key, _layout(optimizer))
    return report


def _found(policy: Policy, binding: Binding, plan: OptimizerPlan | None) -> list[Diagnostic]:
    """Every problem of this apply that is not an error: the policy's against the model's names
    (FP201, FP202, FP204), then the optimizer's (FP211-FP213), located at the policy file."""
    found = list(binding.diagnostics)
    if plan is not None:
        found.extend(
            Diagnostic(code, message, policy.source, severity="warning")
            for code, message in plan.warnings
        )
    return found


_requires_grad = operator.attrgetter("requires_grad")
_trainable = operator.attrgetter("trainable")


def _distributed() -> Any:
    """freezepolicy.distributed when a process group is up, else None: only then can a DDP or
    FSDP wrapper need keeping in step, and single-process training never imports it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from . import distributed

    return distributed


def _plan_norms(
    binding: Binding,
    snap: ModelSnapshot,
    decisions: Sequence[Decision],
    targets: Sequence[bool],
    epoch: int,
    step: int,
    fired: Fired,
) -> tuple[list[nn.Module], list[nn.Module]]:
    """Which normalization layers to hold in eval mode and which to let go.

    Held: a `stats freeze` decides so, or (no `stats` statement decides) the layer has parameters,
    none of them ends up trainable, and the policy froze at least one. A layer no statement
    touches is left as the model had it. When the layer's parameters carry different `stats`
    decisions, the statement applied last wins.
    """
    position = {
        id(r.statement): n
        for n, r in enumerate(binding.bound.order(epoch, step, binding.steps_per_epoch, fired))
    }
    hold: list[nn.Module] = []
    release: list[nn.Module] = []
    for _path, ref, param_ids in snap.norms:
        module = ref()
        if module is None:
            continue
        idx = [binding.index[i] for i in param_ids if i in binding.index]
        stats = [decisions[i] for i in idx if decisions[i].stats is not None]
        if stats:
            last = max(stats, key=lambda d: position.get(id(d.stats_by), -1))
            held = last.stats is False
        else:
            held = (
                bool(idx)
                and not any(targets[i] for i in idx)
                and any(decisions[i].trainable is False for i in idx)
            )
        if held:
            hold.append(module)
        elif norm.is_held(module):
            release.append(module)
    return hold, release


def _reported(value: Any) -> float:
    """A group's rate as the report shows it; NaN for one that is not a number (an optimizer
    that computes its own rate, with `lr=None`): the report never fails after a change."""
    try:
        return as_float(value)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _report(
    binding: Binding,
    snap: ModelSnapshot,
    policy: Policy,
    decisions: Sequence[Decision],
    targets: Sequence[bool],
    optimizer: torch.optim.Optimizer | None,
    found: Sequence[Diagnostic],
    moment: Moment,
) -> ApplyReport:
    epoch, step, fired = moment
    # itertools.compress: these run over every tensor, 100k in a large model.
    names, elements = binding.names, binding.elements
    not_targets = [not t for t in targets]
    trainable = tuple(compress(names, targets))
    frozen = tuple(compress(names, not_targets))
    untouched = tuple(compress(names, [t is None for t in map(_trainable, decisions)]))
    t_el = sum(compress(elements, targets))
    f_el = sum(compress(elements, not_targets))
    active = {r.index for r in binding.bound.order(epoch, step, binding.steps_per_epoch, fired)}
    totals = binding.rule_totals()
    statements = [
        StatementReport(rule.statement.line, rule.label, *totals[rule.index], rule.index in active)
        for rule in policy.rules
    ]
    modules = [(path, ref()) for path, ref, _ in snap.norms]
    held = tuple(path for path, m in modules if m is not None and norm.is_held(m))
    groups: list[GroupReport] = []
    if optimizer is not None:
        for gi, g in enumerate(optimizer.param_groups):
            idx = [binding.index[id(p)] for p in g["params"] if id(p) in binding.index]
            marker = g.get(MARKER)
            wd = g.get("weight_decay")
            groups.append(
                GroupReport(
                    gi,
                    len(g["params"]),
                    sum(1 for i in idx if targets[i]),
                    _reported(g.get("lr")),
                    None if wd is None else _reported(wd),
                    marker.get("key") if isinstance(marker, dict) else None,
                )
            )
    # Made as they are looked up: most programs read a few, and a model can have 100k.
    per_name = binding.bound.decisions(
        epoch=epoch, step=step, steps_per_epoch=binding.steps_per_epoch, fired=fired
    )
    warnings = [d.format() for d in found]
    return ApplyReport(
        source=policy.source,
        epoch=epoch,
        step=step,
        trainable=trainable,
        frozen=frozen,
        untouched=untouched,
        trainable_elements=t_el,
        frozen_elements=f_el,
        statements=tuple(statements),
        held_norm=held,
        groups=tuple(groups),
        diagnostics=tuple(binding.diagnostics),
        warnings=tuple(warnings),
        changed=True,
        decisions=per_name,
    )
