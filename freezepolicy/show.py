"""`freezepolicy show`: what a policy does to a model, as a module tree, and how that changes.

Torch-free: a `ModelLayout` (parameter names and shapes, module classes, tied groups) is all this
module needs, so it works on meta-device models and could work from a saved layout.
`layout_from_model` fills one from a torch model.

The text tree stays compact by expanding only what is interesting: a module whose parameters
all share one decision (same state, learning rate, weight decay and deciding statements) is one
row, and runs of identical numbered siblings (`encoder.layer.0..9`) are one row whose counts add
up the run. `--depth` caps the tree; `--all` expands uniform modules too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .policy import Decision, Policy, Rate
from .tied import merge_tied

if TYPE_CHECKING:
    from torch import nn

    from .errors import Diagnostic
    from .nodes import Statement

MIXED = "mixed"
#: The state of a tied tensor whose names the policy decides differently (lint's FP205).
CONFLICT = "conflict"
STATES = ("trainable", "frozen", "untouched", CONFLICT)
#: JSON format version of `show --format json`; bumped only for incompatible changes.
JSON_VERSION = 1


@dataclass(frozen=True)
class ModelLayout:
    """What `show` needs to know about a model."""

    #: Parameter names in model order (a tied tensor under each of its names).
    names: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    #: Parameter name -> class names (with bases) of the modules around it, for `type:`.
    module_types: Mapping[str, Collection[str]]
    #: Module path -> class name, in model order; "" is the model itself.
    module_classes: Mapping[str, str]
    #: Each tied tensor's names, first name first.
    tied: Sequence[Sequence[str]] = ()


def layout_from_model(model: nn.Module) -> ModelLayout:
    """The layout of a torch model (wrapper prefixes removed, as selectors see the names)."""
    from .modelinfo import inspect_model

    info = inspect_model(model)
    return ModelLayout(
        names=tuple(info.names),
        shapes={n: tuple(p.shape) for n, p in info.params.items()},
        module_types=info.module_types,
        module_classes={path: type(m).__name__ for path, m in info.modules.items()},
        tied=[list(g) for g in info.tied],
    )


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


def _statement_key(st: Statement) -> tuple[int, int]:
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

    def __init__(self, view: PolicyView, epoch: int, step: int) -> None:
        self.view = view
        self.epoch = epoch
        self.step = step
        decisions = view.bound.resolve(epoch=epoch, step=step, steps_per_epoch=view.steps_per_epoch)
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
                _statement_key(st) if st is not None else None
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by)
            )
            # A conflicting tied tensor is decided by the statements of all its names.
            names = self.view.groups[k] if k in self.conflicts else (k,)
            for n in names:
                dn = self.decisions[n]
                for st in (dn.trainable_by, dn.lr_by, dn.decay_by, dn.stats_by):
                    if st is not None:
                        deciders[_statement_key(st)] = st
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
        self.bound = policy.bind(layout.names, layout.module_types)
        self.key_of = {n: n for n in layout.names}
        for group in layout.tied:
            for n in group:
                self.key_of[n] = group[0]
        self.groups: dict[str, list[str]] = {}
        for n in layout.names:
            self.groups.setdefault(self.key_of[n], []).append(n)
        self.numel = {k: math.prod(layout.shapes[k]) for k in self.groups}
        self.root = self._tree()

    def moment(self, epoch: int = 0, step: int = 0) -> Moment:
        return Moment(self, epoch, step)

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
                parts.append(f"{label} {_value(a)} -> {_value(b)}")
        return ", ".join(parts)


def changes(view: PolicyView, before: Moment, after: Moment) -> list[Change]:
    """What changes between two moments, grouped by how it changes, in model order."""
    groups: dict[tuple[Settings, Settings], list[str]] = {}
    for key in view.groups:
        a, b = before.settings[key], after.settings[key]
        if a != b:
            groups.setdefault((a, b), []).append(key)
    out = []
    for (a, b), keys in groups.items():
        out.append(Change(a, b, _cover(view.root, frozenset(keys)), keys))
    return out


def _cover(node: Node, keys: frozenset[str]) -> list[str]:
    """The fewest nodes whose tensors are exactly `keys` (in tree order)."""
    if node.keys <= keys:
        return [node.path]
    out: list[str] = []
    for child in node.children:
        if child.keys & keys:
            out.extend(_cover(child, keys))
    return out


def _compress(paths: list[str]) -> list[str]:
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


# --- text -----------------------------------------------------------------------------------


def _value(v: Rate | str | None) -> str:
    return "-" if v is None else str(v)


def _count(n: int) -> str:
    return f"{n:,}"


def _tensors(n: int) -> str:
    return f"{n:,} tensor" + ("" if n == 1 else "s")


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _clip(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _by_text(deciders: Sequence[Statement]) -> str:
    if not deciders:
        return "-"
    if len(deciders) == 1:
        st = deciders[0]
        return f"{st.line}: {_clip(str(st))}"
    return "lines " + ", ".join(str(n) for n in sorted({st.line for st in deciders}))


@dataclass
class _Row:
    name: str
    cls: str
    summary: Summary
    mult: int


class _TreeRenderer:
    def __init__(
        self, view: PolicyView, moment: Moment, depth: int | None, expand_all: bool, ascii: bool
    ) -> None:
        self.view = view
        self.moment = moment
        self.max_depth = depth
        self.expand_all = expand_all
        self.branch, self.last, self.pipe = (
            ("|- ", "`- ", "|  ") if ascii else ("├─ ", "└─ ", "│  ")
        )
        self._keys: dict[int, tuple] = {}
        self.rows: list[_Row] = []

    def visible(self, node: Node) -> list[Node]:
        if self.max_depth is not None and node.depth >= self.max_depth:
            return []
        if not self.expand_all and self.moment.summary(node).uniform:
            return []
        return node.children

    def display_key(self, node: Node) -> tuple:
        """Everything a node's rows show except its own name: equal keys render identically."""
        hit = self._keys.get(id(node))
        if hit is None:
            s = self.moment.summary(node)
            shape = self.view.shape_text(node.path) if node.is_param else ""
            hit = (
                node.cls,
                shape,
                s.tensors,
                s.elements,
                s.state,
                s.lr,
                s.decay,
                s.stats,
                tuple(_statement_key(st) for st in s.deciders),
                tuple((c.name, self.display_key(c)) for c in self.visible(node)),
            )
            self._keys[id(node)] = hit
        return hit

    def runs(self, children: list[Node]) -> list[list[Node]]:
        groups: list[list[Node]] = []
        for child in children:
            prev = groups[-1] if groups else None
            if (
                prev is not None
                and child.name.isdigit()
                and prev[-1].name.isdigit()
                and int(child.name) == int(prev[-1].name) + 1
                and self.display_key(child) == self.display_key(prev[0])
            ):
                prev.append(child)
            else:
                groups.append([child])
        return groups

    def render(
        self,
        node: Node,
        lead: str = "",
        connector: str = "",
        mult: int = 1,
        label: str | None = None,
        cls: str | None = None,
    ) -> None:
        name = label if label is not None else (node.name if node.path else "(model)")
        if cls is None:
            cls = self.view.shape_text(node.path) if node.is_param else node.cls
        self.rows.append(_Row(lead + connector + name, cls, self.moment.summary(node), mult))
        if connector:
            lead += "   " if connector == self.last else self.pipe
        groups = self.runs(self.visible(node))
        for i, group in enumerate(groups):
            conn = self.last if i == len(groups) - 1 else self.branch
            first = group[0]
            if len(group) == 1:
                self.render(first, lead, conn, mult)
            else:
                first_cls = self.view.shape_text(first.path) if first.is_param else first.cls
                self.render(
                    first,
                    lead,
                    conn,
                    mult * len(group),
                    f"{first.name}..{group[-1].name}",
                    f"{len(group)} x {first_cls}",
                )


