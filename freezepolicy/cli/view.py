"""The view model of `freezepolicy show`: a policy over a model layout as a module tree, its
state at any moment, and what changes at each event of its schedule.

Torch-free: a `ModelLayout` (layout.py) is all this module needs, so it works on meta-device
models and from a cached layout. Rendering is separate: show_text.py and show_json.py.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..lang.conditions import NOTHING_FIRED, Fired
from ..lang.policy import Policy
from ..lang.rules import Decision, Rate, ordinal
from ..lang.tied import merge_tied
from .layout import ModelLayout

if TYPE_CHECKING:

    from ..lang.nodes import Statement

MIXED = "mixed"
#: The state of a tied tensor whose names the policy decides differently (lint's FP205).
CONFLICT = "conflict"
STATES = ("trainable", "frozen", "untouched", CONFLICT)


# --- the tree and what the policy decides in it ---------------------------------------------


@dataclass(eq=False)
class Node:
    """A module, or a parameter (a leaf), with the tensors below it."""

    path: str
    name: str
    cls: str
    is_param: bool = False
    depth: int = 0
    children: list[Node] = field(default_factory=list)
    #: Keys (first names) of the distinct tensors below this node, tied tensors counted once.
    keys: frozenset[str] = frozenset()


def statement_key(st: Statement) -> tuple[int, int]:
    # Statements compare equal when their text is equal; their place in the file tells apart
    # two identical lines.
    return (st.span.line, st.span.column)


@dataclass(frozen=True)
class Settings:
    """What a tensor ends up with: state, learning rate, weight decay, statistics."""

    state: str  # trainable | frozen | untouched | conflict
    lr: Rate | None
    decay: Rate | None
    stats: str | None  # update | freeze | None

    @classmethod
    def of(cls, d: Decision) -> Settings:
        state = "untouched" if d.trainable is None else ("trainable" if d.trainable else "frozen")
        stats = None if d.stats is None else ("update" if d.stats else "freeze")
        return cls(state, d.lr, d.weight_decay, stats)


@dataclass(frozen=True)
class Summary:
    """A node's tensors at one moment: counts, and each setting or MIXED."""

    tensors: int
    elements: int
    counts: dict[str, tuple[int, int]]  # state -> (tensors, elements)
    state: str
    lr: Rate | None | str
    decay: Rate | None | str
    stats: str | None
    deciders: tuple[Statement, ...]  # in file order
    uniform: bool


def _one(values: set[Any]) -> Any:
    if not values:
        return None  # a module without parameters: nothing to decide
    return next(iter(values)) if len(values) == 1 else MIXED


class Moment:
    """The policy resolved over a layout at one moment, with per-node summaries."""

    def __init__(
        self, view: PolicyView, epoch: int, step: int, fired: Fired = NOTHING_FIRED
    ) -> None:
        self.view = view
        self.epoch = epoch
        self.step = step
        self.fired = fired
        decisions = view.bound.resolve(
            epoch=epoch, step=step, steps_per_epoch=view.steps_per_epoch, fired=fired
        )
        self.decisions = decisions
        # One decision per tensor: a tied tensor's names merged (a conflict is reported as a
        # problem; the first name's decision stands in for it here).
        self.by_key: dict[str, Decision] = {}
        conflicts: set[str] = set()
        for key, group in view.groups.items():
            merged = merge_tied(decisions, group) if len(group) > 1 else decisions[key]
            if merged is None:
                conflicts.add(key)
            self.by_key[key] = merged or decisions[key]
        self.conflicts = conflicts
        self.settings = {k: Settings.of(d) for k, d in self.by_key.items()}
        for key in conflicts:
            # No single state can be applied to this tensor: say so rather than pick one.
            self.settings[key] = replace(self.settings[key], state=CONFLICT)
        self._summaries: dict[int, Summary] = {}

    def summary(self, node: Node) -> Summary:
        hit = self._summaries.get(id(node))
        if hit is None:
            hit = self._summaries[id(node)] = self._summarize(node.keys)
        return hit

    def _summarize(self, keys: Collection[str]) -> Summary:
        numel = self.view.numel
        counts: dict[str, list[int]] = {}
        deciders: dict[tuple[int, int], Statement] = {}
        signatures = set()
        for k in keys:
            s = self.settings[k]
            c = counts.setdefault(s.state, [0, 0])
            c[0] += 1
            c[1] += numel[k]
            d = self.by_key[k]
            by = tuple(
                statement_key(st) if st is not None else None
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by)
            )
            # A conflicting tied tensor is decided by the statements of all its names.
            names = self.view.groups[k] if k in self.conflicts else (k,)
            for n in names:
                dn = self.decisions[n]
                for st in (dn.trainable_by, dn.lr_by, dn.decay_by, dn.stats_by):
                    if st is not None:
                        deciders[statement_key(st)] = st
            signatures.add((s, by))
        settings = [s for s, _ in signatures]
        return Summary(
            tensors=len(keys),
            elements=sum(numel[k] for k in keys),
            counts={state: (c[0], c[1]) for state, c in counts.items()},
            state=_one({s.state for s in settings}) or "untouched",
            lr=_one({s.lr for s in settings}),
            decay=_one({s.decay for s in settings}),
            stats=_one({s.stats for s in settings}),
            deciders=tuple(deciders[k] for k in sorted(deciders)),
            uniform=len(signatures) <= 1,
        )


