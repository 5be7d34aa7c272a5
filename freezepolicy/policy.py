"""Compiled policies and resolution: parameter names and a moment of training in, decisions out.

Pure Python: nothing here imports torch, so `lint` and `show --names` stay fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import Diagnostic, PolicyResolveError
from .nodes import Comment, NamePattern, Selector, Statement, TypePattern, When
from .patterns import compile_name_pattern, compile_type_pattern

#: Lint checks every combination of event times up to this many moments.
MAX_LINT_MOMENTS = 400


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


def _time_key(when: When | None, steps_per_epoch: int | None) -> tuple[int, int]:
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
    2 epochs` is one rule per group, each starting `every` later than the one before."""

    index: int
    statement: Statement
    include: re.Pattern[str] | None
    include_types: tuple[re.Pattern[str], ...]
    exclude: re.Pattern[str] | None
    exclude_types: tuple[re.Pattern[str], ...]
    #: Position of the statement in the policy, and of this rule's group in the statement.
    statement_index: int = 0
    group: int = 0
    #: When the rule takes effect (None: from the start).
    start: When | None = None

    @classmethod
    def compile_statement(cls, first_index: int, statement_index: int, st: Statement) -> list[Rule]:
        exc, exc_t = _compile_selectors(st.selection.exclude)
        rules = []
        for group, selectors in enumerate(st.selection.groups):
            inc, inc_t = _compile_selectors(selectors)
            start = st.when
            if group and st.every is not None:
                base = st.when or When(st.every.clock, 0)
                start = When(base.clock, base.at + group * st.every.count, base.span)
            index = first_index + group
            rules.append(cls(index, st, inc, inc_t, exc, exc_t, statement_index, group, start))
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
        return f"{st.action} {selectors}{when} (group {self.group + 1} of {len(groups)})"

    def warmup_factor(self, epoch: int, step: int, steps_per_epoch: int | None) -> float:
        """How far the statement's warm-up has come at (epoch, step): in (0, 1], 1 when done.

        The ramp is linear and counts the step about to be taken, so the first step after
        the rule starts uses 1/N of the rate and the N-th the whole rate. With both in epochs
        and `steps_per_epoch` unknown, it moves once per epoch.
        """
        warmup = self.statement.warmup
        if warmup is None:
            return 1.0
        start = self.start or When(warmup.clock, 0)
        spe = steps_per_epoch
        if start.clock == warmup.clock == "epoch" and spe is None:
            done, total = epoch - start.at, warmup.count
        elif start.clock == warmup.clock == "step":
            done, total = step - start.at, warmup.count
        else:
            if spe is None:
                raise PolicyResolveError(_needs_steps_per_epoch(self.statement))
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

    def active(self, epoch: int, step: int) -> bool:
        when = self.start
        if when is None:
            return True
        return (epoch if when.clock == "epoch" else step) >= when.at

    def selected(
        self, names: Sequence[str], module_types: Mapping[str, Collection[str]] | None
    ) -> frozenset[int]:
        """Indices of the names this statement selects (its `except` already removed)."""
        hits = _match(names, self.include, self.include_types, module_types)
        if self.exclude is not None or self.exclude_types:
            hits -= _match(names, self.exclude, self.exclude_types, module_types)
        return frozenset(hits)


def _compile_selectors(
    selectors: Iterable[Selector],
) -> tuple[re.Pattern[str] | None, tuple[re.Pattern[str], ...]]:
    names = [s for s in selectors if isinstance(s, NamePattern)]
    types = tuple(compile_type_pattern(s.text) for s in selectors if isinstance(s, TypePattern))
    if not names:
        return None, types
    # Duplicates are dropped first: a selector listed twice must not make the regex twice as big.
    unique = dict.fromkeys((s.text, s.anchored) for s in names)
    combined = "|".join(compile_name_pattern(t, a).pattern for t, a in unique)
    return re.compile(combined), types


def _match(
    names: Sequence[str],
    regex: re.Pattern[str] | None,
    types: tuple[re.Pattern[str], ...],
    module_types: Mapping[str, Collection[str]] | None,
) -> set[int]:
    hits: set[int] = set()
    if regex is not None:
        search = regex.search
        hits.update(i for i, n in enumerate(names) if search(n))
    if types and module_types is not None:
        for i, n in enumerate(names):
            classes = module_types.get(n, ())
            if any(t.fullmatch(c) for t in types for c in classes):
                hits.add(i)
    return hits