def format_text(
    view: PolicyView,
    moment: Moment,
    *,
    depth: int | None = None,
    expand_all: bool = False,
    ascii: bool = False,
    problems: Sequence[Diagnostic] = (),
) -> str:
    """The human-readable report of `freezepolicy show`."""
    policy = view.policy
    root = moment.summary(view.root)
    out: list[str] = []
    size = f"{_tensors(root.tensors)}, {_count(root.elements)} params"
    model = (
        f"{view.model_label} ({view.root.cls}: {size})"
        if view.model_label
        else (f"{view.root.cls} ({size})")
    )
    out.append(f"policy  {policy.source}")
    out.append(f"model   {model}")
    out.append(f"moment  {_moment_text(moment.epoch, moment.step, view.steps_per_epoch)}")
    out.append("")

    renderer = _TreeRenderer(view, moment, depth, expand_all, ascii)
    renderer.render(view.root)
    actions = {st.action for st in policy.statements}
    columns: list[tuple[str, str]] = [("module", "<"), ("class", "<"), ("state", "<")]
    columns += [("tensors", ">"), ("params", ">")]
    extra = [("lr", "lr"), ("decay", "decay"), ("stats", "stats")]
    shown_extra = [(title, attr) for title, attr in extra if attr in actions]
    columns += [(title, "<") for title, _ in shown_extra]
    columns.append(("decided by", "<"))
    table = []
    for row in renderer.rows:
        s = row.summary
        cells = [row.name, row.cls, s.state, _count(s.tensors * row.mult)]
        cells.append(_count(s.elements * row.mult))
        cells += [_value(getattr(s, attr)) for _, attr in shown_extra]
        cells.append(_by_text(s.deciders))
        table.append(cells)
    out.extend(_table(columns, table))

    out.append("")
    rows = []
    for state in STATES:
        tensors, elements = root.counts.get(state, (0, 0))
        if tensors or state in ("trainable", "frozen"):
            rows.append(
                [
                    state,
                    _tensors(tensors),
                    f"{_count(elements)} params",
                    _share(elements, root.elements),
                ]
            )
    out.extend(_table([("", "<"), ("", ">"), ("", ">"), ("", ">")], rows, header=False))

    out.append("")
    out.append("statements")
    rows = []
    for rule in policy.rules:
        keys = view.selected_keys(rule.index)
        elements = sum(view.numel[k] for k in keys)
        counts = [_tensors(len(keys)), f"{_count(elements)} params"]
        what = counts if keys else ["selects nothing", ""]
        rows.append([f"  {rule.statement.line}", _clip(rule.label, 60), *what])
    out.extend(_table([("", ">"), ("", "<"), ("", ">"), ("", ">")], rows, header=False))

    events = view.events()
    if events:
        out.append("")
        if view.steps_per_epoch is None and len({c for c, _ in policy.events()}) > 1:
            out.append(
                "schedule (epoch and step events as two timelines; --steps-per-epoch merges them)"
            )
        else:
            out.append("schedule")
        for ev in events:
            out.extend(_event_text(view, ev))
    for d in problems:
        out.append("")
        out.append(d.format())
    return "\n".join(out) + "\n"


