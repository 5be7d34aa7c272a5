"""One part of a pattern (or a `type:` glob) as a matcher whose time is linear in the text.

`compile_part(atoms)` gives an object whose `fullmatch(text)` says whether the atoms match the
whole of `text` (one part of a name, or a class name). Two implementations, both bounded:

- A regular expression, for the shapes Python's backtracking engine runs in linear time: no `*`
  and at most one `{...}` (every other atom matches at one place only), or `*` with only
  literals, `?` and classes between them (each run between stars is matched at its first
  occurrence, atomically, as CPython's fnmatch does). These are nearly all real selectors, and
  the fastest way to test them.
- `PartAutomaton` for everything else (`*` next to a range or `{...}`, several `{...}`, `*`
  inside `{...}`): a Thompson automaton simulated over the text, one set of states per
  character, so `{*,x}{*,x}...c` against a 40-character name takes microseconds instead of
  forever. Time O(len(pattern) x len(text)).

Name-level matching (parts, `**`, anchoring) is in matcher.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol, cast

from .patterns import (
    Alternatives,
    AnyChar,
    Atom,
    CharClass,
    Literal,
    NumberRange,
    Star,
    is_digit,
    parse_type_pattern,
    range_regex,
)


class PartMatch(Protocol):
    """What every compiled part offers."""

    def fullmatch(self, text: str) -> bool: ...


class RegexPart:
    """A part whose shape Python's `re` runs in linear time (see `regex_of`)."""

    __slots__ = ("regex", "_fullmatch")

    def __init__(self, regex: str) -> None:
        self.regex = regex
        self._fullmatch = re.compile(regex).fullmatch

    def fullmatch(self, text: str) -> bool:
        return self._fullmatch(text) is not None

    def __repr__(self) -> str:
        return f"RegexPart({self.regex!r})"


# --- the automaton ---------------------------------------------------------------------------

# State kinds of the automaton. A state consumes one character (CHAR), loops on characters
# (STAR, which may also be left without consuming), consumes a whole number (RANGE), or moves
# without consuming (SPLIT to each option of `{...}`, JUMP from the end of an option).
_CHAR, _STAR, _RANGE, _SPLIT, _JUMP, _ACCEPT = range(6)


class PartAutomaton:
    """The atoms of a part as a nondeterministic automaton, run on all its states at once.

    States are numbered in pattern order and a set of states is an int with one bit per state,
    so a step is a few integer operations: `((states & accepts(c)) << 1) | (states & stars)`,
    then the states reachable without consuming. A numeric range consumes the whole run of
    digits that starts where it is (a range always matches a whole number), so it moves its
    state to the end of that run, a later position; those wait in `pending` until the scan
    gets there. Each character is looked at once for each state: O(states x characters).
    """

    def __init__(self, atoms: Sequence[Atom]) -> None:
        self._kinds: list[int] = []
        self._data: list[object] = []
        self._emit(atoms)
        self._add(_ACCEPT, None)
        count = len(self._kinds)
        self.accept = 1 << (count - 1)
        # Everything reachable from each state without consuming (itself included); every
        # move goes forward, so one pass from the end computes them all.
        closure = [0] * count
        for s in range(count - 1, -1, -1):
            mask = 1 << s
            kind, data = self._kinds[s], self._data[s]
            if kind == _STAR:
                mask |= closure[s + 1]
            elif kind == _SPLIT:
                for target in cast(list[int], data):
                    mask |= closure[target]
            elif kind == _JUMP:
                mask |= closure[cast(int, data)]
            closure[s] = mask
        self._closure = closure
        kinds = list(enumerate(zip(self._kinds, self._data, strict=True)))
        self._moves_freely = sum(1 << s for s, (k, _) in kinds if k in (_STAR, _SPLIT, _JUMP))
        self._stars = sum(1 << s for s, (k, _) in kinds if k == _STAR)
        self._ranges = [(s, data) for s, (k, data) in kinds if k == _RANGE]
        self._range_states = sum(1 << s for s, _ in self._ranges)
        self._chars = [(s, data) for s, (k, data) in kinds if k == _CHAR]
        self._accepts: dict[str, int] = {}
        self.start = closure[0]

    def _add(self, kind: int, data: object) -> int:
        self._kinds.append(kind)
        self._data.append(data)
        return len(self._kinds) - 1

    def _emit(self, atoms: Sequence[Atom]) -> None:
        for atom in atoms:
            if isinstance(atom, Literal):
                for char in atom.text:
                    self._add(_CHAR, char)
            elif isinstance(atom, (AnyChar, CharClass)):
                self._add(_CHAR, atom)
            elif isinstance(atom, Star):
                self._add(_STAR, None)
            elif isinstance(atom, NumberRange):
                self._add(_RANGE, atom)
            else:
                assert isinstance(atom, Alternatives)
                targets: list[int] = []
                self._add(_SPLIT, targets)
                jumps = []
                for option in atom.options:
                    targets.append(len(self._kinds))
                    self._emit(option)
                    jumps.append(self._add(_JUMP, None))
                for jump in jumps:
                    self._data[jump] = len(self._kinds)  # the state after the alternatives

    def _accepting(self, char: str) -> int:
        """The CHAR states that consume `char` (cached: names reuse few characters)."""
        mask = self._accepts.get(char)
        if mask is None:
            mask = 0
            for s, what in self._chars:
                if isinstance(what, str):
                    ok = what == char
                elif isinstance(what, AnyChar):
                    ok = char != "."
                else:
                    ok = what.accepts(char)  # type: ignore[attr-defined]
                if ok:
                    mask |= 1 << s
            self._accepts[char] = mask
        return mask

    def _close(self, states: int) -> int:
        free = states & self._moves_freely
        closure = self._closure
        while free:
            low = free & -free
            states |= closure[low.bit_length() - 1]
            free ^= low
        return states

    def fullmatch(self, text: str) -> bool:
        states = self.start
        pending: dict[int, int] = {}  # position -> states a range reaches there
        length = len(text)
        for i, char in enumerate(text):
            if pending:
                states |= pending.pop(i, 0)
            if not states:
                if not pending:
                    return False
                continue
            starts_number = is_digit(char) and (i == 0 or not is_digit(text[i - 1]))
            if starts_number and states & self._range_states:
                end = i + 1
                while end < length and is_digit(text[end]):
                    end += 1
                number = text[i:end]
                for s, atom in self._ranges:
                    if states >> s & 1 and atom.accepts(number):  # type: ignore[attr-defined]
                        pending[end] = pending.get(end, 0) | self._closure[s + 1]
            moved = (states & self._accepting(char)) << 1
            if char != ".":
                moved |= states & self._stars
            states = self._close(moved) if moved & self._moves_freely else moved
        states |= pending.get(length, 0)
        return bool(states & self.accept)

    def __repr__(self) -> str:
        return f"PartAutomaton({len(self._kinds)} states)"


