"""The text report of `freezepolicy show`: the module tree as a table, the totals, the statements
and the schedule of events (what `format_text` returns).

The tree stays compact by expanding only what is interesting: a module whose parameters all share
one decision (same state, learning rate, weight decay and deciding statements) is one row, and
runs of identical numbered siblings (`encoder.layer.0..9`) are one row whose counts add up the
run. `--depth` caps the tree; `--all` expands uniform modules too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .view import (
    STATES,
    Event,
    Moment,
    Node,
    PolicyView,
    Summary,
    changes,
    compress,
    cover,
    rate_text,
    statement_key,
)

if TYPE_CHECKING:
    from ..lang.errors import Diagnostic
    from ..lang.nodes import Statement


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
                tuple(statement_key(st) for st in s.deciders),
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
    if view.layout.adapters:
        out.append(f"peft    {view.layout.adapters}")
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
        cells += [rate_text(getattr(s, attr)) for _, attr in shown_extra]
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
    conditional = view.conditional_events()
    if conditional:
        out.append("")
        out.append("conditional events (when a metric stops improving; shown after the schedule)")
        for cev in conditional:
            st = cev.statement
            head = f"{st.action} {cev.selectors}" if st.layers is None else str(st.layers)
            out.append(f"  {cev.label}: {head} (line {st.line})")
            before = view.moment(*cev.moment, cev.before)
            after = view.moment(*cev.moment, cev.after)
            out.extend(_change_lines(view, before, after))
    for d in problems:
        out.append("")
        out.append(d.format())
    return "\n".join(out) + "\n"


def _event_text(view: PolicyView, ev: Event) -> list[str]:
    before = view.moment(*ev.before)
    after = view.moment(*ev.moment)
    statements = view.statements_at(ev.times)
    lines = [f"  {ev.label}: " + "; ".join(f"{st} (line {st.line})" for st in statements)]
    return lines + _change_lines(view, before, after)


def _change_lines(view: PolicyView, before: Moment, after: Moment) -> list[str]:
    """The changes from one moment to the next, and what then trains."""
    lines: list[str] = []
    # Changes that read the same (`frozen -> trainable`) are one row, even when a setting the
    # row does not mention differs between them (fc1 at 0.1x, fc2 at the base rate).
    same: dict[str, list[str]] = {}
    for ch in changes(view, before, after):
        same.setdefault(ch.describe(), []).extend(ch.keys)
    if not same:
        lines.append("    no change")
    rows = []
    for text, keys in same.items():
        paths = compress(cover(view.root, frozenset(keys)))
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
