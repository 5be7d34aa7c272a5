"""Tensors whose `requires_grad` cannot be set as a policy says (FP210), found before any change.

Only floating-point and complex tensors can require gradients: a policy that trains an integer
parameter (a step counter, the packed weights of a quantized layer) cannot be applied. And only
a leaf tensor's flag can change: a parameter slot holding a tensor computed from others (a
non-leaf, which always requires gradients) cannot be frozen. torch raises on the first such
tensor in the middle of setting the flags, after others were set and the optimizer reshaped;
freezepolicy checks every tensor first and names all of them, with the statement that decides
each, so nothing is ever half applied.

The check runs once per (model, policy) over the whole timeline, like the tied-tensor check
(FP205), so `unfreeze * at epoch 5` over a quantized model fails at the start of training, not
at epoch 5; `check_changes` repeats it at each apply for what that apply changes (moments past
the timeline's limit are only seen there).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from ..lang.errors import Diagnostic, PolicyResolveError
from ..lang.nodes import Statement
from ..lang.policy import Policy
from ..lang.rules import Decision

if TYPE_CHECKING:
    from .binding import Binding

CODE = "FP210"

_is_leaf = operator.attrgetter("is_leaf")
_dtype = operator.attrgetter("dtype")


def can_train(p: torch.Tensor) -> bool:
    return p.dtype.is_floating_point or p.dtype.is_complex


def fixed_indices(params: Sequence[torch.Tensor]) -> list[int]:
    """Indices of the tensors whose requires_grad cannot be set both ways: two C-level passes
    when every tensor can (the usual case)."""
    if all(map(_is_leaf, params)) and all(
        d.is_floating_point or d.is_complex for d in set(map(_dtype, params))
    ):
        return []
    return [i for i, p in enumerate(params) if not (p.is_leaf and can_train(p))]


def timeline_problems(binding: Binding, fixed: Sequence[int]) -> list[Diagnostic]:
    """FP210 diagnostics for the whole timeline of `binding`, whose tensors `fixed`
    (`fixed_indices`) cannot be set both ways."""
    if not fixed:
        return []
    wanted: dict[int, set[bool]] = {}  # class -> values its decisions give at some moment
    classes = {binding.tclass[i] for i in fixed}
    by: dict[tuple[int, bool], Statement | None] = {}
    for epoch, step, fired in binding.moments:
        decisions = binding.class_decisions(epoch, step, fired)
        for c in classes:
            t = decisions[c].trainable
            if t is not None:
                wanted.setdefault(c, set()).add(t)
                by.setdefault((c, t), decisions[c].trainable_by)
    bad: list[tuple[int, bool, Statement | None]] = []
    for i in fixed:
        c = binding.tclass[i]
        for value in sorted(wanted.get(c, ())):
            if _refuses(binding.params[i], value):
                bad.append((i, value, by[(c, value)]))
    return _diagnostics(binding.policy, binding.names, binding.params, bad)


def check_changes(
    policy: Policy,
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    current: Sequence[bool],
    targets: Sequence[bool],
    decisions: Sequence[Decision],
    fixed: Sequence[int] | None = None,
) -> None:
    """Raise FP210 for a tensor this apply would set and cannot (before any change); `fixed`
    is `fixed_indices(params)` when the caller has it already."""
    # Only the tensors that cannot be set both ways can refuse: found in two C-level passes,
    # where a Python test of every tensor costs 40 ms at 100k tensors.
    bad = [
        (i, targets[i], decisions[i].trainable_by)
        for i in (fixed_indices(params) if fixed is None else fixed)
        if current[i] != targets[i] and _refuses(params[i], targets[i])
    ]
    if bad:
        raise PolicyResolveError(_diagnostics(policy, names, params, bad))


def _refuses(p: torch.Tensor, value: bool) -> bool:
    if not p.is_leaf:
        return not value  # a non-leaf requires gradients and cannot be made not to
    return value and not can_train(p)


def _diagnostics(
    policy: Policy,
    names: Sequence[str],
    params: Sequence[torch.Tensor],
    bad: Iterable[tuple[int, bool, Statement | None]],
) -> list[Diagnostic]:
    """One diagnostic per (statement, kind of problem), naming up to 5 tensors."""
    grouped: dict[tuple[int, bool], list[int]] = {}
    statement_of: dict[int, Statement | None] = {}
    for i, value, st in bad:
        key = (id(st), value)
        grouped.setdefault(key, []).append(i)
        statement_of[id(st)] = st
    out = []
    for (sid, value), indices in grouped.items():
        st = statement_of[sid]
        shown = ", ".join(
            f"`{names[i]}` ({str(params[i].dtype).removeprefix('torch.')})" for i in indices[:5]
        ) + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")
        text = str(st) if st is not None else ""
        what = f"`{text if len(text) <= 60 else text[:57] + '...'}`" if text else "the policy"
        if value:
            why = (
                f"{what} makes {shown} trainable, but only floating-point and complex tensors "
                "can require gradients"
            )
        else:
            why = (
                f"{what} freezes {shown}, but a tensor computed from others (not a leaf) always "
                "requires gradients and cannot be frozen"
            )
        message = f"{why}: leave {'it' if len(indices) == 1 else 'them'} out with `except`"
        if st is None:
            out.append(Diagnostic(CODE, message, policy.source))
        else:
            out.append(policy.diagnostic(CODE, message, st))
    return out