# --- choosing ---------------------------------------------------------------------------------


def regex_of(atoms: Sequence[Atom]) -> str | None:
    """A regex for `atoms` that Python's `re` runs in linear time, or None for other shapes."""
    stars = sum(isinstance(a, Star) for a in atoms)
    braces = [a for a in atoms if isinstance(a, Alternatives)]
    if stars == 0:
        if len(braces) > 1 or any(_has_star(o) for b in braces for o in b.options):
            return None
        return "".join(_piece(a) for a in atoms)
    if braces or any(isinstance(a, NumberRange) for a in atoms):
        return None
    # `G0 * G1 * ... * Gk`, each G of fixed width: the middle ones are matched at their first
    # occurrence, in an atomic group (a later one would only leave less room for the rest,
    # which starts with a `*` anyway), so the engine never tries every way to split the text.
    runs: list[list[Atom]] = [[]]
    for atom in atoms:
        if isinstance(atom, Star):
            if runs[-1] or len(runs) == 1:
                runs.append([])
            continue  # consecutive stars are one star
        runs[-1].append(atom)
    out = "".join(_piece(a) for a in runs[0])
    for run in runs[1:-1]:
        out += "(?>[^.]*?" + "".join(_piece(a) for a in run) + ")"
    return out + "[^.]*" + "".join(_piece(a) for a in runs[-1])


def _has_star(atoms: Sequence[Atom]) -> bool:
    return any(isinstance(a, Star) for a in atoms)


def _piece(atom: Atom) -> str:
    if isinstance(atom, Literal):
        return re.escape(atom.text)
    if isinstance(atom, AnyChar):
        return "[^.]"
    if isinstance(atom, CharClass):
        inner = "".join(
            re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
            for lo, hi in atom.ranges
        )
        return f"[^.{inner}]" if atom.negate else f"[{inner}]"
    if isinstance(atom, NumberRange):
        # A range matches a whole number: the lookarounds stop `1..3` from matching the `1`
        # of `12`, and `x0..5` from matching inside `x10`.
        return "(?<![0-9])" + range_regex(atom.lo, atom.hi) + "(?![0-9])"
    if isinstance(atom, Alternatives):
        return "(?:" + "|".join("".join(_piece(a) for a in o) for o in atom.options) + ")"
    raise AssertionError(atom)  # a Star is placed by regex_of


def compile_part(atoms: tuple[Atom, ...]) -> PartMatch:
    """The matcher of one part: a regex when that is safe, else the automaton."""
    return _compile_part(atoms)


@lru_cache(maxsize=8192)
def _compile_part(atoms: tuple[Atom, ...]) -> PartMatch:
    regex = regex_of(atoms)
    return RegexPart(regex) if regex is not None else PartAutomaton(atoms)


@lru_cache(maxsize=1024)
def compile_type_pattern(text: str) -> PartMatch:
    """The class-name glob of a `type:` selector; `.fullmatch(class_name)` tests a class."""
    return compile_part(parse_type_pattern(text))


def clear_caches() -> None:
    """Forget every compiled part (benchmarks time compiling as in a new process)."""
    _compile_part.cache_clear()
    compile_type_pattern.cache_clear()
