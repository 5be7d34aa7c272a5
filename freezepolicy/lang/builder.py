"""The LALR parser's callbacks: tokens -> AST nodes, checking numbers, times and selector
patterns as each statement is reduced. Problems travel inside the returned values (the builder
keeps no state, so the one cached parser serves every call); parser.py turns them into
diagnostics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from lark import Token, Transformer

from .nodes import (
    FOLLOW_KEYWORDS,
    Duration,
    NamePattern,
    Selection,
    Span,
    Statement,
    TypePattern,
    Value,
    When,
)
from .patterns import PatternError, parse_name_pattern, parse_type_pattern
from .syntax import clip

_TIME_NUMBER = re.compile(r"[0-9]+")  # ASCII only, as in the grammar
_NONZERO_DIGIT = re.compile(r"[1-9]")
#: Longest epoch or step number accepted; real training never comes close.
MAX_TIME_DIGITS = 18


@dataclass(frozen=True)
class Problem:
    """A semantic problem found while building the AST; made into a Diagnostic by the caller."""

    code: str
    message: str
    line: int
    column: int
    end_column: int


@dataclass(frozen=True)
class Built:
    """A statement and the problems found in it (the builder itself keeps no state)."""

    statement: Statement
    problems: tuple[Problem, ...]


def _token_span(tok: Token) -> Span:
    return Span(tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)


class AstBuilder(Transformer):
    """Lark callbacks -> AST nodes, run inline by the LALR parser (no parse tree is built).

    It is stateless, so the one cached parser serves every call: problems travel inside the
    returned nodes and are collected by `parse_text`.
    """

    def start(self, children: list) -> list[Built]:
        return children

    def freeze(self, children: list) -> Built:
        return self._statement(children)

    unfreeze = lr = decay = stats = freeze

    def _statement(self, children: list) -> Built:
        action: Token = children[0]
        problems: list[Problem] = []
        value = None
        mode = None
        timing: dict[str, _Timing] = {}
        result: _SelectionResult | None = None
        for child in children[1:]:
            if isinstance(child, Token) and child.type == "NUMBER":  # of `lr` / `decay`
                value = self._value(child, str(action), problems)
            elif isinstance(child, Token):  # the `update` / `freeze` of `stats`
                mode = str(child)
            elif isinstance(child, _Timing):
                timing[child.kind] = child
                problems.extend(child.problems)
            else:
                result = child
                problems.extend(child.problems)
        assert result is not None
        selection = result.selection
        when = cast(When | None, timing["at"].node if "at" in timing else None)
        every = cast(Duration | None, timing["every"].node if "every" in timing else None)
        warmup = cast(Duration | None, timing["warmup"].node if "warmup" in timing else None)
        problems.extend(_check_timing(str(action), result, when, every, warmup))
        last = max(
            [n.span for n in (when, every, warmup) if n is not None]
            + [selection.selectors[-1].span],
            key=lambda s: (s.end_line, s.end_column),
        )
        span = Span(action.line or 0, action.column or 0, last.end_line, last.end_column)
        st = Statement(
            str(action),  # type: ignore[arg-type]
            selection,
            value,
            when,
            span,
            mode,  # type: ignore[arg-type]
            every,
            warmup,
        )
        return Built(st, tuple(problems))

    @staticmethod
    def _value(tok: Token, action: str, problems: list[Problem]) -> Value:
        text = str(tok)
        relative = text.endswith("x")
        what = "learning rate" if action == "lr" else "weight decay"
        number = float(text[:-1] if relative else text)
        span = _token_span(tok)
        if number < 0:
            problems.append(
                Problem(
                    "FP107",
                    f"a {what} cannot be negative, got `{clip(text)}`",
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        elif number == float("inf"):
            problems.append(
                Problem(
                    "FP106",
                    f"{what} `{clip(text)}` is too large",
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        elif number == 0 and not _written_as_zero(text):
            # `1e-400` is not 0 as written, but float() makes it 0, and a rate of 0 freezes.
            problems.append(
                Problem(
                    "FP112",
                    f"{what} `{clip(text)}` is too small to represent: it would round to 0,"
                    + (
                        " which freezes what it selects; write `0` to freeze"
                        if action == "lr"
                        else " which turns weight decay off; write `0` for none"
                    ),
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        return Value(number, relative, text, span)

    def selection(self, children: list) -> _SelectionResult:
        # children: group (THEN group)* [except-group]; `except` itself is not kept, so a group
        # not preceded by THEN after the first is the except list.
        include, problems = children[0]
        then: list[tuple] = []
        then_spans: list[Span] = []
        exclude: tuple = ()
        i = 1
        while i < len(children):
            child = children[i]
            if isinstance(child, Token):  # THEN
                then_spans.append(_token_span(child))
                group, bad = children[i + 1]
                then.append(group)
                i += 2
            else:
                exclude, bad = child
                i += 1
            problems = problems + bad
        return _SelectionResult(
            Selection(include, exclude, tuple(then)), problems, tuple(then_spans)
        )

    def selectors(self, children: list) -> tuple[tuple, tuple[Problem, ...]]:
        selectors = tuple(sel for sel, _ in children)
        problems = tuple(p for _, bad in children for p in bad)
        return selectors, problems

    def selector(self, children: list):
        tok: Token = children[0]
        span = _token_span(tok)
        text = str(tok)
        if tok.type == "TYPE_PATTERN":
            body = text[len("type:") :]
            try:
                parse_type_pattern(body)
            except PatternError as exc:
                return TypePattern(body, span), (_pattern_problem(exc, span, len("type:")),)
            return TypePattern(body, span), ()
        anchored = text.startswith("^")
        body = text[1:] if anchored else text
        node = NamePattern(body, anchored, span)
        if body in FOLLOW_KEYWORDS:
            return node, (
                Problem(
                    "FP108",
                    f"`{body}` is a keyword, not a selector; is a selector missing before it?",
                    span.line,
                    span.column,
                    span.end_column,
                ),
            )
        try:
            # Reading the pattern finds every error; compiling waits until it is matched.
            parse_name_pattern(body)
        except PatternError as exc:
            return node, (_pattern_problem(exc, span, 1 if anchored else 0),)
        return node, ()

    def when(self, children: list) -> _Timing:
        clock_tok, number = children
        clock = _clock(clock_tok)
        at, problems = _whole_number(number, clock, minimum=0)
        span = _token_span(number)
        # The span runs from the clock word (the `at` before it is not kept by the parser).
        when_span = Span(clock_tok.line or 0, clock_tok.column or 0, span.end_line, span.end_column)
        return _Timing("at", When(clock, at, when_span), problems)  # type: ignore[arg-type]

    def every(self, children: list) -> _Timing:
        return self._duration("every", children)

    def warmup(self, children: list) -> _Timing:
        return self._duration("warmup", children)

    @staticmethod
    def _duration(kind: str, children: list) -> _Timing:
        keyword, *rest = children
        clock_tok = rest[-1]
        clock = _clock(clock_tok)
        if len(rest) == 2:  # `every 2 epochs`; `every epoch` has no number and means 1
            count, problems = _whole_number(rest[0], f"the `{kind}` count", minimum=1)
        else:
            count, problems = 1, ()
        end = _token_span(clock_tok)
        span = Span(keyword.line or 0, keyword.column or 0, end.end_line, end.end_column)
        return _Timing(kind, Duration(count, clock, span), problems)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _SelectionResult:
    selection: Selection
    problems: tuple[Problem, ...]
    then_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class _Timing:
    """One of a statement's `at`, `every` and `warmup` clauses, with its problems."""

    kind: str
    node: When | Duration
    problems: tuple[Problem, ...]


