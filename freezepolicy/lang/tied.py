"""Tied (shared) parameters: one tensor under several names must get one decision.

A decoder weight tied to the word embeddings is a single tensor: it cannot be frozen under one
name and trained under the other. A name no statement touches has no opinion and defers to the
names that were decided; two names decided differently are a conflict. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from .bound import BoundPolicy, Moment
from .errors import Diagnostic
from .policy import Policy
from .rules import Decision


def _settings(d: Decision) -> tuple:
    return (d.trainable, d.lr, d.weight_decay, d.stats)


def _describe(d: Decision) -> str:
    # Each setting with the line that decided it: the lines that disagree may differ per setting.
    parts = []
    for value, by, text in (
        (d.trainable, d.trainable_by, "trainable" if d.trainable else "frozen"),
        (d.lr, d.lr_by, f"lr {d.lr}"),
        (d.weight_decay, d.decay_by, f"decay {d.weight_decay}"),
        (d.stats, d.stats_by, "stats " + ("update" if d.stats else "freeze")),
    ):
        if value is not None:
            parts.append(text + (f" (line {by.line})" if by is not None and by.line else ""))
    return ", ".join(parts) or "untouched"


def merge_tied(decisions: Mapping[str, Decision], group: Sequence[str]) -> Decision | None:
    """The one decision for a tied group, or None when its names are decided differently.

    Settings are merged one by one: a setting no statement decided under some name takes the
    value decided under another name.
    """
    merged: dict[str, object] = {}
    by: dict[str, object] = {}
    fields = (
        ("trainable", "trainable_by"),
        ("lr", "lr_by"),
        ("weight_decay", "decay_by"),
        ("stats", "stats_by"),
    )
    for name in group:
        d = decisions[name]
        for value_field, by_field in fields:
            value = getattr(d, value_field)
            if value is None:
                continue
            if value_field in merged and merged[value_field] != value:
                return None
            merged[value_field] = value
            by.setdefault(by_field, getattr(d, by_field))
    return Decision(group[0], **merged, **by)  # type: ignore[arg-type]


def tied_conflicts(
    policy: Policy,
    decisions: Mapping[str, Decision],
    tied: Sequence[Sequence[str]],
) -> list[Diagnostic]:
    """One FP205 diagnostic per tied group whose names the policy decides differently."""
    out: list[Diagnostic] = []
    for group in tied:
        if merge_tied(decisions, group) is not None:
            continue
        described = "; ".join(f"`{n}`: {_describe(decisions[n])}" for n in group)
        # Point at the latest deciding statement: that is the one that split the tensor.
        statements = [
            st
            for n in group
            for st in (
                decisions[n].trainable_by,
                decisions[n].lr_by,
                decisions[n].decay_by,
                decisions[n].stats_by,
            )
            if st is not None
        ]
        st = max(statements, key=lambda s: (s.span.line, s.span.column)) if statements else None
        message = (
            f"{' and '.join(f'`{n}`' for n in group)} are one tied tensor, but the policy "
            f"decides them differently ({described}); select them together"
        )
        if st is None:
            out.append(Diagnostic("FP205", message, policy.source))
        else:
            out.append(policy.diagnostic("FP205", message, st))
    return out


def tied_conflicts_over_time(
    policy: Policy,
    bound: BoundPolicy,
    tied: Sequence[Sequence[str]],
    moments: Sequence[Moment],
    steps_per_epoch: int | None = None,
) -> list[Diagnostic]:
    """`tied_conflicts` at every moment: each split once, with the moment it starts from
    (`... (from epoch 4)`) when that is not the start. Shared by `apply_policy` (an error) and
    `freezepolicy lint --model` (a warning)."""
    found: dict[str, Diagnostic] = {}
    for epoch, step, fired in moments:
        decisions = bound.decisions(
            epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, fired=fired
        )
        for d in tied_conflicts(policy, decisions, tied):
            if d.message in found:  # the same split, still there at a later moment
                continue
            if (epoch, step) != (0, 0) or fired:
                when = [f"epoch {epoch}"] if epoch else []
                when += [f"step {step}"] if step else []
                when += [
                    f"when line {policy.statements[i].line}'s condition has fired {len(m)} time"
                    + ("s" if len(m) > 1 else "")
                    for i, m in fired
                ]
                found[d.message] = replace(d, message=f"{d.message} (from {', '.join(when)})")
            else:
                found[d.message] = d
    return list(found.values())
