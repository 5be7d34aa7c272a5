"""Selector patterns: from text such as `encoder.layer.8..11` to parts made of atoms.

A pattern is a sequence of dot-separated parts matched against the parts of a dotted parameter
name. Within a part: `*` (any run of characters), `?` (one character), `[01]` / `[!0]` (a
character class), `{a,b}` (alternatives), and `N..M` (a decimal number from N to M). A part that
is exactly `**` matches any number of whole parts.

This module reads a pattern into atoms and finds every error in it, at its column (as pathspec
validates a glob one segment at a time); it does not match anything. `glob.py` turns the atoms
of a part into a matcher that runs in time linear in the name (a regular expression where that
is safe, an automaton otherwise), and `matcher.py` matches whole names part by part. Numeric
ranges stay two numbers, never a list (as wcmatch does), so `layer0..99999999999999` costs
nothing. Parsed patterns are cached.

A name pattern matches a parameter name when it matches a run of whole parts starting at any
part boundary (`fc` selects `fc.weight` and `head.fc.bias`, never `fc1.weight`); an anchored
pattern (`^fc`) must start at the first part.

New syntax inside a part is a new atom class here, its regular expression (if any) and its step
in the automaton in glob.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: Longest selector we compile. Real selectors are a few dozen characters; the cap keeps a
#: pathological 1 MB token from turning into a 1 MB matcher.
MAX_PATTERN_LENGTH = 1000
#: Longest number in a numeric range (digits). Parameter indices never come close.
MAX_RANGE_DIGITS = 40


@dataclass
class PatternError(Exception):
    """A problem inside a pattern; `offset` is the 0-based index in the pattern text."""

    code: str
    message: str
    offset: int
    length: int = 1


# --- atoms: what a part is made of -----------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """Characters that must appear as written."""

    text: str


@dataclass(frozen=True)
class AnyChar:
    """`?`: one character."""


@dataclass(frozen=True)
class CharClass:
    """`[a-c0]` or `[!0]`: one character in (or, negated, not in) inclusive ranges."""

    negate: bool
    ranges: tuple[tuple[str, str], ...]

    def accepts(self, char: str) -> bool:
        if char == ".":  # a class never matches the separator, negated or not
            return False
        inside = any(lo <= char <= hi for lo, hi in self.ranges)
        return inside != self.negate


@dataclass(frozen=True)
class Star:
    """`*`: any run of characters within the part, including none."""


@dataclass(frozen=True)
class NumberRange:
    """`N..M`: a whole number (a maximal run of ASCII digits, no leading zero) from lo to hi."""

    lo: int
    hi: int

    def accepts(self, digits: str) -> bool:
        if len(digits) > 1 and digits[0] == "0":
            return False
        if len(digits) > MAX_RANGE_DIGITS:  # longer than any bound: out of range
            return False
        return self.lo <= int(digits) <= self.hi


@dataclass(frozen=True)
class Alternatives:
    """`{a,b1,c*}`: any one of the options, each a sequence of atoms."""

    options: tuple[tuple[Atom, ...], ...]


@dataclass(frozen=True)
class IndexFromEnd:
    """A whole part that counts from the end: `-1`, `-2..-1`, `0..-3`.

    A negative bound counts from the end of the indices present under the part's parent in the
    names being matched (-1 the last); a bound of 0 or more is an index as written. It cannot be
    matched on its own: binding resolves it per parent into a `NumberRange` (relative.py)."""

    lo: int
    hi: int

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}..{self.hi}"


Atom = Literal | AnyChar | CharClass | Star | NumberRange | Alternatives | IndexFromEnd

#: A part that is exactly `**`: any number (zero or more) of whole name parts.
ANY_PARTS = "**"
#: A name pattern: its parts in order, each `ANY_PARTS` or the atoms of one part.
PatternParts = tuple[str | tuple[Atom, ...], ...]

DIGITS = frozenset("0123456789")


def is_digit(char: str) -> bool:
    """An ASCII digit (str.isdigit also takes other scripts' digits, which ranges never do)."""
    return char in DIGITS


# --- reading a part --------------------------------------------------------------------------


class Part:
    """Reads the characters of one dot-free piece of a pattern into atoms, finding each error."""

    def __init__(self, text: str, base: int) -> None:
        self.text = text
        self.base = base  # offset of text[0] in the whole pattern, for error positions

    def error(self, code: str, message: str, at: int, length: int = 1) -> PatternError:
        return PatternError(code, message, self.base + at, length)

    def atoms(self, *, in_braces: bool = False) -> tuple[Atom, ...]:
        text, i = self.text, 0
        out: list[Atom] = []
        literal = ""  # consecutive literal characters, kept as one atom
        while i < len(text):
            c = text[i]
            if c in DIGITS:
                j = i
                while j < len(text) and text[j] in DIGITS:
                    j += 1
                if not text.startswith("..", j):  # plain digits
                    literal += text[i:j]
                    i = j
                    continue
            elif c not in "*?[]{}.":
                literal += c
                i += 1
                continue
            if literal:
                out.append(Literal(literal))
                literal = ""
            if c == "*":
                if text.startswith("**", i):
                    raise self.error(
                        "FP125", "`**` must be a whole part, as in `encoder.**.bias`", i, 2
                    )
                out.append(Star())
                i += 1
            elif c == "?":
                out.append(AnyChar())
                i += 1
            elif c == "[":
                char_class, i = self._char_class(i)
                out.append(char_class)
            elif c == "]":
                raise self.error("FP126", "`]` without a matching `[`", i)
            elif c == "{":
                if in_braces:
                    raise self.error("FP127", "`{...}` alternatives cannot be nested", i)
                alternatives, i = self._alternatives(i)
                out.append(alternatives)
            elif c == "}":
                raise self.error("FP127", "`}` without a matching `{`", i)
            elif c == ".":
                # A lone dot never reaches here (parts are split on dots first); this is the
                # `..` of a range with no number on its left, such as `layer..3`.
                raise self.error(
                    "FP123", "a range needs a number on each side of `..`, as in `layer1..3`", i, 2
                )
            else:  # the digits of a range `N..M`; `j` is where its `..` starts
                number_range, i = self._range(i, j)
                out.append(number_range)
        if literal:
            out.append(Literal(literal))
        return tuple(out)

    def _range(self, start: int, dots: int) -> tuple[NumberRange, int]:
        text = self.text
        j = dots + 2
        k = j
        while k < len(text) and text[k] in DIGITS:
            k += 1
        if k == j:
            if text.startswith("-", j) and j + 1 < len(text) and text[j + 1] in DIGITS:
                raise self.error(
                    "FP140",
                    "a range counted from the end must be a whole part, as in"
                    " `encoder.layer.-2..-1`",
                    start,
                    len(text) - start,
                )
            raise self.error(
                "FP123", "a range needs a number on each side of `..`, as in `layer1..3`", dots, 2
            )
        left, right = text[start:dots], text[j:k]
        if len(left) > MAX_RANGE_DIGITS or len(right) > MAX_RANGE_DIGITS:
            raise self.error("FP123", "range bound is too long", start, k - start)
        if (len(left) > 1 and left[0] == "0") or (len(right) > 1 and right[0] == "0"):
            raise self.error(
                "FP123", "range bounds are written without leading zeros", start, k - start
            )
        lo, hi = int(left), int(right)
        if lo > hi:
            raise self.error(
                "FP122",
                f"range `{left}..{right}` is reversed; write `{right}..{left}`",
                start,
                k - start,
            )
        return NumberRange(lo, hi), k

    def _char_class(self, start: int) -> tuple[CharClass, int]:
        text = self.text
        end = text.find("]", start + 1)
        if end == -1:
            raise self.error("FP121", "unclosed `[`: add `]` to end the character class", start)
        body = text[start + 1 : end]
        negate = body[:1] in ("!", "^")
        if negate:
            body = body[1:]
        if not body:
            raise self.error("FP126", "empty character class `[]`", start, end - start + 1)
        ranges: list[tuple[str, str]] = []
        i = 0
        while i < len(body):
            c = body[i]
            if c == ".":
                raise self.error(
                    "FP126", "a character class cannot match `.`: it separates parts", start + 1 + i
                )
            if i + 2 < len(body) and body[i + 1] == "-":
                hi = body[i + 2]
                if c > hi:
                    raise self.error(
                        "FP126",
                        f"character range `{c}-{hi}` is reversed; write `{hi}-{c}`",
                        start + 1 + i + (1 if negate else 0),
                        3,
                    )
                if c <= "." <= hi:
                    raise self.error(
                        "FP126",
                        "a character class cannot match `.`: it separates parts",
                        start + 1 + i + (1 if negate else 0),
                        3,
                    )
                ranges.append((c, hi))
                i += 3
            else:
                ranges.append((c, c))
                i += 1
        return CharClass(negate, tuple(ranges)), end + 1

    def _alternatives(self, start: int) -> tuple[Alternatives, int]:
        text = self.text
        end = text.find("}", start + 1)
        if end == -1:
            raise self.error("FP121", "unclosed `{`: add `}` to end the alternatives", start)
        body = text[start + 1 : end]
        if not body:
            raise self.error("FP127", "empty alternatives `{}`", start, 2)
        # The `..` of a numeric range (`{1..3,5}`) stays within the part; any other dot would
        # separate parts, which alternatives cannot span.
        if "." in re.sub(r"(?<=[0-9])\.\.(?=[0-9])", "", body):
            raise self.error(
                "FP127",
                "`{...}` chooses within one part and cannot contain `.`;"
                " list whole selectors with `,` instead",
                start,
                end - start + 1,
            )
        options, offset = [], start + 1
        for option in body.split(","):
            if option.startswith("-") and option[1:2] in DIGITS:
                raise self.error(
                    "FP140",
                    "an index counted from the end must be a whole part, not an alternative:"
                    " write `blocks.-2..-1`, or list whole selectors with `,`",
                    offset,
                    len(option),
                )
            options.append(Part(option, self.base + offset).atoms(in_braces=True))
            offset += len(option) + 1
        return Alternatives(tuple(options)), end + 1


def split_parts(text: str) -> list[tuple[str, int]]:
    """Split on the dots that separate parts, keeping the `..` of numeric ranges inside a part."""
    parts: list[tuple[str, int]] = []
    start = i = 0
    depth = 0  # inside [...] or {...}: dots there are not separators (and are rejected later)
    while i < len(text):
        c = text[i]
        if c in "[{":
            depth += 1
        elif c in "]}" and depth:
            depth -= 1
        elif c == "." and not depth:
            if text.startswith("..", i) and i > start and text[i - 1].isdigit():
                i += 2  # a range; its right side is checked when the part is read
                continue
            parts.append((text[start:i], start))
            start = i + 1
        i += 1
    parts.append((text[start:], start))
    return parts


@lru_cache(maxsize=4096)
def parse_name_pattern(text: str) -> PatternParts:
    """The parts of a name pattern (without its `^`), or a `PatternError` for the first problem."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(
            "FP128", f"selector is longer than {MAX_PATTERN_LENGTH} characters", 0, len(text)
        )
    parts: list[str | tuple[Atom, ...]] = []
    for part, offset in split_parts(text):
        if part == "":
            raise PatternError(
                "FP124",
                "empty part: a selector cannot start, end or have `..` between names",
                offset,
            )
        if part == ANY_PARTS:
            if parts[-1:] != [ANY_PARTS]:  # `**.**` means what `**` means
                parts.append(ANY_PARTS)
            continue
        from_end = index_from_end(part, offset)
        parts.append((from_end,) if from_end is not None else Part(part, offset).atoms())
    return tuple(parts)


#: A whole part that is an index or a range with a bound counted from the end (`-1`, `0..-3`).
_FROM_END = re.compile(r"(-?[0-9]+)(?:\.\.(-?[0-9]+))?")


def index_from_end(part: str, offset: int) -> IndexFromEnd | None:
    """The `IndexFromEnd` a whole part spells (`-1`, `-2..-1`, `0..-3`), None for a part with
    no bound counted from the end, or a `PatternError` for one that is written wrong."""
    if not (part.startswith("-") or "..-" in part):
        return None
    match = _FROM_END.fullmatch(part)
    if match is None:
        if part.startswith("-") and part[1:2] not in DIGITS:
            return None  # `-foo`: a name that starts with a dash
        raise PatternError(
            "FP140",
            "an index counted from the end must be a whole part, as in `blocks.-1` or"
            " `encoder.layer.-2..-1`",
            offset,
            len(part),
        )
    left, right = match.group(1), match.group(2) or match.group(1)
    for bound in (left, right):
        digits = bound.lstrip("-")
        if len(digits) > MAX_RANGE_DIGITS:
            raise PatternError("FP123", "range bound is too long", offset, len(part))
        if len(digits) > 1 and digits[0] == "0":
            raise PatternError(
                "FP123", "indices are written without leading zeros", offset, len(part)
            )
        if bound == "-0":
            raise PatternError(
                "FP141", "counting from the end starts at -1 (the last index); `-0` is none",
                offset,
                len(part),
            )
    lo, hi = int(left), int(right)
    if (lo < 0) == (hi < 0) and lo > hi:
        raise PatternError(
            "FP122", f"range `{left}..{right}` is reversed; write `{right}..{left}`", offset,
            len(part),
        )
    return IndexFromEnd(lo, hi)


#: Characters a `type:` glob may hold besides letters, digits and `_`.
_TYPE_GLOB_CHARS = frozenset("*?[]{},!^-")


@lru_cache(maxsize=1024)
def parse_type_pattern(text: str) -> tuple[Atom, ...]:
    """The atoms of the class-name glob of a `type:` selector (without `type:`)."""
    if not text:
        raise PatternError("FP129", "`type:` needs a class name, as in `type:BatchNorm2d`", 0)
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(
            "FP128", f"selector is longer than {MAX_PATTERN_LENGTH} characters", 0, len(text)
        )
    for i, c in enumerate(text):
        if not (c.isalnum() or c == "_" or c in _TYPE_GLOB_CHARS):
            raise PatternError("FP129", f"`{c}` cannot appear in a class name", i)
    return Part(text, 0).atoms()


def range_regex(lo: int, hi: int) -> str:
    """A regex for the decimal numbers lo..hi (no leading zeros): 8..11 -> `(?:[89]|1[01])`."""
    alternatives: list[str] = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(hi, 10**digits - 1)
        if a <= b:
            alternatives.append(_same_length(str(a), str(b)))
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _same_length(a: str, b: str) -> str:
    """Regex for the numbers from a to b, both written with the same number of digits."""
    if a == b:
        return a
    if len(a) == 1:
        return f"[{a}-{b}]"
    common = 0
    while a[common] == b[common]:
        common += 1
    if common:
        return a[:common] + _same_length(a[common:], b[common:])
    rest = len(a) - 1
    any_rest = f"[0-9]{{{rest}}}" if rest > 1 else "[0-9]"
    low_full = a[1:] == "0" * rest
    high_full = b[1:] == "9" * rest
    pieces: list[str] = []
    first, last = a[0], b[0]
    if not low_full:
        pieces.append(first + _same_length(a[1:], "9" * rest))
        first = chr(ord(first) + 1)
    middle_last = last if high_full else chr(ord(last) - 1)
    if first <= middle_last:
        head = first if first == middle_last else f"[{first}-{middle_last}]"
        pieces.append(head + any_rest)
    if not high_full:
        pieces.append(last + _same_length("0" * rest, b[1:]))
    return pieces[0] if len(pieces) == 1 else "(?:" + "|".join(pieces) + ")"
