"""Finding grammar/freeze.lark and building the LALR parser from it, once."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from lark import Lark, Transformer
from lark import lexer as lark_lexer

GRAMMAR_FILE = "freeze.lark"


def grammar_path() -> Path:
    """Where the grammar is read from.

    An installed wheel carries it inside the package (pyproject.toml force-includes it there);
    an editable install or a plain checkout reads the top-level grammar/ directory instead.
    """
    packaged = resources.files("freezepolicy.lang") / GRAMMAR_FILE
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_FILE
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(
        f"freezepolicy cannot find its grammar: looked for {packaged} and {checkout}"
    )


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


@cache
def build_parser(strict: bool = False, transformer: Transformer | None = None) -> Lark:
    """The cached LALR parser. `strict=True` (used by a test) makes grammar conflicts fatal.

    With a transformer, its callbacks run as the parser reduces (no tree is built); it must be
    stateless because the parser is shared. Spans come from tokens, which always carry
    positions, so position propagation (a third of the parse time) is off.
    """
    options = dict(
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=False,
        strict=strict,
        transformer=transformer,
    )
    if strict:
        return Lark(grammar_text(), **options)
    # With `interegular` installed, lark checks every pair of terminals for collisions each time
    # a parser is built: about 0.2 s per process, a third of a `freezepolicy lint` run. The
    # grammar is fixed, and a test builds it with strict=True, which fails on any collision,
    # so the runtime parser skips that check (lark itself skips it for cached parsers).
    saved = lark_lexer.has_interegular
    lark_lexer.has_interegular = False
    try:
        return Lark(grammar_text(), **options)
    finally:
        lark_lexer.has_interegular = saved
