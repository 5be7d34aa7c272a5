"""Metric-driven moments: `unfreeze layer4 then layer3 when val_loss stops decreasing for 2
evaluations`.

A statement with `when` starts its first group at the first plateau of its metric, each later
group at the next plateau. A plateau is `patience` observations in a row that are not better
than the best since the statement started watching or since its last group took effect (the best
starts afresh at each transition; finetuning-scheduler keeps its best score across phases and
only restarts the count, but it also goes back to the best checkpoint at each transition, which
freezepolicy does not). Better is strictly lower for `stops decreasing`, strictly higher for
`stops increasing`; a NaN is never better.

The state of a policy's conditions is a function of the observations, not of the moment, so it
lives with the training loop (`MetricWatch`, kept by `FreezeScheduler` and the Trainer callback
and saved in their checkpoints). What resolution needs of it is which groups have taken effect
and when: `Fired`, the moments (epoch, step) at which the groups of each conditional statement
took effect, by the statement's index in `policy.statements`.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Mapping
from typing import Any

from .nodes import Statement

#: Statement index -> the moments (epoch, step) its groups took effect, in group order; as a
#: sorted tuple, so it can key caches.
Fired = tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
NOTHING_FIRED: Fired = ()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fired_moments(fired: Any, statements: tuple[Statement, ...], where: str) -> Fired:
    """`fired` (a mapping of statement index to moments, or a `Fired` tuple) checked against the
    policy: each key a conditional statement, at most one moment per group, each moment a pair
    of whole numbers >= 0, in order."""
    if fired is None:
        return NOTHING_FIRED
    if isinstance(fired, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in fired):
        fired = dict(fired)
    if not isinstance(fired, Mapping):
        raise TypeError(
            f"{where}: fired must map the index of a conditional statement (in"
            f" policy.statements) to the moments (epoch, step) its groups took effect, got"
            f" {type(fired).__name__}"
        )
    out = []
    for key, moments in fired.items():
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"{where}: fired keys are statement indices (int), got {_shown(key)}")
        if not 0 <= key < len(statements) or statements[key].condition is None:
            raise ValueError(
                f"{where}: fired[{key}]: statement {key} of the policy is not a `when` statement"
            )
        groups = len(statements[key].selection.groups)
        if isinstance(moments, (str, bytes)) or not hasattr(moments, "__iter__"):
            raise TypeError(f"{where}: fired[{key}] must be a list of (epoch, step) moments")
        pairs: list[tuple[int, int]] = []
        for moment in moments:
            try:
                epoch, step = moment
                pair = (operator.index(epoch), operator.index(step))
            except (TypeError, ValueError):
                raise TypeError(
                    f"{where}: fired[{key}] holds {_shown(moment)}, not an (epoch, step) pair of"
                    " whole numbers"
                ) from None
            if isinstance(epoch, bool) or isinstance(step, bool) or min(pair) < 0:
                raise ValueError(f"{where}: fired[{key}] holds {_shown(moment)}: not a moment")
            if pairs and (pair[0] < pairs[-1][0] or pair[1] < pairs[-1][1]):
                raise ValueError(f"{where}: fired[{key}]: the moments must be in order")
            pairs.append(pair)
        if len(pairs) > groups:
            raise ValueError(
                f"{where}: fired[{key}] has {len(pairs)} moments, but statement {key} has"
                f" {groups} group{'s' if groups != 1 else ''}"
            )
        if pairs:
            out.append((key, tuple(pairs)))
    return tuple(sorted(out))


def fired_group(fired: Fired, statement_index: int, group: int) -> tuple[int, int] | None:
    """The moment group `group` of statement `statement_index` took effect, or None."""
    for key, moments in fired:
        if key == statement_index:
            return moments[group] if group < len(moments) else None
    return None


class MetricWatch:
    """The conditions of a policy as observations come in: for each `when` statement, how many
    of its groups have fired, the best value since the last transition and how many
    observations in a row have not beaten it."""

    def __init__(self, statements: tuple[Statement, ...]) -> None:
        self.statements = statements
        #: Statement index -> [groups fired, best, not better in a row]
        self.state: dict[int, list[Any]] = {
            i: [0, None, 0] for i, st in enumerate(statements) if st.condition is not None
        }
        #: Every metric name seen in an observation (watched or not), for the end-of-training
        #: check and its suggestions.
        self.seen: set[str] = set()
        self.observed: set[str] = set()
        #: The moments the groups that took effect did, and the statements whose next group
        #: reached its plateau and takes effect at the next apply.
        self.fired: Fired = NOTHING_FIRED
        self.pending: list[int] = []

    def upcoming(self, epoch: int, step: int) -> Fired:
        """What has fired once the pending groups take effect at (epoch, step)."""
        if not self.pending:
            return self.fired
        out = {i: list(m) for i, m in self.fired}
        for i in self.pending:
            out.setdefault(i, []).append((epoch, step))
        return tuple(sorted((i, tuple(m)) for i, m in out.items()))

    def commit(self, fired: Fired) -> None:
        """The pending groups have taken effect (an apply with `upcoming()` succeeded)."""
        self.fired, self.pending = fired, []

    @property
    def metrics(self) -> list[str]:
        """The metrics the policy watches, in order of first use."""
        out: list[str] = []
        for i in self.state:
            condition = self.statements[i].condition
            assert condition is not None
            if condition.metric not in out:
                out.append(condition.metric)
        return out

    def observe(self, metrics: Mapping[str, Any], where: str) -> list[int]:
        """Take one observation of each metric in `metrics`; the statements that reach a
        plateau with it (each fires its next group), in file order."""
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"{where}: metrics must map metric names to numbers, got {type(metrics).__name__}"
            )
        values: dict[str, float] = {}
        for name in self.metrics:  # checked before anything changes
            if name in metrics:
                values[name] = _number(metrics[name], name, where)
        self.seen.update(k for k in metrics if isinstance(k, str))
        self.observed.update(values)
        plateaus = []
        for i, record in self.state.items():
            st = self.statements[i]
            condition = st.condition
            assert condition is not None
            if condition.metric not in values or record[0] >= len(st.selection.groups):
                continue
            value, best = values[condition.metric], record[1]
            if condition.trend == "decreasing":
                better = not math.isnan(value) and (best is None or value < best)
            else:
                better = not math.isnan(value) and (best is None or value > best)
            if better:
                record[1], record[2] = value, 0
            else:
                record[2] += 1
            if record[2] >= condition.patience:
                record[0] += 1
                record[1], record[2] = None, 0  # the best starts afresh after a transition
                plateaus.append(i)
        self.pending.extend(plateaus)
        return plateaus

    def never_observed(self) -> list[tuple[int, str]]:
        """(statement index, metric) for each `when` statement whose metric no observation held;
        with a suggestion of the closest metric that was observed."""
        out = []
        for i in self.state:
            condition = self.statements[i].condition
            assert condition is not None
            if condition.metric not in self.observed:
                out.append((i, condition.metric))
        return out

    def suggestion(self, metric: str) -> str:
        close = difflib.get_close_matches(metric, sorted(self.seen), n=1, cutoff=0.6)
        if close:
            return f"; did you mean `{close[0]}`?"
        if self.seen:
            shown = ", ".join(f"`{m}`" for m in sorted(self.seen)[:8])
            return f"; the metrics observed were {shown}"
        return "; no metrics were observed at all"

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON and torch.save alike)."""
        return {
            "conditions": [[i, *record] for i, record in self.state.items()],
            "observed": sorted(self.observed),
            "seen": sorted(self.seen),
            "fired": [[i, [list(m) for m in moments]] for i, moments in self.fired],
            "pending": list(self.pending),
        }

    def load_state_dict(self, state: Mapping[str, Any], where: str) -> None:
        """Restore `state_dict()`'s state, checked first: nothing changes on a bad one."""
        try:
            rows = {int(row[0]): [int(row[1]), row[2], int(row[3])] for row in state["conditions"]}
            observed = {str(m) for m in state.get("observed", ())}
            seen = {str(m) for m in state.get("seen", ())}
            fired = fired_moments(
                {int(i): [tuple(m) for m in ms] for i, ms in state.get("fired", ())},
                self.statements,
                where,
            )
            pending = [int(i) for i in state.get("pending", ())]
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"{where}: not the state of this policy's `when` statements") from None
        if any(i not in self.state for i in pending):
            raise ValueError(f"{where}: not the state of this policy's `when` statements")
        if set(rows) != set(self.state) or any(
            not 0 <= r[0] <= len(self.statements[i].selection.groups)
            or (r[1] is not None and not isinstance(r[1], (int, float)))
            or r[2] < 0
            for i, r in rows.items()
        ):
            raise ValueError(f"{where}: not the state of this policy's `when` statements")
        self.state, self.observed, self.seen = rows, observed, seen
        self.fired, self.pending = fired, pending


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{where}: metrics[{name!r}] must be a number, got {_shown(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: metrics[{name!r}] must be a number, got {_shown(value)}"
            f" ({type(value).__name__})"
        ) from None
