"""Statements compiled into rules on a timeline, and the decisions they make.

A `Rule` is one group of one statement: a matcher for its selectors and the moment it starts.
A `Decision` is what the rules in force say about one parameter at one moment. Pure Python.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .conditions import NOTHING_FIRED, Fired, fired_group
from .errors import Diagnostic, PolicyResolveError
from .glob import compile_type_pattern
from .matcher import compile_name_pattern
from .nodes import NamePattern, Selector, ShapePattern, Statement, When


@dataclass(frozen=True)
class Rate:
    """A learning rate or weight decay: absolute, or `relative` to the optimizer's base value."""

    value: float
    relative: bool = False

    def of(self, base: float) -> float:
        """The absolute value, given the optimizer's base value."""
        return self.value * base if self.relative else self.value

    @property
    def is_zero(self) -> bool:
        return self.value == 0

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Decision:
    """What the policy says about one parameter at one moment.

    `trainable` is None when no statement selects the parameter: it is left as the model had it.
    `lr` and `weight_decay` are None when no statement sets them (the optimizer's own apply).
    `stats` is True / False when a `stats update` / `stats freeze` statement decides whether
    running statistics of normalization layers update, None to follow `trainable`.
    `*_by` name the statement that decided each setting; `statement` is the one to show first.
    """

    name: str
    trainable: bool | None = None
    lr: Rate | None = None
    weight_decay: Rate | None = None
    trainable_by: Statement | None = None
    lr_by: Statement | None = None
    decay_by: Statement | None = None
    stats: bool | None = None
    stats_by: Statement | None = None
    #: The warm-up factor in (0, 1) while a warm-up holds the learning rate back (`lr` is
    #: already scaled by it), else None.
    warmup: float | None = None

    @property
    def statement(self) -> Statement | None:
        return self.trainable_by or self.lr_by or self.decay_by or self.stats_by

    @property
    def line(self) -> int | None:
        st = self.statement
        return st.line if st is not None else None


def time_key(when: When | None, steps_per_epoch: int | None) -> tuple[int, int]:
    """Where a rule starting at `when` sits on the timeline; ties are broken by file position.

    Without `steps_per_epoch` the two clocks cannot be compared, so epoch-timed statements are
    ordered before step-timed ones (docs/language.md, "Time"). Time 0 on either clock is the
    start, the same moment as a statement with no time.
    """
    if when is None or when.at == 0:
        return (0, 0)
    if steps_per_epoch is not None:
        return (0, when.at * steps_per_epoch if when.clock == "epoch" else when.at)
    return (0 if when.clock == "epoch" else 1, when.at)


