"""The machine-readable report of `freezepolicy show --format json` (docs/cli.md has the format)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..lang.rules import Rate
from .view import STATES, Moment, Node, PolicyView, Settings, Summary, changes

if TYPE_CHECKING:
    from ..lang.errors import Diagnostic
    from ..lang.nodes import Statement


#: JSON format version of `show --format json`; bumped only for incompatible changes.
JSON_VERSION = 1


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


def _changes_json(view: PolicyView, before: Moment, after: Moment) -> list[dict[str, Any]]:
    return [
        {
            "paths": ch.paths,
            "parameters": [n for k in ch.keys for n in view.groups[k]],
            "tensors": len(ch.keys),
            "elements": sum(view.numel[k] for k in ch.keys),
            "from": _settings_json(ch.before),
            "to": _settings_json(ch.after),
        }
        for ch in changes(view, before, after)
    ]


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
                "condition": (
                    None
                    if st.condition is None
                    else {"metric": st.condition.metric, "time": rule.group + 1}
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
                "changes": _changes_json(view, before, after),
                "counts": _counts_json(after.summary(view.root)),
            }
        )
    conditional = []
    for cev in view.conditional_events():
        before = view.moment(*cev.moment, cev.before)
        after = view.moment(*cev.moment, cev.after)
        condition = cev.statement.condition
        assert condition is not None
        conditional.append(
            {
                "condition": {
                    "metric": condition.metric,
                    "trend": condition.trend,
                    "evaluations": condition.patience,
                    "time": cev.group + 1,
                },
                "group": cev.group,
                "shown_at": {"epoch": cev.moment[0], "step": cev.moment[1]},
                "statement": _statement_json(cev.statement),
                "changes": _changes_json(view, before, after),
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
        "conditional_events": conditional,
        "problems": [d.to_dict() for d in problems],
    }
