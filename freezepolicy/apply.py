"""Applying a policy to a torch model (and optimizer): the only stage that changes torch state.

`apply_policy(model, policy, optimizer, epoch=..., step=...)` sets the state the policy gives at
that moment. The state is a function of the moment alone: "untouched" means as the model had it
before freezepolicy first touched it (recorded at the first apply), so the same call serves at the
start, at every epoch or step boundary, and after a resume, and applying twice equals once.

Everything is computed first and changed after: a policy that does not fit the model (a tied
tensor decided two ways, a selector that matches nothing under `strict=True`) or an optimizer that
cannot take it raises before the model or optimizer is touched.

Repeated applies are cheap: the policy is matched against the model's names once per (model,
policy), and when the set of active statements has not changed since the last apply on this model
and optimizer, nothing is recomputed or changed.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import Any

import torch
from torch import nn

from . import norm, optim
from .api import load
from .errors import Diagnostic, PolicyResolveError
from .lint import check_names
from .modelinfo import inspect_model, parameter_ids, unwrap
from .policy import Decision, Policy, Rate
from .tied import merge_tied, tied_conflicts, tied_conflicts_over_time

#: Above this many (epoch, step) combinations the timeline falls back to BoundPolicy.moments().
MAX_MOMENTS = 10_000


# --- reports -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementReport:
    """One policy statement as applied to one model."""

    line: int
    text: str
    #: Tensors (a tied tensor once) and their elements the statement selects in this model.
    tensors: int
    elements: int
    #: Whether its time has come at this moment.
    active: bool


@dataclass(frozen=True)
class GroupReport:
    """One optimizer parameter group after the apply."""

    index: int
    tensors: int
    trainable: int
    lr: float
    weight_decay: float | None
    #: The policy's rate key (None for a group freezepolicy does not manage).
    key: str | None


@dataclass(frozen=True)
class ApplyReport:
    """What `apply_policy` set. `str()` is a readable summary; the fields are for programs.

    Tensors are counted once each (a tied tensor under its first name). `trainable` and `frozen`
    go by the resulting `requires_grad`, so a tensor no statement decides ("untouched", listed in
    `untouched` as well) counts as whatever the model had it as.
    """

    source: str
    epoch: int
    step: int
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    untouched: tuple[str, ...]
    trainable_elements: int
    frozen_elements: int
    statements: tuple[StatementReport, ...]
    #: Normalization layers held in eval mode (running statistics fixed), by module path.
    held_norm: tuple[str, ...]
    #: Optimizer groups after the apply (empty without an optimizer).
    groups: tuple[GroupReport, ...]
    #: Located policy problems found against this model (selects nothing, never effective).
    diagnostics: tuple[Diagnostic, ...]
    #: Every warning as text: the formatted diagnostics, then optimizer problems.
    warnings: tuple[str, ...]
    #: False when this call found the state already in place and changed nothing.
    changed: bool
    #: The policy's decision for every parameter name at this moment.
    decisions: Mapping[str, Decision] = field(repr=False, compare=False, default_factory=dict)

    @property
    def total_elements(self) -> int:
        return self.trainable_elements + self.frozen_elements

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for `json.dumps`."""
        return {
            "source": self.source,
            "epoch": self.epoch,
            "step": self.step,
            "trainable": list(self.trainable),
            "frozen": list(self.frozen),
            "untouched": list(self.untouched),
            "trainable_elements": self.trainable_elements,
            "frozen_elements": self.frozen_elements,
            "statements": [dataclasses.asdict(s) for s in self.statements],
            "held_norm": list(self.held_norm),
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "warnings": list(self.warnings),
            "changed": self.changed,
        }

    def __str__(self) -> str:
        total = self.total_elements or 1
        lines = [f"{self.source} at epoch {self.epoch}, step {self.step}:"]
        for label, names, elements in (
            ("trainable", self.trainable, self.trainable_elements),
            ("frozen", self.frozen, self.frozen_elements),
        ):
            lines.append(
                f"  {label + ':':<10} {len(names):>5} tensors  {elements:>13,} elements"
                f"  ({100 * elements / total:.1f}%)"
            )
        if self.untouched:
            lines.append(
                f"  untouched: {len(self.untouched)} tensors no statement decides keep "
                "requires_grad as the model had it"
            )
        if self.statements:
            lines.append("  statements:")
            width = max(len(s.text) for s in self.statements)
            for s in self.statements:
                when = "" if s.active else "  (not yet active)"
                lines.append(
                    f"    line {s.line:<4} {s.text:<{width}}  selects {s.tensors} tensors "
                    f"({s.elements:,} elements){when}"
                )
        if self.held_norm:
            shown = ", ".join(self.held_norm[:6]) + (", ..." if len(self.held_norm) > 6 else "")
            lines.append(
                f"  normalization layers held in eval (statistics fixed): "
                f"{len(self.held_norm)} ({shown})"
            )
        if self.groups:
            plural = "s" if len(self.groups) != 1 else ""
            lines.append(f"  optimizer: {len(self.groups)} parameter group{plural}")
            for g in self.groups:
                wd = "" if g.weight_decay is None else f"  weight_decay {g.weight_decay:g}"
                lines.append(
                    f"    #{g.index}: {g.tensors} tensors ({g.trainable} trainable)  "
                    f"lr {g.lr:g}{wd}"
                )
        lines.extend(f"  {line}" for w in self.warnings for line in w.split("\n"))
        return "\n".join(lines)


