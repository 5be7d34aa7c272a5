"""A policy bound to a fixed list of parameter names: names classified once, decisions per moment.

`BoundPolicy` is what resolution, lint, `show` and `apply_policy` all work from. Names that the
same statements select share a *signature* and get one decision at every moment, so the work per
moment is per signature, not per name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import arguments
from .classify import classify, other_key
from .conditions import NOTHING_FIRED, Fired, fired_moments
from .errors import Diagnostic, PolicyResolveError
from .layers import decay_underflows
from .nodes import NamePattern, Selector, ShapePattern
from .rules import Decision, Rate, Rule, rate_of

if TYPE_CHECKING:  # type-only: policy.py imports this module to bind
    from .policy import Policy


#: Lint checks every combination of event times up to this many moments.
MAX_LINT_MOMENTS = 400
#: A moment of a policy's timeline: epoch, step, and the `when` groups that have taken effect.
Moment = tuple[int, int, Fired]


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


def _frozen(t_rule: Rule | None, lr_rule: Rule | None) -> bool:
    """Whether the rules applied so far (the last freeze/unfreeze and the last lr that select a
    tensor) leave it frozen. A tensor no statement decided counts as training, as models
    start."""
    if lr_rule is not None and lr_rule.statement.layers is None:
        value = lr_rule.statement.value
        if value is not None and value.number == 0:
            return True
    return t_rule is not None and t_rule.statement.action == "freeze"


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


class BoundPolicy:
    """A policy together with the parameter names it decides over.

    Names are classified once: two names selected by the same statements (their *signature*)
    get the same decision at every moment, so decisions are made once per signature and given
    to names only when asked for. Binding and resolving therefore cost one short walk per name
    (see `PartMatcher`) plus work per signature, which stays small for any real model.
    """

    def __init__(
        self,
        policy: Policy,
        names: tuple[str, ...],
        module_types: Mapping[str, Collection[str]] | None,
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.policy = policy
        self.names = names
        self.module_types = module_types
        self.shapes = shapes
        self._statement_index = {id(r.statement): r.statement_index for r in policy.rules}
        self._selected: dict[int, frozenset[int]] = {}
        self._templates: dict[tuple, list[Decision]] = {}
        self._last_resolved: tuple[tuple, dict[str, Decision]] | None = None
        self._warming = [r for r in policy.rules if r.statement.warmup is not None]
        self._signatures: list[int] | None = None
        self._position: dict[str, int] | None = None
        self._decay_problems: list[Diagnostic] | None = None

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
        found = classify(self.policy, self.names, self.module_types, self.shapes)
        self._sig_rules = found.sig_rules
        self._first = found.first
        self._classified = found
        self._members_cache: list[list[int]] | None = None
        self._signatures = found.signatures

    def decay_problems(self) -> list[Diagnostic]:
        """FP112 for each layer decay whose factor rounds to 0 at the deepest layer of these
        names (layers.decay_underflows): an error for resolve, apply_policy and param_groups."""
        if self._decay_problems is None:
            self.signatures  # noqa: B018 - classify on first use
            self._decay_problems = decay_underflows(self.policy, self._classified.depths)
        return self._decay_problems

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
        found = self._classified
        if isinstance(selector, NamePattern):
            bit = found.name_bit.get((selector.text, selector.anchored))
            return bit is not None and bool(found.name_bits & bit)
        if (self.shapes if isinstance(selector, ShapePattern) else self.module_types) is None:
            return False
        bit = found.other_bit.get(other_key(selector))
        return bit is not None and bool(found.other_bits & bit)

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

    def order(
        self,
        epoch: int,
        step: int,
        steps_per_epoch: int | None = None,
        fired: Fired = NOTHING_FIRED,
    ) -> list[Rule]:
        """The rules whose time has come (or whose condition has fired), in the order they
        apply."""
        active = [r for r in self.policy.rules if r.active(epoch, step, fired)]
        active.sort(key=lambda r: (r.time_key(steps_per_epoch, fired), r.index))
        return active

    def state_key(
        self,
        epoch: int,
        step: int,
        steps_per_epoch: int | None = None,
        fired: Any = None,
    ) -> tuple:
        """What the decisions at (epoch, step) depend on: the active rules in order, and the
        progress of the warm-ups under way. Equal keys give equal decisions."""
        fired = self.fired(fired)
        order = tuple(r.index for r in self.order(epoch, step, steps_per_epoch, fired))
        if not self._warming:
            return order
        factors = tuple(
            self._factor(r, epoch, step, steps_per_epoch, fired)
            for r in self._warming
            if r.active(epoch, step, fired)
        )
        return (order, factors)

    def fired(self, fired: Any) -> Fired:
        """`fired` (None, a mapping of statement index to moments, or a `Fired`) checked."""
        if fired is None or fired == NOTHING_FIRED:
            return NOTHING_FIRED
        return fired_moments(fired, self.policy.statements, "fired")

    def decide_signatures(
        self,
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        fired: Any = None,
    ) -> list[Decision]:
        """One decision per signature at (epoch, step): the decision of its first name.
        `fired`: when the groups of `when` statements took effect (conditions.py)."""
        epoch, step, steps_per_epoch = arguments.moment(epoch, step, steps_per_epoch)
        problems = self.decay_problems()
        if problems:
            raise PolicyResolveError(problems)
        fired = self.fired(fired)
        key = self.state_key(epoch, step, steps_per_epoch, fired)
        cached = self._templates.get(key)
        if cached is None:
            order = self.order(epoch, step, steps_per_epoch, fired)
            factors = {
                r.index: self._factor(r, epoch, step, steps_per_epoch, fired)
                for r in order
                if r.statement.warmup is not None
            }
            if len(self._templates) > 4096:  # a long warm-up makes a key per step: bound it
                self._templates.clear()
            cached = self._templates[key] = self._decide(order, factors)
        return cached

    def decisions(
        self,
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        fired: Any = None,
    ) -> DecisionView:
        """The decisions at (epoch, step) as a read-only mapping, made as they are looked up."""
        templates = self.decide_signatures(
            epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, fired=fired
        )
        return DecisionView(self, templates)

    def resolve(
        self,
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        fired: Any = None,
    ) -> dict[str, Decision]:
        epoch, step, steps_per_epoch = arguments.moment(epoch, step, steps_per_epoch)
        fired = self.fired(fired)
        key = self.state_key(epoch, step, steps_per_epoch, fired)
        last = self._last_resolved
        if last is None or last[0] != key:
            templates = self.decide_signatures(
                epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, fired=fired
            )
            signatures = self.signatures
            out: dict[str, Decision] = {}
            for name, i in self.position.items():
                d = templates[signatures[i]]
                out[name] = d if d.name == name else _renamed(d, name)
            last = self._last_resolved = (key, out)
        # A copy: the cache must not change when a caller edits the dict it was given.
        return dict(last[1])

    def _factor(
        self, rule: Rule, epoch: int, step: int, steps_per_epoch: int | None, fired: Fired
    ) -> float:
        try:
            return rule.warmup_factor(epoch, step, steps_per_epoch, fired)
        except PolicyResolveError as exc:  # say where, in the file of the statement
            d = exc.first
            st = rule.statement
            where = self.policy.diagnostic(d.code, d.message, st, st.warmup)
            raise PolicyResolveError(where) from None

    def _decide(self, order: list[Rule], factors: Mapping[int, float]) -> list[Decision]:
        """One decision per signature, for the rules of `order` applied in that order."""
        self.signatures  # noqa: B018 - classify on first use
        out: list[Decision] = []
        depths = self._classified.depths
        for sig, selected in enumerate(self._sig_rules):
            t_rule = lr_rule = wd_rule = s_rule = None
            # Whether the tensor was frozen (by `freeze` or `lr 0`) when `t_rule` was applied:
            # an `unfreeze` warm-up ramps only what it turns from frozen to trainable.
            was_frozen = False
            for rule in order:  # the last applied statement that selects a name decides
                if not selected >> rule.index & 1:
                    continue
                action = rule.statement.action
                if action in ("freeze", "unfreeze"):
                    was_frozen = _frozen(t_rule, lr_rule)
                    t_rule = rule
                elif action == "lr":
                    lr_rule = rule
                elif action == "stats":
                    s_rule = rule
                else:
                    wd_rule = rule
            if lr_rule is not None and lr_rule.index in depths:
                # A layer decay: the factor once for every layer above this signature's.
                layers = lr_rule.statement.layers
                assert layers is not None
                deep = depths[lr_rule.index][sig] or 0
                lr: Rate | None = Rate(layers.factor.number**deep, relative=True)
            else:
                lr = rate_of(lr_rule)
            wd = rate_of(wd_rule)
            # A warm-up under way (of the `unfreeze` that made the parameter trainable, or of
            # the `lr` that set its rate) scales its rate; the one least far along holds it back.
            ramps = [factors.get(lr_rule.index, 1.0)] if lr_rule is not None else []
            if t_rule is not None and t_rule.statement.action == "unfreeze" and was_frozen:
                ramps.append(factors.get(t_rule.index, 1.0))
            ramp = min(ramps, default=1.0)
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

    def moments(self, limit: int = MAX_LINT_MOMENTS) -> list[Moment]:
        """Moments (epoch, step, fired) that together see every reachable set of active
        statements.

        Epoch-timed and step-timed statements activate independently, so every combination of
        an epoch event with a step event is a distinct set; (0, 0) comes first. Past `limit`
        combinations only a subset is tried. A `when` statement's groups take effect at moments
        no one knows in advance: with each number of its groups fired, all at one of the timed
        moments or after the last event of either clock or both, seen then and later; which is
        what lint checks and what the optimizer groups of `param_groups` are laid out for.
        """
        epochs, steps = self.policy.clock_times()
        timed = list(itertools.product(epochs, steps))
        if len(timed) > limit:
            # Too many combinations to try them all: each clock on its own, and both together.
            timed = sorted(
                {(e, 0) for e in epochs} | {(0, s) for s in steps} | {(epochs[-1], steps[-1])}
            )
        out: list[Moment] = [(e, s, NOTHING_FIRED) for e, s in timed]
        conditional = [
            (i, len(st.selection.groups))
            for i, st in enumerate(self.policy.statements)
            if st.condition is not None
        ]
        if not conditional:
            return out
        # Every combination of fired counts is (n1 + 1) * (n2 + 1) * ... - 1 of them: counted
        # before any is made, since 20 `when` statements would make a million.
        combinations = math.prod(n + 1 for _, n in conditional) - 1
        # A group can also fire after every timed moment on one clock and not on the other
        # (past the last epoch event, before a step-timed warm-up has ended): each clock gets a
        # moment after its last event.
        late_epoch, late_step = max(e for e, _ in timed) + 1, max(s for _, s in timed) + 1
        late = (late_epoch, late_step)
        times = sorted(
            {*timed, late}
            | {(late_epoch, s) for _, s in timed}
            | {(e, late_step) for e, _ in timed}
        )
        pairs = [(f, m) for f in times for m in times if f[0] <= m[0] and f[1] <= m[1]]
        if combinations * len(pairs) > limit:
            # Each statement alone at each count, and all at their last, at the start and at
            # the last moment.
            counts = [
                tuple(k if j == i else 0 for j in range(len(conditional)))
                for i, (_, n) in enumerate(conditional)
                for k in range(1, n + 1)
            ] + [tuple(n for _, n in conditional)]
            pairs = [(timed[0], timed[0]), (timed[0], late), (late, late)]
        else:
            counts = list(itertools.product(*(range(n + 1) for _, n in conditional)))[1:]
        for ks in counts:
            for f, m in pairs:
                fired = tuple((i, (f,) * k) for (i, _), k in zip(conditional, ks, strict=True) if k)
                out.append((m[0], m[1], fired))
        return out

    def effective_statements(self) -> set[int]:
        """Indices of the statements that decide some setting of some name at some moment."""
        used: set[int] = set()
        for epoch, step, fired in self.moments():
            for d in self._resolve_ignoring_warmup(epoch, step, fired):
                for st in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by):
                    if st is not None:
                        used.add(self._statement_index[id(st)])
        return used

    def overriding_statements(self, statements: Collection[int]) -> dict[int, list[int]]:
        """For each of the `statements` (indices), the statements that decide instead of it the
        settings it writes for the names it selects, at the moments it is in force: what lint
        names when it reports a statement that never takes effect (FP202). One pass over the
        moments for all of them: a policy can have thousands of such statements."""
        wanted = set(statements)
        found: dict[int, set[int]] = {i: set() for i in wanted}
        rules = [r for r in self.policy.rules if r.statement_index in wanted]
        for epoch, step, fired in self.moments() if rules else ():
            active = [r for r in rules if r.active(epoch, step, fired)]
            if not active:
                continue
            decisions = self._decide(self.order(epoch, step, None, fired), {})
            for rule in active:
                bit = 1 << rule.index
                into = found[rule.statement_index]
                for sig, selected in enumerate(self._sig_rules):
                    if not selected & bit:
                        continue
                    d = decisions[sig]
                    by = {"trainable": d.trainable_by, "lr": d.lr_by, "decay": d.decay_by}
                    by["stats"] = d.stats_by
                    for setting in rule.writes:
                        st = by[setting]
                        if st is not None:
                            into.add(self._statement_index[id(st)])
        return {i: sorted(found[i] - {i}) for i in wanted}

    def _resolve_ignoring_warmup(self, epoch: int, step: int, fired: Fired) -> list[Decision]:
        """Who decides what at a moment (one decision per signature); warm-up progress does not
        change who decides, and needs no `steps_per_epoch` here."""
        return self._decide(self.order(epoch, step, None, fired), {})