def _written_as_zero(text: str) -> bool:
    """Whether a number as written is 0: no digit but 0 before its exponent (`0.00e5`, `0x`)."""
    mantissa = re.split("[eE]", text.rstrip("x"), maxsplit=1)[0]
    return _NONZERO_DIGIT.search(mantissa) is None


def _clock(tok: Token) -> str:
    """`epoch` / `step` (the plural, natural after a number, means the same clock)."""
    return str(tok).rstrip("s")


def _whole_number(tok: Token, what: str, *, minimum: int) -> tuple[int, tuple[Problem, ...]]:
    """A time or count written as a whole number, or 0 and the problem with it."""
    text = str(tok)
    span = _token_span(tok)
    problem = None
    if _TIME_NUMBER.fullmatch(text) and len(text) <= MAX_TIME_DIGITS:
        value = int(text)
        if value >= minimum:
            return value, ()
        problem = f"must be {minimum} or more"
    elif _TIME_NUMBER.fullmatch(text):
        # int() of a huge digit string is slow and, past 4300 digits, a ValueError.
        problem = f"is too large (at most {MAX_TIME_DIGITS} digits)"
    elif text.startswith("-"):
        problem = (
            "cannot be negative (epochs and steps count from 0)"
            if minimum == 0
            else f"must be {minimum} or more"
        )
    elif text.startswith("+") and _TIME_NUMBER.fullmatch(text[1:]):
        problem = "is written without a sign"
    else:
        problem = "must be a whole number"
    message = f"{what} {problem}, got `{clip(text)}`"
    return 0, (Problem("FP105", message, span.line, span.column, span.end_column),)


def _check_timing(
    action: str,
    result: _SelectionResult,
    when: When | None,
    every: Duration | None,
    warmup: Duration | None,
) -> list[Problem]:
    """The rules that tie `then`, `at`, `every` and `warmup` together."""
    problems: list[Problem] = []
    if result.then_spans and every is None:
        s = result.then_spans[0]
        problems.append(
            Problem(
                "FP130",
                "`then` lists groups reached one after another: add how far apart, as in"
                " `every 2 epochs`",
                s.line,
                s.column,
                s.end_column,
            )
        )
    if every is not None and not result.then_spans:
        s = every.span
        problems.append(
            Problem(
                "FP131",
                "`every` spaces out groups listed with `then`, as in"
                " `unfreeze layer4 then layer3 every 2 epochs`; this statement has one group",
                s.line,
                s.column,
                s.end_column,
            )
        )
    if every is not None and when is not None and every.clock != when.clock and result.then_spans:
        # (Without `then`, FP131 above already says this `every` does not belong here.)
        s = every.span
        problems.append(
            Problem(
                "FP133",
                f"`every` counts {every.clock}s but `at` counts {when.clock}s; use one clock",
                s.line,
                s.column,
                s.end_column,
            )
        )
    if warmup is not None and action not in ("unfreeze", "lr"):
        s = warmup.span
        problems.append(
            Problem(
                "FP132",
                f"`warmup` ramps up a learning rate, so it belongs to `unfreeze` or `lr`,"
                f" not `{action}`",
                s.line,
                s.column,
                s.end_column,
            )
        )
    return problems


def _pattern_problem(exc: PatternError, span: Span, shift: int) -> Problem:
    col = span.column + shift + exc.offset
    return Problem(exc.code, exc.message, span.line, col, col + exc.length)


#: The one builder, shared by every parse.
AST_BUILDER = AstBuilder()
