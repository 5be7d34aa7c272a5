"""Selector patterns: from text such as `encoder.layer.8..11` to one compiled regular expression.

A pattern is a sequence of dot-separated parts matched against the parts of a dotted parameter
name. Within a part: `*` (any run of characters), `?` (one character), `[01]` / `[!0]` (a
character class), `{a,b}` (alternatives), and `N..M` (a decimal number from N to M). A part that
is exactly `**` matches any number of whole parts.

The translation is done one part at a time, as pathspec does for path globs, and numeric ranges
become regex alternations of O(digits) size, never expanded lists (as wcmatch does), so
`layer0..99999999999999` costs nothing. Compiled patterns are cached.

A name pattern matches a parameter name when it matches a run of whole parts starting at any
part boundary (`fc` selects `fc.weight` and `head.fc.bias`, never `fc1.weight`); an anchored
pattern (`^fc`) must start at the first part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: Longest selector we compile. Real selectors are a few dozen characters; the cap keeps a
#: pathological 1 MB token from turning into a 1 MB regular expression.
MAX_PATTERN_LENGTH = 1000
#: Longest number in a numeric range (digits). Parameter indices never come close.
MAX_RANGE_DIGITS = 40

_SPECIAL = set("*?[]{}.")
#: A `*` is followed by text of variable width (a range or `{...}`) at most this many times in
#: one part: those stars must backtrack, and k of them cost O(n**k) on a near-miss.
MAX_FLEXIBLE_STARS = 3

_STAR = object()  # marks a `*` among the translated pieces of a part


@dataclass
class PatternError(Exception):
    """A problem inside a pattern; `offset` is the 0-based index in the pattern text."""

    code: str
    message: str
    offset: int
    length: int = 1


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


class Part:
    """Translates the characters of one dot-free piece of a pattern into regex text."""

    def __init__(self, text: str, base: int) -> None:
        self.text = text
        self.base = base  # offset of text[0] in the whole pattern, for error positions

    def error(self, code: str, message: str, at: int, length: int = 1) -> PatternError:
        return PatternError(code, message, self.base + at, length)

    def translate(self, *, in_braces: bool = False) -> str:
        return self._assemble(self._pieces(in_braces))

    def _assemble(self, pieces: list) -> str:
        """Join translated pieces, making `*` safe from exponential backtracking.

        A part is `G0 * G1 * ... * Gk` where each G is a run of pieces. As in CPython's fnmatch,
        a middle run of fixed width is matched at its first occurrence, in an atomic group
        (`(?>[^.]*?G)`): any later occurrence would leave less room for the rest, which starts
        with a `*` anyway, so nothing is lost, and the regex engine can no longer try every way
        of splitting the text between the stars. A run of variable width (a range or `{...}`)
        may need a later occurrence, so it keeps a backtracking `[^.]*?`, and there may be only
        `MAX_FLEXIBLE_STARS` of those in one part.
        """
        runs: list[list[tuple[str, bool]]] = [[]]
        for piece in pieces:
            if piece is _STAR:
                if runs[-1] or len(runs) == 1:
                    runs.append([])
                continue  # `**` is rejected earlier; `*` runs of one char fold together
            runs[-1].append(piece)
        out = "".join(regex for regex, _ in runs[0])
        if len(runs) == 1:
            return out
        flexible = 0
        for run in runs[1:-1]:
            body = "".join(regex for regex, _ in run)
            if all(fixed for _, fixed in run):
                out += f"(?>[^.]*?{body})"
            else:
                flexible += 1
                if flexible > MAX_FLEXIBLE_STARS:
                    raise self.error(
                        "FP125",
                        f"more than {MAX_FLEXIBLE_STARS} `*` followed by a range or `{{...}}` "
                        "in one part; split the selector",
                        0,
                        len(self.text),
                    )
                out += f"[^.]*?{body}"
        return out + "[^.]*" + "".join(regex for regex, _ in runs[-1])

    def _pieces(self, in_braces: bool) -> list:
        """The part as a list of (regex, fixed_width) pieces and `_STAR` markers."""
        text, out, i = self.text, [], 0
        while i < len(text):
            c = text[i]
            if c == "*":
                if text.startswith("**", i):
                    raise self.error(
                        "FP125", "`**` must be a whole part, as in `encoder.**.bias`", i, 2
                    )
                out.append(_STAR)
                i += 1
            elif c == "?":
                out.append(("[^.]", True))
                i += 1
            elif c == "[":
                regex, i = self._char_class(i)
                out.append((regex, True))
            elif c == "]":
                raise self.error("FP126", "`]` without a matching `[`", i)
            elif c == "{":
                if in_braces:
                    raise self.error("FP127", "`{...}` alternatives cannot be nested", i)
                regex, i = self._alternatives(i)
                out.append((regex, False))
            elif c == "}":
                raise self.error("FP127", "`}` without a matching `{`", i)
            elif c.isdigit() and c.isascii():
                j = i
                while j < len(text) and text[j].isascii() and text[j].isdigit():
                    j += 1
                if text.startswith("..", j):
                    regex, i = self._range(i, j)
                    out.append((regex, False))  # variable width, and its lookarounds see context
                else:
                    out.append((text[i:j], True))
                    i = j
            elif c == ".":
                # A lone dot never reaches here (parts are split on dots first); this is the
                # `..` of a range with no number on its left, such as `layer..3`.
                raise self.error(
                    "FP123", "a range needs a number on each side of `..`, as in `layer1..3`", i, 2
                )
            else:
                out.append((re.escape(c), True))
                i += 1
        return out

    def _range(self, start: int, dots: int) -> tuple[str, int]:
        text = self.text
        j = dots + 2
        k = j
        while k < len(text) and text[k].isascii() and text[k].isdigit():
            k += 1
        if k == j:
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
        # A range matches a whole number: the lookarounds stop `1..3` from matching the `1` of
        # `12`, and `*0..5` from matching the `0` of `x10` after the `*` took the `1`.
        return "(?<![0-9])" + range_regex(lo, hi) + "(?![0-9])", k

    def _char_class(self, start: int) -> tuple[str, int]:
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
        out: list[str] = []
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
                out.append(f"{re.escape(c)}-{re.escape(hi)}")
                i += 3
            else:
                out.append(re.escape(c))
                i += 1
        inner = "".join(out)
        return (f"[^.{inner}]" if negate else f"[{inner}]"), end + 1

    def _alternatives(self, start: int) -> tuple[str, int]:
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
            options.append(Part(option, self.base + offset).translate(in_braces=True))
            offset += len(option) + 1
        return "(?:" + "|".join(options) + ")", end + 1


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
                i += 2  # a range; its right side is checked when the part is translated
                continue
            parts.append((text[start:i], start))
            start = i + 1
        i += 1
    parts.append((text[start:], start))
    return parts


@lru_cache(maxsize=4096)
def name_pattern_regex(text: str) -> str:
    """The regex (uncompiled, unanchored) for the parts of a name pattern."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(
            "FP128", f"selector is longer than {MAX_PATTERN_LENGTH} characters", 0, len(text)
        )
    regex = ""
    pending_any = False  # a `**` part waits to be joined in front of the next part
    for part, offset in split_parts(text):
        if part == "":
            raise PatternError(
                "FP124",
                "empty part: a selector cannot start, end or have `..` between names",
                offset,
            )
        if part == "**":
            pending_any = True
            continue
        piece = Part(part, offset).translate()
        if regex:
            regex += r"(?:\.[^.]+)*\." if pending_any else r"\."
        elif pending_any:
            regex = r"(?:[^.]+\.)*"
        regex += piece
        pending_any = False
    if not regex:  # the pattern was only `**` parts: it matches every name
        regex = r"[^.]+"
    return regex


@lru_cache(maxsize=4096)
def compile_name_pattern(text: str, anchored: bool = False) -> re.Pattern[str]:
    """Compile a name pattern; use `.search(name)` to test a dotted parameter name."""
    body = name_pattern_regex(text)
    start = "^" if anchored else r"(?:^|(?<=\.))"
    return re.compile(f"{start}(?:{body})(?=\\.|$)")


@lru_cache(maxsize=1024)
def compile_type_pattern(text: str) -> re.Pattern[str]:
    """Compile the class-name glob of a `type:` selector; use `.fullmatch(class_name)`."""
    if not text:
        raise PatternError("FP129", "`type:` needs a class name, as in `type:BatchNorm2d`", 0)
    if len(text) > MAX_PATTERN_LENGTH:
        raise PatternError(
            "FP128", f"selector is longer than {MAX_PATTERN_LENGTH} characters", 0, len(text)
        )
    for i, c in enumerate(text):
        if not (c.isalnum() or c == "_" or c in "*?[]{},!^-"):
            raise PatternError("FP129", f"`{c}` cannot appear in a class name", i)
    return re.compile(Part(text, 0).translate())
