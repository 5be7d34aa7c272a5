"""`Policy`: a parsed and compiled policy, the object `parse` and `load` return.

Pure Python: nothing in the language layer imports torch, so `lint` and `show --names` stay fast.
Binding to names is in bound.py, the rules and decisions in rules.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from . import arguments
from .bound import BoundPolicy
from .nodes import Comment, Statement, TypePattern
from .printer import format_policy
from .rules import Decision, Rule


@dataclass
class Policy:
    """A parsed and compiled policy. Build one with `freezepolicy.parse` or `freezepolicy.load`."""

    statements: tuple[Statement, ...]
    source: str = "<string>"
    text: str = ""
    comments: tuple[Comment, ...] = ()
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
    ) -> BoundPolicy:
        """This policy over a fixed list of names: selections are matched once and cached."""
        names = arguments.parameter_names(names, "Policy.bind()")
        module_types = arguments.module_type_map(module_types, "Policy.bind()")
        return BoundPolicy(self, names, module_types)

    def resolve(
        self,
        names: Iterable[str],
        *,
        epoch: int = 0,
        step: int = 0,
        steps_per_epoch: int | None = None,
        module_types: Mapping[str, Collection[str]] | None = None,
    ) -> dict[str, Decision]:
        """One `Decision` per name at the moment (`epoch`, `step`), both 0-based.

        `module_types` maps a parameter name to the class names (with their bases) of the
        modules that contain it; without it, `type:` selectors select nothing. A wrong type or
        a moment that does not exist (`epoch=-1`) is a TypeError or ValueError.
        """
        arguments.moment(epoch, step, steps_per_epoch)  # before binding: fail fast
        names = arguments.parameter_names(names, "Policy.resolve()")
        return self.bind(names, module_types).resolve(
            epoch=epoch, step=step, steps_per_epoch=steps_per_epoch
        )

    def format(self) -> str:
        """The canonical text of this policy (what `freezepolicy fmt` writes)."""
        return format_policy(self.statements, self.comments)

    def __str__(self) -> str:
        """The canonical text, as `format()` (`repr()` shows the parsed statements)."""
        return self.format()
