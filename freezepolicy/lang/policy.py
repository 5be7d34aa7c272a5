"""`Policy`: a parsed and compiled policy, the object `parse` and `load` return.

Pure Python: nothing in the language layer imports torch, so `lint` and `show --names` stay fast.
Binding to names is in bound.py, the rules and decisions in rules.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from . import arguments
from .bound import BoundPolicy
from .errors import Diagnostic
from .nodes import Comment, Include, ShapePattern, Statement, TypePattern
from .printer import format_policy
from .rules import Decision, Rule


@dataclass
class Policy:
    """A parsed and compiled policy. Build one with `freezepolicy.parse` or `freezepolicy.load`."""

    statements: tuple[Statement, ...]
    source: str = "<string>"
    text: str = ""
    comments: tuple[Comment, ...] = ()
    #: The `include` statements of this text (their statements are in `statements`).
    includes: tuple[Include, ...] = ()
    #: The text of every file included, by its path as diagnostics show it.
    included: Mapping[str, str] = field(default_factory=dict, repr=False)
    rules: tuple[Rule, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rules: list[Rule] = []
        for i, st in enumerate(self.statements):
            rules.extend(Rule.compile_statement(len(rules), i, st))
        self.rules = tuple(rules)

    @property
    def has_type_selectors(self) -> bool:
        return any(
            isinstance(s, TypePattern) for st in self.statements for s in st.selection.selectors
        )

    @property
    def has_shape_selectors(self) -> bool:
        return any(
            isinstance(s, ShapePattern) for st in self.statements for s in st.selection.selectors
        )

    def diagnostic(
        self,
        code: str,
        message: str,
        statement: Statement,
        node: object = None,
        severity: str = "error",
    ) -> Diagnostic:
        """A diagnostic located at `node` (a selector, clause, or the statement itself) of
        `statement`, in the file the statement was written in: this policy's, or the included
        file it came from."""
        path, text = self.source, self.text
        if statement.origin:
            path, text = statement.origin, self.included.get(statement.origin, "")
        span = getattr(node if node is not None else statement, "span", statement.span)
        if not span.line:
            return Diagnostic(code, message, path, severity=severity)
        lines = _lines(text)
        return Diagnostic(
            code,
            message,
            path,
            span.line,
            span.column,
            span.end_column if span.end_line == span.line else None,
            lines[span.line - 1] if span.line <= len(lines) else None,
            severity,
        )

    def events(self) -> list[tuple[str, int]]:
        """The distinct moments at which something changes, as (clock, value), in time order.

        A warm-up changes the learning rate at every step (or epoch) it lasts; its start is
        the event listed here.
        """
        times = {(r.start.clock, r.start.at) for r in self.rules if r.start and r.start.at}
        return sorted(times, key=lambda t: (t[0] == "step", t[1]))

    def clock_times(self) -> tuple[list[int], list[int]]:
        """Epochs and steps at which some rule starts, each list with 0 first."""
        epochs = {0} | {r.start.at for r in self.rules if r.start and r.start.clock == "epoch"}
        steps = {0} | {r.start.at for r in self.rules if r.start and r.start.clock == "step"}
        return sorted(epochs), sorted(steps)

    def bind(
        self,
        names: Iterable[str],
        module_types: Mapping[str, Collection[str]] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> BoundPolicy:
        """This policy over a fixed list of names: selections are matched once and cached.
        `module_types` and `shapes` are as for `resolve`."""
        names = arguments.parameter_names(names, "Policy.bind()")
        module_types = arguments.module_type_map(module_types, "Policy.bind()")
        shapes = arguments.shape_map(shapes, "Policy.bind()")
        return BoundPolicy(self, names, module_types, shapes)

    def resolve(
        self,
        names: Iterable[str],
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        module_types: Mapping[str, Collection[str]] | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        fired: Mapping[int, Sequence[tuple[int, int]]] | None = None,
    ) -> dict[str, Decision]:
        """One `Decision` per name at the moment (`epoch`, `step`), both 0-based.

        `module_types` maps a parameter name to the class names (with their bases) of the
        modules that contain it; without it, `type:` selectors select nothing. `shapes` maps a
        parameter name to its shape (`tuple(p.shape)`); without it, `ndim` selectors select
        nothing. `fired` maps the index (in `statements`) of each `when ... stops ...`
        statement to the moments (epoch, step) its groups took effect (conditions.py): without
        it none has. A wrong type or a moment that does not exist (`epoch=-1`) is a TypeError
        or ValueError.
        """
        arguments.moment(epoch, step, steps_per_epoch)  # before binding: fail fast
        names = arguments.parameter_names(names, "Policy.resolve()")
        return self.bind(names, module_types, shapes).resolve(
            epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, fired=fired
        )

    def format(self) -> str:
        """The canonical text of this policy (what `freezepolicy fmt` writes): its own
        statements and includes, not the statements the includes bring in."""
        own = [st for st in self.statements if not st.origin]
        return format_policy([*own, *self.includes], self.comments)

    def __str__(self) -> str:
        """The canonical text, as `format()` (`repr()` shows the parsed statements)."""
        return self.format()


@lru_cache(maxsize=8)
def _lines(text: str) -> list[str]:
    # Split once per text, not once per diagnostic (a 1 MB policy can have thousands).
    return text.split("\n")
