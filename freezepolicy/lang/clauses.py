"""What the AST builder checks beyond the grammar: numbers, times and counts, shape selectors,
and the rules that tie a statement's clauses together (`then` and `every`, `when` and `at`,
`warmup` and the action). Each problem travels as a `Problem` until parser.py makes it a located
diagnostic."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lark import Token

from .nodes import SHAPE_OPERATORS, Condition, Duration, ShapePattern, Span, When
from .patterns import PatternError
from .syntax import clip

TIME_NUMBER_RE = re.compile(r"[0-9]+")  # ASCII only, as in the grammar
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


def token_span(tok: Token) -> Span:
    return Span(tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)


@dataclass(frozen=True)
class Timing:
    """One of a statement's `at`, `every` and `warmup` clauses, with its problems."""

    kind: str
    node: When | Duration | Condition
    problems: tuple[Problem, ...]


def timings(
    timing: dict[str, Timing],
) -> tuple[When | None, Condition | None, Duration | None, Duration | None]:
    def node(kind: str):
        return timing[kind].node if kind in timing else None

    return node("at"), node("when"), node("every"), node("warmup")  # type: ignore[return-value]


def statement_span(action: Token, spans: list[Span], *clauses) -> Span:
    """From the keyword to the end of the last clause or selector."""
    last = max(
        [n.span for n in clauses if n is not None] + spans,
        key=lambda s: (s.end_line, s.end_column),
    )
    return Span(action.line or 0, action.column or 0, last.end_line, last.end_column)


def keyword_as_selector(word: str, span: Span) -> Problem:
    return Problem(
        "FP108",
        f"`{word}` is a keyword, not a selector; is a selector missing before it?",
        span.line,
        span.column,
        span.end_column,
    )


_SHAPE = re.compile(r"ndim(<=|>=|!=|<|>|=)([0-9]+)")


def is_shape_selector(text: str) -> bool:
    """A selector token that selects by shape: `ndim` and a comparison sign (`ndim<2`); checked
    further, with its errors, by `shape_pattern`."""
    return text.startswith("ndim") and text[4:5] in ("<", ">", "=", "!")


def shape_pattern(text: str, span: Span) -> tuple[ShapePattern, tuple[Problem, ...]]:
    match = _SHAPE.fullmatch(text)
    digits = match.group(2) if match is not None else ""
    if match is not None and len(digits) <= 3 and (digits[0] != "0" or digits == "0"):
        op, ndim = match.group(1), int(digits)
        assert op in SHAPE_OPERATORS
        return ShapePattern(op, ndim, span), ()
    hint = "; write `=` for equal" if text.startswith("ndim==") else ""
    message = (
        f"`{clip(text)}` is not a shape selector: write `ndim` then `<`, `<=`, `>`, `>=`, `=` or"
        f" `!=` and a whole number, as in `ndim<2`{hint}"
    )
    problem = Problem("FP143", message, span.line, span.column, span.end_column)
    return ShapePattern("=", 0, span), (problem,)


def written_as_zero(text: str) -> bool:
    """Whether a number as written is 0: no digit but 0 before its exponent (`0.00e5`, `0x`)."""
    mantissa = re.split("[eE]", text.rstrip("x"), maxsplit=1)[0]
    return _NONZERO_DIGIT.search(mantissa) is None


def clock_of(tok: Token) -> str:
    """`epoch` / `step` (the plural, natural after a number, means the same clock)."""
    return str(tok).rstrip("s")


def whole_number(tok: Token, what: str, *, minimum: int) -> tuple[int, tuple[Problem, ...]]:
    """A time or count written as a whole number, or 0 and the problem with it."""
    text = str(tok)
    span = token_span(tok)
    problem = None
    if TIME_NUMBER_RE.fullmatch(text) and len(text) <= MAX_TIME_DIGITS:
        value = int(text)
        if value >= minimum:
            return value, ()
        problem = f"must be {minimum} or more"
    elif TIME_NUMBER_RE.fullmatch(text):
        # int() of a huge digit string is slow and, past 4300 digits, a ValueError.
        problem = f"is too large (at most {MAX_TIME_DIGITS} digits)"
    elif text.startswith("-"):
        problem = (
            "cannot be negative (epochs and steps count from 0)"
            if minimum == 0
            else f"must be {minimum} or more"
        )
    elif text.startswith("+") and TIME_NUMBER_RE.fullmatch(text[1:]):
        problem = "is written without a sign"
    else:
        problem = "must be a whole number"
    message = f"{what} {problem}, got `{clip(text)}`"
    return 0, (Problem("FP105", message, span.line, span.column, span.end_column),)


def check_timing(
    action: str,
    then_spans: tuple[Span, ...],
    when: When | None,
    condition: Condition | None,
    every: Duration | None,
    warmup: Duration | None,
) -> list[Problem]:
    """The rules that tie `then`, `at`, `when`, `every` and `warmup` together."""
    problems: list[Problem] = []
    if condition is not None and (when is not None or every is not None):
        s = condition.span
        other = "`at`" if when is not None else "`every`"
        problems.append(
            Problem(
                "FP144",
                f"`when` starts the statement (and each `then` group) at a plateau of"
                f" {condition.metric}, so it cannot also have {other}; use one",
                s.line,
                s.column,
                s.end_column,
            )
        )
    if then_spans and every is None and condition is None:
        s = then_spans[0]
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
    if every is not None and not then_spans and condition is None:
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
    if every is not None and when is not None and every.clock != when.clock and then_spans:
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


def pattern_problem(exc: PatternError, span: Span, shift: int) -> Problem:
    col = span.column + shift + exc.offset
    return Problem(exc.code, exc.message, span.line, col, col + exc.length)