class PolicyView:
    """A policy bound to a model layout: the module tree, and the policy at any moment."""

    def __init__(
        self,
        policy: Policy,
        layout: ModelLayout,
        *,
        steps_per_epoch: int | None = None,
        model_label: str = "",
    ) -> None:
        self.policy = policy
        self.layout = layout
        self.steps_per_epoch = steps_per_epoch
        self.model_label = model_label
        self.bound = policy.bind(layout.names, layout.module_types, layout.shapes)
        self.key_of = {n: n for n in layout.names}
        for group in layout.tied:
            for n in group:
                self.key_of[n] = group[0]
        self.groups: dict[str, list[str]] = {}
        for n in layout.names:
            self.groups.setdefault(self.key_of[n], []).append(n)
        self.numel = {k: math.prod(layout.shapes[k]) for k in self.groups}
        self.root = self._tree()

    def moment(self, epoch: int = 0, step: int = 0, fired: Fired = NOTHING_FIRED) -> Moment:
        return Moment(self, epoch, step, fired)

    def conditional_events(self) -> list[ConditionalEvent]:
        """Each group of each `when` statement as an event: what it changes if it takes effect
        after the timed schedule (its earlier groups already in effect, other `when`
        statements' not)."""
        timed = self.events()
        last = timed[-1].moment if timed else (0, 0)
        out = []
        for index, st in enumerate(self.policy.statements):
            if st.condition is None:
                continue
            for group in range(len(st.selection.groups)):
                before: Fired = ((index, (last,) * group),) if group else NOTHING_FIRED
                after: Fired = ((index, (last,) * (group + 1)),)
                label = f"{st.condition} ({ordinal(group + 1)} time)"
                out.append(ConditionalEvent(st, group, label, last, before, after))
        return out

    def _tree(self) -> Node:
        classes = self.layout.module_classes
        nodes: dict[str, Node] = {}

        def module(path: str) -> Node:
            node = nodes.get(path)
            if node is None:
                parent_path, _, name = path.rpartition(".")
                parent = module(parent_path) if path else None
                node = Node(path, name, classes.get(path, "?"))
                node.depth = parent.depth + 1 if parent is not None else 0
                nodes[path] = node
                if parent is not None:
                    parent.children.append(node)
            return node

        module("")
        own_params: dict[str, list[Node]] = {}
        for path in classes:
            module(path)
        for name in self.layout.names:
            owner, _, leaf = name.rpartition(".")
            parent = module(owner)
            param = Node(
                name, leaf, "", True, parent.depth + 1, keys=frozenset({self.key_of[name]})
            )
            own_params.setdefault(owner, []).append(param)

        def finish(node: Node) -> None:
            # A module's own parameters come first, as in `named_parameters()`; modules without
            # parameters (activations, dropout) are left out.
            kids = [c for c in node.children if not c.is_param]
            for c in kids:
                finish(c)
            node.children = own_params.get(node.path, []) + [c for c in kids if c.keys]
            node.keys = frozenset().union(*(c.keys for c in node.children))

        root = nodes[""]
        finish(root)
        return root

    def shape_text(self, name: str) -> str:
        text = "[" + ", ".join(str(d) for d in self.layout.shapes[name]) + "]"
        key = self.key_of[name]
        return text if key == name else f"{text} tied to {key}"

    def events(self) -> list[Event]:
        """Every event of the policy's schedule, each with the moment before it.

        With `steps_per_epoch`, epoch and step events merge into one timeline by global step.
        Without it the two clocks cannot be compared, so each clock is a timeline of its own
        from the start (the other clock held at 0).
        """
        evs = self.policy.events()
        spe = self.steps_per_epoch
        out: list[Event] = []
        if spe is not None:
            at: dict[int, list[tuple[str, int]]] = {}
            for clock, n in evs:
                at.setdefault(n * spe if clock == "epoch" else n, []).append((clock, n))
            before = (0, 0)
            for g in sorted(at):
                moment = (g // spe, g)
                times = at[g]
                label = " = ".join(f"{clock} {n}" for clock, n in times)
                if all(clock == "epoch" for clock, _ in times):
                    label += f" (step {g})"
                elif all(clock == "step" for clock, _ in times):
                    label += f" (epoch {g // spe})"
                out.append(Event(times, moment, before, label))
                before = moment
            return out
        for clock in ("epoch", "step"):
            before = (0, 0)
            for c, n in evs:
                if c == clock:
                    moment = (n, 0) if clock == "epoch" else (0, n)
                    out.append(Event([(c, n)], moment, before, f"{c} {n}"))
                    before = moment
        return out

    def statements_at(self, times: Sequence[tuple[str, int]]) -> list[Statement]:
        starting = [
            r.statement
            for r in self.policy.rules
            if r.start is not None and (r.start.clock, r.start.at) in times
        ]
        return list({id(st): st for st in starting}.values())  # once each, in file order

    def selected_keys(self, rule_index: int) -> frozenset[str]:
        rule = self.policy.rules[rule_index]
        return frozenset(self.key_of[self.layout.names[i]] for i in self.bound.selected(rule))


@dataclass(frozen=True)
class Event:
    """A moment of the schedule: the times that fall on it, and the moment it follows."""

    times: list[tuple[str, int]]
    moment: tuple[int, int]  # (epoch, step)
    before: tuple[int, int]
    label: str


@dataclass(frozen=True)
class ConditionalEvent:
    """One group of a `when` statement taking effect, shown at `moment` (the last timed
    event), with what had fired before and after it."""

    statement: Statement
    group: int
    label: str
    moment: tuple[int, int]
    before: Fired
    after: Fired

    @property
    def selectors(self) -> str:
        return ", ".join(str(s) for s in self.statement.selection.groups[self.group])


@dataclass(frozen=True)
class Change:
    """Tensors whose settings change the same way at an event."""

    before: Settings
    after: Settings
    paths: list[str]  # the fewest modules (or parameters) that hold exactly these tensors
    keys: list[str]

    def describe(self) -> str:
        parts = []
        if self.before.state != self.after.state:
            parts.append(f"{self.before.state} -> {self.after.state}")
        for label, a, b in (
            ("lr", self.before.lr, self.after.lr),
            ("decay", self.before.decay, self.after.decay),
            ("stats", self.before.stats, self.after.stats),
        ):
            if a != b:
                parts.append(f"{label} {rate_text(a)} -> {rate_text(b)}")
        return ", ".join(parts)


def rate_text(v: Rate | str | None) -> str:
    """A rate, MIXED, or `-` for none, as the reports print it."""
    return "-" if v is None else str(v)


def changes(view: PolicyView, before: Moment, after: Moment) -> list[Change]:
    """What changes between two moments, grouped by how it changes, in model order."""
    groups: dict[tuple[Settings, Settings], list[str]] = {}
    for key in view.groups:
        a, b = before.settings[key], after.settings[key]
        if a != b:
            groups.setdefault((a, b), []).append(key)
    out = []
    for (a, b), keys in groups.items():
        out.append(Change(a, b, cover(view.root, frozenset(keys)), keys))
    return out


def cover(node: Node, keys: frozenset[str]) -> list[str]:
    """The fewest nodes whose tensors are exactly `keys` (in tree order)."""
    if node.keys <= keys:
        return [node.path]
    out: list[str] = []
    for child in node.children:
        if child.keys & keys:
            out.extend(cover(child, keys))
    return out


def compress(paths: list[str]) -> list[str]:
    """`a.10`, `a.11` -> `a.10..11`: consecutive numbered siblings as one range."""
    out: list[str] = []
    run: list[tuple[str, int]] = []  # (parent, number)

    def flush() -> None:
        if not run:
            return
        parent, first = run[0]
        last = run[-1][1]
        prefix = f"{parent}." if parent else ""
        out.append(f"{prefix}{first}..{last}" if last != first else f"{prefix}{first}")
        run.clear()

    for path in paths:
        parent, _, leaf = path.rpartition(".")
        if leaf.isdigit() and str(int(leaf)) == leaf:
            n = int(leaf)
            if run and run[-1][0] == parent and run[-1][1] + 1 == n:
                run.append((parent, n))
                continue
            flush()
            run.append((parent, n))
            continue
        flush()
        out.append(path)
    flush()
    return out




