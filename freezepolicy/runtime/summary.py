"""`summary(model)`: how many parameters train, in the line PEFT users know, per top-level module.

Its text starts with exactly the line of PEFT's `print_trainable_parameters()`:

    trainable params: 563 || all params: 6,710 || trainable%: 8.3905

counted as PEFT counts (`get_nb_trainable_parameters`): every distinct tensor once (a tied tensor
under its first name), its elements, with PEFT's two corrections for DeepSpeed ZeRO-3 (a tensor
with no elements here and its size in `ds_numel`) and for bitsandbytes 4-bit parameters (two
values per byte of storage). With a policy, the counts are what `apply_policy` would set at that
moment, and the model is not changed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..lang.errors import Diagnostic
from ..lang.policy import Policy
from .arguments import check_model, check_steps_per_epoch, resolve_moment
from .binding import ModelSnapshot, as_policy, bind, snapshot
from .report import percent
from .warn import warn_once


def peft_numel(param: torch.Tensor) -> int:
    """A tensor's elements as PEFT's `get_nb_trainable_parameters` counts them."""
    n = param.numel()
    if n == 0 and hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3 keeps an empty local shard
        n = int(param.ds_numel)
    if type(param).__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte
        if hasattr(param, "element_size"):
            per_byte = param.element_size()
        elif not hasattr(param, "quant_storage"):
            per_byte = 1
        else:
            per_byte = param.quant_storage.itemsize
        n = n * 2 * per_byte
    return n


def peft_line(trainable: int, total: int) -> str:
    """PEFT's `print_trainable_parameters` line, character for character."""
    return (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {percent(trainable, total)}"
    )


@dataclass(frozen=True)
class ModuleCount:
    """One top-level module of the model (its own parameters are the module `""`)."""

    name: str
    cls: str
    trainable: int
    total: int
    trainable_tensors: int
    tensors: int

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total if self.total else 0.0


