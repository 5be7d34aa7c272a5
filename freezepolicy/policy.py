"""Compiled policies and resolution: parameter names and a moment of training in, decisions out.

Pure Python: nothing here imports torch, so `lint` and `show --names` stay fast.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .nodes import Comment, NamePattern, Selector, Statement, TypePattern
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

    @property
    def statement(self) -> Statement | None:
        return self.trainable_by or self.lr_by or self.decay_by or self.stats_by

    @property
    def line(self) -> int | None:
        st = self.statement
        return st.line if st is not None else None


def _time_key(statement: Statement, steps_per_epoch: int | None) -> tuple[int, int]:
    """Where a statement sits on the timeline; ties are broken by its place in the file.

    Without `steps_per_epoch` the two clocks cannot be compared, so epoch-timed statements are
    ordered before step-timed ones (docs/language.md, "Time"). Time 0 on either clock is the
    start, the same moment as a statement with no time.
    """
    when = statement.when
    if when is None or when.at == 0:
        return (0, 0)
    if steps_per_epoch is not None:
        return (0, when.at * steps_per_epoch if when.clock == "epoch" else when.at)
    return (0 if when.clock == "epoch" else 1, when.at)


@dataclass(frozen=True)
class Rule:
    """A statement compiled: one regex for its name patterns, globs for its type selectors."""

    index: int
    statement: Statement
    include: re.Pattern[str] | None
    include_types: tuple[re.Pattern[str], ...]
    exclude: re.Pattern[str] | None
    exclude_types: tuple[re.Pattern[str], ...]

    @classmethod
    def compile(cls, index: int, statement: Statement) -> Rule:
        inc, inc_t = _compile_selectors(statement.selection.include)
        exc, exc_t = _compile_selectors(statement.selection.exclude)
        return cls(index, statement, inc, inc_t, exc, exc_t)

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
        when = self.statement.when
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
        self.rules = tuple(Rule.compile(i, s) for i, s in enumerate(self.statements))

    @property
    def has_type_selectors(self) -> bool:
        return any(
            isinstance(s, TypePattern)
            for st in self.statements
            for s in (*st.selection.include, *st.selection.exclude)
        )

    def events(self) -> list[tuple[str, int]]:
        """The distinct moments at which something changes, as (clock, value), in time order."""
        times = {(st.when.clock, st.when.at) for st in self.statements if st.when and st.when.at}
        return sorted(times, key=lambda t: (t[0] == "step", t[1]))

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
        self._index = {id(r.statement): r.index for r in policy.rules}
        self._selected: dict[int, frozenset[int]] = {}
        self._resolved: dict[tuple[int, ...], dict[str, Decision]] = {}

    def selected(self, rule: Rule) -> frozenset[int]:
        hit = self._selected.get(rule.index)
        if hit is None:
            hit = self._selected[rule.index] = rule.selected(self.names, self.module_types)
        return hit

    def order(self, epoch: int, step: int, steps_per_epoch: int | None = None) -> list[Rule]:
        """The rules whose time has come, in the order they apply."""
        active = [r for r in self.policy.rules if r.active(epoch, step)]
        active.sort(key=lambda r: (_time_key(r.statement, steps_per_epoch), r.index))
        return active

    def resolve(
        self, *, epoch: int = 0, step: int = 0, steps_per_epoch: int | None = None
    ) -> dict[str, Decision]:
        order = self.order(epoch, step, steps_per_epoch)
        key = tuple(r.index for r in order)
        cached = self._resolved.get(key)
        if cached is None:
            cached = self._resolved[key] = self._decide(order)
        # A copy: the cache must not change when a caller edits the dict it was given.
        return dict(cached)

    def _decide(self, order: list[Rule]) -> dict[str, Decision]:
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
            )
        return out

    def moments(self) -> list[tuple[int, int]]:
        """Moments (epoch, step) that together see every reachable set of active statements."""
        epochs = sorted(
            {0} | {s.when.at for s in self.policy.statements if s.when and s.when.clock == "epoch"}
        )
        steps = sorted(
            {0} | {s.when.at for s in self.policy.statements if s.when and s.when.clock == "step"}
        )
        moments = list(itertools.product(epochs, steps))
        if len(moments) > MAX_LINT_MOMENTS:
            # Too many combinations to try them all: each clock on its own, and both together.
            moments = sorted(
                {(e, 0) for e in epochs} | {(0, s) for s in steps} | {(epochs[-1], steps[-1])}
            )
        return moments

    def effective_rules(self) -> set[int]:
        """Indices of the statements that decide some setting of some name at some moment."""
        used: set[int] = set()
        for epoch, step in self.moments():
            for d in self.resolve(epoch=epoch, step=step).values():
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by):
                    if st is not None:
                        used.add(self._index[id(st)])
        return used


def _rate(rule: Rule | None) -> Rate | None:
    if rule is None or rule.statement.value is None:
        return None
    v = rule.statement.value
    return Rate(v.number, v.relative)
