"""AST -> canonical policy text, keeping comments and paragraph breaks (what `fmt` writes).

Canonical form: one statement per line, single spaces, `, ` between selectors, numbers as the
author wrote them, a comment that followed a statement kept two spaces after it, runs of blank
lines folded to one, and a single newline at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from .nodes import Comment, Include, Statement


def format_statement(statement: Statement | Include) -> str:
    return str(statement)


def format_policy(
    statements: Sequence[Statement | Include], comments: Sequence[Comment] = ()
) -> str:
    """Statements, includes and comments (in source order by their spans) as canonical text."""
    items: list[Statement | Include | Comment] = [*statements, *comments]
    items.sort(key=lambda it: (it.span.line, it.span.column))
    out: list[str] = []
    last_line = None  # source line of the previous item
    for item in items:
        line = item.span.line
        if isinstance(item, Comment) and line == last_line and out:
            out[-1] = f"{out[-1]}  {item.text.rstrip()}"  # a trailing comment stays on its line
            continue
        if last_line is not None and line - last_line > 1:
            out.append("")
        out.append(item.text.rstrip() if isinstance(item, Comment) else format_statement(item))
        last_line = line
    return "\n".join(out) + "\n" if out else ""
