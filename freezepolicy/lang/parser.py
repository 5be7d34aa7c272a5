"""Policy text -> AST, collecting every error in the file with a message a user can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from lark import Token, Transformer
from lark.exceptions import UnexpectedInput, UnexpectedToken

from .errors import Diagnostic, PolicySourceError, PolicySyntaxError
from .grammar import build_parser
from .nodes import (
    FOLLOW_KEYWORDS,
    Comment,
    Duration,
    NamePattern,
    Selection,
    Span,
    Statement,
    TypePattern,
    Value,
    When,
)
from .patterns import PatternError, compile_type_pattern, name_pattern_regex
from .syntax import clip, statement_start, syntax_diagnostic

#: Report at most this many problems per file; one more line says the rest were not shown.
MAX_ERRORS = 20

_TIME_NUMBER = re.compile(r"[0-9]+")  # ASCII only, as in the grammar
#: Longest epoch or step number accepted; real training never comes close.
MAX_TIME_DIGITS = 18


def parse_text(
    text: str, path: str = "<string>"
) -> tuple[tuple[Statement, ...], tuple[Comment, ...]]:
    """Parse normalized policy text into statements and comments.

    Raises `PolicySyntaxError` holding every problem found (up to `MAX_ERRORS`).
    """
    lines = text.split("\n")
    nul = text.find("\x00")
    if nul != -1:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise PolicySourceError(
            Diagnostic(
                "FP002",
                "this is not a policy: it contains NUL characters",
                path,
                line,
                col,
                source_line=lines[line - 1].replace("\x00", "\u2400"),  # NUL prints as nothing
            )
        )
    diagnostics: list[Diagnostic] = []
    statements: list[Statement] = []
    start = 0
    # Look for one error past the cap, so the FP109 line appears only when some were left out.
    while start < len(text) and len(diagnostics) <= MAX_ERRORS:
        try:
            statements.extend(_parse_chunk(text, start, len(text), path, lines, diagnostics))
            break
        except UnexpectedInput as exc:
            pos = _error_position(exc, text, start)
            diagnostics.append(syntax_diagnostic(exc, text, pos, path, lines))
            # Statements never span lines, so the broken one starts after the last separator
            # before the error. Everything before it parsed; check it for semantic errors too.
            stmt_start = statement_start(text, pos, start)
            if stmt_start > start:
                try:
                    statements.extend(
                        _parse_chunk(text, start, stmt_start, path, lines, diagnostics)
                    )
                except UnexpectedInput:  # pragma: no cover - the prefix parsed a moment ago
                    pass
            start = _next_statement(text, pos)
    if diagnostics:
        # Problems found while building a prefix that parsed are added after the syntax error
        # that ended it; report in file order. The scan covers the file left to right, so
        # the first MAX_ERRORS after sorting are the first MAX_ERRORS of the file.
        diagnostics.sort(key=lambda d: (d.line or 0, d.column or 0))
        if len(diagnostics) > MAX_ERRORS:
            diagnostics = diagnostics[:MAX_ERRORS]
            last = diagnostics[-1]
            diagnostics.append(
                Diagnostic(
                    "FP109",
                    f"too many errors; stopped after {MAX_ERRORS}",
                    path,
                    last.line,
                    None,
                )
            )
        raise PolicySyntaxError(diagnostics)
    # No token can contain `#`, so a comment starts at the first `#` of its line. Walking the
    # lines keeps this linear (counting newlines before each comment was quadratic).
    comments = []
    for number, source_line in enumerate(lines, 1):
        hash_ = source_line.find("#")
        if hash_ != -1:
            span = Span(number, hash_ + 1, number, len(source_line) + 1)
            comments.append(Comment(source_line[hash_:], span))
    return tuple(statements), tuple(comments)


def _parse_chunk(
    text: str, start: int, end: int, path: str, lines: list[str], diagnostics: list[Diagnostic]
) -> list[Statement]:
    # Pad the chunk so lark reports positions of the whole file: newlines for the lines before
    # it, spaces for the columns before it on its first line (both are ignored by the grammar).
    line = text.count("\n", 0, start)
    col = start - (text.rfind("\n", 0, start) + 1)
    pad = "\n" * line + " " * col
    try:
        # With an inline transformer, parse() returns what `_AstBuilder.start` returns.
        built = cast(list[_Built], build_parser(transformer=_BUILDER).parse(pad + text[start:end]))
    except UnexpectedInput as exc:
        exc.fp_shift = start - len(pad)  # type: ignore[attr-defined]  # padded -> text offsets
        raise
    statements = []
    for b in built:
        statements.append(b.statement)
        for p in b.problems:
            source = lines[p.line - 1] if 0 < p.line <= len(lines) else None
            diagnostics.append(
                Diagnostic(p.code, p.message, path, p.line, p.column, p.end_column, source)
            )
    return statements


def _error_position(exc: UnexpectedInput, text: str, chunk_start: int) -> int:
    """Offset in `text` of the error (lark's offsets are into the padded chunk)."""
    if isinstance(exc, UnexpectedToken) and exc.token.type == "$END":
        return len(text)
    pos = getattr(exc, "pos_in_stream", None)
    if pos is None and isinstance(exc, UnexpectedToken):
        pos = exc.token.start_pos
    if pos is None:
        return chunk_start
    return max(chunk_start, min(len(text), pos + getattr(exc, "fp_shift", 0)))


def _next_statement(text: str, pos: int) -> int:
    """Offset just after the separator that ends the statement containing `pos`."""
    i = pos
    while i < len(text):
        c = text[i]
        if c == "#":
            nl = text.find("\n", i)
            return len(text) if nl == -1 else nl + 1
        if c in ";\n":
            return i + 1
        i += 1
    return len(text)


@dataclass(frozen=True)
class _Problem:
    """A semantic problem found while building the AST; made into a Diagnostic by the caller."""

    code: str
    message: str
    line: int
    column: int
    end_column: int


@dataclass(frozen=True)
class _Built:
    """A statement and the problems found in it (the builder itself keeps no state)."""

    statement: Statement
    problems: tuple[_Problem, ...]


def _token_span(tok: Token) -> Span:
    return Span(tok.line or 0, tok.column or 0, tok.end_line or 0, tok.end_column or 0)


class _AstBuilder(Transformer):
    """Lark callbacks -> AST nodes, run inline by the LALR parser (no parse tree is built).

    It is stateless, so the one cached parser serves every call: problems travel inside the
    returned nodes and are collected by `parse_text`.
    """

    def start(self, children: list) -> list[_Built]:
        return children

    def freeze(self, children: list) -> _Built:
        return self._statement(children)

    unfreeze = lr = decay = stats = freeze

    def _statement(self, children: list) -> _Built:
        action: Token = children[0]
        problems: list[_Problem] = []
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
        return _Built(st, tuple(problems))

    @staticmethod
    def _value(tok: Token, action: str, problems: list[_Problem]) -> Value:
        text = str(tok)
        relative = text.endswith("x")
        what = "learning rate" if action == "lr" else "weight decay"
        number = float(text[:-1] if relative else text)
        span = _token_span(tok)
        if number < 0:
            problems.append(
                _Problem(
                    "FP107",
                    f"a {what} cannot be negative, got `{clip(text)}`",
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        elif number == float("inf"):
            problems.append(
                _Problem(
                    "FP106",
                    f"{what} `{clip(text)}` is too large",
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

    def selectors(self, children: list) -> tuple[tuple, tuple[_Problem, ...]]:
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
                compile_type_pattern(body)
            except PatternError as exc:
                return TypePattern(body, span), (_pattern_problem(exc, span, len("type:")),)
            return TypePattern(body, span), ()
        anchored = text.startswith("^")
        body = text[1:] if anchored else text
        node = NamePattern(body, anchored, span)
        if body in FOLLOW_KEYWORDS:
            return node, (
                _Problem(
                    "FP108",
                    f"`{body}` is a keyword, not a selector; is a selector missing before it?",
                    span.line,
                    span.column,
                    span.end_column,
                ),
            )
        try:
            # Translating the pattern finds every error; compiling waits until it is matched.
            name_pattern_regex(body)
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
    problems: tuple[_Problem, ...]
    then_spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class _Timing:
    """One of a statement's `at`, `every` and `warmup` clauses, with its problems."""

    kind: str
    node: When | Duration
    problems: tuple[_Problem, ...]


def _clock(tok: Token) -> str:
    """`epoch` / `step` (the plural, natural after a number, means the same clock)."""
    return str(tok).rstrip("s")


def _whole_number(tok: Token, what: str, *, minimum: int) -> tuple[int, tuple[_Problem, ...]]:
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
    return 0, (_Problem("FP105", message, span.line, span.column, span.end_column),)


def _check_timing(
    action: str,
    result: _SelectionResult,
    when: When | None,
    every: Duration | None,
    warmup: Duration | None,
) -> list[_Problem]:
    """The rules that tie `then`, `at`, `every` and `warmup` together."""
    problems: list[_Problem] = []
    if result.then_spans and every is None:
        s = result.then_spans[0]
        problems.append(
            _Problem(
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
            _Problem(
                "FP131",
                "`every` spaces out groups listed with `then`, as in"
                " `unfreeze layer4 then layer3 every 2 epochs`; this statement has one group",
                s.line,
                s.column,
                s.end_column,
            )
        )
    if every is not None and when is not None and every.clock != when.clock:
        s = every.span
        problems.append(
            _Problem(
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
            _Problem(
                "FP132",
                f"`warmup` ramps up a learning rate, so it belongs to `unfreeze` or `lr`,"
                f" not `{action}`",
                s.line,
                s.column,
                s.end_column,
            )
        )
    return problems


def _pattern_problem(exc: PatternError, span: Span, shift: int) -> _Problem:
    col = span.column + shift + exc.offset
    return _Problem(exc.code, exc.message, span.line, col, col + exc.length)


_BUILDER = _AstBuilder()
