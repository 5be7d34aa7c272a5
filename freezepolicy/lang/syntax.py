"""Syntax errors in words a user knows: lark's "unexpected token" -> one located `Diagnostic`.

The parser calls `syntax_diagnostic` for each place where the LALR parser stopped; the message
says what was expected (`a selector such as layer1`), suggests the nearest keyword, and points at
the word that broke the statement.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from .errors import Diagnostic
from .nodes import STATEMENT_KEYWORDS

# What each terminal means, in words a user knows. Keys are lark's terminal names.
_EXPECTED_WORDS: dict[str, str] = {
    "PATTERN": "a selector such as `layer1` or `*`",
    "TYPE_PATTERN": "a selector such as `layer1` or `*`",
    "NUMBER": "a number",
    "CLOCK": "`epoch` or `step`",
    "COMMA": "`,`",
    "_EXCEPT": "`except`",
    "THEN": "`then`",
    "EVERY": "`every`",
    "WARMUP": "`warmup`",
    "_AT": "`at`",
    "_FOR": "`for`",
    "FREEZE": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "UNFREEZE": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "LR": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "DECAY": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "STATS": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "INCLUDE": "a statement (`freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)",
    "STATS_MODE": "`update` or `freeze`",
    "STRING": 'a path in double quotes, as in `include "base.freeze"`',
    "_PER": "`per`",
    "_LAYER": "`layer`",
    "FROM": "`from`",
    "DOWN": "`down`",
    "TO": "`to`",
    "_WHEN": "`when`",
    "METRIC": "a metric name such as `val_loss`",
    "_STOPS": "`stops`",
    "TREND": "`decreasing` or `increasing`",
    "EVALUATIONS": "`evaluations`",
    "_SEP": "the end of the statement",
    "$END": "the end of the statement",
}


_KEYWORD_OF_TERMINAL = {
    "_EXCEPT": "except",
    "THEN": "then",
    "EVERY": "every",
    "WARMUP": "warmup",
    "_AT": "at",
    "_FOR": "for",
    "CLOCK": "epoch",
    "FREEZE": "freeze",
    "UNFREEZE": "unfreeze",
    "LR": "lr",
    "DECAY": "decay",
    "STATS": "stats",
    "INCLUDE": "include",
    "_PER": "per",
    "_LAYER": "layer",
    "FROM": "from",
    "DOWN": "down",
    "TO": "to",
    "_WHEN": "when",
    "_STOPS": "stops",
}


_SELECTOR_TERMINALS = {"PATTERN", "TYPE_PATTERN"}

#: The words each keyword terminal is spelled as (CLOCK and STATS_MODE have several).
_SPELLINGS: dict[str, tuple[str, ...]] = {
    **{t: (k,) for t, k in _KEYWORD_OF_TERMINAL.items() if t != "CLOCK"},
    "CLOCK": ("epochs", "epoch", "steps", "step"),
    "STATS_MODE": ("update", "freeze"),
    "TREND": ("decreasing", "increasing"),
    "EVALUATIONS": ("evaluations", "evaluation"),
}
#: Every keyword, longest first, so `unfreeze` is found before `freeze` and `epochs` before
#: `epoch` when a run-on word is split.
_ALL_KEYWORDS = sorted({k for ks in _SPELLINGS.values() for k in ks}, key=len, reverse=True)
#: A number at the start of a word, as the grammar's NUMBER reads one.
_NUMBER_PREFIX = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?x?")


_WORD = re.compile(r"[^\s,;#]+|[,;]")


#: Longest piece of source quoted inside a message; longer ones are cut with `...`.
MAX_QUOTED = 40


def clip(text: str) -> str:
    """`text` shortened for quoting in a message (a 1 MB token must not make a 1 MB message)."""
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def statement_start(text: str, pos: int, lo: int = 0) -> int:
    """Offset of the start of the statement holding `pos` (not before `lo`): just after the
    last separator before it. Statements never span lines, and a `;` in a comment is always
    followed by the newline that ends the comment, so the last separator is a real one."""
    return max(text.rfind(";", lo, pos), text.rfind("\n", lo, pos), lo - 1) + 1


def _previous_word(text: str, pos: int) -> str | None:
    """The word just before `pos` in the same statement, lower-cased, or None at its start."""
    stmt_start = statement_start(text, pos)
    words = _WORD.findall(text[stmt_start:pos])
    return words[-1] if words else None


def _words(terminals: Iterable[str]) -> str:
    seen: list[str] = []
    for t in sorted(terminals, key=_term_order):
        w = _EXPECTED_WORDS.get(t)
        if w and w not in seen:
            seen.append(w)
    if not seen:
        return "something else"
    return seen[0] if len(seen) == 1 else ", ".join(seen[:-1]) + " or " + seen[-1]


def _term_order(t: str) -> tuple[int, str]:
    order = [
        "PATTERN",
        "TYPE_PATTERN",
        "NUMBER",
        "CLOCK",
        "COMMA",
        "THEN",
        "_EXCEPT",
        "_FOR",
        "_AT",
        "EVERY",
        "WARMUP",
        "_WHEN",
        "FROM",
        "DOWN",
        "TO",
        "_PER",
        "_LAYER",
        "METRIC",
        "_STOPS",
        "TREND",
        "EVALUATIONS",
        "STRING",
    ]
    return (order.index(t) if t in order else len(order), t)


#: What only a layer decay expects after a selector. The LALR tables share the state after a
#: selector between every statement, so these are offered after any selector; drop them where
#: they cannot follow.
_LAYER_DECAY_ONLY = {"FROM", "DOWN", "TO"}
_LAYER_DECAY_START = re.compile(r"\s*lr\s+decay\b")


def split_run_on(word: str) -> list[str]:
    """`lr0.1xforfc` -> [`lr`, `0.1x`, `for`, `fc`]: the keywords and numbers at the start of a
    word that runs them into what follows, then the rest (one piece: it may be a selector)."""
    pieces: list[str] = []
    rest = word
    while rest:
        keyword = next((k for k in _ALL_KEYWORDS if rest.startswith(k)), None)
        number = _NUMBER_PREFIX.match(rest)
        if keyword is not None:
            piece = keyword
        elif number is not None:
            piece = number.group()
        else:
            piece = rest
        pieces.append(piece)
        rest = rest[len(piece) :]
    return pieces


def _run_on(found: str, expected: set[str]) -> str | None:
    """`found` split into words, when it starts with a keyword or number that was expected
    here but runs into the next word (`freezefc`, `forfc`, `3warmup`)."""
    pieces = split_run_on(found)
    if len(pieces) < 2 or pieces[1:] == ["s"]:  # `layers` is a plural, not `layer s`
        return None
    first = pieces[0]
    wanted = any(first in _SPELLINGS.get(t, ()) for t in expected) or (
        "NUMBER" in expected and _NUMBER_PREFIX.fullmatch(first) is not None
    )
    return " ".join(pieces) if wanted else None


def _suggest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean `{match[0]}`?" if match else ""


def syntax_diagnostic(
    exc: UnexpectedInput, text: str, pos: int, path: str, where: tuple[int, int, str]
) -> Diagnostic:
    """The message for a place where the parser stopped; `where` is the line, column and
    line text at `pos`."""
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.expected)
        found_type = exc.token.type
    else:
        assert isinstance(exc, UnexpectedCharacters)
        expected = set(exc.allowed or ())
        found_type = None
    if not _LAYER_DECAY_START.match(text, statement_start(text, pos)):
        expected -= _LAYER_DECAY_ONLY
    at_end = pos >= len(text) or text[pos] in "\n;" or found_type in ("$END", "_SEP")
    match = None if at_end else _WORD.match(text, pos)
    found = match.group() if match else ""
    line, col, source_line = where
    end_col = col + max(1, len(found))
    shown = f"`{clip(found)}`" if found else "the end of the statement"
    prev = _previous_word(text, pos)
    prev = clip(prev) if prev is not None else None

    def diag(code: str, message: str) -> Diagnostic:
        return Diagnostic(code, message, path, line, col, end_col, source_line)

    split = _run_on(found, expected) if found else None
    if split is not None:
        # After a selector the word may be another selector that lacks its `,`.
        other = "; or, for another selector, put `,` before it" if "COMMA" in expected else ""
        return diag(
            "FP110",
            f"{shown} runs words together; did you mean `{clip(split)}`{other}? (a keyword or"
            " number ends at a space, `,`, `;`, `#` or the end of the line)",
        )
    if "DECAY" in expected and "NUMBER" in expected:  # after `lr`: a rate, or `decay`
        expected.discard("DECAY")
    if expected & {"FREEZE", "UNFREEZE", "LR", "DECAY", "STATS", "INCLUDE"}:
        if found and found not in (",",):
            return diag(
                "FP101",
                f"unknown statement {shown}{_suggest(found, STATEMENT_KEYWORDS)}"
                " (a statement starts with `freeze`, `unfreeze`, `lr`, `decay`, `stats` or"
                " `include`)",
            )
    if expected and expected <= _SELECTOR_TERMINALS:
        if prev and prev.lower() == "except":
            return diag("FP102", f"expected a selector after `except`, found {shown}")
        return diag(
            "FP102", f"expected a selector such as `layer1` or `*` after `{prev}`, found {shown}"
        )
    if expected == {"NUMBER"}:
        if prev == "warmup":
            return diag(
                "FP104",
                f"expected a whole number after `warmup`, as in `warmup 2 epochs`, found {shown}",
            )
        if prev in ("epoch", "step"):
            return diag(
                "FP104",
                f"expected a whole number after `at {prev}`, as in `at {prev} 3`, found {shown}",
            )
        if prev == "for":
            return diag(
                "FP104",
                "expected a whole number of evaluations after `for`, as in"
                f" `for 2 evaluations`, found {shown}",
            )
        if prev == "decay" and "lr decay" in text[statement_start(text, pos) : pos]:
            return diag(
                "FP106",
                f"expected a factor such as `0.75` after `lr decay`, found {shown}",
            )
        what = "learning rate" if prev == "lr" else "weight decay"
        return diag(
            "FP106",
            f"expected a {what} such as `1e-4`, `0` or `0.1x` after `{prev}`, found {shown}",
        )
    if expected == {"CLOCK"} or expected == {"CLOCK", "NUMBER"}:
        hint = _suggest(found, ("epoch", "step", "epochs", "steps")) if found else ""
        # After `at`, `every` or `warmup N`: name the clause, not the number before the unit.
        stmt_start = statement_start(text, pos)
        clauses = re.findall(r"\b(at|every|warmup)\b", text[stmt_start:pos])
        clause = clauses[-1] if clauses else (prev or "at")
        after = f"`{clause}`" if clause == prev else f"`{clause} {prev}`"
        example = "at epoch 3" if clause == "at" else f"{clause} 2 epochs"
        words = "`epoch` or `step`" if expected == {"CLOCK"} else "a number, `epochs` or `steps`"
        return diag(
            "FP101" if hint else "FP103",
            f"expected {words} after {after}, as in `{example}`, found {shown}{hint}",
        )
    if expected == {"STATS_MODE"}:
        hint = _suggest(found, ("update", "freeze")) if found else ""
        return diag(
            "FP101" if hint else "FP103",
            f"expected `update` or `freeze` after `stats`, as in `stats update for bn1`,"
            f" found {shown}{hint}",
        )
    if expected == {"METRIC"}:
        return diag(
            "FP103",
            f"expected a metric name such as `val_loss` after `when`, found {shown}",
        )
    if expected == {"STRING"}:
        return diag(
            "FP103",
            f'expected a path in double quotes after `include`, as in `include "base.freeze"`,'
            f" found {shown}",
        )
    if expected == {"_FOR"}:
        suggestion = _suggest(found, ("for",)) if found else ""
        return diag(
            "FP103",
            f"expected `for` after `{prev}`, as in `lr 1e-4 for fc`, found {shown}{suggestion}",
        )
    if found and prev and prev.lower() in ("at", "except", "when") and found_type != "COMMA":
        # `freeze at epoch 3`: the keyword was read as a selector, so the selector is missing.
        # Point at the keyword (the selector belongs just before it), not at the word after it.
        kw = text.rfind(prev, 0, pos)
        kw_col = kw - (text.rfind("\n", 0, kw) + 1) + 1
        return Diagnostic(
            "FP102",
            f"expected a selector such as `layer1` or `*` before `{prev}`",
            path,
            line,
            kw_col,
            kw_col + len(prev),
            source_line,
        )
    keywords = [k for t, k in _KEYWORD_OF_TERMINAL.items() if t in expected]
    if found and found not in (",", ";") and keywords:
        hint = _suggest(found, keywords)
        if hint:
            return diag("FP101", f"unknown word {shown}{hint}")
    hint = ""
    if "COMMA" in expected and found and found_type in (None, "PATTERN", "TYPE_PATTERN"):
        hint = " (separate selectors with `,`)"
    return diag("FP103", f"unexpected {shown}; expected {_words(expected)}{hint}")
