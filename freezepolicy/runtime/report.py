"""`ApplyReport`: what one `apply_policy` call set, for people (`str()`) and programs (fields)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..lang.errors import Diagnostic
from ..lang.rules import Decision


def percent(part: int, whole: int) -> str:
    """`part` of `whole` in percent with four decimals, as PEFT's `print_trainable_parameters`
    prints it (`0.0000` for a model without parameters, where PEFT would divide by zero)."""
    return f"{100 * part / whole:.4f}" if whole else f"{0:.4f}"


@dataclass(frozen=True)
class StatementReport:
    """One policy statement as applied to one model."""

    line: int
    text: str
    #: Tensors (a tied tensor once) and their elements the statement selects in this model.
    tensors: int
    elements: int
    #: Whether its time has come at this moment.
    active: bool


@dataclass(frozen=True)
class GroupReport:
    """One optimizer parameter group after the apply."""

    index: int
    tensors: int
    trainable: int
    lr: float
    weight_decay: float | None
    #: The policy's rate key (None for a group freezepolicy does not manage).
    key: str | None


@dataclass(frozen=True)
class ApplyReport:
    """What `apply_policy` set. `str()` is a readable summary; the fields are for programs.

    Tensors are counted once each (a tied tensor under its first name). `trainable` and `frozen`
    go by the resulting `requires_grad`, so a tensor no statement decides ("untouched", listed in
    `untouched` as well) counts as whatever the model had it as.
    """

    source: str
    epoch: int
    step: int
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]
    untouched: tuple[str, ...]
    trainable_elements: int
    frozen_elements: int
    statements: tuple[StatementReport, ...]
    #: Normalization layers held in eval mode (running statistics fixed), by module path.
    held_norm: tuple[str, ...]
    #: Optimizer groups after the apply (empty without an optimizer).
    groups: tuple[GroupReport, ...]
    #: Located policy problems found against this model (selects nothing, never effective).
    diagnostics: tuple[Diagnostic, ...]
    #: Every warning as text: the formatted diagnostics, then optimizer problems.
    warnings: tuple[str, ...]
    #: False when this call found the state already in place and changed nothing.
    changed: bool
    #: The policy's decision for every parameter name at this moment.
    decisions: Mapping[str, Decision] = field(repr=False, compare=False, default_factory=dict)

    @property
    def total_elements(self) -> int:
        return self.trainable_elements + self.frozen_elements

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for `json.dumps`."""
        return {
            "source": self.source,
            "epoch": self.epoch,
            "step": self.step,
            "trainable": list(self.trainable),
            "frozen": list(self.frozen),
            "untouched": list(self.untouched),
            "trainable_elements": self.trainable_elements,
            "frozen_elements": self.frozen_elements,
            "statements": [dataclasses.asdict(s) for s in self.statements],
            "held_norm": list(self.held_norm),
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
            "warnings": list(self.warnings),
            "changed": self.changed,
        }

    def __str__(self) -> str:
        lines = [f"{self.source} at epoch {self.epoch}, step {self.step}:"]
        for label, names, elements in (
            ("trainable", self.trainable, self.trainable_elements),
            ("frozen", self.frozen, self.frozen_elements),
        ):
            lines.append(
                f"  {label + ':':<10} {len(names):>5} tensors  {elements:>13,} elements"
                f"  ({percent(elements, self.total_elements)}%)"
            )
        if self.untouched:
            lines.append(
                f"  untouched: {len(self.untouched)} tensors no statement decides keep "
                "requires_grad as the model had it"
            )
        if self.statements:
            lines.append("  statements:")
            width = max(len(s.text) for s in self.statements)
            for s in self.statements:
                when = "" if s.active else "  (not yet active)"
                lines.append(
                    f"    line {s.line:<4} {s.text:<{width}}  selects {s.tensors} tensors "
                    f"({s.elements:,} elements){when}"
                )
        if self.held_norm:
            shown = ", ".join(self.held_norm[:6]) + (", ..." if len(self.held_norm) > 6 else "")
            lines.append(
                f"  normalization layers held in eval (statistics fixed): "
                f"{len(self.held_norm)} ({shown})"
            )
        if self.groups:
            plural = "s" if len(self.groups) != 1 else ""
            lines.append(f"  optimizer: {len(self.groups)} parameter group{plural}")
            for g in self.groups:
                wd = "" if g.weight_decay is None else f"  weight_decay {g.weight_decay:g}"
                lines.append(
                    f"    #{g.index}: {g.tensors} tensors ({g.trainable} trainable)  "
                    f"lr {g.lr:g}{wd}"
                )
        lines.extend(f"  {line}" for w in self.warnings for line in w.split("\n"))
        return "\n".join(lines)
