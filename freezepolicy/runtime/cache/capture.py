"""Capturing a model's computation as one graph: `torch.export`, and the facts a partition needs.

The cache cuts the model where its computation stops depending on trainable tensors, so it needs
the model's real dataflow, not its module order: values built outside any module (BERT's
attention mask, ResNet's flatten), skip connections, modules called twice. `torch.export`
(non-strict) gives that as an ATen graph whose parameters, buffers and inputs are placeholders
(`graph_signature.input_specs`), with every dimension of every tensor input marked `Dim.AUTO`:
export keeps a size symbolic unless the model's code needs its value, so one capture serves every
batch size of 2 or more and, when the model allows, every sequence length or image size
(`shapes.py` says which sizes a capture serves).

The graph of torch 2.14's export is not functional: `relu_`, `out += identity` and BatchNorm's
statistics updates write in place. Writes into the model's state (buffers) stay as they are and
run in the live part (`partition.py`). Writes into intermediate values are rewritten to their
out-of-place forms when nothing can observe the difference (no alias of the written value made
before the write is read after it); otherwise the capture is refused (`CaptureError`) and the
model runs uncached, with a warning.

A capture is made for one *call signature*: the structure of the inputs, each tensor's dtype,
device and number of dimensions, every non-tensor input's value (export bakes them in), and the
train/eval mode of every module (export bakes in dropout and BatchNorm modes); within it, for the
input sizes its `ShapeSpec` serves (the sizes export kept symbolic take any value the model's
guards allow; the ones it specialized, their captured value).
"""

from __future__ import annotations

import inspect
import itertools
import operator
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument
from torch.utils import _pytree as pytree

from .. import norm
from .shapes import Shapes, ShapeSpec, shape_spec

_CAPTURE_IDS = itertools.count()
#: Node meta key: the in-place op a node was before `functionalize_intermediates` rewrote it.
INPLACE = "freezepolicy_inplace"


class CaptureError(Exception):
    """The model cannot be captured (or not in a form the cache can use): it runs uncached."""


@dataclass(frozen=True)
class Inputs:
    """One call's inputs, flattened: the tensors and constants in export's order."""

    leaves: tuple[Any, ...]
    spec: Any  # pytree TreeSpec of (args, kwargs)
    batch: int  # the common size of dimension 0 of every tensor input
    signature: Hashable  # everything of the inputs a capture depends on, but their sizes
    shapes: Shapes  # the shape of each tensor input