def _event_text(view: PolicyView, ev: Event) -> list[str]:
    before = view.moment(*ev.before)
    after = view.moment(*ev.moment)
    statements = view.statements_at(ev.times)
    lines = [f"  {ev.label}: " + "; ".join(f"{st} (line {st.line})" for st in statements)]
    # Changes that read the same (`frozen -> trainable`) are one row, even when a setting the
    # row does not mention differs between them (fc1 at 0.1x, fc2 at the base rate).
    same: dict[str, list[str]] = {}
    for ch in changes(view, before, after):
        same.setdefault(ch.describe(), []).extend(ch.keys)
    if not same:
        lines.append("    no change")
    rows = []
    for text, keys in same.items():
        paths = _compress(_cover(view.root, frozenset(keys)))
        shown = paths if len(paths) <= 6 else [*paths[:5], f"... {len(paths) - 5} more"]
        where = "everything" if paths == [""] else ", ".join(shown)
        elements = sum(view.numel[k] for k in keys)
        counts = f"{_tensors(len(keys))}, {_count(elements)} params"
        rows.append(["  ", _clip(where, 60), text, counts])
    lines.extend(_table([("", "<")] * 4, rows, header=False))
    root = after.summary(view.root)
    t, e = root.counts.get("trainable", (0, 0))
    lines.append(
        f"    now trainable: {_tensors(t)}, {_count(e)} params ({_share(e, root.elements)})"
    )
    return lines


def _moment_text(epoch: int, step: int, steps_per_epoch: int | None) -> str:
    text = f"epoch {epoch}, step {step}"
    if steps_per_epoch is not None:
        text += f" ({steps_per_epoch} steps per epoch)"
    return text


