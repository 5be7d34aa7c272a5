"""Cutting a captured graph into a frozen part (cached per sample) and a live part (run each step).

A node is *live* when its value depends on a trainable tensor (a parameter with
`requires_grad`, or an input that requires grad), when it changes the model's state (a buffer
written in place, such as BatchNorm's `num_batches_tracked`), or when caching it would not be
exact: randomness, or a value that mixes the samples of a batch. Everything else is *frozen*: a
function of the frozen tensors and of each sample alone, the same every time the sample comes.

The frozen values the live part reads are the *boundary*. Each boundary value that depends on the
input and on some frozen tensor is cached per sample; values that depend on no frozen tensor (a
mask built from `attention_mask`), or on no input (position embeddings), or that are not tensors
(the batch size) are cheaper to recompute, so they are copied into the live part with what they
need. The cut follows the dataflow of the graph, so a frozen value read in several places (a
skip connection, BERT's mask read by every trainable block) is the same value everywhere.

Random ops inside the frozen part (dropout, SDPA's `dropout_p`) are turned off while cached when
`frozen_dropout="eval"` (the default), as in eval mode; a random op whose output only feeds the
live part (dropout on the head's input) stays live and random. With `frozen_dropout="keep"`, or
for any other random op, the op and what follows it are live, and `reasons` says why.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch import fx

from .capture import Capture, Placeholder, base_of, written_args

#: Dropout ops of the graph that become the identity when turned off: (input, p, train).
DROPOUTS = frozenset(
    {
        torch.ops.aten.dropout.default,
        torch.ops.aten.feature_dropout.default,
        torch.ops.aten.alpha_dropout.default,
        torch.ops.aten.feature_alpha_dropout.default,
    }
)
SDPA = torch.ops.aten.scaled_dot_product_attention.default
#: Checks export leaves in the graph; the cache checks its inputs itself, so they are dropped.
ASSERTS = frozenset(
    {
        torch.ops.aten._assert_tensor_metadata.default,
        torch.ops.aten._assert_scalar.default,
    }
)
#: Ops that give a size or stride, not data: recomputed in the live part, never cached.
META_OPS = frozenset(
    {
        torch.ops.aten.sym_size.int,
        torch.ops.aten.sym_numel.default,
        torch.ops.aten.sym_stride.int,
        torch.ops.aten.sym_storage_offset.default,
    }
)
NORM_WITH_STATS = {  # op -> position of its `training` / `use_input_stats` flag
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.instance_norm.default: 5,
}


@dataclass
class NodeInfo:
    trainable: bool = False  # depends on a trainable tensor
    reason: str | None = None  # why it cannot be cached (here or upstream)
    input: bool = False  # depends on the call's tensor inputs
    state: bool = False  # depends on a frozen parameter, buffer or constant
    turned_off: bool = False  # a random op turned off (eval) in the frozen part

    @property
    def live(self) -> bool:
        return self.trainable or self.reason is not None


@dataclass
class Cut:
    """Where the graph is cut for one trainable set."""

    info: dict[fx.Node, NodeInfo]
    boundary: list[fx.Node]  # frozen values the live part reads, cached per sample
    recompute: list[fx.Node]  # frozen nodes copied into the live part
    reasons: list[str]  # why some frozen-looking part could not be cached (for the warning)


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
    reasons: list[str] = field(default_factory=list)


def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _random_reason(node: fx.Node) -> str | None:
    """Why `node` is random, or None. SDPA is random only with `dropout_p > 0`."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return None
    if target is SDPA:
        p = node.args[3] if len(node.args) > 3 else node.kwargs.get("dropout_p", 0.0)
        return f"attention with dropout_p={p}" if p else None
    if target in DROPOUTS:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        return f"dropout (p={p})" if train and p else None
    if torch.Tag.nondeterministic_seeded in target.tags:
        return f"random op {target}"
    return None