# --- binding a policy to a model ------------------------------------------------------------------


class _Binding:
    """A policy matched against one model's names: everything that does not depend on the moment.

    It holds tensors and strings only (never a module), so the per-model cache that keeps it
    does not keep the model alive.

    Tensors whose names the policy cannot tell apart (the same statements select them, under
    each of their names) form one *class* and get one decision at every moment, so the work per
    moment is per class, not per tensor: a mixture-of-experts model with 100k tensors has a few
    dozen classes.
    """

    def __init__(self, policy: Policy, snap: _ModelSnapshot, steps_per_epoch: int | None) -> None:
        self.policy = policy
        self.steps_per_epoch = steps_per_epoch
        self.bound = policy.bind(snap.names, snap.module_types)
        self.tied = snap.tied
        # One entry per tensor, under its first name; tied names grouped with it. Tensors whose
        # names the policy cannot tell apart share a class: the signature of its name, or the
        # signatures of all its names for a tied tensor (merged when decided).
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        #: Tensor id -> its index in `params`.
        self.index: dict[int, int] = {}
        #: Class of each tensor.
        self.tclass: list[int] = []
        #: For each class, the aliases of its first tensor (the names its decision is merged over).
        self.class_names: list[list[str]] = []
        self.class_sigs: list[tuple[int, ...]] = []
        if snap.tied:
            self._tied(snap)
        else:  # every name its own tensor (the usual case): a class per signature
            self._untied(snap)
        self.elements = [p.numel() for p in self.params]
        self._class_decisions: dict[tuple[int, ...], list[Decision]] = {}
        self._merged: tuple[tuple[int, ...], list[Decision]] | None = None

        self.moments = self.bound.moments(limit=MAX_MOMENTS)
        #: FP205 diagnostics: a tied tensor decided two ways at some moment of the timeline.
        self.errors = (
            tied_conflicts_over_time(policy, self.bound, snap.tied, self.moments, steps_per_epoch)
            if snap.tied
            else []
        )
        #: Name-level findings (FP201 selects nothing, FP202/FP204 never effective).
        self.diagnostics = [
            d
            for d in check_names(policy, snap.names, snap.module_types, bound=self.bound)
            if d.code != "FP203"
        ]
        self.keys: list[str] = []
        self.timelines: dict[str, tuple[optim.Rates, ...]] = {}
        self.idle: dict[str, Rate | None] = {}
        self._rule_totals: dict[int, tuple[int, int]] | None = None
        if not self.errors:
            self._group()

    def _untied(self, snap: _ModelSnapshot) -> None:
        """Tensors and classes when no tensor has several names: a class per signature."""
        self.names = list(snap.names)
        self.params = list(snap.params.values())  # in the order of names
        self.index = dict(zip(map(id, self.params), range(len(self.params)), strict=True))
        self.tclass = list(self.bound.signatures)  # aligned with snap.names
        first = self.bound.first_of_signature()
        self.class_names = [[self.names[i]] for i in first]
        self.class_sigs = [(s,) for s in range(len(first))]

    def _tied(self, snap: _ModelSnapshot) -> None:
        """Tensors and classes when some tensors have several names."""
        signatures = self.bound.signatures  # aligned with snap.names
        position = self.bound.position
        tied_of = {g[0]: g for g in snap.tied}
        class_of: dict[object, int] = {}
        for i, name in enumerate(snap.names):
            p = snap.params[name]
            if id(p) in self.index:  # a later name of a tied tensor
                continue
            self.index[id(p)] = len(self.params)
            self.params.append(p)
            self.names.append(name)
            group = tied_of.get(name)
            if group is None:
                names = [name]
                key: object = signatures[i]
            else:
                names = group
                key = tuple(signatures[position[n]] for n in group)
            c = class_of.get(key)
            if c is None:
                c = class_of[key] = len(self.class_names)
                self.class_names.append(names)
                self.class_sigs.append(key if isinstance(key, tuple) else (key,))
            self.tclass.append(c)

    def order_key(self, epoch: int, step: int) -> tuple[int, ...]:
        # The active rules and the progress of warm-ups: equal keys give equal decisions.
        return self.bound.state_key(epoch, step, self.steps_per_epoch)

    def class_decisions(self, epoch: int, step: int) -> list[Decision]:
        """One decision per class at this moment (tied names merged)."""
        key = self.order_key(epoch, step)
        cached = self._class_decisions.get(key)
        if cached is not None:
            return cached
        templates = self.bound.decide_signatures(
            epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch
        )
        out: list[Decision] = []
        for names, sigs in zip(self.class_names, self.class_sigs, strict=True):
            if len(sigs) == 1:
                out.append(templates[sigs[0]])
                continue
            merged = merge_tied(dict(zip(names, [templates[s] for s in sigs], strict=True)), names)
            if merged is None:  # only reachable past MAX_MOMENTS: check at the moment itself
                decisions = self.bound.decisions(
                    epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch
                )
                raise PolicyResolveError(tied_conflicts(self.policy, decisions, [names]))
            out.append(merged)
        if len(self._class_decisions) > 4096:  # a long warm-up makes a key per step: bound it
            self._class_decisions.clear()
        self._class_decisions[key] = out
        return out

    def merged(self, epoch: int, step: int) -> list[Decision]:
        """One decision per tensor at this moment (tied names merged).

        Tensors of one class share one Decision object, whose `name` is that of the class's
        first tensor: read the settings, not the name.
        """
        key = self.order_key(epoch, step)
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        per_class = self.class_decisions(epoch, step)
        out = [per_class[c] for c in self.tclass]
        self._merged = (key, out)
        return out

    def _group(self) -> None:
        timelines: list[list[optim.Rates]] = [[] for _ in self.class_names]
        for epoch, step in self.moments:
            for c, d in enumerate(self.class_decisions(epoch, step)):
                timelines[c].append((optim._normal(d.lr), optim._normal(d.weight_decay)))
        class_keys = []
        for t in timelines:
            key = optim.timeline_key(t)
            class_keys.append(key)
            if key not in self.timelines:
                self.timelines[key] = tuple(t)
                self.idle[key] = optim.idle_rate(t)
        self.keys = [class_keys[c] for c in self.tclass]

    def groups(self) -> dict[str, list[int]]:
        """Policy group key -> tensor indices, in model order of each group's first tensor."""
        out: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            out.setdefault(key, []).append(i)
        return out

    def rates(self, decisions: Sequence[Decision]) -> dict[str, optim.Rates]:
        """Group key -> (lr, weight decay) at the moment these decisions were made."""
        out: dict[str, optim.Rates] = {}
        for i, d in enumerate(decisions):
            key = self.keys[i]
            if key not in out:
                out[key] = (optim._normal(d.lr), optim._normal(d.weight_decay))
        return out

    def rule_totals(self) -> dict[int, tuple[int, int]]:
        """Rule index -> (tensors, elements) it selects; a tensor counts when any of its names
        is selected, once."""
        if self._rule_totals is None:
            tensors = [0] * len(self.class_names)
            elements = [0] * len(self.class_names)
            for c, n in zip(self.tclass, self.elements, strict=True):
                tensors[c] += 1
                elements[c] += n
            selects = [0] * len(self.class_names)
            for c, sigs in enumerate(self.class_sigs):
                for s in sigs:
                    selects[c] |= self.bound.signature_rules(s)
            totals: dict[int, tuple[int, int]] = {}
            for rule in self.policy.rules:
                bit = 1 << rule.index
                hit = [c for c, sel in enumerate(selects) if sel & bit]
                totals[rule.index] = (sum(tensors[c] for c in hit), sum(elements[c] for c in hit))
            self._rule_totals = totals
        return self._rule_totals

    def raise_errors(self) -> None:
        if self.errors:
            raise PolicyResolveError(self.errors)