def _table(
    columns: Sequence[tuple[str, str]], rows: list[list[str]], header: bool = True
) -> list[str]:
    widths = [len(title) if header else 0 for title, _ in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    out = []

    def line(cells: Sequence[str]) -> str:
        parts = []
        for (_, align), width, cell in zip(columns, widths, cells, strict=True):
            parts.append(cell.rjust(width) if align == ">" else cell.ljust(width))
        return "  ".join(parts).rstrip()

    if header:
        out.append(line([title for title, _ in columns]))
    out.extend(line(row) for row in rows)
    return out


# --- JSON -----------------------------------------------------------------------------------


def _rate_json(rate: Rate | str | None) -> Any:
    if rate is None or isinstance(rate, str):
        return rate
    return {"value": rate.value, "relative": rate.relative}


def _statement_json(st: Statement | None) -> dict[str, Any] | None:
    if st is None:
        return None
    return {"line": st.span.line, "column": st.span.column, "statement": str(st)}


def _settings_json(s: Settings) -> dict[str, Any]:
    return {
        "state": s.state,
        "lr": _rate_json(s.lr),
        "decay": _rate_json(s.decay),
        "stats": s.stats,
    }


def _counts_json(summary: Summary) -> dict[str, Any]:
    return {
        state: {"tensors": t, "elements": e}
        for state in STATES
        for t, e in [summary.counts.get(state, (0, 0))]
    }


def to_json(
    view: PolicyView,
    moment: Moment,
    *,
    depth: int | None = None,
    problems: Sequence[Diagnostic] = (),
) -> dict[str, Any]:
    """The machine-readable report of `freezepolicy show --format json` (docs/cli.md)."""
    root = moment.summary(view.root)
    modules = []

    def walk(node: Node) -> None:
        if node.is_param or (depth is not None and node.depth > depth):
            return
        s = moment.summary(node)
        modules.append(
            {
                "path": node.path,
                "class": node.cls,
                "depth": node.depth,
                "state": s.state,
                "tensors": s.tensors,
                "elements": s.elements,
                "counts": _counts_json(s),
                "lr": _rate_json(s.lr),
                "decay": _rate_json(s.decay),
                "stats": s.stats,
                "lines": sorted({st.line for st in s.deciders}),
            }
        )
        for child in node.children:
            walk(child)

    walk(view.root)
    parameters = []
    for name in view.layout.names:
        d = moment.decisions[name]
        key = view.key_of[name]
        parameters.append(
            {
                "name": name,
                "module": name.rpartition(".")[0],
                "shape": list(view.layout.shapes[name]),
                "elements": view.numel[key],
                "tied_to": None if key == name else key,
                **_settings_json(Settings.of(d)),
                "decided_by": {
                    "trainable": _statement_json(d.trainable_by),
                    "lr": _statement_json(d.lr_by),
                    "decay": _statement_json(d.decay_by),
                    "stats": _statement_json(d.stats_by),
                },
            }
        )
    statements = []
    for rule in view.policy.rules:
        st = rule.statement
        keys = view.selected_keys(rule.index)
        statements.append(
            {
                **(_statement_json(st) or {}),
                "when": (
                    None if rule.start is None else {"clock": rule.start.clock, "at": rule.start.at}
                ),
                "tensors": len(keys),
                "elements": sum(view.numel[k] for k in keys),
            }
        )
    events = []
    for ev in view.events():
        before, after = view.moment(*ev.before), view.moment(*ev.moment)
        events.append(
            {
                "times": [{"clock": c, "at": n} for c, n in ev.times],
                "epoch": ev.moment[0],
                "step": ev.moment[1],
                "previous": {"epoch": ev.before[0], "step": ev.before[1]},
                "statements": [_statement_json(st) for st in view.statements_at(ev.times)],
                "changes": [
                    {
                        "paths": ch.paths,
                        "parameters": [n for k in ch.keys for n in view.groups[k]],
                        "tensors": len(ch.keys),
                        "elements": sum(view.numel[k] for k in ch.keys),
                        "from": _settings_json(ch.before),
                        "to": _settings_json(ch.after),
                    }
                    for ch in changes(view, before, after)
                ],
                "counts": _counts_json(after.summary(view.root)),
            }
        )
    return {
        "version": JSON_VERSION,
        "policy": view.policy.source,
        "model": {
            "spec": view.model_label,
            "class": view.root.cls,
            "tensors": root.tensors,
            "elements": root.elements,
        },
        "moment": {
            "epoch": moment.epoch,
            "step": moment.step,
            "steps_per_epoch": view.steps_per_epoch,
        },
        "counts": _counts_json(root),
        "modules": modules,
        "parameters": parameters,
        "statements": statements,
        "events": events,
        "problems": [d.to_dict() for d in problems],
    }