def selector_matches(
    selector: Selector,
    names: Sequence[str],
    module_types: Mapping[str, Collection[str]] | None = None,
) -> list[str]:
    """The names one selector matches (used by lint and `show`)."""
    if isinstance(selector, NamePattern):
        regex = compile_name_pattern(selector.text, selector.anchored)
        return [n for n in names if regex.search(n)]
    glob = compile_type_pattern(selector.text)
    if module_types is None:
        return []
    return [n for n in names if any(glob.fullmatch(c) for c in module_types.get(n, ()))]


@dataclass
class Policy:
    """A parsed and compiled policy. Build one with `freezepolicy.parse` or `freezepolicy.load`."""

    statements: tuple[Statement, ...]
    source: str = "<string>"
    text: str = ""
    comments: tuple[Comment, ...] = ()
    rules: tuple[Rule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rules: list[Rule] = []
        for i, st in enumerate(self.statements):
            rules.extend(Rule.compile_statement(len(rules), i, st))
        self.rules = tuple(rules)

    @property
    def has_type_selectors(self) -> bool:
        return any(
            isinstance(s, TypePattern) for st in self.statements for s in st.selection.selectors
        )

    def events(self) -> list[tuple[str, int]]:
        """The distinct moments at which something changes, as (clock, value), in time order.

        A warm-up changes the learning rate at every step (or epoch) it lasts; its start is
        the event listed here.
        """
        times = {(r.start.clock, r.start.at) for r in self.rules if r.start and r.start.at}
        return sorted(times, key=lambda t: (t[0] == "step", t[1]))

    def clock_times(self) -> tuple[list[int], list[int]]:
        """Epochs and steps at which some rule starts, each list with 0 first."""
        epochs = {0} | {r.start.at for r in self.rules if r.start and r.start.clock == "epoch"}
        steps = {0} | {r.start.at for r in self.rules if r.start and r.start.clock == "step"}
        return sorted(epochs), sorted(steps)

    def bind(
        self,
        names: Iterable[str],
        module_types: Mapping[str, Collection[str]] | None = None,
    ) -> BoundPolicy:
        """This policy over a fixed list of names: selections are matched once and cached."""
        return BoundPolicy(self, tuple(names), module_types)

    def resolve(
        self,
        names: Iterable[str],
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        module_types: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, Decision]:
        """One `Decision` per name at the moment (`epoch`, `step`), both 0-based.

        `module_types` maps a parameter name to the class names (with their bases) of the
        modules that contain it; without it, `type:` selectors select nothing.
        """
        return self.bind(names, module_types).resolve(
            epoch=epoch, step=step, steps_per_epoch=steps_per_epoch
        )

    def format(self) -> str:
        """The canonical text of this policy (what `freezepolicy fmt` writes)."""
        from .printer import format_policy

        return format_policy(self)


class BoundPolicy:
    """A policy together with the parameter names it decides over."""

    def __init__(
        self,
        policy: Policy,
        names: tuple[str, ...],
        module_types: Mapping[str, Collection[str]] | None,
    ) -> None:
        self.policy = policy
        self.names = names
        self.module_types = module_types
        self._statement_index = {id(r.statement): r.statement_index for r in policy.rules}
        self._selected: dict[int, frozenset[int]] = {}
        self._resolved: dict[tuple, dict[str, Decision]] = {}
        self._warming = [r for r in policy.rules if r.statement.warmup is not None]

    def selected(self, rule: Rule) -> frozenset[int]:
        hit = self._selected.get(rule.index)
        if hit is None:
            hit = self._selected[rule.index] = rule.selected(self.names, self.module_types)
        return hit

    def order(self, epoch: int, step: int, steps_per_epoch: int | None = None) -> list[Rule]:
        """The rules whose time has come, in the order they apply."""
        active = [r for r in self.policy.rules if r.active(epoch, step)]
        active.sort(key=lambda r: (_time_key(r.start, steps_per_epoch), r.index))
        return active

    def state_key(self, epoch: int, step: int, steps_per_epoch: int | None = None) -> tuple:
        """What the decisions at (epoch, step) depend on: the active rules in order, and the
        progress of the warm-ups under way. Equal keys give equal decisions."""
        order = tuple(r.index for r in self.order(epoch, step, steps_per_epoch))
        if not self._warming:
            return order
        factors = tuple(
            self._factor(r, epoch, step, steps_per_epoch)
            for r in self._warming
            if r.active(epoch, step)
        )
        return (order, factors)

    def resolve(
        self, *, epoch: int = 0, step: int = 0, steps_per_epoch: int | None = None
    ) -> dict[str, Decision]:
        key = self.state_key(epoch, step, steps_per_epoch)
        cached = self._resolved.get(key)
        if cached is None:
            order = self.order(epoch, step, steps_per_epoch)
            factors = {
                r.index: self._factor(r, epoch, step, steps_per_epoch)
                for r in order
                if r.statement.warmup is not None
            }
            if len(self._resolved) > 4096:  # a long warm-up makes a key per step: bound it
                self._resolved.clear()
            cached = self._resolved[key] = self._decide(order, factors)
        # A copy: the cache must not change when a caller edits the dict it was given.
        return dict(cached)

    def _factor(self, rule: Rule, epoch: int, step: int, steps_per_epoch: int | None) -> float:
        try:
            return rule.warmup_factor(epoch, step, steps_per_epoch)
        except PolicyResolveError as exc:  # say where, in this policy's own file
            d = exc.first
            lines = self.policy.text.split("\n")
            source = lines[d.line - 1] if d.line and 0 < d.line <= len(lines) else None
            where = dataclasses.replace(d, path=self.policy.source, source_line=source)
            raise PolicyResolveError(where) from None

    def _decide(self, order: list[Rule], factors: Mapping[int, float]) -> dict[str, Decision]:
        n = len(self.names)
        deciders: dict[str, list[Rule | None]] = {
            "trainable": [None] * n,
            "lr": [None] * n,
            "decay": [None] * n,
            "stats": [None] * n,
        }
        for rule in order:
            hit = self.selected(rule)
            for setting in rule.writes:
                slots = deciders[setting]
                for i in hit:
                    slots[i] = rule
        out: dict[str, Decision] = {}
        for i, name in enumerate(self.names):
            t_rule, lr_rule, wd_rule = (
                deciders["trainable"][i],
                deciders["lr"][i],
                deciders["decay"][i],
            )
            lr = _rate(lr_rule)
            wd = _rate(wd_rule)
            # A warm-up under way (of the `unfreeze` that made the parameter trainable, or of
            # the `lr` that set its rate) scales its rate; the one least far along holds it back.
            ramp = min(
                (
                    factors.get(r.index, 1.0)
                    for r in (t_rule, lr_rule)
                    if r is not None and r.statement.action in ("unfreeze", "lr")
                ),
                default=1.0,
            )
            if ramp < 1.0 and not (lr is not None and lr.is_zero):
                lr = Rate(lr.value * ramp, lr.relative) if lr else Rate(ramp, relative=True)
            if lr is not None and lr.is_zero:
                # A learning rate of 0 is a freeze: reported (and later applied) as not trainable.
                trainable: bool | None = False
                t_by = lr_rule
            elif t_rule is not None:
                trainable = t_rule.statement.action == "unfreeze"
                t_by = t_rule
            else:
                trainable, t_by = None, None
            s_rule = deciders["stats"][i]
            out[name] = Decision(
                name,
                trainable,
                lr,
                wd,
                t_by.statement if t_by else None,
                lr_rule.statement if lr_rule else None,
                wd_rule.statement if wd_rule else None,
                s_rule.statement.mode == "update" if s_rule else None,
                s_rule.statement if s_rule else None,
                ramp if ramp < 1.0 else None,
            )
        return out

    def moments(self) -> list[tuple[int, int]]:
        """Moments (epoch, step) that together see every reachable set of active statements."""
        epochs, steps = self.policy.clock_times()
        moments = list(itertools.product(epochs, steps))
        if len(moments) > MAX_LINT_MOMENTS:
            # Too many combinations to try them all: each clock on its own, and both together.
            moments = sorted(
                {(e, 0) for e in epochs} | {(0, s) for s in steps} | {(epochs[-1], steps[-1])}
            )
        return moments

    def effective_statements(self) -> set[int]:
        """Indices of the statements that decide some setting of some name at some moment."""
        used: set[int] = set()
        for epoch, step in self.moments():
            for d in self._resolve_ignoring_warmup(epoch, step).values():
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by):
                    if st is not None:
                        used.add(self._statement_index[id(st)])
        return used

    def _resolve_ignoring_warmup(self, epoch: int, step: int) -> dict[str, Decision]:
        """Who decides what at a moment; warm-up progress does not change who decides, and
        needs no `steps_per_epoch` here."""
        return self._decide(self.order(epoch, step), {})


def _rate(rule: Rule | None) -> Rate | None:
    if rule is None or rule.statement.value is None:
        return None
    v = rule.statement.value
    return Rate(v.number, v.relative)


def _needs_steps_per_epoch(st: Statement) -> Diagnostic:
    span = st.warmup.span if st.warmup is not None else st.span
    return Diagnostic(
        "FP207",
        f"`{st}` mixes epochs and steps in its warm-up, which needs the number of steps per "
        "epoch: pass steps_per_epoch (FreezeScheduler and the Trainer callback do)",
        "<policy>",
        span.line,
        span.column,
        span.end_column if span.end_line == span.line else None,
    )