@dataclass
class _ModelSnapshot:
    """What freezepolicy keeps about one model (its unwrapped root), weakly keyed by it."""

    fingerprint: tuple[int, ...]
    names: list[str]
    params: Mapping[str, torch.Tensor]
    tied: list[list[str]]
    module_types: dict[str, frozenset[str]]
    #: Normalization layers with running statistics: (path, weak reference, parameter ids).
    norms: list[tuple[str, weakref.ref, tuple[int, ...]]]
    bindings: dict[tuple[str, str, int | None], _Binding] = field(default_factory=dict)
    #: id -> requires_grad of each tensor before freezepolicy first changed it in this model
    #: ("untouched" restores it). Ids are safe keys: `params` keeps the tensors alive.
    originals: dict[int, bool] = field(default_factory=dict)
    originals_recorded: bool = False
    #: (binding key, order key) of the last apply on this model, and its report.
    last: tuple | None = None
    last_report: ApplyReport | None = None

    def record_originals(self, tensors: Sequence[torch.Tensor], now: Sequence[bool]) -> None:
        """At the first apply: record `now`, the requires_grad of every tensor of this model
        (each once), for the tensors not recorded yet."""
        if not self.originals_recorded:
            recorded = dict(zip(map(id, tensors), now, strict=True))
            recorded.update(self.originals)  # recorded by an earlier look at this model wins
            self.originals = recorded
            self.originals_recorded = True

    def original(self, p: torch.Tensor) -> bool:
        """requires_grad of `p` as the model had it before freezepolicy changed it."""
        return self.originals.get(id(p), p.requires_grad)


