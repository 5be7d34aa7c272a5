"""Sorting the names a policy is bound to by what selects them: signatures.

Two names that the same selectors select (name patterns, `type:` globs over their modules'
classes, `ndim` comparisons over their shapes, and the layers of a layer decay) get the same
decision at every moment, so bound.py decides once per signature. Each pass here runs over every
name once, in C or in one tight loop: a model can have 100k tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import arguments
from .glob import compile_type_pattern
from .layers import StackLayer, depth, stack_layers
from .matcher import PartMatcher
from .nodes import NamePattern, Selector, ShapePattern
from .patterns import PatternParts, parse_name_pattern
from .relative import IndexedParents, is_relative, resolve

if TYPE_CHECKING:  # type-only: policy.py imports bound.py, which imports this module
    from .policy import Policy


@dataclass
class Classification:
    """The signatures of a list of names under a policy."""

    #: For each name (by index), its signature, numbered in order of first name.
    signatures: list[int]
    #: For each signature, the rules that select it (a bit per rule index).
    sig_rules: list[int]
    #: For each signature, the index of its first name.
    first: list[int]
    #: Selector key -> its bit, and the union of the bits some name has (`matches_anything`).
    name_bit: dict[tuple[str, bool], int]
    other_bit: dict[str, int]
    name_bits: int = 0
    other_bits: int = 0
    #: For each layer-decay rule (by rule index), the depth of each signature it selects.
    depths: dict[int, list[int | None]] = field(default_factory=dict)


def other_key(selector: Selector) -> str:
    """The key of a `type:` or `ndim` selector among a policy's selectors of those kinds (an
    `ndim` selector's text cannot be a class-name glob: it holds `<`, `>` or `=`)."""
    return str(selector) if isinstance(selector, ShapePattern) else selector.text


def classify(
    policy: Policy,
    names: Sequence[str],
    module_types: Mapping[str, Collection[str]] | None,
    shapes: Mapping[str, Sequence[int]] | None,
) -> Classification:
    rules = policy.rules
    name_ids: dict[tuple[str, bool], int] = {}
    other_ids: dict[str, int] = {}
    kinds: dict[str, Selector] = {}

    def masks(selectors: Iterable[Selector]) -> tuple[int, int]:
        names_mask = others_mask = 0
        for s in selectors:
            if isinstance(s, NamePattern):
                names_mask |= 1 << name_ids.setdefault((s.text, s.anchored), len(name_ids))
            else:
                key = other_key(s)
                kinds.setdefault(key, s)
                others_mask |= 1 << other_ids.setdefault(key, len(other_ids))
        return names_mask, others_mask

    rule_masks = []
    for r in rules:
        selection = r.statement.selection
        rule_masks.append((masks(selection.groups[r.group]), masks(selection.exclude)))
    decays = [r for r in rules if r.statement.layers is not None]
    layer_masks = {}
    for r in decays:
        layers = r.statement.layers
        assert layers is not None
        layer_masks[r.index] = (masks(layers.top), masks(layers.stack), masks(layers.bottom))
    parents: list[IndexedParents] = []  # made once, when first needed

    def indexed() -> IndexedParents:
        if not parents:
            parents.append(IndexedParents(names))
        return parents[0]

    # The layers of every stack are selectors of their own, after the policy's.
    stacks: list[tuple[int, list[StackLayer]]] = []
    for r in decays:
        assert r.statement.layers is not None
        stacks.append((r.index, stack_layers(r.statement.layers, indexed())))
    extra = [layer.pattern for _, found in stacks for layer in found]
    name_bits = _name_bits(names, list(name_ids), extra, indexed)
    other_bits = _other_bits(names, [kinds[k] for k in other_ids], module_types, shapes)
    key_of: dict[tuple[int, int], int] = {}
    signatures = [
        key_of.setdefault(key, len(key_of))
        for key in zip(name_bits, other_bits, strict=False)  # other_bits may be endless
    ]
    keys = list(key_of)
    out = Classification(
        signatures,
        [],
        [],
        {k: 1 << v for k, v in name_ids.items()},
        {k: 1 << v for k, v in other_ids.items()},
    )
    for nb, ob in keys:
        out.name_bits |= nb
        out.other_bits |= ob
        selected = 0
        for r, ((inc_n, inc_o), (exc_n, exc_o)) in zip(rules, rule_masks, strict=True):
            if (nb & inc_n or ob & inc_o) and not (nb & exc_n or ob & exc_o):
                selected |= 1 << r.index
        out.sig_rules.append(selected)
    # Signatures are numbered in order of their first names, so each search starts where the
    # last one ended: one scan in C in all.
    start = 0
    for sig in range(len(keys)):
        start = signatures.index(sig, start)
        out.first.append(start)
    # Layer decays: the depth of each signature, from its stack layer (bit after the policy's
    # own selectors) and the groups that select it.
    bit = len(name_ids)
    for rule_index, found in stacks:
        layers = next(r.statement.layers for r in decays if r.index == rule_index)
        assert layers is not None
        (top_n, top_o), (stack_n, stack_o), (bottom_n, bottom_o) = layer_masks[rule_index]
        deepest = max((layer.rank for layer in found), default=0)
        ranks = [layer.rank for layer in found]
        first_bit, bit = bit, bit + len(found)
        depths: list[int | None] = []
        for nb, ob in keys:
            # A name is in at most one layer of a stack: the lowest of its stack bits says which.
            own = nb >> first_bit & ((1 << len(found)) - 1)
            rank = ranks[(own & -own).bit_length() - 1] if own else None
            depths.append(
                depth(
                    layers,
                    in_top=bool(nb & top_n or ob & top_o),
                    in_stack=bool(nb & stack_n or ob & stack_o),
                    rank=rank,
                    in_bottom=bool(nb & bottom_n or ob & bottom_o),
                    deepest=deepest,
                )
            )
        out.depths[rule_index] = depths
    return out