@dataclass(frozen=True)
class ModelSummary:
    """What trains in a model. `str()` is for people; the fields are for programs.

    Elements (`trainable`, `total`) are counted as PEFT counts them; `trainable_names` lists
    the trainable tensors by first name, as the policy's selectors see them (wrappers such as
    DDP, torch.compile and PEFT's `base_model.model.` removed).
    """

    trainable: int
    total: int
    trainable_tensors: int
    tensors: int
    #: Per top-level module of the (unwrapped) model, in model order.
    modules: tuple[ModuleCount, ...]
    trainable_names: tuple[str, ...]
    #: The policy's source when a policy was given, else None (the model as it is).
    policy: str | None = None
    epoch: int = 0
    step: int = 0
    #: Located policy problems found against this model (a selector that selects nothing, ...).
    diagnostics: tuple[Diagnostic, ...] = ()

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for `json.dumps`."""
        return {
            "trainable": self.trainable,
            "total": self.total,
            "percent": self.percent,
            "trainable_tensors": self.trainable_tensors,
            "tensors": self.tensors,
            "modules": [dataclasses.asdict(m) for m in self.modules],
            "trainable_names": list(self.trainable_names),
            "policy": self.policy,
            "epoch": self.epoch,
            "step": self.step,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def __str__(self) -> str:
        lines = [peft_line(self.trainable, self.total)]
        rows = [
            (
                m.name or "(own)",
                m.cls,
                f"{m.trainable:,}",
                f"{m.total:,}",
                f"{percent(m.trainable, m.total)}%",
            )
            for m in self.modules
        ]
        if rows:
            head = ("module", "class", "trainable", "all", "trainable%")
            widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
            for r in (head, *rows):
                # Names and classes to the left, numbers to the right.
                cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
                cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
                lines.append("  " + "  ".join(cells).rstrip())
        if self.policy is not None:
            lines.append(
                f"  as {self.policy} sets it at epoch {self.epoch}, step {self.step} "
                "(the model is unchanged)"
            )
        lines.extend(f"  {line}" for d in self.diagnostics for line in d.format().split("\n"))
        return "\n".join(lines)


def summary(
    model: nn.Module,
    policy: Policy | str | os.PathLike[str] | None = None,
    *,
    epoch: int = 0,
    step: int = 0,
    steps_per_epoch: int | None = None,
) -> ModelSummary:
    """How many parameters of `model` train: as they are, or as `policy` would set them.

    Without a policy, a tensor trains if its `requires_grad` is set. With one, the decisions of
    `apply_policy(model, policy, epoch=epoch, step=step)` are read and nothing is changed; a
    tensor no statement decides counts as the model had it before freezepolicy first changed
    it. The policy's errors (a tied tensor decided two ways) raise as in `apply_policy`; its
    warnings (a selector that selects nothing) are issued with `warnings.warn` and kept in
    `diagnostics`.
    """
    check_model(model, "summary")
    steps_per_epoch = check_steps_per_epoch(steps_per_epoch, "summary")
    epoch, step = resolve_moment(epoch, step, steps_per_epoch, "summary")
    root, snap = snapshot(model)
    # Each tensor once, under its first name, in model order: PEFT's `named_parameters()`.
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    owners: list[str] = []
    seen: set[int] = set()
    for name, p in snap.params.items():
        if id(p) in seen:
            continue
        seen.add(id(p))
        names.append(name)
        tensors.append(p)
        owners.append(name.partition(".")[0] if "." in name else "")
    diagnostics: tuple[Diagnostic, ...] = ()
    source = None
    if policy is None:
        trains = [bool(p.requires_grad) for p in tensors]
    else:
        trains, diagnostics, source = _policy_targets(
            snap, policy, tensors, epoch, step, steps_per_epoch
        )
        warn_once(snap.warned, source, diagnostics)
    sizes = [peft_numel(p) for p in tensors]
    modules = _per_module(root, owners, sizes, trains)
    return ModelSummary(
        trainable=sum(s for s, t in zip(sizes, trains, strict=True) if t),
        total=sum(sizes),
        trainable_tensors=sum(trains),
        tensors=len(tensors),
        modules=modules,
        trainable_names=tuple(n for n, t in zip(names, trains, strict=True) if t),
        policy=source,
        epoch=epoch,
        step=step,
        diagnostics=diagnostics,
    )


def _policy_targets(
    snap: ModelSnapshot,
    policy: Policy | str | os.PathLike[str],
    tensors: Sequence[torch.Tensor],
    epoch: int,
    step: int,
    steps_per_epoch: int | None,
) -> tuple[list[bool], tuple[Diagnostic, ...], str]:
    """Whether each tensor would train under `policy` at the moment, as apply_policy decides."""
    compiled = as_policy(policy)
    _, binding = bind(snap, compiled, steps_per_epoch)
    binding.raise_errors()
    decided = binding.merged(epoch, step)
    trains = []
    for p in tensors:
        d = decided[binding.index[id(p)]]
        trains.append(bool(d.trainable) if d.trainable is not None else snap.original(p))
    return trains, tuple(binding.diagnostics), compiled.source


def _per_module(
    root: nn.Module, owners: Sequence[str], sizes: Sequence[int], trains: Sequence[bool]
) -> tuple[ModuleCount, ...]:
    counts: dict[str, list[int]] = {}
    for owner, size, train in zip(owners, sizes, trains, strict=True):
        c = counts.setdefault(owner, [0, 0, 0, 0])
        c[0] += size if train else 0
        c[1] += size
        c[2] += int(train)
        c[3] += 1
    children = dict(root.named_children())
    out = []
    for name, (t, total, tt, n) in counts.items():
        cls = type(children[name]).__name__ if name in children else type(root).__name__
        out.append(ModuleCount(name, cls, t, total, tt, n))
    return tuple(out)
