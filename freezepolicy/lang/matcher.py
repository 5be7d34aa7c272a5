"""Matching many parameter names against many name selectors at once, one part at a time.

`PartMatcher` is what binding a policy to a model spends its time in: a small automaton over the
dot-separated parts of names, equivalent to searching each selector's regex (patterns.py) in
each name, but costing one dictionary lookup per part of a name.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Sequence

from .patterns import Part, PatternError, split_parts


class PartMatcher:
    """Every name selector of a policy, matched against a name one part at a time.

    Searching each selector's regex in each name costs names x selectors regex searches, which
    is most of the time of binding a policy to a model with 100k tensors. Names share their
    parts (`model`, `layers`, `17`, `experts`, `weight`), so here a name is walked through a small
    automaton whose states say how far each selector has come, and each transition is computed
    once per (state, part) and then looked up: a name costs one dictionary lookup per part.

    Exactly as the regexes of patterns.py decide: a selector's regex is its parts' regexes
    joined by dots, each part's regex never matches a `.`, and a match must start and end at
    part boundaries, so the regex matches a name iff consecutive parts of the name fullmatch
    the part regexes in order (a `**` part letting any number of non-empty parts pass). The part
    regexes are the very ones the full regex is built from (`Part.translate`).
    """

    def __init__(self, patterns: Sequence[tuple[str, bool]]) -> None:
        self._floating: list[tuple[int, int]] = []
        self._starts: dict[str, list[tuple[int, int]]] = {}
        self._parts: list[tuple[re.Pattern[str], ...]] = []
        self._gaps: list[frozenset[int]] = []  # i: a `**` lets parts pass before part i
        anchored_list = []
        for text, anchored in patterns:
            parts: list[re.Pattern[str]] = []
            gaps: set[int] = set()
            pending = False
            first_text = None
            for part, offset in split_parts(text):
                if part == "**":
                    pending = True
                    continue
                if pending:
                    gaps.add(len(parts))
                if not parts:
                    first_text = part
                parts.append(_part_regex(part, offset))
                pending = False
            if not parts:  # only `**`: the regex is one whole part, so every name matches
                parts.append(re.compile(r"[^.]+"))
            if not anchored:
                gaps.discard(0)  # a floating pattern starts at every boundary anyway
            self._parts.append(tuple(parts))
            self._gaps.append(frozenset(gaps))
            anchored_list.append(anchored)
            if not anchored:
                # Unanchored patterns start again at every part boundary; one whose first part
                # is plain text can only start at a part equal to it.
                if first_text is not None and not any(c in first_text for c in "*?[]{}."):
                    self._starts.setdefault(first_text, []).append((len(self._parts) - 1, 0))
                else:
                    self._floating.append((len(self._parts) - 1, 0))
        self._states: list[tuple[frozenset[tuple[int, int]], int]] = []
        self._ids: dict[tuple[frozenset[tuple[int, int]], int], int] = {}
        self._next: list[dict[str, int]] = []
        root = frozenset((p, 0) for p, a in enumerate(anchored_list) if a)
        self._root = self._state(root, 0)

    def _state(self, live: frozenset[tuple[int, int]], matched: int) -> int:
        key = (live, matched)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self._states)
            self._states.append(key)
            self._next.append({})
        return sid

    def _step(self, sid: int, part: str) -> int:
        live, matched = self._states[sid]
        after: set[tuple[int, int]] = set()
        for p, i in itertools.chain(live, self._floating, self._starts.get(part, ())):
            if matched >> p & 1:
                continue  # matched higher up: the whole subtree is selected
            if part and i in self._gaps[p]:  # `(?:[^.]+\.)*`: only non-empty parts pass
                after.add((p, i))
            parts = self._parts[p]
            if parts[i].fullmatch(part):
                if i + 1 == len(parts):
                    matched |= 1 << p
                else:
                    after.add((p, i + 1))
        nxt = self._state(frozenset(x for x in after if not matched >> x[0] & 1), matched)
        self._next[sid][part] = nxt
        return nxt

    def bits_of(self, names: Iterable[str]) -> list[int]:
        """For each name, the patterns that match it: bit p is set when pattern p does.

        One call for all names: at 100k names the per-call overhead would be a tenth of it."""
        root, following, states, step = self._root, self._next, self._states, self._step
        out: list[int] = []
        add = out.append
        for name in names:
            sid = root
            for part in name.split("."):
                nxt = following[sid].get(part)
                sid = step(sid, part) if nxt is None else nxt
            add(states[sid][1])
        return out


def _part_regex(part: str, offset: int) -> re.Pattern[str]:
    """The compiled regex of one part of a name pattern (to fullmatch one part of a name)."""
    try:
        return _part_regex_cached(part)
    except PatternError:
        Part(part, offset).translate()  # raises the error located in the whole pattern
        raise


@functools.lru_cache(maxsize=8192)
def _part_regex_cached(part: str) -> re.Pattern[str]:
    return re.compile(Part(part, 0).translate())
