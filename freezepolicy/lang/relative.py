"""Indices counted from the end (`blocks.-1`, `encoder.layer.-2..-1`, `layers.0..-3`), resolved
against the names a policy is bound to.

What `-1` means depends on the names: the last of the whole-number parts present under the same
parent (`encoder.layer` of a BERT has 0..11, so `-1` is 11 there). So a selector with such a part
cannot be compiled on its own. Binding (bound.py) resolves it first: for every parent path whose
numbered children it can reach (`*.layers.-1` reaches `encoder.layers` and `decoder.layers`, each
counted on its own), it becomes an anchored selector with the parent spelled out and the index
made absolute (`^encoder.layers.5`), which the part matcher then matches like any other. Over
names without such parents it becomes nothing, so it selects nothing (lint's FP201).

Time: one pass over the names to collect the parents and their indices, then, per selector, a
match of its parts before the index against each parent (O(pattern x parent), as matcher.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .glob import PartMatch, compile_part
from .patterns import (
    ANY_PARTS,
    DIGITS,
    Atom,
    IndexFromEnd,
    Literal,
    NumberRange,
    PatternParts,
)


def is_relative(parts: PatternParts) -> bool:
    """Whether a parsed name pattern has a part counted from the end."""
    return any(isinstance(p, tuple) and isinstance(p[0], IndexFromEnd) for p in parts)


def _index(part: str) -> int | None:
    """The whole number a part spells as numbered modules spell it (`0`, `11`, never `01`)."""
    if part[:1] in DIGITS and (part == "0" or part[0] != "0") and part.isdigit() and part.isascii():
        return int(part)
    return None


class IndexedParents:
    """The parents of numbered parts in a list of names, each with its indices in order.

    `encoder.layer.0.attention...` ... `encoder.layer.11.output...` give the parent
    `("encoder", "layer")` with indices 0 to 11; a parent is the whole path before the number,
    so `encoder.layers` and `decoder.layers` are two parents."""

    def __init__(self, names: Iterable[str]) -> None:
        found: dict[str, set[int]] = {}
        seen: set[str] = set()
        for name in names:
            # Names share their prefixes: climb from the name until a prefix seen before, so
            # each distinct prefix is looked at once.
            path = name
            while path not in seen:
                seen.add(path)
                parent, dot, last = path.rpartition(".")
                index = _index(last)
                if index is not None:
                    found.setdefault(parent if dot else "\0", set()).add(index)
                if not dot:
                    break
                path = parent
        self.children: dict[tuple[str, ...], list[int]] = {
            (() if parent == "\0" else tuple(parent.split("."))): sorted(indices)
            for parent, indices in found.items()
        }

    def reached_by(
        self, prefix: PatternParts, anchored: bool
    ) -> list[tuple[tuple[str, ...], list[int]]]:
        """The parents that a run of `prefix`'s parts ends at (from the first part when
        `anchored`), with their indices, in the order of the names."""
        compiled: list[PartMatch | None] = [
            None if p == ANY_PARTS else compile_part(p)  # type: ignore[arg-type]
            for p in prefix
        ]
        return [
            (parent, indices)
            for parent, indices in self.children.items()
            if _ends_at(compiled, anchored, parent)
        ]


def _ends_at(pattern: Sequence[PartMatch | None], anchored: bool, path: Sequence[str]) -> bool:
    """Whether a run of whole parts of `path` that ends at its last part matches `pattern`
    (None: `**`, any number of non-empty parts), starting at the first part when `anchored`.
    The states are the positions in the pattern: O(pattern x path) part matches."""
    n = len(pattern)

    def closed(states: set[int]) -> set[int]:
        out = set(states)
        for i in sorted(states):
            while i < n and pattern[i] is None:  # `**` may match no part at all
                i += 1
                out.add(i)
        return out

    states = closed({0})
    for part in path:
        after: set[int] = set()
        for i in states:
            if i == n:
                continue
            matcher = pattern[i]
            if matcher is None:
                if part:
                    after.add(i)
            elif matcher.fullmatch(part):
                after.add(i + 1)
        if not anchored:
            after.add(0)  # a floating pattern may start at every part boundary
        states = closed(after)
    return n in states


def absolute(index: IndexFromEnd, indices: Sequence[int]) -> NumberRange | None:
    """The absolute range `index` means among `indices` (sorted), or None when it means none.

    -1 is the last index, -2 the one before. A low bound past the first index is the first (so
    `-20..-1` is every index of a parent with fewer than 20); a single index or a high bound past
    the first means nothing."""
    count = len(indices)
    lo, hi = index.lo, index.hi
    if hi < 0:
        if count + hi < 0:
            return None
        hi = indices[count + hi]
    if lo < 0:
        if count + lo < 0 and index.lo == index.hi:
            return None
        lo = indices[max(count + lo, 0)]
    return NumberRange(lo, hi) if lo <= hi else None


def resolve(
    parts: PatternParts, anchored: bool, parents: IndexedParents
) -> list[tuple[PatternParts, bool]]:
    """`parts` with every part counted from the end made absolute: the same pattern with a range
    in its place when every parent it reaches gives the same range, else one anchored pattern
    per parent, with the parent spelled out. Each comes with whether it is anchored."""
    first = next(
        (
            i
            for i, p in enumerate(parts)
            if isinstance(p, tuple) and isinstance(p[0], IndexFromEnd)
        ),
        None,
    )
    if first is None:
        return [(parts, anchored)]
    index = parts[first][0]
    assert isinstance(index, IndexFromEnd)
    reached = parents.reached_by(parts[:first], anchored)
    ranges = [absolute(index, indices) for _, indices in reached]
    rest = parts[first + 1 :]
    if ranges and all(r == ranges[0] for r in ranges):
        # Every parent it reaches gives the same range (the 64 experts of every layer): the
        # selector with the range in place of the index selects exactly that, and one pattern
        # matches much faster than one per parent.
        if ranges[0] is None:
            return []
        return resolve((*parts[:first], _number(ranges[0]), *rest), anchored, parents)
    out: list[tuple[PatternParts, bool]] = []
    for (parent, _), made in zip(reached, ranges, strict=True):
        if made is not None:
            spelled = tuple((Literal(p),) for p in parent)
            out.extend(resolve((*spelled, _number(made), *rest), True, parents))
    return out


def _number(made: NumberRange) -> tuple[Atom, ...]:
    return (Literal(str(made.lo)),) if made.lo == made.hi else (made,)
