"""An independent reference for selector name patterns, to check freezepolicy's regex compiler.

It follows the documented meaning (freezepolicy/patterns.py, docs/language.md) directly and
shares no code with the package: the pattern is parsed into parts and atoms, and matching is
plain recursion over characters and parts. It builds no regular expressions and compares
numeric ranges with `int()`, so a bug in the regex translation cannot hide in both places.

Meaning, as implemented here:
- A pattern is a list of dot-separated parts; the `..` of a numeric range (`1..3`) belongs to
  its part. A part that is exactly `**` matches any number (zero or more) of whole name parts.
- Any other part must match one whole name part: `*` any run of characters, `?` one character,
  `[ab]` / `[a-c]` / `[!0]` (or `[^0]`) a character class, `{a,b}` one of the alternatives
  (each itself a sequence of atoms), `N..M` a run of digits, without leading zeros, whose value
  is in N..M and which is neither preceded nor followed by another digit (a range always
  matches a whole number, even after a wildcard). Everything else is literal.
- Unanchored, a pattern matches a name when it matches a run of whole parts starting at any
  part boundary; the run may end before the last part. Anchored, the run starts at the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

DIGITS = "0123456789"


@dataclass(frozen=True)
class Lit:
    char: str


@dataclass(frozen=True)
class Star:
    pass


@dataclass(frozen=True)
class One:
    pass


@dataclass(frozen=True)
class Class:
    negate: bool
    items: tuple[tuple[str, str], ...]  # inclusive (low, high) character ranges

    def accepts(self, c: str) -> bool:
        inside = any(lo <= c <= hi for lo, hi in self.items)
        return inside != self.negate


@dataclass(frozen=True)
class Alt:
    options: tuple[tuple[object, ...], ...]


@dataclass(frozen=True)
class NumRange:
    lo: int
    hi: int


ANY_PARTS = "**"


def split_parts(pattern: str) -> list[str]:
    """Dot-separated parts; dots inside `[...]`/`{...}` and the `..` of a range stay in a part."""
    parts, current, i, depth = [], "", 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c in "[{":
            depth += 1
        elif c in "]}" and depth:
            depth -= 1
        elif c == "." and depth == 0:
            is_range = pattern[i : i + 2] == ".." and current != "" and current[-1] in DIGITS
            if is_range:
                current += ".."
                i += 2
                continue
            parts.append(current)
            current = ""
            i += 1
            continue
        current += c
        i += 1
    parts.append(current)
    return parts


def parse_atoms(text: str) -> tuple[object, ...]:
    """The atoms of one part (or of one `{...}` alternative)."""
    atoms: list[object] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            atoms.append(Star())
            i += 1
        elif c == "?":
            atoms.append(One())
            i += 1
        elif c == "[":
            end = text.index("]", i + 1)
            body = text[i + 1 : end]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            items = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    items.append((body[k], body[k + 2]))
                    k += 3
                else:
                    items.append((body[k], body[k]))
                    k += 1
            atoms.append(Class(negate, tuple(items)))
            i = end + 1
        elif c == "{":
            end = text.index("}", i + 1)
            options = text[i + 1 : end].split(",")
            atoms.append(Alt(tuple(parse_atoms(o) for o in options)))
            i = end + 1
        elif c in DIGITS:
            j = i
            while j < len(text) and text[j] in DIGITS:
                j += 1
            if text[j : j + 2] == "..":
                k = j + 2
                while k < len(text) and text[k] in DIGITS:
                    k += 1
                atoms.append(NumRange(int(text[i:j]), int(text[j + 2 : k])))
                i = k
            else:
                atoms.extend(Lit(d) for d in text[i:j])
                i = j
        else:
            atoms.append(Lit(c))
            i += 1
    return tuple(atoms)


@lru_cache(maxsize=4096)
def parse_pattern(pattern: str) -> tuple[object, ...]:
    """Parts of a pattern: `ANY_PARTS` for `**`, else a tuple of atoms."""
    return tuple(ANY_PARTS if p == "**" else parse_atoms(p) for p in split_parts(pattern))


def _atom_ends(atom: object, s: str, i: int) -> set[int]:
    """Every j such that `atom` matches s[i:j]."""
    if isinstance(atom, Lit):
        return {i + 1} if s[i : i + 1] == atom.char else set()
    if isinstance(atom, Star):
        return set(range(i, len(s) + 1))
    if isinstance(atom, One):
        return {i + 1} if i < len(s) else set()
    if isinstance(atom, Class):
        return {i + 1} if i < len(s) and atom.accepts(s[i]) else set()
    if isinstance(atom, Alt):
        ends: set[int] = set()
        for option in atom.options:
            ends |= _seq_ends(option, s, i)
        return ends
    assert isinstance(atom, NumRange)
    # A range matches a whole number: it cannot start right after a digit, and the only
    # candidate is the whole run of digits starting at i.
    if i > 0 and s[i - 1] in DIGITS:
        return set()
    j = i
    while j < len(s) and s[j] in DIGITS:
        j += 1
    number = s[i:j]
    if not number or (len(number) > 1 and number[0] == "0"):
        return set()
    return {j} if atom.lo <= int(number) <= atom.hi else set()


def _seq_ends(atoms: tuple[object, ...], s: str, i: int) -> set[int]:
    """Every j such that the sequence of atoms matches s[i:j]."""
    positions = {i}
    for atom in atoms:
        positions = {j for p in positions for j in _atom_ends(atom, s, p)}
        if not positions:
            break
    return positions


def part_matches(atoms: tuple[object, ...], name_part: str) -> bool:
    """Whether a (non-`**`) pattern part matches one whole name part."""
    return len(name_part) in _seq_ends(atoms, name_part, 0)


def _run_ends(parts: tuple[object, ...], names: list[str], start: int) -> set[int]:
    """Every e such that the pattern parts match the name parts names[start:e]."""
    positions = {start}
    for part in parts:
        nxt: set[int] = set()
        for p in positions:
            if part == ANY_PARTS:
                nxt.update(range(p, len(names) + 1))
            elif p < len(names) and part_matches(part, names[p]):  # type: ignore[arg-type]
                nxt.add(p + 1)
        positions = nxt
        if not positions:
            break
    return positions


def matches(pattern: str, name: str, anchored: bool = False) -> bool:
    """Whether `pattern` (without its `^`) selects the dotted parameter `name`."""
    parts = parse_pattern(pattern)
    name_parts = name.split(".")
    starts = [0] if anchored else range(len(name_parts))
    return any(_run_ends(parts, name_parts, s) for s in starts)
