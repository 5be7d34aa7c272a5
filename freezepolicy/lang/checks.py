"""The checks that need parameter names (and, for some, a model's module types and tied groups).

FP201 (a selector selects nothing), FP202 (a statement never takes effect), FP204 (an unfreeze
blocked by `lr 0`), FP203 (a `type:` selector without a model) and, with a model, FP205 (a tied
tensor decided two ways). Used by `lint`, `show` and `apply_policy`. Pure Python.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from . import arguments
from .bound import BoundPolicy
from .errors import Diagnostic
from .nodes import NamePattern, Selector, ShapePattern, Statement, TypePattern
from .policy import Policy
from .rules import Rule, mixes_clocks, ordinal
from .tied import tied_conflicts_over_time


def _diag(
    policy: Policy, code: str, message: str, node, st: Statement, severity: str = "warning"
) -> Diagnostic:
    return policy.diagnostic(code, message, st, node, severity)


def _needs_model(sel: object, no_types: bool, no_shapes: bool) -> tuple[str, str] | None:
    """The note code and what `sel` selects by, when it cannot be evaluated on names alone."""
    if isinstance(sel, TypePattern) and no_types:
        return "FP203", "module type"
    if isinstance(sel, ShapePattern) and no_shapes:
        return "FP230", "tensor shape"
    return None


def check_names(
    policy: Policy,
    names: Sequence[str],
    module_types: Mapping[str, Collection[str]] | None = None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    bound: BoundPolicy | None = None,
) -> list[Diagnostic]:
    """The checks that need parameter names: selectors that match nothing, and statements that
    never decide anything because later statements always override them.

    `bound` is `policy.bind(names, module_types, shapes)` when the caller has it already.
    """
    if not isinstance(policy, Policy):
        raise TypeError(
            f"check_names() takes a Policy (from freezepolicy.parse or load), got"
            f" {type(policy).__name__}"
        )
    out: list[Diagnostic] = []
    names = list(arguments.parameter_names(names, "check_names()"))
    if bound is None:
        bound = policy.bind(names, module_types, shapes)
    suggest = _Suggester(names)
    silent: set[int] = set()  # statements with a selector we cannot evaluate or that is empty
    for index, st in enumerate(policy.statements):
        for sel in st.selection.selectors:
            unknown = _needs_model(sel, module_types is None, shapes is None)
            if unknown is not None:
                code, what = unknown
                out.append(
                    _diag(
                        policy,
                        code,
                        f"`{sel}` selects by {what}, which needs a model; check it with `--model`",
                        sel,
                        st,
                        severity="note",
                    )
                )
                silent.add(index)
                continue
            if not bound.matches_anything(sel):
                out.append(_diag(policy, "FP201", _nothing_message(sel, st, suggest), sel, st))
                if sel not in st.selection.exclude:
                    silent.add(index)
    out.extend(bound.decay_problems())  # FP112: a layer decay that rounds to 0 at depth
    effective = bound.effective_statements()
    rules_of: dict[int, list[Rule]] = {}
    for r in policy.rules:
        rules_of.setdefault(r.statement_index, []).append(r)
    never = [
        index
        for index in range(len(policy.statements))
        if index not in effective
        and index not in silent
        # (one whose selectors match nothing, or all are excepted, is reported already)
        and any(bound.selected(r) for r in rules_of[index])
    ]
    overriders = bound.overriding_statements(never)
    for index in never:
        st = policy.statements[index]
        rules = rules_of[index]
        blocked = next(
            (b for b in (_blocked_by_lr_zero(bound, r) for r in rules) if b is not None), None
        )
        if blocked is not None:
            out.append(
                _diag(
                    policy,
                    "FP204",
                    f"`{_head(st)}` never takes effect: the learning rate of what it selects is 0 "
                    f"(line {blocked.line}), which keeps it frozen",
                    st,
                    st,
                )
            )
        else:
            lines = [policy.statements[i].line for i in overriders[index]]
            where = ""
            if lines:
                where = f" ({'line' if len(lines) == 1 else 'lines'} {_listed(lines)})"
            out.append(
                _diag(
                    policy,
                    "FP202",
                    f"`{_head(st)}` never changes anything: later statements always override"
                    f" it{where}",
                    st,
                    st,
                )
            )
    return out


def check_policy(policy: Policy) -> list[Diagnostic]:
    """The checks that need nothing but the policy: a note (FP207) for each warm-up that mixes
    epochs and steps, which only resolves with the number of steps per epoch (the same code is
    the error `Policy.resolve` and `show` raise without it; lint says it up front), and a note
    (FP232) for each metric-driven statement, saying which group takes effect at which plateau:
    lint checks them as if each could happen at any time."""
    out = []
    for st in policy.statements:
        condition = st.condition
        if condition is None:
            continue
        groups = [", ".join(str(s) for s in group) for group in st.selection.groups]
        later = "".join(f", `{g}` the {ordinal(i + 2)} time" for i, g in enumerate(groups[1:]))
        first = f" (1st time){later}" if later else ""
        head = str(st.layers) if st.layers is not None else f"{st.action} `{groups[0]}`"
        out.append(
            _diag(
                policy,
                "FP232",
                f"conditional event: {head} {condition}{first}; lint checks"
                f" {'them' if later else 'it'} as in effect from any moment on",
                condition,
                st,
                severity="note",
            )
        )
    for index, st in enumerate(policy.statements):
        if any(mixes_clocks(r) for r in policy.rules if r.statement_index == index):
            out.append(
                _diag(
                    policy,
                    "FP207",
                    f"`{_head(st)}` mixes epochs and steps in its warm-up: applying it needs the"
                    " number of steps per epoch (`steps_per_epoch=`, which FreezeScheduler and"
                    " the Trainer callback pass; `show --steps-per-epoch`)",
                    st.warmup if st.warmup is not None else st,
                    st,
                    severity="note",
                )
            )
    return out


def _listed(lines: Sequence[int]) -> str:
    """`3`, `3 and 5`, `3, 5 and 8`."""
    shown = [str(n) for n in lines]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _head(st: Statement) -> str:
    text = str(st)
    return text if len(text) <= 60 else text[:57] + "..."


def _nothing_message(sel: Selector, st: Statement, suggest: _Suggester) -> str:
    where = "in `except`" if sel in st.selection.exclude else ""
    msg = f"selector `{sel}` {where + ' ' if where else ''}matches no parameter"
    if not isinstance(sel, NamePattern):
        return msg
    close = suggest(sel.text)
    return msg + (f"; did you mean `{close}`?" if close else "")


class _Suggester:
    """The closest module path or name to a selector that matches nothing: most mistakes are a
    misspelled or misnumbered part. Candidates are built once per check, when first needed."""

    #: Above this many candidates, look among name shapes first (see `__call__`).
    MANY = 5000

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names
        self._candidates: list[str] | None = None
        self._shapes: dict[str, list[str]] | None = None
        self._numbered: dict[tuple[str, tuple[str, ...]], str] = {}

    def __call__(self, text: str) -> str | None:
        if self._candidates is None:
            self._candidates = sorted({n.rsplit(".", 1)[0] for n in self.names} | set(self.names))
        candidates = self._candidates
        if len(candidates) > self.MANY:
            # difflib compares candidates one by one: seconds for the 150k of a model with 100k
            # tensors. Names differ mostly in their numbers, so find the closest shapes (numbers
            # made 0) first, then the closest name among a bounded number of each of them.
            # The name of each shape with the selector's own numbers goes first in line.
            digits = re.compile(r"[0-9]+")
            if self._shapes is None:
                self._shapes, self._numbered = {}, {}
                for c in candidates:
                    shape = digits.sub("0", c)
                    self._shapes.setdefault(shape, []).append(c)
                    numbers = tuple(digits.findall(c))
                    for i in range(len(numbers) + 1):  # by every prefix of its numbers
                        self._numbered.setdefault((shape, numbers[:i]), c)
            best = difflib.get_close_matches(digits.sub("0", text), list(self._shapes), 3, 0.6)
            numbers = tuple(digits.findall(text))
            candidates = []
            for shape in best:
                same = self._numbered.get((shape, numbers[: shape.count("0")]))
                candidates += [same] if same else []
                candidates += self._shapes[shape][: self.MANY // 3]
        close = difflib.get_close_matches(text, candidates, n=1, cutoff=0.6)
        return close[0] if close else None


def _blocked_by_lr_zero(bound: BoundPolicy, rule: Rule) -> Statement | None:
    """For an `unfreeze` that never takes effect, the `lr 0` statement that blocks it, if any."""
    if rule.statement.action != "unfreeze":
        return None
    for epoch, step, fired in bound.moments():
        if rule not in bound.order(epoch, step, None, fired):
            continue
        decisions = bound.decisions(epoch=epoch, step=step, fired=fired)
        for i in bound.selected(rule):
            d = decisions[bound.names[i]]
            if d.lr is not None and d.lr.is_zero and d.lr_by is not None:
                return d.lr_by
    return None


@dataclass(frozen=True)
class ModelNames:
    """What the model-aware checks need to know about one model (see `freezepolicy.modelinfo`).

    Torch-free on purpose: the CLI fills it from `inspect_model`, tests can write one by hand.
    """

    label: str
    names: Sequence[str]
    module_types: Mapping[str, Collection[str]]
    tied: Sequence[Sequence[str]] = ()
    #: Each name's shape, for `ndim` selectors (None: unknown, which lint notes as FP230).
    shapes: Mapping[str, Sequence[int]] | None = None


def check_model(policy: Policy, model: ModelNames) -> list[Diagnostic]:
    """The name checks with module types resolved (FP201, FP202, FP204) plus tied-parameter
    conflicts (FP205) at every moment of the policy's schedule."""
    out = check_names(policy, model.names, model.module_types, shapes=model.shapes)
    if model.tied:
        out.extend(_tied_warnings(policy, model))
    return sorted(out, key=lambda d: (d.line or 0, d.column or 0, d.code))