@dataclass(frozen=True)
class Rule:
    """One group of a statement compiled: a regex for its name patterns, globs for its type
    selectors, and when it starts. A plain statement is one rule; `a then b then c ... every
    2 epochs` is one rule per group, each starting `every` later than the one before.

    The regexes are compiled when first used: binding matches names with `PartMatcher`, so
    parsing a policy (lint, fmt) never pays for them."""

    index: int
    statement: Statement
    #: Position of the statement in the policy, and of this rule's group in the statement.
    statement_index: int = 0
    group: int = 0
    #: When the rule takes effect (None: from the start).
    start: When | None = None

    @classmethod
    def compile_statement(cls, first_index: int, statement_index: int, st: Statement) -> list[Rule]:
        rules = []
        for group in range(len(st.selection.groups)):
            start = st.when
            if group and st.every is not None:
                base = st.when or When(st.every.clock, 0)
                start = When(base.clock, base.at + group * st.every.count, base.span)
            index = first_index + group
            rules.append(cls(index, st, statement_index, group, start))
        return rules

    @property
    def label(self) -> str:
        """The statement, or for one group of a `then` statement, that group and its time."""
        st = self.statement
        groups = st.selection.groups
        if len(groups) == 1:
            return str(st)
        selectors = ", ".join(str(s) for s in groups[self.group])
        when = f" at {self.start.clock} {self.start.at}" if self.start else ""
        if st.condition is not None:
            when = f" {st.condition} ({ordinal(self.group + 1)} time)"
        return f"{st.action} {selectors}{when} (group {self.group + 1} of {len(groups)})"

    @property
    def conditional(self) -> bool:
        """Whether a metric, not a clock, says when the rule starts (`when ... stops ...`)."""
        return self.statement.condition is not None

    def fired_at(self, fired: Fired) -> tuple[int, int] | None:
        """For a conditional rule, the moment (epoch, step) it took effect, if it has."""
        return fired_group(fired, self.statement_index, self.group)

    def warmup_factor(
        self, epoch: int, step: int, steps_per_epoch: int | None, fired: Fired = NOTHING_FIRED
    ) -> float:
        """How far the statement's warm-up has come at (epoch, step): in (0, 1], 1 when done.

        The ramp is linear and counts the step about to be taken, so the first step after
        the rule starts uses 1/N of the rate and the N-th the whole rate. With both in epochs
        and `steps_per_epoch` unknown, it moves once per epoch.
        """
        warmup = self.statement.warmup
        if warmup is None:
            return 1.0
        start = self.start or When(warmup.clock, 0)
        moment = self.fired_at(fired) if self.conditional else None
        if moment is not None:  # on the warm-up's own clock: no steps per epoch needed
            start = When(warmup.clock, moment[0] if warmup.clock == "epoch" else moment[1])
        spe = steps_per_epoch
        if start.clock == warmup.clock == "epoch" and spe is None:
            done, total = epoch - start.at, warmup.count
        elif start.clock == warmup.clock == "step":
            done, total = step - start.at, warmup.count
        else:
            if spe is None:
                raise PolicyResolveError(needs_steps_per_epoch(self.statement))
            start_step = start.at * spe if start.clock == "epoch" else start.at
            total = warmup.count * spe if warmup.clock == "epoch" else warmup.count
            done = step - start_step
        return min(1.0, max(done + 1, 1) / total)

    @property
    def writes(self) -> tuple[str, ...]:
        """The settings this statement decides for the parameters it selects."""
        action = self.statement.action
        if action in ("freeze", "unfreeze"):
            return ("trainable",)
        if action == "lr":
            return ("lr",)
        if action == "stats":
            return ("stats",)
        return ("decay",)

    def active(self, epoch: int, step: int, fired: Fired = NOTHING_FIRED) -> bool:
        if self.conditional:
            moment = self.fired_at(fired)
            return moment is not None and epoch >= moment[0] and step >= moment[1]
        when = self.start
        if when is None:
            return True
        return (epoch if when.clock == "epoch" else step) >= when.at

    def time_key(
        self, steps_per_epoch: int | None, fired: Fired = NOTHING_FIRED
    ) -> tuple[int, int]:
        """Where the rule sits on the timeline (see `time_key`); a conditional rule at the moment
        it took effect: its step with `steps_per_epoch`, else its epoch."""
        moment = self.fired_at(fired) if self.conditional else None
        if moment is None:
            return time_key(self.start, steps_per_epoch)
        return (0, moment[1] if steps_per_epoch is not None else moment[0])

    def selected(
        self,
        names: Sequence[str],
        module_types: Mapping[str, Collection[str]] | None,
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> frozenset[int]:
        """Indices of the names this rule selects (its `except` already removed), selector by
        selector: the plain definition, which `BoundPolicy.selected` computes faster."""
        selection = self.statement.selection
        hits = _match(names, selection.groups[self.group], module_types, shapes)
        if selection.exclude:
            hits -= _match(names, selection.exclude, module_types, shapes)
        return frozenset(hits)


def _match(
    names: Sequence[str],
    selectors: Iterable[Selector],
    module_types: Mapping[str, Collection[str]] | None,
    shapes: Mapping[str, Sequence[int]] | None,
) -> set[int]:
    hits: set[int] = set()
    for selector in selectors:
        chosen = set(selector_matches(selector, names, module_types, shapes))
        hits.update(i for i, n in enumerate(names) if n in chosen)
    return hits


def selector_matches(
    selector: Selector,
    names: Sequence[str],
    module_types: Mapping[str, Collection[str]] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """The names one selector matches (used by lint and `show`). Indices counted from the end
    count among `names`; `ndim` selectors need `shapes` and `type:` selectors `module_types`
    (without them they select nothing)."""
    if isinstance(selector, NamePattern):
        return compile_name_pattern(selector.text, selector.anchored).select(names)
    if isinstance(selector, ShapePattern):
        if shapes is None:
            return []
        return [n for n in names if selector.accepts(len(shapes[n]))]
    glob = compile_type_pattern(selector.text)
    if module_types is None:
        return []
    return [n for n in names if any(glob.fullmatch(c) for c in module_types.get(n, ()))]


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def rate_of(rule: Rule | None) -> Rate | None:
    if rule is None or rule.statement.value is None:
        return None
    v = rule.statement.value
    return Rate(v.number, v.relative)


#: How the FP207 message says where the number of steps per epoch comes from (the command
#: line says `--steps-per-epoch` instead).
STEPS_PER_EPOCH_HINT = "pass steps_per_epoch (FreezeScheduler and the Trainer callback do)"


def mixes_clocks(rule: Rule) -> bool:
    """Whether the rule's warm-up counts on the other clock than its start: resolving it then
    needs the number of steps per epoch (see `Rule.warmup_factor`)."""
    warmup = rule.statement.warmup
    if warmup is None:
        return False
    start = rule.start or When(warmup.clock, 0)
    return start.clock != warmup.clock


def needs_steps_per_epoch(st: Statement) -> Diagnostic:
    span = st.warmup.span if st.warmup is not None else st.span
    return Diagnostic(
        "FP207",
        f"`{st}` mixes epochs and steps in its warm-up, which needs the number of steps per "
        f"epoch: {STEPS_PER_EPOCH_HINT}",
        "<policy>",
        span.line,
        span.column,
        span.end_column if span.end_line == span.line else None,
    )
