"""The policy AST: frozen dataclasses, each node with its source span.

Spans are excluded from equality, so two parses of texts that differ only in layout (spacing,
separators, comments) give equal ASTs. That is what makes parse -> print -> parse testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["freeze", "unfreeze", "lr", "decay", "stats"]
Clock = Literal["epoch", "step"]

#: Words with a meaning in the language; a selector cannot be one of them.
#: Words that can follow a selector; a selector spelled like one is almost always a selector
#: left out (`freeze except fc`), so it is an error. Other keywords may name modules.
FOLLOW_KEYWORDS: tuple[str, ...] = ("except", "at", "for", "then", "every", "warmup", "when")
STATEMENT_KEYWORDS: tuple[str, ...] = ("freeze", "unfreeze", "lr", "decay", "stats", "include")
StatsMode = Literal["update", "freeze"]
Trend = Literal["decreasing", "increasing"]


@dataclass(frozen=True)
class Span:
    """Where a node is in its source: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int


NO_SPAN = Span(0, 0, 0, 0)


@dataclass(frozen=True)
class NamePattern:
    """A dotted-name pattern such as `encoder.layer.1[01]`; `anchored` for the `^` form."""

    text: str
    anchored: bool = False
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        return ("^" if self.anchored else "") + self.text


@dataclass(frozen=True)
class TypePattern:
    """`type:BatchNorm*`: the parameters of modules whose class name matches the glob."""

    text: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        return f"type:{self.text}"


@dataclass(frozen=True)
class ShapePattern:
    """`ndim<2`: the tensors whose number of dimensions compares so with `ndim`."""

    op: str  # one of SHAPE_OPERATORS
    ndim: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def accepts(self, ndim: int) -> bool:
        return SHAPE_OPERATORS[self.op](ndim, self.ndim)

    def __str__(self) -> str:
        return f"ndim{self.op}{self.ndim}"


#: The comparisons a shape selector may make, as written.
SHAPE_OPERATORS = {
    "<": int.__lt__,
    "<=": int.__le__,
    ">": int.__gt__,
    ">=": int.__ge__,
    "=": int.__eq__,
    "!=": int.__ne__,
}

Selector = NamePattern | TypePattern | ShapePattern


@dataclass(frozen=True)
class Selection:
    """`include [then group]... [except exclude]`; `except` applies to every group."""

    include: tuple[Selector, ...]
    exclude: tuple[Selector, ...] = ()
    #: The groups after `then`, reached one after another (`every N epochs` apart).
    then: tuple[tuple[Selector, ...], ...] = ()

    @property
    def groups(self) -> tuple[tuple[Selector, ...], ...]:
        return (self.include, *self.then)

    @property
    def selectors(self) -> tuple[Selector, ...]:
        """Every selector written, in the groups and in `except`."""
        return tuple(s for group in self.groups for s in group) + self.exclude

    def __str__(self) -> str:
        text = " then ".join(", ".join(str(s) for s in group) for group in self.groups)
        if self.exclude:
            text += " except " + ", ".join(str(s) for s in self.exclude)
        return text


@dataclass(frozen=True)
class Value:
    """A learning rate or weight decay: absolute (`1e-4`) or a multiplier of the base (`0.1x`)."""

    number: float
    relative: bool
    text: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class When:
    """`at epoch N` or `at step N`, 0-based."""

    clock: Clock
    at: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        return f"at {self.clock} {self.at}"


@dataclass(frozen=True)
class Duration:
    """`2 epochs`, `1 step`: how far apart `then` groups are, or how long a warm-up lasts."""

    count: int
    clock: Clock
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.count} {self.clock}{'' if self.count == 1 else 's'}"


@dataclass(frozen=True)
class LayerDecay:
    """`lr decay 0.75 per layer from TOP down STACK to BOTTOM`: learning-rate scales by depth.

    The layers, from the top: `top` (if any), one layer per index of `stack` (the last index
    first), then `bottom` (if any). A layer's rate is the base rate times `factor` once for every
    layer above it; a tensor several groups select is in the lowest of them (lang/layers.py)."""

    factor: Value
    top: tuple[Selector, ...]
    stack: tuple[Selector, ...]
    bottom: tuple[Selector, ...]

    def __str__(self) -> str:
        text = f"lr decay {self.factor} per layer"
        if self.top:
            text += " from " + ", ".join(str(s) for s in self.top)
        text += " down " + ", ".join(str(s) for s in self.stack)
        if self.bottom:
            text += " to " + ", ".join(str(s) for s in self.bottom)
        return text


@dataclass(frozen=True)
class Condition:
    """`when val_loss stops decreasing for 2 evaluations`: a moment set by a metric, not a clock.

    A plateau is `patience` observations in a row not better than the best since the statement
    started watching (or since its last group took effect); each plateau starts the next `then`
    group (lang/conditions.py)."""

    metric: str
    trend: Trend
    patience: int
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    def __str__(self) -> str:
        unit = "evaluation" if self.patience == 1 else "evaluations"
        return f"when {self.metric} stops {self.trend} for {self.patience} {unit}"


@dataclass(frozen=True)
class Include:
    """`include "base.freeze"` or `include "builtin:NAME"`: another policy's statements here."""

    path: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)

    @property
    def line(self) -> int:
        return self.span.line

    def __str__(self) -> str:
        return f'include "{self.path}"'


@dataclass(frozen=True)
class Statement:
    action: Action
    selection: Selection
    value: Value | None = None
    when: When | None = None
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
    #: For `stats`: "update" or "freeze".
    mode: StatsMode | None = None
    #: `every N epochs`: the distance between the `then` groups of the selection.
    every: Duration | None = None
    #: `warmup N epochs`: the learning rate of what the statement unfreezes (or sets) ramps
    #: linearly from 0 over this long.
    warmup: Duration | None = None
    #: `lr decay F per layer ...`: the layers and their factor (the selection is their union).
    layers: LayerDecay | None = None
    #: `when METRIC stops ...`: groups start at plateaus of a metric instead of at a time.
    condition: Condition | None = None
    #: The file the statement was written in when it came from an `include` ("" when it is the
    #: policy's own); its span is a place in that file.
    origin: str = field(default="", compare=False, repr=False)

    @property
    def line(self) -> int:
        return self.span.line

    def __str__(self) -> str:
        sel = str(self.selection)
        if self.layers is not None:
            head = str(self.layers)
            sel = ""
            if self.selection.exclude:
                sel = "except " + ", ".join(str(s) for s in self.selection.exclude)
        elif self.mode is not None:
            head = f"{self.action} {self.mode} for"
        elif self.value is not None:
            head = f"{self.action} {self.value} for"
        else:
            head = self.action
        tail = f" {self.when}" if self.when is not None else ""
        if self.condition is not None:
            tail += f" {self.condition}"
        if self.every is not None:
            tail += f" every {self.every}"
        if self.warmup is not None:
            tail += f" warmup {self.warmup}"
        return f"{head} {sel}{tail}" if sel else f"{head}{tail}"


@dataclass(frozen=True)
class Comment:
    """A `#` comment, kept so `fmt` can print a file back without losing its documentation."""

    text: str
    span: Span = field(default=NO_SPAN, compare=False, repr=False)
