"""Layer-wise learning-rate decay (`lr decay 0.75 per layer from * down blocks to patch_embed`):
which layer each name is in, and so its rate.

The layers, from the top: the `from` group, one layer per index of the `down` stack (the last
index first: `blocks.11` of a 12-block ViT is the layer just below the top), then the `to`
group. A layer's rate is the base rate times the factor once for every layer above it, so the
top is at the base rate, and a name several groups select is in the lowest of them (`from *`
puts everything the stack and the bottom do not take in the top layer).

The stack's indices come from the names, as indices counted from the end do (relative.py): the
numbered children of each parent the `down` selector ends at (`blocks` -> `blocks.0`,
`blocks.1`, ...), or, when its last part is an index or range (`blocks.-4..-1`), those of that
part. Each parent counts its own (an encoder and a decoder stack side by side each have their last
block just below the top), and the bottom is one below the deepest stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import Diagnostic
from .nodes import LayerDecay, NamePattern
from .patterns import IndexFromEnd, Literal, NumberRange, PatternParts, parse_name_pattern
from .relative import IndexedParents, absolute

if TYPE_CHECKING:
    from .policy import Policy


@dataclass(frozen=True)
class StackLayer:
    """One layer of a stack: the anchored pattern of its names, and its rank from the end
    (1: the last index of its parent)."""

    pattern: PatternParts
    rank: int


def stack_layers(layers: LayerDecay, parents: IndexedParents) -> list[StackLayer]:
    """Every layer of the `down` stack in these names, parent by parent."""
    out: list[StackLayer] = []
    for selector in layers.stack:
        if not isinstance(selector, NamePattern):
            continue  # the builder refuses these (FP142)
        parts = parse_name_pattern(selector.text)
        last = parts[-1] if parts else None
        index: NumberRange | IndexFromEnd | None = None
        if isinstance(last, tuple) and len(last) == 1 and isinstance(last[0], IndexFromEnd):
            index, parts = last[0], parts[:-1]
        elif isinstance(last, tuple) and len(last) == 1 and isinstance(last[0], NumberRange):
            index, parts = last[0], parts[:-1]
        for parent, indices in parents.reached_by(parts, selector.anchored):
            chosen = _chosen(indices, index)
            spelled = tuple((Literal(p),) for p in parent)
            for rank, i in enumerate(reversed(chosen), start=1):
                out.append(StackLayer((*spelled, (Literal(str(i)),)), rank))
    return out


def _chosen(indices: Sequence[int], index: NumberRange | IndexFromEnd | None) -> list[int]:
    if index is None:
        return list(indices)
    made = absolute(index, indices) if isinstance(index, IndexFromEnd) else index
    if made is None:
        return []
    return [i for i in indices if made.lo <= i <= made.hi]


def depth(
    layers: LayerDecay,
    *,
    in_top: bool,
    in_stack: bool,
    rank: int | None,
    in_bottom: bool,
    deepest: int,
) -> int | None:
    """How many layers are above a name's layer (None: the statement does not select it).

    `rank`: the name's stack layer counted from the end (1: the last index), None when no
    numbered stack layer holds it; `in_stack`: the `down` selector selects it (with or without
    an index: without one, it is in the stack's top layer); `deepest`: the most layers any one
    parent's stack has."""
    above_stack = 1 if layers.top else 0
    if in_bottom:
        return above_stack + deepest
    if rank is not None:
        return above_stack + rank - 1
    if in_stack:
        return above_stack
    if in_top:
        return 0
    return None


def decay_underflows(
    policy: Policy, depths: Mapping[int, Sequence[int | None]]
) -> list[Diagnostic]:
    """FP112 for each layer decay (rule index -> depth of each signature, as `classify` found)
    whose factor, raised to the depth of the deepest layer, rounds to 0: that layer's rate would
    be 0, which freezes it, and no one wrote `0` (as `lr 1e-400` is refused where written)."""
    out = []
    for rule in policy.rules:
        found = depths.get(rule.index)
        layers = rule.statement.layers
        if not found or layers is None:
            continue
        deepest = max((d for d in found if d is not None), default=0)
        if deepest and layers.factor.number**deepest == 0.0:
            message = (
                f"`lr decay {layers.factor}` rounds to 0 at depth {deepest} (its layers here are"
                f" {deepest + 1} deep): that layer's rate would be 0, which freezes it; use a"
                " larger factor, or `freeze` what should not train"
            )
            out.append(policy.diagnostic("FP112", message, rule.statement, layers.factor))
    return out
