"""What characters policy text may hold outside comments, checked before the text is parsed.

Two checks, both one linear scan that skips comments:

- Invisible characters (FP111): a zero-width space in `freeze\u200b*` makes a selector that prints
  like `freeze *` but selects nothing of the kind; a right-to-left override makes text display in
  another order than it is read. Comments may hold any character (they mean nothing, and a
  comment runs to the end of its line, so a direction override in it cannot reorder code).
- Words too long to read safely (FP113): the lexer's regular expression for a selector keeps a
  little state for every bracket it passes, so one huge word could take a hundred times its size
  in memory; no policy has a word anywhere near `MAX_WORD_LENGTH` (a selector is at most 1,000
  characters).
"""

from __future__ import annotations

import re
import unicodedata

from .errors import Diagnostic

#: Longest run of characters without a space, tab, newline, `;` or `#` (outside comments).
#: Every token lies inside one such run; a comma-separated list written without spaces is the
#: only valid way to make a long one.
MAX_WORD_LENGTH = 100_000

#: Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties.txt), which Python's
#: `unicodedata` does not expose: code points that render as nothing. Most are in the categories
#: refused below; this adds the ones that are not (Hangul fillers, variation selectors, ...).
_DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
#: Categories refused outside comments: controls, format characters (zero-width and
#: bidirectional controls), surrogates, private use, unassigned, line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: The ASCII controls the grammar itself uses: tab and form feed (spacing) and the newline.
_ALLOWED_CONTROLS = frozenset("\t\n\x0c")

# A comment (skipped), or a run of characters other than printable ASCII, tab, form feed and
# newline: only those runs need a closer look, and most policies have none.
_COMMENT_OR_UNUSUAL = re.compile(r"#[^\n]*|[^\t\n\x0c\x20-\x7e]+")
# A long word is looked for only where a word starts (the lookbehind), so each word is scanned
# once: without it, every position inside a word just under the limit would rescan the word.
_COMMENT_OR_LONG_WORD = re.compile(
    r"#[^\n]*|(?<![^\s;#])[^\s;#]{" + str(MAX_WORD_LENGTH + 1) + ",}"
)

#: Shown in place of an invisible character in the quoted source line, so the caret points at
#: something visible (U+FFFD, as source.py shows undecodable bytes).
SHOWN_INSTEAD = "\ufffd"


def is_invisible(char: str) -> bool:
    """Whether `char` is refused outside comments (see docs/language.md, "Source files")."""
    if char in _ALLOWED_CONTROLS:
        return False
    category = unicodedata.category(char)
    if category in _REFUSED_CATEGORIES:
        return True
    if category == "Zs":  # a space other than the plain one: no-break, em, ideographic, ...
        return char != " "
    code = ord(char)
    return any(lo <= code <= hi for lo, hi in _DEFAULT_IGNORABLE)


def describe(char: str) -> str:
    """`U+200B ZERO WIDTH SPACE`: the code point and, when Unicode gives one, its name."""
    name = unicodedata.name(char, "")
    if not name and unicodedata.category(char) == "Cc":
        name = "(a control character)"
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


def invisible_characters(text: str, path: str, line_of: LineLookup, limit: int) -> list[Diagnostic]:
    """A diagnostic for each invisible character outside comments (at most `limit`)."""
    out: list[Diagnostic] = []
    for match in _COMMENT_OR_UNUSUAL.finditer(text):
        run = match.group()
        if run.startswith("#") or not any(is_invisible(c) for c in set(run)):
            continue
        for i, char in enumerate(run):
            if not is_invisible(char):
                continue
            pos = match.start() + i
            line, col, source = line_of(pos)
            shown = "".join(SHOWN_INSTEAD if is_invisible(c) else c for c in source)
            if unicodedata.category(char) == "Zs":
                what = "is not a plain space: write ` ` (U+0020) instead"
            else:
                what = "is invisible: delete it (only comments may hold invisible characters)"
            out.append(
                Diagnostic("FP111", f"{describe(char)} {what}", path, line, col, col + 1, shown)
            )
            if len(out) >= limit:
                return out
    return out


def long_words(text: str, path: str, line_of: LineLookup, limit: int) -> list[Diagnostic]:
    """A diagnostic for each word longer than `MAX_WORD_LENGTH` outside comments."""
    out: list[Diagnostic] = []
    for match in _COMMENT_OR_LONG_WORD.finditer(text):
        if match.group().startswith("#"):
            continue
        line, col, source = line_of(match.start())
        length = match.end() - match.start()
        out.append(
            Diagnostic(
                "FP113",
                f"a word of {length:,} characters without a space: no keyword, number or"
                f" selector is that long (selectors are at most 1,000 characters; words are"
                f" read up to {MAX_WORD_LENGTH:,})",
                path,
                line,
                col,
                col + 1,
                source,
            )
        )
        if len(out) >= limit:
            break
    return out


class LineLookup:
    """Line number, column and text of the line at an offset of a text, for diagnostics.

    The text is split into lines only when first asked: most policies never need it, and a
    file of ten million newlines would otherwise make a list of ten million strings.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.split("\n")
        return self._lines

    def line(self, number: int) -> str | None:
        """The text of 1-based line `number`, or None past the end."""
        lines = self.lines
        return lines[number - 1] if 0 < number <= len(lines) else None

    def __call__(self, pos: int) -> tuple[int, int, str]:
        text = self.text
        line = text.count("\n", 0, pos) + 1
        start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        return line, pos - start + 1, text[start : len(text) if end == -1 else end]