def _tied_warnings(policy: Policy, model: ModelNames) -> list[Diagnostic]:
    bound = policy.bind(model.names, model.module_types, model.shapes)
    found = tied_conflicts_over_time(policy, bound, model.tied, bound.moments())
    # A warning in lint (docs/errors.md); `apply_policy` raises it as an error.
    return [replace(d, severity="warning") for d in found]


#: Codes that say a statement is useless: with several models, reported only when they hold
#: for every model, since a policy shared by two models may select some names in one only.
_NEVER_EFFECTIVE = {"FP202": "never", "FP204": "never"}


def check_models(policy: Policy, models: Sequence[ModelNames]) -> list[Diagnostic]:
    """`check_model` over several models that share one policy.

    A selector that matches nothing, or a statement that never takes effect, is reported only
    when that is so in every model (with the first model's message). A tied-parameter conflict
    is reported for each model where it happens: applying the policy to that model would fail.
    """
    if len(models) == 1:
        return check_model(policy, models[0])
    per_model = [check_model(policy, m) for m in models]

    def key(d: Diagnostic) -> tuple:
        return (_NEVER_EFFECTIVE.get(d.code, d.code), d.line, d.column)

    common = set.intersection(*({key(d) for d in found} for found in per_model))
    out: list[Diagnostic] = []
    for d in per_model[0]:
        if d.code != "FP205" and key(d) in common:
            out.append(replace(d, message=f"{d.message} (with each of the {len(models)} models)"))
    for model, found in zip(models, per_model, strict=True):
        for d in found:
            if d.code == "FP205":
                out.append(replace(d, message=f"with {model.label}: {d.message}"))
    return sorted(out, key=lambda d: (d.line or 0, d.column or 0, d.code))
