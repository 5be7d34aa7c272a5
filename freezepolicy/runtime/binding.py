"""What freezepolicy keeps about a model between applies, and a policy bound to its tensors.

`snapshot(model)` walks the model once (names, tied tensors, module types, normalization layers)
and keeps the result per model until its parameters change; `bind(snap, policy)` matches the
policy against those names once per (model, policy). Everything that does not depend on the
moment of training is computed here, so an apply at a new moment only resolves and sets.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..lang.api import load
from ..lang.checks import check_names
from ..lang.conditions import NOTHING_FIRED, Fired
from ..lang.errors import PolicyResolveError
from ..lang.policy import Policy
from ..lang.rules import Decision, Rate
from ..lang.tied import merge_tied, tied_conflicts, tied_conflicts_over_time
from . import norm
from .modelinfo import inspect_model, parameter_ids, shapes_of, unwrap
from .rates import Rates, idle_rate, normal_rate, timeline_key
from .report import ApplyReport
from .requires_grad import fixed_indices, timeline_problems

#: Above this many (epoch, step) combinations the timeline falls back to BoundPolicy.moments().
MAX_MOMENTS = 10_000


class Binding:
    """A policy matched against one model's names: everything that does not depend on the moment.

    It holds tensors and strings only (never a module), so the per-model cache that keeps it
    does not keep the model alive.

    Tensors whose names the policy cannot tell apart (the same statements select them, under
    each of their names) form one *class* and get one decision at every moment, so the work per
    moment is per class, not per tensor: a mixture-of-experts model with 100k tensors has a few
    dozen classes.
    """

    def __init__(self, policy: Policy, snap: ModelSnapshot, steps_per_epoch: int | None) -> None:
        self.policy = policy
        self.steps_per_epoch = steps_per_epoch
        # Shapes only when a selector asks for them: a tuple per tensor costs 100k tuples.
        shapes = shapes_of(snap.params) if policy.has_shape_selectors else None
        self.bound = policy.bind(snap.names, snap.module_types, shapes)
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
        self.errors = [
            *self.bound.decay_problems(),  # FP112: a layer decay that rounds to 0 at depth
            *(
                tied_conflicts_over_time(
                    policy, self.bound, snap.tied, self.moments, steps_per_epoch
                )
                if snap.tied
                else []
            ),
        ]
        #: Name-level findings (FP201 selects nothing, FP202/FP204 never effective).
        self.diagnostics = [
            d
            for d in check_names(
                policy, snap.names, snap.module_types, shapes=shapes, bound=self.bound
            )
            if d.code not in ("FP203", "FP230")
        ]
        self.keys: list[str] = []
        self.timelines: dict[str, tuple[Rates, ...]] = {}
        self.idle: dict[str, Rate | None] = {}
        self._rule_totals: dict[int, tuple[int, int]] | None = None
        #: The tensors that cannot be set both ways, as found while binding: the apply that
        #: made this binding takes them (`take_fixed`, see `bind`) instead of looking again
        #: (14 ms at 100k tensors); any later apply looks again, since a tensor's dtype can
        #: change in between.
        self._fixed: list[int] | None = None
        if not self.errors:
            self._group()
            self._fixed = fixed_indices(self.params)
            #: FP210: a tensor whose requires_grad the policy sets and torch cannot.
            self.errors = timeline_problems(self, self._fixed)

    def take_fixed(self) -> list[int] | None:
        """`fixed_indices(self.params)` as binding found it, once; None after that."""
        fixed, self._fixed = self._fixed, None
        return fixed

    def _untied(self, snap: ModelSnapshot) -> None:
        """Tensors and classes when no tensor has several names: a class per signature."""
        self.names = list(snap.names)
        self.params = list(snap.params.values())  # in the order of names
        self.index = dict(zip(map(id, self.params), range(len(self.params)), strict=True))
        self.tclass = list(self.bound.signatures)  # aligned with snap.names
        first = self.bound.first_of_signature()
        self.class_names = [[self.names[i]] for i in first]
        self.class_sigs = [(s,) for s in range(len(first))]

    def _tied(self, snap: ModelSnapshot) -> None:
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

    def order_key(self, epoch: int, step: int, fired: Fired = NOTHING_FIRED) -> tuple[int, ...]:
        # The active rules and the progress of warm-ups: equal keys give equal decisions.
        return self.bound.state_key(epoch, step, self.steps_per_epoch, fired)

    def class_decisions(
        self, epoch: int, step: int, fired: Fired = NOTHING_FIRED
    ) -> list[Decision]:
        """One decision per class at this moment (tied names merged)."""
        key = self.order_key(epoch, step, fired)
        cached = self._class_decisions.get(key)
        if cached is not None:
            return cached
        templates = self.bound.decide_signatures(
            epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch, fired=fired
        )
        out: list[Decision] = []
        for names, sigs in zip(self.class_names, self.class_sigs, strict=True):
            if len(sigs) == 1:
                out.append(templates[sigs[0]])
                continue
            merged = merge_tied(dict(zip(names, [templates[s] for s in sigs], strict=True)), names)
            if merged is None:  # only reachable past MAX_MOMENTS: check at the moment itself
                decisions = self.bound.decisions(
                    epoch=epoch, step=step, steps_per_epoch=self.steps_per_epoch, fired=fired
                )
                raise PolicyResolveError(tied_conflicts(self.policy, decisions, [names]))
            out.append(merged)
        if len(self._class_decisions) > 4096:  # a long warm-up makes a key per step: bound it
            self._class_decisions.clear()
        self._class_decisions[key] = out
        return out

    def merged(self, epoch: int, step: int, fired: Fired = NOTHING_FIRED) -> list[Decision]:
        """One decision per tensor at this moment (tied names merged).

        Tensors of one class share one Decision object, whose `name` is that of the class's
        first tensor: read the settings, not the name.
        """
        key = self.order_key(epoch, step, fired)
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        per_class = self.class_decisions(epoch, step, fired)
        out = [per_class[c] for c in self.tclass]
        self._merged = (key, out)
        return out

    def _group(self) -> None:
        timelines: list[list[Rates]] = [[] for _ in self.class_names]
        for epoch, step, fired in self.moments:
            for c, d in enumerate(self.class_decisions(epoch, step, fired)):
                timelines[c].append((normal_rate(d.lr), normal_rate(d.weight_decay)))
        class_keys = []
        for t in timelines:
            key = timeline_key(t)
            class_keys.append(key)
            if key not in self.timelines:
                self.timelines[key] = tuple(t)
                self.idle[key] = idle_rate(t)
        self.keys = [class_keys[c] for c in self.tclass]

    def groups(self) -> dict[str, list[int]]:
        """Policy group key -> tensor indices, in model order of each group's first tensor."""
        out: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            out.setdefault(key, []).append(i)
        return out

    def rates(self, decisions: Sequence[Decision]) -> dict[str, Rates]:
        """Group key -> (lr, weight decay) at the moment these decisions were made."""
        out: dict[str, Rates] = {}
        for i, d in enumerate(decisions):
            key = self.keys[i]
            if key not in out:
                out[key] = (normal_rate(d.lr), normal_rate(d.weight_decay))
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
class ModelSnapshot:
    """What freezepolicy keeps about one model (its unwrapped root), weakly keyed by it."""

    fingerprint: tuple[int, ...]
    names: list[str]
    params: Mapping[str, torch.Tensor]
    tied: list[list[str]]
    module_types: dict[str, frozenset[str]]
    #: Normalization layers with running statistics: (path, weak reference, parameter ids).
    norms: list[tuple[str, weakref.ref, tuple[int, ...]]]
    bindings: dict[tuple, Binding] = field(default_factory=dict)
    #: id -> requires_grad of each tensor before freezepolicy first changed it in this model
    #: ("untouched" restores it). Ids are safe keys: `params` keeps the tensors alive.
    originals: dict[int, bool] = field(default_factory=dict)
    originals_recorded: bool = False
    #: (binding key, order key) of the last apply on this model, and its report.
    last: tuple | None = None
    last_report: ApplyReport | None = None
    #: (policy, warning text) of every PolicyWarning shown for this model: each once.
    warned: set[tuple[str, str]] = field(default_factory=set)

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
_MODELS: weakref.WeakKeyDictionary[nn.Module, ModelSnapshot] = weakref.WeakKeyDictionary()


