"""Matching parameter names against name selectors, one dot-separated part at a time.

`PartMatcher` is what binding a policy to a model spends its time in: a small automaton over the
parts of names whose states say how far each selector has come, each transition computed once
per (state, part) and then looked up, so a name costs one dictionary lookup per part.
`compile_name_pattern` is the same for one selector and one name at a time.

Time: a transition tests each live selector part against one name part with the part's
matcher from glob.py, linear in both; a name walks each of its parts once. So matching one name
against one selector costs O(len(selector) x len(name)) the first time, whatever the pattern
(`**` runs, `*` inside `{...}`), and a dictionary lookup per part for names whose parts were
seen before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from functools import lru_cache

from .glob import PartMatch, RegexPart, compile_part
from .patterns import ANY_PARTS, Literal, PatternParts, parse_name_pattern
from .relative import IndexedParents, is_relative, resolve

#: What a pattern made only of `**` parts matches: any one whole, non-empty part (a name's
#: every part qualifies except an empty one, as in `a..b`).
_ANY_ONE_PART = RegexPart(r"[^.]+")


class PartMatcher:
    """Every name selector of a policy, matched against a name one part at a time.

    Searching each selector in each name costs names x selectors searches, which is most of the
    time of binding a policy to a model with 100k tensors. Names share their parts (`model`,
    `layers`, `17`, `experts`, `weight`), so here a name is walked through a small automaton
    whose states say how far each selector has come, and each transition is computed once per
    (state, part) and then looked up: a name costs one dictionary lookup per part.

    A selector matches a name iff consecutive parts of the name fullmatch the selector's parts
    in order, starting at any part boundary (at the first part when anchored), a `**` part
    letting any number of non-empty parts pass; the run may end before the name does.
    """

    def __init__(self, patterns: Sequence[tuple[str | PatternParts, bool]]) -> None:
        """`patterns`: (text or parsed parts, anchored) for each selector; parts counted from
        the end must be resolved first (relative.py)."""
        self._floating: list[tuple[int, int]] = []
        self._starts: dict[str, list[tuple[int, int]]] = {}
        self._parts: list[tuple[PartMatch, ...]] = []
        self._gaps: list[frozenset[int]] = []  # i: a `**` lets parts pass before part i
        anchored_list = []
        for p, (text, anchored) in enumerate(patterns):
            parts: list[PartMatch] = []
            gaps: set[int] = set()
            pending = False
            first = None
            parsed = parse_name_pattern(text) if isinstance(text, str) else text
            if is_relative(parsed):
                raise ValueError(f"resolve the indices counted from the end of {text!r} first")
            for part in parsed:
                if part == ANY_PARTS:
                    pending = True
                    continue
                assert isinstance(part, tuple)
                if pending:
                    gaps.add(len(parts))
                if not parts:
                    first = part
                parts.append(compile_part(part))
                pending = False
            if not parts:  # only `**`: one whole part, so every name with one matches
                parts.append(_ANY_ONE_PART)
            if not anchored:
                gaps.discard(0)  # a floating pattern starts at every boundary anyway
            self._parts.append(tuple(parts))
            self._gaps.append(frozenset(gaps))
            anchored_list.append(anchored)
            if not anchored:
                # Unanchored patterns start again at every part boundary; one whose first part
                # is plain text can only start at a part equal to it.
                if first is not None and len(first) == 1 and isinstance(first[0], Literal):
                    self._starts.setdefault(first[0].text, []).append((p, 0))
                else:
                    self._floating.append((p, 0))
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


class CompiledSelector:
    """One name selector, compiled: `matches(name)` says whether it selects `name`."""

    def __init__(self, text: str, anchored: bool = False) -> None:
        self.text = text
        self.anchored = anchored
        parts = parse_name_pattern(text)
        #: With a part counted from the end, what it selects depends on all the names matched.
        self.relative = is_relative(parts)
        self._matcher = None if self.relative else PartMatcher([(text, anchored)])

    def matches(self, name: str) -> bool:
        """Whether it selects `name` (a selector counting from the end counts in `name` alone:
        use `select` with all the names)."""
        return bool(self.select((name,)))

    def select(self, names: Iterable[str]) -> list[str]:
        """The names it selects, in order (indices counted from the end count among them)."""
        names = list(names)
        matcher = self._matcher
        if matcher is None:
            resolved = resolve(parse_name_pattern(self.text), self.anchored, IndexedParents(names))
            if not resolved:
                return []
            matcher = PartMatcher(resolved)
        return [n for n, bits in zip(names, matcher.bits_of(names), strict=True) if bits]

    def __repr__(self) -> str:
        return f"CompiledSelector({('^' if self.anchored else '') + self.text!r})"


@lru_cache(maxsize=4096)
def compile_name_pattern(text: str, anchored: bool = False) -> CompiledSelector:
    """Compile a name pattern (without its `^`; `anchored` for the `^` form)."""
    return CompiledSelector(text, anchored)