# Per-model caches. Values never reference the model itself (a WeakKeyDictionary would never let
# it go): parameters, names and weak references to submodules only.
_MODELS: weakref.WeakKeyDictionary[nn.Module, _ModelSnapshot] = weakref.WeakKeyDictionary()
#: Optimizer -> (binding key, order key, group layout) of the last apply with it.
_OPTIMIZERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple] = weakref.WeakKeyDictionary()
#: Policies loaded from paths, by (path, mtime, size), so an apply at every step does not re-parse.
_LOADED: dict[tuple[str, int, int], Policy] = {}


def _snapshot(model: nn.Module) -> tuple[nn.Module, _ModelSnapshot]:
    root = unwrap(model)
    old = _MODELS.get(root)
    # Which parameter objects the model holds, where: checked at every apply.
    if old is not None and old.fingerprint == parameter_ids(root):
        return root, old
    # New model, or its parameters changed (a new head, load_state_dict(assign=True)): look again.
    info = inspect_model(root)
    # has_running_stats decides. A model can have 100k modules of a few dozen classes: look at
    # them only if one of the classes is a normalization layer with statistics.
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
    norm_classes = tuple(c for c in info.classes if issubclass(c, kinds))
    norms: list[tuple[str, weakref.ref, tuple[int, ...]]] = []
    if norm_classes:
        norms = [
            (path, weakref.ref(m), tuple(id(p) for p in m.parameters(recurse=False)))
            for path, m in zip(info.module_paths, info.module_list, strict=True)
            if isinstance(m, norm_classes) and norm.has_running_stats(m)
        ]
    snap = _ModelSnapshot(
        info.fingerprint, info.names, info.params, info.tied, info.module_types, norms
    )
    if old is not None and old.originals:
        # Tensors the model still holds keep the requires_grad recorded before freezepolicy
        # changed them. The old snapshot keeps its tensors alive, so equal ids are the same tensor.
        live = set(map(id, info.params.values()))
        snap.originals = {i: v for i, v in old.originals.items() if i in live}
    _MODELS[root] = snap
    return root, snap


def _as_policy(policy: Policy | str | os.PathLike[str]) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, (str, os.PathLike)):
        raise TypeError(f"policy must be a Policy or a path, not {type(policy).__name__}")
    path = os.fspath(policy)
    try:
        st = os.stat(path)
    except OSError:
        return load(path)  # raises the proper PolicySourceError
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    cached = _LOADED.get(key)
    if cached is None:
        cached = load(path)
        if len(_LOADED) >= 64:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = cached
    return cached