#: Policies loaded from paths, by (path, mtime, size), so an apply at every step does not re-parse;
#: each with the (path, mtime, size) of every file it includes, checked at every hit.
_LOADED: dict[tuple[str, int, int], tuple[Policy, tuple]] = {}


def _stamps(paths: Sequence[str]) -> tuple:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return ()  # gone: load again, which says why
        out.append((path, st.st_mtime_ns, st.st_size))
    return tuple(out)


def snapshot(model: nn.Module) -> tuple[nn.Module, ModelSnapshot]:
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
    snap = ModelSnapshot(
        info.fingerprint, info.names, info.params, info.tied, info.module_types, norms
    )
    if old is not None and old.originals:
        # Tensors the model still holds keep the requires_grad recorded before freezepolicy
        # changed them. The old snapshot keeps its tensors alive, so equal ids are the same tensor.
        live = set(map(id, info.params.values()))
        snap.originals = {i: v for i, v in old.originals.items() if i in live}
    if old is not None:
        snap.warned = old.warned  # the same model: a warning shown stays shown
    _MODELS[root] = snap
    return root, snap


def as_policy(policy: Policy | str | os.PathLike[str]) -> Policy:
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
    if cached is not None and _stamps(list(cached[0].included)) == cached[1]:
        return cached[0]
    policy = load(path)
    if len(_LOADED) >= 64:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = (policy, _stamps(list(policy.included)))
    return policy


def _binding_key(policy: Policy, steps_per_epoch: int | None) -> tuple:
    # By text, not identity: the same file loaded twice is the same policy (with the same
    # files included).
    return (policy.source, policy.text, tuple(policy.included.items()), steps_per_epoch)


def bind(
    snap: ModelSnapshot, policy: Policy, steps_per_epoch: int | None, *, keep_fixed: bool = False
) -> tuple[tuple, Binding]:
    """The binding of `policy` to the model of `snap`, made once per policy and kept.
    `keep_fixed=True` (apply_policy) lets a binding made by this call hand its caller what it
    found of the tensors that cannot be set both ways (`Binding.take_fixed`); otherwise, and
    for a binding made earlier, that is dropped, so no later call reads it stale."""
    key = _binding_key(policy, steps_per_epoch)
    binding = snap.bindings.get(key)
    made = binding is None
    if binding is None:
        binding = snap.bindings[key] = Binding(policy, snap, steps_per_epoch)
    if not (made and keep_fixed):
        binding.take_fixed()
    return key, binding


def binding_for(
    model: nn.Module, policy: Policy | str | os.PathLike[str], steps_per_epoch: int | None
) -> tuple[ModelSnapshot, Binding]:
    """What freezepolicy keeps about `model`, and the binding of `policy` to it, raising the
    binding's errors (for param_groups and the Trainer callback; they check their arguments)."""
    _, snap = snapshot(model)
    _, binding = bind(snap, as_policy(policy), steps_per_epoch)
    binding.raise_errors()
    return snap, binding