def _where(node: fx.Node) -> str:
    """The module a node comes from, for messages: `encoder.layer.3.attention` or the op."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        path = path.replace("L['self'].", "").replace("L__self___", "")
        return f"{path} ({node.target})" if path else str(node.target)
    return str(node.target)


class Classifier:
    """Node facts for a capture, per trainable set."""

    def __init__(self, capture: Capture, frozen_dropout: str) -> None:
        self.capture = capture
        self.frozen_dropout = frozen_dropout
        graph = capture.graph
        self.nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
        self.output = next(n for n in graph.nodes if n.op == "output")
        # Placeholders that some node writes into: whatever reads them is live.
        self.mutated: set[fx.Node] = set()
        for n in self.nodes:
            writes = list(written_args(n))
            flag = NORM_WITH_STATS.get(n.target)  # type: ignore[call-overload]
            if flag is not None and len(n.args) > flag and n.args[flag]:
                writes += [a for a in n.args[3:5] if isinstance(a, fx.Node)]
            for w in writes:
                base = base_of(w)
                if base.op == "placeholder":
                    self.mutated.add(base)

    def _batch_ok(self, size: Any, batch: Any) -> bool:
        """Whether a first dimension of `size` keeps samples apart (the batch, or k rows per
        sample in batch-major order)."""
        if isinstance(size, torch.SymInt):
            if batch is None:
                return False
            q = sympy.simplify(size.node.expr / batch)
            return bool(q.is_Integer and q > 0)
        return batch is None and self.capture.batch_symbol is None  # a static batch of one

    def _mixing(self, node: fx.Node, info: dict[fx.Node, NodeInfo]) -> str | None:
        """Why `node` (which depends on the input) is not a per-sample function, or None."""
        target = node.target
        flag = NORM_WITH_STATS.get(target)  # type: ignore[call-overload]
        if flag is not None and len(node.args) > flag and node.args[flag]:
            if target is torch.ops.aten.batch_norm.default:
                return "a BatchNorm in training mode (batch statistics)"
            return "a normalization layer updating running statistics"
        if target in META_OPS:
            return None
        batch = self.capture.batch_symbol
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else [val]
        for v in vals:
            if v is None and target in ASSERTS:
                continue
            if not isinstance(v, torch.Tensor):
                return f"{target} gives a non-tensor value computed from the input"
            if v.dim() == 0 or not self._batch_ok(v.shape[0], batch):
                return f"{target} mixes or moves the batch dimension"
        if isinstance(target, torch._ops.OpOverload):
            first = next((a for a in node.args if isinstance(a, fx.Node)), None)
            rank = first.meta["val"].dim() if first is not None and _is_tensor(first) else None
            for arg, value in zip(target._schema.arguments, node.args, strict=False):
                if arg.name in ("dim", "dims") and rank and _names_dim0(value, rank):
                    return f"{target} works along the batch dimension"
        return None

    def classify(self, trainable: Collection[str]) -> dict[fx.Node, NodeInfo]:
        info: dict[fx.Node, NodeInfo] = {}
        for n in self.capture.graph.nodes:
            if n.op == "placeholder":
                p = self.capture.placeholders[n.name]
                i = NodeInfo(
                    trainable=n.name in trainable,
                    input=p.kind == "input",
                    state=p.kind in ("param", "buffer", "constant"),
                )
                info[n] = i
                continue
            if n.op == "output":
                continue
            ins = [info[a] for a in _inputs(n)]
            i = NodeInfo(
                trainable=any(x.trainable for x in ins),
                input=any(x.input for x in ins),
                state=any(x.state for x in ins),
            )
            info[n] = i
            if i.trainable:
                continue
            upstream = next((x.reason for x in ins if x.reason), None)
            if upstream:
                i.reason = upstream
                continue
            if any(base_of(a) in self.mutated for a in _inputs(n)):
                i.reason = f"{_where(n)} reads or writes a buffer the forward changes"
                continue
            random = _random_reason(n)
            if random:
                # Turned off only if it feeds the frozen part (decided below, once users are
                # known); for now it is a candidate.
                i.turned_off = self.frozen_dropout == "eval" and (
                    n.target in DROPOUTS or n.target is SDPA
                )
                if not i.turned_off:
                    i.reason = f"{_where(n)} is random: {random}"
                    continue
            if i.input:
                mixing = self._mixing(n, info)
                if mixing:
                    i.reason = f"{_where(n)}: {mixing}"
        self._keep_head_dropout(info)
        return info

    def _keep_head_dropout(self, info: dict[fx.Node, NodeInfo]) -> None:
        """A random op turned off whose output only the live part reads belongs to the live part
        (dropout on the head's input): it stays random there, as in the model."""
        for n in reversed(self.nodes):
            i = info[n]
            if i.turned_off and n.users and all(info.get(u, NodeInfo()).live for u in n.users):
                if n.target in DROPOUTS or n.target is SDPA:
                    i.turned_off = False
                    i.reason = "__live_random__"
        # Descendants of such an op are live too (they see its random output).
        for n in self.nodes:
            i = info[n]
            if i.reason is None and not i.trainable:
                if any(info[a].reason == "__live_random__" for a in _inputs(n)):
                    i.reason = "__live_random__"

    def cut(self, trainable: Collection[str]) -> Cut:
        info = self.classify(trainable)
        boundary: dict[fx.Node, None] = {}
        recompute: dict[fx.Node, None] = {}

        def need(node: fx.Node) -> None:
            i = info[node]
            if node.op == "placeholder" or i.live or node in boundary or node in recompute:
                return
            if i.input and i.state and _is_tensor(node) and node.target not in META_OPS:
                boundary[node] = None
                return
            for a in _inputs(node):
                need(a)
            recompute[node] = None

        for n in self.nodes:
            if info[n].live and n.target not in ASSERTS:
                for a in _inputs(n):
                    need(a)
        for a in self.output.all_input_nodes:
            need(a)
        reasons = sorted(
            {
                i.reason
                for n, i in info.items()
                if i.reason and i.reason != "__live_random__" and i.input and not i.trainable
                # the origin of a reason: none of its inputs carries the same one
                and not any(info[a].reason == i.reason for a in _inputs(n))
            }
        )
        order = {n: k for k, n in enumerate(self.capture.graph.nodes)}
        return Cut(
            info,
            sorted(boundary, key=order.__getitem__),
            sorted(recompute, key=order.__getitem__),
            reasons,
        )


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _names_dim0(value: Any, rank: int) -> bool:
    dims = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(d, int) and d % rank == 0 for d in dims)


