"""Cutting a captured graph into a frozen part (cached per sample) and a live part (run each step).

A node is *live* when its value depends on a trainable tensor (a parameter with
`requires_grad`, or an input that requires grad), when it changes the model's state (a buffer
written in place, such as BatchNorm's `num_batches_tracked`), or when caching it would not be
exact: randomness, or a value that mixes the samples of a batch. Everything else is *frozen*: a
function of the frozen tensors and of each sample alone, the same every time the sample comes.
A value keeps samples apart when its first dimension is the batch, or `batch * k` rows in
batch-major order with k a whole number of rows per sample (k may be symbolic: the tokens of
a flattened `(batch * tokens, features)` view; `shapes.py` decides); anything else is live.

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

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from .capture import Capture, base_of, written_args

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
ARANGES = frozenset(
    {
        torch.ops.aten.arange.default,
        torch.ops.aten.arange.start,
        torch.ops.aten.arange.start_step,
    }
)
#: Views that keep each row where it was (for following `arange(batch)`).
VIEWS = frozenset(
    {
        torch.ops.aten.unsqueeze.default,
        torch.ops.aten.slice.Tensor,
        torch.ops.aten.view.default,
        torch.ops.aten.reshape.default,
        torch.ops.aten.expand.default,
        torch.ops.aten._to_copy.default,
        torch.ops.aten.to.dtype,
        torch.ops.aten.to.dtype_layout,
        torch.ops.aten.to.device,
    }
)
#: Ops with a `dim` argument that may name dimension 0 without mixing samples: a slice along
#: it either keeps every row (a no-op) or changes the size, which the shape check catches.
ALONG_DIM0_OK = frozenset({torch.ops.aten.slice.Tensor})
#: The reason of a random op that stays in the live part by design (not reported).
LIVE_RANDOM = "random, read by the live part only"
NORM_WITH_STATS = {  # op -> position of its `training` / `use_input_stats` flag
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.instance_norm.default: 5,
}


@dataclass
class NodeInfo:
    trainable: bool = False  # depends on a trainable tensor
    reason: str | None = None  # why it cannot be cached (here or upstream)
    input: bool = False  # depends on the data of the call's tensor inputs
    state: bool = False  # depends on a frozen parameter, buffer or constant
    turned_off: bool = False  # a random op turned off (eval) in the frozen part
    iota: bool = False  # `arange(batch)` and views of it: each sample's own index
    position: bool = False  # depends on positions in the batch in some other way

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


def inputs_of(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _random_reason(node: fx.Node) -> str | None:
    """Why `node` is random, or None. SDPA is random only with `dropout_p > 0`."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return None
    if target is SDPA:
        p = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
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
        self._rows: dict[Any, bool] = {}  # first dimension -> `_batch_ok`
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

    def _batch_ok(self, size: Any) -> bool:
        """Whether a first dimension of `size` keeps samples apart: the batch, or k rows per
        sample in batch-major order (`view(batch * k, ...)`)."""
        symbols = self.capture.batch_symbols
        if not symbols:
            return True  # a capture of a batch of one: nothing to mix
        if not isinstance(size, torch.SymInt):
            return False
        expr = size.node.expr
        ok = self._rows.get(expr)
        if ok is None:
            ok = self._rows[expr] = self.capture.shapes.rows_per_sample(expr, symbols)
        return ok

    def _mixing(self, node: fx.Node) -> str | None:
        """Why `node` (which depends on the input's data) is not a per-sample function."""
        target = node.target
        flag = NORM_WITH_STATS.get(target)  # type: ignore[call-overload]
        if flag is not None and len(node.args) > flag and node.args[flag]:
            if target is torch.ops.aten.batch_norm.default:
                return "a BatchNorm in training mode (batch statistics)"
            return "a normalization layer updating running statistics"
        val = node.meta.get("val")
        for v in val if isinstance(val, (tuple, list)) else [val]:
            if not isinstance(v, torch.Tensor):
                return f"{target} gives a non-tensor value computed from the input"
            if v.dim() == 0 or not self._batch_ok(v.shape[0]):
                rows = v.shape[0] if v.dim() else None
                if isinstance(rows, torch.SymInt) and rows.node.expr.free_symbols & set(
                    self.capture.batch_symbols
                ):
                    return (
                        f"{target} gives {rows} rows, not a whole number of rows per sample "
                        "that the cache can split"
                    )
                return f"{target} mixes or moves the batch dimension"
        if target is torch.ops.aten.repeat.default and node.args[1][0] != 1:  # type: ignore[index]
            return f"{target} works along the batch dimension"  # copies of the whole batch
        if isinstance(target, torch._ops.OpOverload) and target not in ALONG_DIM0_OK:
            # The tensor a `dim` argument counts in: the first input (the first of a list, for
            # `cat`, whose `dim=0` stacks the samples of several tensors one after the other).
            first = next((a for a in node.all_input_nodes if _is_tensor(a)), None)
            rank = first.meta["val"].dim() if first is not None else None
            for k, arg in enumerate(target._schema.arguments):
                if arg.name not in ("dim", "dims") or not rank:
                    continue
                # A `dim` left out is its default: 0 for `cat`.
                value = node.args[k] if k < len(node.args) else node.kwargs.get(arg.name)
                if value is None and arg.has_default_value():
                    value = arg.default_value
                if _names_dim0(value, rank):
                    return f"{target} works along the batch dimension"
        return None

    def _positions(self, n: fx.Node, info: dict[fx.Node, NodeInfo], i: NodeInfo) -> None:
        """Track `arange(batch)`: as the batch index of `x[idx, ...]` it selects each sample's
        own row (HF's mask code does this); any other use makes a value position-dependent."""
        ins = inputs_of(n)
        target = n.target
        if target in ARANGES and not ins_data(ins, info) and _is_tensor(n):
            if self._batch_ok(n.meta["val"].shape[0]) and self.capture.batch_symbols:
                start = n.args[0] if target is not torch.ops.aten.arange.default else 0
                step = n.args[2] if len(n.args) > 2 else 1
                if start == 0 and step == 1:
                    i.iota = True
                else:
                    i.position = True
            return
        if target in VIEWS and ins and info[ins[0]].iota:
            i.iota = True
            return
        if target is torch.ops.aten.index.Tensor:
            indices = n.args[1] if len(n.args) > 1 else []
            first = indices[0] if indices else None  # type: ignore[index]
            rest = [a for a in ins if a is not first and a is not n.args[0]]
            own = isinstance(first, fx.Node) and info[first].iota
            if own and not any(info[a].iota or info[a].position for a in rest):
                i.position = info[n.args[0]].position  # type: ignore[index]
                return
        i.position = any(info[a].iota or info[a].position for a in ins)

    def classify(self, trainable: Collection[str]) -> dict[fx.Node, NodeInfo]:
        info: dict[fx.Node, NodeInfo] = {}
        for n in self.capture.graph.nodes:
            if n.op == "placeholder":
                p = self.capture.placeholders[n.name]
                info[n] = NodeInfo(
                    trainable=n.name in trainable,
                    input=p.kind == "input",
                    state=p.kind in ("param", "buffer", "constant"),
                )
                continue
            if n.op == "output":
                continue
            ins = [info[a] for a in inputs_of(n)]
            i = NodeInfo(trainable=any(x.trainable for x in ins))
            info[n] = i
            if n.target in META_OPS or n.target in ASSERTS:
                continue  # a size (shapes are what the capture is for), or a check: not data
            i.input = any(x.input for x in ins)
            i.state = any(x.state for x in ins)
            self._positions(n, info, i)
            if i.trainable:
                continue
            upstream = next((x.reason for x in ins if x.reason), None)
            if upstream:
                i.reason = upstream
                continue
            flag = NORM_WITH_STATS.get(n.target)  # type: ignore[call-overload]
            if i.input and flag is not None and len(n.args) > flag and n.args[flag]:
                i.reason = f"{_where(n)}: {self._mixing(n)}"
                continue
            if any(base_of(a) in self.mutated for a in inputs_of(n)):
                i.reason = f"{_where(n)} reads or writes a buffer the forward changes"
                continue
            random = _random_reason(n)
            if random:
                # Turned off in the frozen part; `_keep_head_dropout` gives back to the live part
                # the ones only it reads.
                i.turned_off = self.frozen_dropout == "eval" and (
                    n.target in DROPOUTS or n.target is SDPA
                )
                if not i.turned_off:
                    i.reason = f"{_where(n)} is random: {random}"
                    continue
            if i.input and i.position:
                i.reason = f"{_where(n)} depends on the sample's position in the batch"
            elif i.input:
                mixing = self._mixing(n)
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
                    i.reason = LIVE_RANDOM  # its users are live already, and so all below

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
            for a in inputs_of(node):
                need(a)
            recompute[node] = None

        for n in self.nodes:
            if info[n].live and n.target not in ASSERTS:
                for a in inputs_of(n):
                    need(a)
        for a in self.output.all_input_nodes:
            need(a)
        reasons = sorted(
            {
                i.reason
                for n, i in info.items()
                if i.reason
                and i.reason != LIVE_RANDOM
                and i.input
                and not i.trainable
                # the origin of a reason: none of its inputs carries the same one
                and not any(info[a].reason == i.reason for a in inputs_of(n))
            }
        )
        order = {n: k for k, n in enumerate(self.capture.graph.nodes)}
        return Cut(
            info,
            sorted(boundary, key=order.__getitem__),
            sorted(recompute, key=order.__getitem__),
            reasons,
        )


def ins_data(ins: list[fx.Node], info: dict[fx.Node, NodeInfo]) -> bool:
    return any(info[a].input for a in ins)


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _names_dim0(value: Any, rank: int) -> bool:
    dims = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(d, int) and d % rank == 0 for d in dims)