def _name_bits(
    names: Sequence[str],
    selectors: Sequence[tuple[str, bool]],
    extra: Sequence[PatternParts],
    indexed,
) -> list[int]:
    """For each name, the name selectors (bit i: `selectors[i]`) that select it, then the
    `extra` anchored patterns (bits after them).

    A selector counting from the end (`blocks.-1`) is first resolved against these names into
    the selectors it means here (relative.py); their matches are folded back into its bit."""
    entries: list[tuple[str | PatternParts, bool]] = []
    owners: list[int] = []  # matcher pattern -> selector
    folds = False
    for i, (text, anchored) in enumerate(selectors):
        parts = parse_name_pattern(text)
        if not is_relative(parts):
            entries.append((text, anchored))
            owners.append(i)
            continue
        folds = True
        for resolved in resolve(parts, anchored, indexed()):
            entries.append(resolved)
            owners.append(i)
    for j, parts in enumerate(extra):
        entries.append((parts, True))
        owners.append(len(selectors) + j)
    bits = PartMatcher(entries).bits_of(names)
    if not folds:
        return bits
    # Few distinct values (one per kind of name): fold each once.
    folded: dict[int, int] = {}
    for value in set(bits):
        out, rest = 0, value
        while rest:
            low = rest & -rest
            out |= 1 << owners[low.bit_length() - 1]
            rest ^= low
        folded[value] = out
    return list(map(folded.__getitem__, bits))


def _other_bits(
    names: Sequence[str],
    selectors: Sequence[Selector],
    module_types: Mapping[str, Collection[str]] | None,
    shapes: Mapping[str, Sequence[int]] | None,
) -> Iterable[int]:
    """For each name, the `type:` and `ndim` selectors (bit i: `selectors[i]`) that select it;
    without module types (shapes), type (shape) selectors select nothing."""
    types = [
        (i, compile_type_pattern(s.text))
        for i, s in enumerate(selectors)
        if not isinstance(s, (NamePattern, ShapePattern))
    ]
    dims = [(i, s) for i, s in enumerate(selectors) if isinstance(s, ShapePattern)]
    out: Iterable[int] = itertools.repeat(0)
    if types and module_types is not None:
        get = module_types.get
        found = [get(name, ()) for name in names]
        try:
            distinct = set(found)  # frozensets (from inspect_model): their hashes are cached
        except TypeError:  # lists or sets given by hand
            found = [frozenset(c) for c in found]
            distinct = set(found)
        for classes in distinct:
            if isinstance(classes, (str, bytes)):  # one class name, not a collection of them
                name = names[found.index(classes)]
                arguments.class_names_of(name, classes, "module_types")
        of_classes = {
            c: sum(1 << q for q, glob in types if any(glob.fullmatch(x) for x in c))
            for c in distinct
        }
        out = list(map(of_classes.__getitem__, found))
    if dims and shapes is not None:
        ndims = [len(arguments.shape_of(name, shapes, "shapes")) for name in names]
        of_ndim = {n: sum(1 << q for q, s in dims if s.accepts(n)) for n in set(ndims)}
        by_ndim = map(of_ndim.__getitem__, ndims)
        out = [a | b for a, b in zip(out, by_ndim, strict=False)]
    return out
