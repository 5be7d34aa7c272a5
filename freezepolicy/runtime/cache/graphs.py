"""Building the two graphs of a cut: the frozen graph (what the cache stores) and the live graph.

Both are `torch.fx.GraphModule`s made of the captured graph's own nodes, so they run the
model's ops in the model's order; their placeholders are fed the model's own tensors, so
autograd records the live graph as it records the model and gradients reach the same
`Parameter`s. A dropout turned off in the frozen part becomes the identity (its input), and
SDPA's `dropout_p` becomes 0, wherever the node is copied.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from .capture import INPLACE, Placeholder, returns_alias
from .partition import ASSERTS, DROPOUTS, SDPA, Classifier, NodeInfo, inputs_of


@dataclass
class Partition:
    """The two graphs of one cut, and what the cache stores."""

    trainable: tuple[bool, ...]
    stored: list[str]  # names of the values the frozen graph returns (boundary first)
    boundary: int  # how many of `stored` the live graph reads
    frozen: fx.GraphModule | None
    frozen_inputs: list[Placeholder]
    live: fx.GraphModule
    live_inputs: list[Placeholder | int]  # a placeholder, or the index of a boundary value
    #: For each stored value: the frozen tensors it is computed from (its cache is valid while
    #: they are the same tensors with the same versions).
    sources: list[list[torch.Tensor]] = field(default_factory=list)
    #: For each stored value: whether its first dimension is batch x k rows (k per sample,
    #: maybe symbolic: read from the value's size when it is split), not the batch itself.
    grouped: list[bool] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    #: For each stored value: the inputs (indices of flattened leaves) it is computed from,
    #: which are what identifies a sample for it (not the labels, say).
    key_leaves: list[tuple[int, ...]] = field(default_factory=list)


def _grouped(size: Any, symbols: frozenset[Any]) -> bool:
    if isinstance(size, torch.SymInt):
        return size.node.expr not in symbols
    return size != 1  # a capture of a batch of one


def _copy(
    nodes: Iterable[fx.Node],
    inputs: list[fx.Node],
    outputs: list[Any],
    info: dict[fx.Node, NodeInfo],
    root: fx.GraphModule,
) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in inputs:
        env[n] = graph.placeholder(n.name)
        env[n].meta = dict(n.meta)
    for n in nodes:
        if n in env:
            continue
        if info[n].turned_off and n.target in DROPOUTS:
            env[n] = env[n.args[0]]  # type: ignore[index]
            continue
        env[n] = graph.node_copy(n, env.__getitem__)
        if INPLACE in n.meta and _may_write_in_place(n, env, outputs):
            env[n].target = n.meta[INPLACE]
        if info[n].turned_off and n.target is SDPA:
            new = env[n]
            if len(new.args) > 4:
                new.args = (*new.args[:4], 0.0, *new.args[5:])
            else:
                new.kwargs = {**new.kwargs, "dropout_p": 0.0}
    graph.output(tuple(env[o] if isinstance(o, fx.Node) else o for o in outputs))
    module = fx.GraphModule(root, graph)
    return module


def _may_write_in_place(node: fx.Node, env: dict[fx.Node, Any], outputs: list[Any]) -> bool:
    """Whether a write the capture made out of place can be in place again in this graph: the
    value it wrote into is read by nothing else, is no view, and is neither an input nor an
    output of this graph. Then nobody can tell, and the copy (of an activation map, in a
    resnet) is saved."""
    first = node.meta[INPLACE]._schema.arguments[0].alias_info
    written = node.args[0]
    if first is None or not first.is_write:
        return False
    if not isinstance(written, fx.Node) or set(written.users) != {node}:
        return False
    if returns_alias(written) or written in outputs:
        return False
    copied = env.get(written)
    return isinstance(copied, fx.Node) and copied.op != "placeholder"


def _ancestors(node: fx.Node, stop: dict[fx.Node, NodeInfo]) -> list[fx.Node]:
    """Every node `node` is computed from (itself included), in graph order."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(inputs_of(n))
    return [n for n in stop if n in seen]


def build(
    classifier: Classifier,
    trainable_flags: tuple[bool, ...],
    trainable: Collection[str],
    anticipate: Iterable[Collection[str]] = (),
) -> Partition:
    """The partition for `trainable` (placeholder names); values that the cuts for the trainable
    sets in `anticipate` would cache are stored too when they are frozen now."""
    capture = classifier.capture
    cut = classifier.cut(trainable)
    info = cut.info
    stored = list(cut.boundary)
    for other in anticipate:
        for n in classifier.cut(other).boundary:
            if n not in stored and not info[n].live and info[n].input and info[n].state:
                stored.append(n)
    order = list(capture.graph.nodes)
    ph = capture.placeholders
    # The frozen graph: everything the stored values are computed from.
    needed: set[fx.Node] = set()
    for n in stored:
        needed.update(_ancestors(n, info))
    frozen_inputs = [n for n in order if n.op == "placeholder" and n in needed]
    frozen = None
    if stored:
        body = [n for n in order if n in needed and n.op != "placeholder"]
        frozen = _copy(body, frozen_inputs, stored, info, capture.root)
    # The live graph: the live nodes and the recomputed ones, reading the boundary.
    boundary = cut.boundary
    live_nodes = set(cut.recompute) | {
        n for n in classifier.nodes if info[n].live and n.target not in ASSERTS
    }
    used: set[fx.Node] = set()
    for n in live_nodes:
        used.update(inputs_of(n))
    used.update(classifier.output.all_input_nodes)
    live_ph = [n for n in order if n.op == "placeholder" and n in used]
    outputs = list(classifier.output.args[0])  # type: ignore[arg-type]
    live = _copy(
        [n for n in order if n in live_nodes], boundary + live_ph, outputs, info, capture.root
    )
    ancestry = [[a for a in _ancestors(n, info) if a.op == "placeholder"] for n in stored]
    sources = [[ph[a.name].tensor for a in nodes] for nodes in ancestry]
    key_leaves = [
        tuple(sorted(ph[a.name].leaf for a in nodes if ph[a.name].kind == "input"))
        for nodes in ancestry
    ]
    return Partition(
        trainable=trainable_flags,
        stored=[n.name for n in stored],
        boundary=len(boundary),
        frozen=frozen,
        frozen_inputs=[ph[n.name] for n in frozen_inputs],
        live=live,
        live_inputs=[*range(len(boundary)), *(ph[n.name] for n in live_ph)],
        sources=[[t for t in s if t is not None] for s in sources],
        grouped=[_grouped(n.meta["val"].shape[0], capture.batch_symbols) for n in stored],
        reasons=cut.reasons,
        key_leaves=key_leaves,
    )
