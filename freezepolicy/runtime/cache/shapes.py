"""Which input sizes a capture serves: its symbolic sizes, their ranges and the model's guards.

The cache exports the model with every dimension of every tensor input marked `Dim.AUTO`:
export keeps a size symbolic unless the model's code needs its value, and then specializes it
(a Linear's input features, an image's 3 channels, a size of 0 or 1). One capture then serves
a batch of token ids of any sequence length, an image batch of any height and width the
model allows, and every batch size of 2 or more.

A captured graph is valid only for inputs whose sizes satisfy what export assumed while it
traced:

- each specialized size has its captured value;
- sizes export found equal (the sequence length of `input_ids` and of `attention_mask`) share
  one symbol and must be equal, and a size export derived from another (`s0 - 1`) must be that;
- each symbol is within its range: at least 2 (export assumes a symbolic size is not 0 or 1,
  so a size of 1 needs a capture of its own), at most what the model allows (a BERT's
  `max_position_embeddings`);
- every *guard* the model's code made on sizes holds: a branch such as
  `if seq_len > 16: ...` is not in the graph; export recorded the condition it took, and the
  graph is the computation only where that condition holds.

`ExportedProgram.module()` checks these on every call; the cache runs the graph's nodes itself,
so `ShapeSpec.matches` checks them, once for each new combination of sizes (the cache keeps
the answer). Sizes a capture does not serve get a capture of their own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import sympy
import torch
from torch import fx
from torch.utils._sympy.numbers import int_oo
from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

Shapes = tuple[tuple[int, ...], ...]  # the full shape of each tensor input, in leaf order


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """The input sizes a capture serves (see the module docstring)."""

    #: For each tensor input, each dimension's size: an int (static) or a sympy expression.
    dims: tuple[tuple[Any, ...], ...]
    #: The inclusive range of each symbol (upper None: unbounded).
    ranges: tuple[tuple[Any, int, int | None], ...] = ()
    #: The conditions on the symbols the model's code relied on (sympy booleans).
    guards: tuple[Any, ...] = ()
    #: When set, the only shapes served (see `serving`).
    only: Shapes | None = None

    @property
    def symbols(self) -> frozenset[Any]:
        """The symbols of the inputs' symbolic sizes."""
        return frozenset(
            d for row in self.dims for d in row if not isinstance(d, int) and d.is_Symbol
        )

    def matches(self, shapes: Shapes) -> bool:
        """Whether the graph is valid for tensor inputs of these shapes."""
        if self.only is not None:
            return shapes == self.only
        if len(shapes) != len(self.dims):
            return False
        values: dict[Any, sympy.Integer] = {}
        derived: list[tuple[Any, int]] = []
        for dims, shape in zip(self.dims, shapes, strict=True):
            if len(dims) != len(shape):
                return False
            for d, size in zip(dims, shape, strict=True):
                if isinstance(d, int):
                    if d != size:
                        return False
                elif d.is_Symbol:
                    if values.setdefault(d, sympy.Integer(size)) != size:
                        return False
                else:
                    derived.append((d, size))
        for expr, size in derived:
            value = expr.xreplace(values)
            if not value.is_Integer or value != size:
                return False  # (also a symbol that only appears in derived sizes: unsolved)
        for symbol, low, high in self.ranges:
            value = values.get(symbol)
            if value is not None and (value < low or (high is not None and value > high)):
                return False
        return all(guard.xreplace(values) is sympy.true for guard in self.guards)

    def serving(self, shapes: Shapes) -> ShapeSpec:
        """This spec for a capture traced with inputs of `shapes`. Those sizes satisfy every
        guard (export evaluated them on these sizes); a guard `matches` cannot evaluate would
        make the capture serve no call at all, not even these, so it then serves these only."""
        return self if self.matches(shapes) else dataclasses.replace(self, only=shapes)

    def rows_per_sample(self, size: Any, batch_symbols: frozenset[Any]) -> bool:
        """Whether the first dimension `size` (a sympy expression) is `batch * k` with k a
        whole number of rows per sample, at least 1 for every size this capture serves: k is
        a number or computed from the other symbolic sizes (the sequence length `T` when a
        `(batch, T, features)` value is flattened into `(batch * T, features)`, or `T + 1`).
        Anything else (the batch squared, `batch + 1`, a size without the batch, a size
        computed from the data) is refused."""
        present = size.free_symbols & batch_symbols
        if len(present) != 1:
            return False
        k = sympy.expand(size / next(iter(present)))
        if k.free_symbols - self.symbols or k.free_symbols & batch_symbols or not k.is_integer:
            return False  # (sizes are integer symbols: `T / 3` is not known to be whole)
        ranges = {
            symbol: ValueRanges(low, int_oo if high is None else high)
            for symbol, low, high in self.ranges
        }
        try:
            low = bound_sympy(k, ranges).lower
        except Exception:  # an expression the range analysis does not know: refused
            return False
        return bool(low >= 1)


def shape_spec(
    inputs: Sequence[fx.Node], range_constraints: dict[Any, Any], shapes: Shapes
) -> ShapeSpec:
    """The spec of a captured graph whose tensor-input placeholders are `inputs` (leaf order),
    traced with inputs of `shapes`."""
    dims: list[tuple[Any, ...]] = []
    shape_env = None
    for node in inputs:
        row: list[Any] = []
        for size in node.meta["val"].shape:
            if isinstance(size, torch.SymInt):
                shape_env = size.node.shape_env
                expr = size.node.expr  # with export's replacements applied
                row.append(int(expr) if expr.is_Integer else expr)
            else:
                row.append(int(size))
        dims.append(tuple(row))
    if shape_env is None:
        return ShapeSpec(tuple(dims)).serving(shapes)
    symbols = ShapeSpec(tuple(dims)).symbols
    ranges = []
    for symbol, vr in range_constraints.items():
        if symbol in symbols:
            high = None if math.isinf(float(vr.upper)) else int(vr.upper)
            ranges.append((symbol, int(vr.lower), high))
    guards: dict[Any, None] = {}
    for guard in shape_env.guards:
        expr = shape_env.replace(guard.expr)
        # A guard on other symbols (sizes computed from the data) is no condition on the
        # input sizes.
        if expr is not sympy.true and expr.free_symbols <= symbols:
            guards[expr] = None
    return ShapeSpec(tuple(dims), tuple(ranges), tuple(guards)).serving(shapes)