def _binding_key(policy: Policy, steps_per_epoch: int | None) -> tuple[str, str, int | None]:
    # By text, not identity: the same file loaded twice is the same policy.
    return (policy.source, policy.text, steps_per_epoch)


def _bind(
    snap: _ModelSnapshot, policy: Policy, steps_per_epoch: int | None
) -> tuple[tuple, _Binding]:
    key = _binding_key(policy, steps_per_epoch)
    binding = snap.bindings.get(key)
    if binding is None:
        binding = snap.bindings[key] = _Binding(policy, snap, steps_per_epoch)
    return key, binding


def _binding_for(
    model: nn.Module, policy: Policy | str | os.PathLike[str], steps_per_epoch: int | None
) -> tuple[_ModelSnapshot, _Binding]:
    """What freezepolicy keeps about `model`, and the binding of `policy` to it, raising the
    binding's errors (for param_groups and the Trainer callback)."""
    _check_steps_per_epoch(steps_per_epoch)
    _, snap = _snapshot(model)
    _, binding = _bind(snap, _as_policy(policy), steps_per_epoch)
    binding.raise_errors()
    return snap, binding


def _check_steps_per_epoch(steps_per_epoch: int | None) -> None:
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, int)
        or steps_per_epoch < 1
    ):
        raise ValueError(f"steps_per_epoch must be a positive integer, not {steps_per_epoch!r}")


