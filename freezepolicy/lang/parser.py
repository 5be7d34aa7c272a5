"""Policy text -> AST, collecting every error in the file with a message a user can act on."""

from __future__ import annotations

import re
from typing import cast

from lark.exceptions import UnexpectedInput, UnexpectedToken

from .builder import AST_BUILDER, Built
from .characters import LineLookup, invisible_characters, long_words
from .errors import Diagnostic, PolicySourceError, PolicySyntaxError
from .grammar import build_parser
from .nodes import Comment, Include, Span, Statement
from .syntax import statement_start, syntax_diagnostic

#: Report at most this many problems per file; one more line says the rest were not shown.
MAX_ERRORS = 20


def parse_text(
    text: str, path: str = "<string>"
) -> tuple[tuple[Statement | Include, ...], tuple[Comment, ...]]:
    """Parse normalized policy text into statements (and `include`s, unread) and comments.

    Raises `PolicySyntaxError` holding every problem found (up to `MAX_ERRORS`).
    """
    lines = LineLookup(text)
    nul = text.find("\x00")
    if nul != -1:
        line, col, source = lines(nul)
        raise PolicySourceError(
            Diagnostic(
                "FP002",
                "this is not a policy: it contains NUL characters",
                path,
                line,
                col,
                source_line=source.replace("\x00", "\u2400"),  # NUL prints as nothing
            )
        )
    # Characters and words the parser must not see: found in one scan each, reported alone.
    refused = invisible_characters(text, path, lines, MAX_ERRORS + 1)
    refused += long_words(text, path, lines, MAX_ERRORS + 1 - len(refused))
    if refused:
        raise PolicySyntaxError(_in_order_and_capped(refused, path))
    diagnostics: list[Diagnostic] = []
    statements: list[Statement | Include] = []
    start = 0
    # Look for one error past the cap, so the FP109 line appears only when some were left out.
    while start < len(text) and len(diagnostics) <= MAX_ERRORS:
        try:
            statements.extend(_parse_chunk(text, start, len(text), path, lines, diagnostics))
            break
        except UnexpectedInput as exc:
            pos = _error_position(exc, text, start)
            diagnostics.append(syntax_diagnostic(exc, text, pos, path, lines(pos)))
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
        raise PolicySyntaxError(_in_order_and_capped(_one_per_place(diagnostics), path))
    # No token can contain `#`, so a comment starts at the first `#` of its line. Counting the
    # newlines between one comment and the next keeps this linear.
    comments = []
    number, counted = 1, 0
    for match in _COMMENT.finditer(text):
        number += text.count("\n", counted, match.start())
        counted = match.start()
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        span = Span(number, column, number, column + len(match.group()))
        comments.append(Comment(match.group(), span))
    return tuple(statements), tuple(comments)


_COMMENT = re.compile(r"#[^\n]*")


def _one_per_place(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """One problem, one diagnostic: of several found at the same place (`every` that is both
    without `then` and on the wrong clock), the first, which the checks put most basic first."""
    seen: set[tuple] = set()
    out = []
    for d in diagnostics:
        place = (d.line, d.column, d.end_column)
        if place not in seen:
            seen.add(place)
            out.append(d)
    return out


def _in_order_and_capped(diagnostics: list[Diagnostic], path: str) -> list[Diagnostic]:
    """File order, at most MAX_ERRORS, and an FP109 line when some were left out."""
    # Problems found while building a prefix that parsed are added after the syntax error
    # that ended it; report in file order. The scan covers the file left to right, so
    # the first MAX_ERRORS after sorting are the first MAX_ERRORS of the file.
    diagnostics = sorted(diagnostics, key=lambda d: (d.line or 0, d.column or 0))
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
    return diagnostics


def _parse_chunk(
    text: str, start: int, end: int, path: str, lines: LineLookup, diagnostics: list[Diagnostic]
) -> list[Statement | Include]:
    # Pad the chunk so lark reports positions of the whole file: newlines for the lines before
    # it, spaces for the columns before it on its first line (both are ignored by the grammar).
    line = text.count("\n", 0, start)
    col = start - (text.rfind("\n", 0, start) + 1)
    pad = "\n" * line + " " * col
    try:
        # With an inline transformer, parse() returns what `_AstBuilder.start` returns.
        parser = build_parser(transformer=AST_BUILDER)
        built = cast(list[Built], parser.parse(pad + text[start:end]))
    except UnexpectedInput as exc:
        exc.fp_shift = start - len(pad)  # type: ignore[attr-defined]  # padded -> text offsets
        raise
    statements = []
    for b in built:
        statements.append(b.statement)
        for p in b.problems:
            source = lines.line(p.line)
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
    end = _STATEMENT_END.search(text, pos)
    if end is None:
        return len(text)
    if end.group() == "#":  # a comment runs to the end of its line, `;` or not
        nl = text.find("\n", end.end())
        return len(text) if nl == -1 else nl + 1
    return end.end()


_STATEMENT_END = re.compile(r"[#;\n]")
