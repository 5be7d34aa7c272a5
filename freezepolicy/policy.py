"""Compiled policies and resolution: parameter names and a moment of training in, decisions out.

Pure Python: nothing here imports torch, so `lint` and `show --names` stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import Diagnostic, PolicyResolveError
from .nodes import Comment, NamePattern, Selector, Statement, TypePattern, When
from .patterns import (
    PatternError,
    _Part,
    _split_parts,
    compile_name_pattern,
    compile_type_pattern,
)

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
    2 epochs` is one rule per group, each starting `every` later than the one before.

    The regexes are compiled when first used: binding matches names with `_PartMatcher`, so
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

    @functools.cached_property
    def _include(self) -> tuple[re.Pattern[str] | None, tuple[re.Pattern[str], ...]]:
        return _compile_selectors(self.statement.selection.groups[self.group])

    @functools.cached_property
    def _exclude(self) -> tuple[re.Pattern[str] | None, tuple[re.Pattern[str], ...]]:
        return _compile_selectors(self.statement.selection.exclude)

    @property
    def include(self) -> re.Pattern[str] | None:
        """One regex for the name selectors of this group (None without any)."""
        return self._include[0]

    @property
    def include_types(self) -> tuple[re.Pattern[str], ...]:
        return self._include[1]

    @property
    def exclude(self) -> re.Pattern[str] | None:
        """One regex for the name selectors of `except` (None without any)."""
        return self._exclude[0]

    @property
    def exclude_types(self) -> tuple[re.Pattern[str], ...]:
        return self._exclude[1]

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
    if len(unique) == 1:  # the parser compiled it already: take it from the cache
        return compile_name_pattern(*next(iter(unique))), types
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


class _PartMatcher:
    """Every name selector of a policy, matched against a name one part at a time.

    Searching each selector's regex in each name costs names x selectors regex searches, which
    is most of the time of binding a policy to a model with 100k tensors. Names share their
    parts (`model`, `layers`, `17`, `experts`, `weight`), so here a name is walked through a small
    automaton whose states say how far each selector has come, and each transition is computed
    once per (state, part) and then looked up: a name costs one dictionary lookup per part.

    Exactly as the regexes of patterns.py decide: a selector's regex is its parts' regexes
    joined by dots, each part's regex never matches a `.`, and a match must start and end at
    part boundaries, so the regex matches a name iff consecutive parts of the name fullmatch
    the part regexes in order (a `**` part letting any number of non-empty parts pass). The part
    regexes are the very ones the full regex is built from (`_Part.translate`).
    """

    def __init__(self, patterns: Sequence[tuple[str, bool]]) -> None:
        self._floating: list[tuple[int, int]] = []
        self._starts: dict[str, list[tuple[int, int]]] = {}
        self._parts: list[tuple[re.Pattern[str], ...]] = []
        self._gaps: list[frozenset[int]] = []  # i: a `**` lets parts pass before part i
        anchored_list = []
        for text, anchored in patterns:
            parts: list[re.Pattern[str]] = []
            gaps: set[int] = set()
            pending = False
            first_text = None
            for part, offset in _split_parts(text):
                if part == "**":
                    pending = True
                    continue
                if pending:
                    gaps.add(len(parts))
                if not parts:
                    first_text = part
                parts.append(_part_regex(part, offset))
                pending = False
            if not parts:  # only `**`: the regex is one whole part, so every name matches
                parts.append(re.compile(r"[^.]+"))
            if not anchored:
                gaps.discard(0)  # a floating pattern starts at every boundary anyway
            self._parts.append(tuple(parts))
            self._gaps.append(frozenset(gaps))
            anchored_list.append(anchored)
            if not anchored:
                # Unanchored patterns start again at every part boundary; one whose first part
                # is plain text can only start at a part equal to it.
                if first_text is not None and not any(c in first_text for c in "*?[]{}."):
                    self._starts.setdefault(first_text, []).append((len(self._parts) - 1, 0))
                else:
                    self._floating.append((len(self._parts) - 1, 0))
        self._states: list[tuple[frozenset[tuple[int, int]], int]] = []
        self._ids: dict[tuple[frozenset[tuple[int, int]], int], int] = {}
        self._next: list[dict[str, int]] = []
        root = frozenset((p, 0) for p, a in enumerate(anchored_list) if a)
        self._root = self._state(root, 0)

    def _state(self, live: frozenset[tuple[int, int]], matched: int) -> int:
        key = (live, matched)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self._states)
            self._states.append(key)
            self._next.append({})
        return sid

    def _step(self, sid: int, part: str) -> int:
        live, matched = self._states[sid]
        after: set[tuple[int, int]] = set()
        for p, i in itertools.chain(live, self._floating, self._starts.get(part, ())):
            if matched >> p & 1:
                continue  # matched higher up: the whole subtree is selected
            if part and i in self._gaps[p]:  # `(?:[^.]+\.)*`: only non-empty parts pass
                after.add((p, i))
            parts = self._parts[p]
            if parts[i].fullmatch(part):
                if i + 1 == len(parts):
                    matched |= 1 << p
                else:
                    after.add((p, i + 1))
        nxt = self._state(frozenset(x for x in after if not matched >> x[0] & 1), matched)
        self._next[sid][part] = nxt
        return nxt

    def bits_of(self, names: Iterable[str]) -> list[int]:
        """For each name, the patterns that match it: bit p is set when pattern p does.

        One call for all names: at 100k names the per-call overhead would be a tenth of it."""
        root, following, states, step = self._root, self._next, self._states, self._step
        out: list[int] = []
        add = out.append
        for name in names:
            sid = root
            for part in name.split("."):
                nxt = following[sid].get(part)
                sid = step(sid, part) if nxt is None else nxt
            add(states[sid][1])
        return out


def _part_regex(part: str, offset: int) -> re.Pattern[str]:
    """The compiled regex of one part of a name pattern (to fullmatch one part of a name)."""
    try:
        return _part_regex_cached(part)
    except PatternError:
        _Part(part, offset).translate()  # raises the error located in the whole pattern
        raise


@functools.lru_cache(maxsize=8192)
def _part_regex_cached(part: str) -> re.Pattern[str]:
    return re.compile(_Part(part, 0).translate())


def _renamed(d: Decision, name: str) -> Decision:
    """`d` for another name. Cheaper than dataclasses.replace, which matters 100k times over."""
    return Decision(
        name,
        d.trainable,
        d.lr,
        d.weight_decay,
        d.trainable_by,
        d.lr_by,
        d.decay_by,
        d.stats,
        d.stats_by,
        d.warmup,
    )


class DecisionView(Mapping[str, Decision]):
    """The decisions for every name at one moment, each made when first looked up.

    Names the policy cannot tell apart (the same statements select them) share one decision, so
    a model with 100k tensors has a few dozen distinct ones; making 100k objects at every moment
    is what made binding large models slow. Read-only; `dict(view)` makes them all.
    """

    __slots__ = ("_bound", "_templates", "_made")

    def __init__(self, bound: BoundPolicy, templates: Sequence[Decision]) -> None:
        self._bound = bound
        self._templates = templates
        self._made: dict[str, Decision] = {}

    def __getitem__(self, name: str) -> Decision:
        d = self._made.get(name)
        if d is None:
            bound = self._bound
            template = self._templates[bound.signatures[bound.position[name]]]
            d = template if template.name == name else _renamed(template, name)
            self._made[name] = d
        return d

    def __contains__(self, name: object) -> bool:
        return name in self._bound.position

    def __iter__(self) -> Iterator[str]:
        return iter(self._bound.position)

    def __len__(self) -> int:
        return len(self._bound.position)

    def __repr__(self) -> str:
        return f"DecisionView({len(self)} names)"


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
    """A policy together with the parameter names it decides over.

    Names are classified once: two names selected by the same statements (their *signature*)
    get the same decision at every moment, so decisions are made once per signature and given
    to names only when asked for. Binding and resolving therefore cost one short walk per name
    (see `_PartMatcher`) plus work per signature, which stays small for any real model.
    """

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
        self._templates: dict[tuple, list[Decision]] = {}
        self._last_resolved: tuple[tuple, dict[str, Decision]] | None = None
        self._warming = [r for r in policy.rules if r.statement.warmup is not None]
        self._signatures: list[int] | None = None
        self._position: dict[str, int] | None = None

    # --- classification ------------------------------------------------------------------------

    @property
    def position(self) -> dict[str, int]:
        """Name -> index of its first occurrence in `names`."""
        if self._position is None:
            position: dict[str, int] = {}
            for i, name in enumerate(self.names):
                position.setdefault(name, i)
            self._position = position
        return self._position

    @property
    def signatures(self) -> list[int]:
        """For each name (by index), its signature: names with equal signatures are selected by
        the same rules. Signatures are numbered 0, 1, ... in order of their first name."""
        if self._signatures is None:
            self._classify()
        assert self._signatures is not None
        return self._signatures

    def _classify(self) -> None:
        rules = self.policy.rules
        name_ids: dict[tuple[str, bool], int] = {}
        type_ids: dict[str, int] = {}

        def masks(selectors: Iterable[Selector]) -> tuple[int, int]:
            names_mask = types_mask = 0
            for s in selectors:
                if isinstance(s, NamePattern):
                    names_mask |= 1 << name_ids.setdefault((s.text, s.anchored), len(name_ids))
                else:
                    types_mask |= 1 << type_ids.setdefault(s.text, len(type_ids))
            return names_mask, types_mask

        rule_masks = []
        for r in rules:
            selection = r.statement.selection
            rule_masks.append((masks(selection.groups[r.group]), masks(selection.exclude)))
        matcher = _PartMatcher(list(name_ids))
        type_globs = [compile_type_pattern(t) for t in type_ids]
        # Each pass below runs over every name in C or in one tight loop: 100k names.
        name_bits = matcher.bits_of(self.names)
        odd = [i for i, name in enumerate(self.names) if "\n" in name]
        if odd:  # `$` also matches before a final newline: let the regexes decide
            searches = [compile_name_pattern(t, a) for t, a in name_ids]
            for i in odd:
                name = self.names[i]
                name_bits[i] = sum(1 << p for p, rx in enumerate(searches) if rx.search(name))
        type_bits: Iterable[int] = itertools.repeat(0)
        if type_globs and self.module_types is not None:
            get = self.module_types.get
            found = [get(name, ()) for name in self.names]
            try:
                distinct = set(found)  # frozensets (from inspect_model): their hashes are cached
            except TypeError:  # lists or sets given by hand
                found = [frozenset(c) for c in found]
                distinct = set(found)
            of_classes = {
                c: sum(
                    1 << q for q, glob in enumerate(type_globs) if any(glob.fullmatch(x) for x in c)
                )
                for c in distinct
            }
            type_bits = map(of_classes.__getitem__, found)
        # Signatures numbered in order of their first name (setdefault gives a new key the next).
        key_of: dict[tuple[int, int], int] = {}
        signatures = [
            key_of.setdefault(key, len(key_of))
            for key in zip(name_bits, type_bits, strict=False)  # type_bits may be endless
        ]
        keys = list(key_of)

        # Which rules select each signature (a bit per rule index), and which names it holds.
        self._sig_rules: list[int] = []
        self._name_bits = self._type_bits = 0
        for nb, tb in keys:
            self._name_bits |= nb
            self._type_bits |= tb
            selected = 0
            for r, ((inc_n, inc_t), (exc_n, exc_t)) in zip(rules, rule_masks, strict=True):
                if (nb & inc_n or tb & inc_t) and not (nb & exc_n or tb & exc_t):
                    selected |= 1 << r.index
            self._sig_rules.append(selected)
        # The first name of each signature. Signatures are numbered in order of their first
        # names, so each search starts where the last one ended: one scan in C in all.
        self._first: list[int] = []
        start = 0
        for sig in range(len(keys)):
            start = signatures.index(sig, start)
            self._first.append(start)
        self._members_cache: list[list[int]] | None = None
        self._name_bit = {k: 1 << v for k, v in name_ids.items()}
        self._type_bit = {k: 1 << v for k, v in type_ids.items()}
        self._signatures = signatures

    def first_of_signature(self) -> list[int]:
        """For each signature, the index of its first name."""
        self.signatures  # noqa: B018 - classify on first use
        return list(self._first)

    def _members(self) -> list[list[int]]:
        """The indices of the names of each signature (made on first use: lint needs them,
        applying a policy does not)."""
        if self._members_cache is None:
            members: list[list[int]] = [[] for _ in self._first]
            for i, sig in enumerate(self.signatures):
                members[sig].append(i)
            self._members_cache = members
        return self._members_cache

    def signature_rules(self, signature: int) -> int:
        """The rules that select the names of `signature`, as a bit per rule index."""
        self.signatures  # noqa: B018 - classify on first use
        return self._sig_rules[signature]

    def matches_anything(self, selector: Selector) -> bool:
        """Whether `selector` (one of this policy's) selects some name on its own."""
        self.signatures  # noqa: B018 - classify on first use
        if isinstance(selector, NamePattern):
            bit = self._name_bit.get((selector.text, selector.anchored))
            return bit is not None and bool(self._name_bits & bit)
        if self.module_types is None:
            return False
        bit = self._type_bit.get(selector.text)
        return bit is not None and bool(self._type_bits & bit)

    def selected(self, rule: Rule) -> frozenset[int]:
        """Indices of the names `rule` selects (its `except` already removed)."""
        hit = self._selected.get(rule.index)
        if hit is None:
            self.signatures  # noqa: B018 - classify on first use
            bit = 1 << rule.index
            hit = self._selected[rule.index] = frozenset(
                itertools.chain.from_iterable(
                    m for m, sel in zip(self._members(), self._sig_rules, strict=True) if sel & bit
                )
            )
        return hit

    # --- moments -------------------------------------------------------------------------------

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

    def decide_signatures(
        self, *, epoch: int = 0, step: int = 0, steps_per_epoch: int | None = None
    ) -> list[Decision]:
        """One decision per signature at (epoch, step): the decision of its first name."""
        key = self.state_key(epoch, step, steps_per_epoch)
        cached = self._templates.get(key)
        if cached is None:
            order = self.order(epoch, step, steps_per_epoch)
            factors = {
                r.index: self._factor(r, epoch, step, steps_per_epoch)
                for r in order
                if r.statement.warmup is not None
            }
            if len(self._templates) > 4096:  # a long warm-up makes a key per step: bound it
                self._templates.clear()
            cached = self._templates[key] = self._decide(order, factors)
        return cached

    def decisions(
        self, *, epoch: int = 0, step: int = 0, steps_per_epoch: int | None = None
    ) -> DecisionView:
        """The decisions at (epoch, step) as a read-only mapping, made as they are looked up."""
        templates = self.decide_signatures(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch)
        return DecisionView(self, templates)

    def resolve(
        self, *, epoch: int = 0, step: int = 0, steps_per_epoch: int | None = None
    ) -> dict[str, Decision]:
        key = self.state_key(epoch, step, steps_per_epoch)
        last = self._last_resolved
        if last is None or last[0] != key:
            templates = self.decide_signatures(
                epoch=epoch, step=step, steps_per_epoch=steps_per_epoch
            )
            signatures = self.signatures
            out: dict[str, Decision] = {}
            for name, i in self.position.items():
                d = templates[signatures[i]]
                out[name] = d if d.name == name else _renamed(d, name)
            last = self._last_resolved = (key, out)
        # A copy: the cache must not change when a caller edits the dict it was given.
        return dict(last[1])

    def _factor(self, rule: Rule, epoch: int, step: int, steps_per_epoch: int | None) -> float:
        try:
            return rule.warmup_factor(epoch, step, steps_per_epoch)
        except PolicyResolveError as exc:  # say where, in this policy's own file
            d = exc.first
            lines = self.policy.text.split("\n")
            source = lines[d.line - 1] if d.line and 0 < d.line <= len(lines) else None
            where = dataclasses.replace(d, path=self.policy.source, source_line=source)
            raise PolicyResolveError(where) from None

    def _decide(self, order: list[Rule], factors: Mapping[int, float]) -> list[Decision]:
        """One decision per signature, for the rules of `order` applied in that order."""
        self.signatures  # noqa: B018 - classify on first use
        out: list[Decision] = []
        for sig, selected in enumerate(self._sig_rules):
            t_rule = lr_rule = wd_rule = s_rule = None
            for rule in order:  # the last applied statement that selects a name decides
                if not selected >> rule.index & 1:
                    continue
                action = rule.statement.action
                if action in ("freeze", "unfreeze"):
                    t_rule = rule
                elif action == "lr":
                    lr_rule = rule
                elif action == "stats":
                    s_rule = rule
                else:
                    wd_rule = rule
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
            out.append(
                Decision(
                    self.names[self._first[sig]],
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
            )
        return out

    def moments(self, limit: int = MAX_LINT_MOMENTS) -> list[tuple[int, int]]:
        """Moments (epoch, step) that together see every reachable set of active statements.

        Epoch-timed and step-timed statements activate independently, so every combination of
        an epoch event with a step event is a distinct set; (0, 0) comes first. Past `limit`
        combinations only a subset is tried.
        """
        epochs, steps = self.policy.clock_times()
        moments = list(itertools.product(epochs, steps))
        if len(moments) > limit:
            # Too many combinations to try them all: each clock on its own, and both together.
            moments = sorted(
                {(e, 0) for e in epochs} | {(0, s) for s in steps} | {(epochs[-1], steps[-1])}
            )
        return moments

    def effective_statements(self) -> set[int]:
        """Indices of the statements that decide some setting of some name at some moment."""
        used: set[int] = set()
        for epoch, step in self.moments():
            for d in self._resolve_ignoring_warmup(epoch, step):
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by):
                    if st is not None:
                        used.add(self._statement_index[id(st)])
        return used

    def _resolve_ignoring_warmup(self, epoch: int, step: int) -> list[Decision]:
        """Who decides what at a moment (one decision per signature); warm-up progress does not
        change who decides, and needs no `steps_per_epoch` here."""
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