def _check_moment(epoch: int, step: int) -> None:
    for label, value in (("epoch", epoch), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative integer, not {value!r}")


def _layout(optimizer: torch.optim.Optimizer) -> tuple:
    # Cheap: which group lists, how long. Catches groups added, removed or replaced.
    return tuple((id(g["params"]), len(g["params"])) for g in optimizer.param_groups)


# --- apply ---------------------------------------------------------------------------------------


def apply_policy(
    model: nn.Module,
    policy: Policy | str | os.PathLike[str],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int = 0,
    step: int = 0,
    steps_per_epoch: int | None = None,
    strict: bool = False,
    scheduler: Any = None,
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

    `epoch` and `step` are 0-based; `step` counts from the start of training. `steps_per_epoch`
    lets `at epoch` and `at step` statements be ordered on one clock. With `strict=True` a
    selector that selects nothing is an error. Every error (`PolicyError`, or ValueError for an
    optimizer or scheduler that cannot take the policy) is raised before anything changes.
    """
    _check_moment(epoch, step)
    _check_steps_per_epoch(steps_per_epoch)
    policy = _as_policy(policy)
    schedulers = _as_list(scheduler)
    if schedulers and optimizer is None:
        raise ValueError("a scheduler is passed but no optimizer: pass the optimizer it drives")
    root, snap = _snapshot(model)
    bkey, binding = _bind(snap, policy, steps_per_epoch)
    binding.raise_errors()
    if strict:
        nothing = [d for d in binding.diagnostics if d.code == "FP201"]
        if nothing:
            raise PolicyResolveError([dataclasses.replace(d, severity="error") for d in nothing])

    order = binding.order_key(epoch, step)
    # The optimizer is part of the key so the cached report's groups are this optimizer's.
    state_key = (bkey, order, None if optimizer is None else id(optimizer))
    if (
        snap.last == state_key
        and snap.last_report is not None
        and (optimizer is None or _OPTIMIZERS.get(optimizer) == (*state_key, _layout(optimizer)))
    ):
        return dataclasses.replace(snap.last_report, epoch=epoch, step=step, changed=False)

    decisions = binding.merged(epoch, step)
    params = binding.params
    # map/attrgetter: these passes run over every tensor, 100k in a large model.
    current = list(map(_requires_grad, params))
    snap.record_originals(params, current)
    original = snap.originals
    decided = list(map(_trainable, decisions))
    targets = [
        t if t is not None else original[id(p)] for t, p in zip(decided, params, strict=True)
    ]
    # Tensors that must end with no gradient and no optimizer state: frozen by the policy, or
    # trainable until now and frozen by this apply (back to an untouched frozen original).
    cleared = [
        i
        for i, (t, now, target) in enumerate(zip(decided, current, targets, strict=True))
        if t is False or (now and not target)
    ]
    hold, release = _plan_norms(binding, snap, decisions, targets, epoch, step)
    plan = None
    if optimizer is not None:
        # Raises (before any change) when the groups must be split under a scheduler that
        # cannot follow the split.
        rates = binding.rates(decisions)
        plan = optim.plan_optimizer(optimizer, binding, rates, targets, schedulers)
        optim.check_schedulers(schedulers, optimizer)
    dist = _distributed()
    if dist is not None:  # ranks must agree, and DDP must be able to follow (FP206)
        dist.check_apply(model, binding.params, targets, source=policy.source)

    # --- nothing has changed up to here; from here on, change the model and optimizer ---
    changed = False
    if plan is not None and plan.changes:
        plan.execute(schedulers)
        changed = True
    for p, now, target in zip(params, current, targets, strict=True):
        if now != target:
            p.requires_grad_(target)
            changed = True
    for i in cleared:
        p = binding.params[i]
        if p.grad is not None:
            p.grad = None
            changed = True
        if optimizer is not None and p in optimizer.state:
            # Dropped, not kept: a frozen tensor holds no optimizer memory, and an unfreeze
            # starts it fresh, the same whether or not training was resumed in between.
            del optimizer.state[p]
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

    report = _report(binding, snap, policy, decisions, targets, optimizer, plan, epoch, step)
    report = dataclasses.replace(report, changed=changed)
    snap.last, snap.last_report = state_key, report
    if optimizer is not None:
        _OPTIMIZERS[optimizer] = (*state_key, _layout(optimizer))
    return report


_requires_grad = operator.attrgetter("requires_grad")
_trainable = operator.attrgetter("trainable")


def _distributed() -> Any:
    """freezepolicy.distributed when a process group is up, else None: only then can a DDP or
    FSDP wrapper need keeping in step, and single-process training never imports it."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from . import distributed

    return distributed


def _as_list(scheduler: Any) -> list[Any]:
    if scheduler is None:
        return []
    if isinstance(scheduler, (list, tuple)):
        return list(scheduler)
    return [scheduler]


def _plan_norms(
    binding: _Binding,
    snap: _ModelSnapshot,
    decisions: Sequence[Decision],
    targets: Sequence[bool],
    epoch: int,
    step: int,
) -> tuple[list[nn.Module], list[nn.Module]]:
    """Which normalization layers to hold in eval mode and which to let go.

    Held: a `stats freeze` decides so, or (no `stats` statement decides) the layer has parameters,
    none of them ends up trainable, and the policy froze at least one. A layer no statement
    touches is left as the model had it. When the layer's parameters carry different `stats`
    decisions, the statement applied last wins.
    """
    position = {
        id(r.statement): n
        for n, r in enumerate(binding.bound.order(epoch, step, binding.steps_per_epoch))
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


def _report(
    binding: _Binding,
    snap: _ModelSnapshot,
    policy: Policy,
    decisions: Sequence[Decision],
    targets: Sequence[bool],
    optimizer: torch.optim.Optimizer | None,
    plan: optim.OptimizerPlan | None,
    epoch: int,
    step: int,
) -> ApplyReport:
    # itertools.compress: these run over every tensor, 100k in a large model.
    names, elements = binding.names, binding.elements
    not_targets = [not t for t in targets]
    trainable = tuple(compress(names, targets))
    frozen = tuple(compress(names, not_targets))
    untouched = tuple(compress(names, [t is None for t in map(_trainable, decisions)]))
    t_el = sum(compress(elements, targets))
    f_el = sum(compress(elements, not_targets))
    active = {r.index for r in binding.bound.order(epoch, step, binding.steps_per_epoch)}
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
            marker = g.get(optim.MARKER)
            wd = g.get("weight_decay")
            groups.append(
                GroupReport(
                    gi,
                    len(g["params"]),
                    sum(1 for i in idx if targets[i]),
                    optim._as_float(g["lr"]),
                    None if wd is None else optim._as_float(wd),
                    marker.get("key") if isinstance(marker, dict) else None,
                )
            )
    # Made as they are looked up: most programs read a few, and a model can have 100k.
    per_name = binding.bound.decisions(
        epoch=epoch, step=step, steps_per_epoch=binding.steps_per_epoch
    )
    warnings = [d.format() for d in binding.diagnostics]
    if plan is not None:
        warnings.extend(f"warning: {w}" for w in plan.warnings)
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