def flatten_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Inputs:
    """Flatten a call's inputs; CaptureError when they cannot be cached per sample."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    sizes = set()
    parts: list[Hashable] = []
    shapes = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.dim() == 0:
                raise CaptureError("a tensor input has no batch dimension (it is a scalar)")
            sizes.add(leaf.shape[0])
            shapes.append(tuple(leaf.shape))
            parts.append(("T", leaf.dtype, leaf.device, leaf.dim(), leaf.requires_grad))
        else:
            try:
                hash(leaf)
            except TypeError:
                raise CaptureError(
                    f"an input of type {type(leaf).__name__} is neither a tensor nor hashable"
                ) from None
            parts.append(("V", type(leaf), leaf))
    if not sizes:
        raise CaptureError("the call has no tensor input")
    if len(sizes) > 1:
        raise CaptureError(
            f"the tensor inputs differ in their first dimension ({sorted(sizes)}): no common "
            "batch dimension to cache per sample"
        )
    return Inputs(tuple(leaves), spec, sizes.pop(), (spec, tuple(parts)), tuple(shapes))


def hooked_modules(model: nn.Module) -> list[str]:
    """Modules with forward or backward hooks (freezepolicy's norm holds aside): the captured
    graph runs their computation but not the hooks, so a cached forward never calls them."""
    out = []
    for path, m in model.named_modules():
        pre = len(m._forward_pre_hooks) - (1 if norm.is_held(m) else 0)
        if pre or m._forward_hooks or m._backward_hooks or m._backward_pre_hooks:
            out.append(path or "(the model)")
    return out


#: The device types whose autocast state a capture depends on.
AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_state() -> tuple[Any, ...]:
    """The autocast regions the call runs in, per device type (enabled, dtype): export records
    the casts autocast makes, so a capture made inside `torch.autocast` computes in its dtype and
    one made outside does not; each is a signature of its own."""
    return tuple(
        torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None
        for d in AUTOCAST_DEVICES
    )


def model_state(model: nn.Module) -> tuple[tuple[bool, ...], tuple[int, ...]]:
    """What a capture of `model` depends on besides the inputs, read in one walk: each module's
    effective mode (a held normalization layer counts as eval, as it runs) and the identity of
    each parameter and buffer slot (a replaced tensor needs a new capture)."""
    modes: list[bool] = []
    ids: list[int] = []
    for m in model.modules():
        modes.append(m.training and not (m._forward_pre_hooks and norm.is_held(m)))
        ids.extend(map(id, m._parameters.values()))
        ids.extend(map(id, m._buffers.values()))
    return tuple(modes), tuple(ids)


@dataclass
class Placeholder:
    """A graph input: where its value comes from when the graph runs."""

    name: str
    kind: str  # "param", "buffer", "constant", "input" (a tensor input), "value" (a non-tensor)
    tensor: Any = None  # the model's own tensor (param, buffer, constant), else None
    leaf: int = -1  # index among the flattened inputs (input, value)


@dataclass
class Capture:
    """A model's computation for one call signature, ready to partition."""

    graph: fx.Graph
    root: fx.GraphModule  # holds whatever the graph's get_attr nodes refer to
    placeholders: dict[str, Placeholder]
    out_spec: Any
    #: The sympy symbols of the inputs' batch sizes (export gives each input its own; the cache
    #: makes sure they are equal); empty when export kept the batch size static.
    batch_symbols: frozenset[Any]
    #: The input sizes the graph is valid for.
    shapes: ShapeSpec
    seconds: float
    partitions: dict[tuple[bool, ...], Any] = field(default_factory=dict)
    classifier: Any = None  # partition.Classifier, made once per capture
    #: Distinguishes the cached values of different captures in the store.
    id: int = field(default_factory=lambda: next(_CAPTURE_IDS))

    def params(self) -> list[Placeholder]:
        return [p for p in self.placeholders.values() if p.kind == "param"]


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """`Dim.AUTO` for every dimension of every tensor input, by argument name: export decides
    which sizes stay symbolic (`shapes.py`)."""

    def spec(value: Any) -> Any:
        return pytree.tree_map(
            lambda leaf: dict.fromkeys(range(leaf.dim()), Dim.AUTO)
            if isinstance(leaf, torch.Tensor)
            else None,
            value,
        )

    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as exc:
        raise CaptureError(f"the inputs do not fit the model's forward: {exc}") from None
    return {name: spec(value) for name, value in bound.arguments.items()}


def capture(model: nn.Module, args: tuple, kwargs: dict, shapes: Shapes) -> Capture:
    """Export `model` called with (`args`, `kwargs`), whose tensor inputs have `shapes`, and
    describe the graph's inputs."""
    started = time.perf_counter()
    try:
        ep = torch.export.export(
            model, args, kwargs, dynamic_shapes=_dynamic_shapes(model, args, kwargs), strict=False
        )
    except CaptureError:
        raise
    except Exception as exc:  # export raises many types; the message says what it could not do
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(f"torch.export could not capture the model: {first}") from exc
    graph = ep.graph_module.graph
    functionalize_intermediates(graph)
    placeholders = _placeholders(ep, model)
    inputs = sorted(  # the tensor inputs, in the order of the call's leaves
        (n for n in graph.nodes if n.op == "placeholder" and placeholders[n.name].kind == "input"),
        key=lambda n: placeholders[n.name].leaf,
    )
    return Capture(
        graph=graph,
        root=ep.graph_module,
        placeholders=placeholders,
        out_spec=_out_spec(ep),
        batch_symbols=frozenset(
            size.node.expr
            for size in (n.meta["val"].shape[0] for n in inputs)
            if isinstance(size, torch.SymInt)
        ),
        shapes=shape_spec(inputs, ep.range_constraints, shapes),
        seconds=time.perf_counter() - started,
    )


def _out_spec(ep: ExportedProgram) -> Any:
    kinds = {o.kind for o in ep.graph_signature.output_specs}
    if kinds - {OutputKind.USER_OUTPUT}:
        # Buffer mutations as outputs only appear in a functionalized graph; this one writes in
        # place, so an output of another kind would be state the cache does not know to set.
        raise CaptureError(f"the exported graph has outputs of kinds {sorted(map(str, kinds))}")
    return ep.call_spec.out_spec


def _placeholders(ep: ExportedProgram, model: nn.Module) -> dict[str, Placeholder]:
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    out: dict[str, Placeholder] = {}
    leaf = 0
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            out[name] = Placeholder(name, "param", params[spec.target])
        elif spec.kind == InputKind.BUFFER:
            tensor = buffers.get(spec.target)
            if tensor is None:
                raise CaptureError(f"buffer {spec.target} of the graph is not the model's")
            out[name] = Placeholder(name, "buffer", tensor)
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            out[name] = Placeholder(name, "constant", ep.constants[spec.target])
        elif spec.kind == InputKind.USER_INPUT:
            tensor_arg = isinstance(spec.arg, TensorArgument)
            out[name] = Placeholder(name, "input" if tensor_arg else "value", leaf=leaf)
            leaf += 1
        else:
            raise CaptureError(f"the graph has an input of kind {spec.kind.name}")
    return out


# --- in-place writes ----------------------------------------------------------------------------


def written_args(node: fx.Node) -> list[fx.Node]:
    """The graph values `node` writes into, from its op schema (`Tensor(a!)` arguments)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return []
    out = []
    for i, arg in enumerate(target._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node):
            out.append(value)
    return out


def returns_alias(node: fx.Node) -> bool:
    """Whether `node`'s result aliases its first input (a view, or an in-place op's result)."""
    target = node.target
    if node.op != "call_function":
        return False
    if target is operator.getitem:
        return False  # a tuple element is its own value here
    if not isinstance(target, torch._ops.OpOverload):
        return False
    returns = target._schema.returns
    return len(returns) == 1 and returns[0].alias_info is not None


def base_of(node: fx.Node) -> fx.Node:
    """The value whose memory `node` shares: through views and in-place results to the start."""
    while returns_alias(node) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def functionalize_intermediates(graph: fx.Graph) -> None:
    """Rewrite in-place writes into intermediate values as out-of-place ops, when nothing can
    tell; writes into placeholders (the model's buffers, the inputs) are left as they are.
    CaptureError when some write cannot be rewritten safely."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        for written in written_args(node):
            base = base_of(written)
            if base.op == "placeholder":
                continue
            # Anything aliasing the written memory made before the write and read after it
            # would see the write; out of place, it would not. (Aliases are found anew for
            # each write: a write rewritten before made its result a value of its own.)
            for alias in graph.nodes:
                if order[alias] >= order[node]:
                    break
                if base_of(alias) is not base:
                    continue
                late = [u for u in alias.users if u is not node and order[u] > order[node]]
                if late:
                    raise CaptureError(
                        f"{node.target} writes into a value that {late[0].target} reads "
                        "afterwards through another alias"
                    )
            functional = out_of_place(node.target)
            if functional is None:
                raise CaptureError(f"{node.target} writes in place and has no out-of-place form")
            node.meta[INPLACE] = node.target  # `graphs.py` may write in place again
            node.target = functional


def out_of_place(op: Any) -> Any:
    """`aten.add_.Tensor` -> `aten.add.Tensor`, when that overload exists with the same args."""
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    overload = getattr(packet, op._overloadname, None) if packet is not None else None
    if overload is None:
        return None
    if [a.name for a in overload._schema.arguments] != [a.name for a in op._schema.arguments]:
        return None
    return overload