# --- building the two graphs ----------------------------------------------------------------


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
        if info[n].turned_off and n.target is SDPA:
            new = env[n]
            if len(new.args) > 3:
                new.args = (*new.args[:3], 0.0, *new.args[4:])
            else:
                new.kwargs = {**new.kwargs, "dropout_p": 0.0}
    graph.output(tuple(env[o] if isinstance(o, fx.Node) else o for o in outputs))
    module = fx.GraphModule(root, graph)
    return module


def _ancestors(node: fx.Node, stop: dict[fx.Node, NodeInfo]) -> list[fx.Node]:
    """Every node `node` is computed from (itself included), in graph order."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(_inputs(n))
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
        used.update(_inputs(n))
    used.update(classifier.output.all_input_nodes)
    live_ph = [n for n in order if n.op == "placeholder" and n in used]
    outputs = list(classifier.output.args[0])  # type: ignore[arg-type]
    live = _copy(
        [n for n in order if n in live_nodes], boundary + live_ph, outputs, info, capture.root
    )
    sources = []
    for n in stored:
        sources.append(
            [ph[a.name].tensor for a in _ancestors(n, info) if a.op == "placeholder"]
            + []  # keeps the list a fresh one per value
        )
    return Partition(
        trainable=trainable_flags,
        stored=[n.name for n in stored],
        boundary=len(boundary),
        frozen=frozen,
        frozen_inputs=[ph[n.name] for n in frozen_inputs],
        live=live,
        live_inputs=[*range(len(boundary)), *(ph[n.name] for n in live_ph)],
        sources=[[t for t in s if t is not None] for s in sources],
        reasons=cut.reasons,
    )


def getitem_of(node: fx.Node) -> bool:
    return node.target is operator.getitem
