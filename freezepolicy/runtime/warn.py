"""Warnings a user sees: every problem found while applying a policy that is not an error.

A selector that selects nothing (a typo such as `unfreeze classifer` trains nothing), a
statement that never takes effect, a trainable parameter no optimizer group holds: each is a
`PolicyWarning` through Python's `warnings`, not only a line in `ApplyReport.warnings`, and each is
shown once per policy and model however often the policy is applied (`apply_policy` runs at every
step). The warning points at the user's own line: the first frame outside freezepolicy and the
training frameworks that call it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable

from ..lang.conditions import MetricWatch
from ..lang.errors import Diagnostic, PolicyWarning
from ..lang.policy import Policy
from ..lang.syntax import clip

#: Top-level packages whose frames a warning skips: freezepolicy itself, and the frameworks that
#: call it from their own loops (the Trainer's callback handler, a hook run by torch), so the
#: warning names the line of the user's script that started it all.
INTERNAL_PACKAGES = frozenset(
    {"freezepolicy", "torch", "transformers", "accelerate", "lightning", "pytorch_lightning"}
)


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` called by the caller of this function point
    at the first frame outside `INTERNAL_PACKAGES` (the outermost frame if there is none)."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None:
        module = frame.f_globals.get("__name__", "")
        if module.partition(".")[0] not in INTERNAL_PACKAGES:
            break
        frame = frame.f_back
        level += 1
    return level


def warn(diagnostic: Diagnostic) -> None:
    """Emit `diagnostic` as a PolicyWarning pointing at the user's line."""
    warnings.warn(PolicyWarning(diagnostic), stacklevel=user_stacklevel())


def warn_once(seen: set[tuple[str, str]], scope: str, diagnostics: Iterable[Diagnostic]) -> None:
    """Emit each diagnostic as a PolicyWarning unless `seen` holds it for `scope` already.

    `seen` belongs to one model and `scope` names the policy, so a warning is shown once per
    policy and model. A diagnostic is recorded only after its warning was emitted: when a filter
    turns PolicyWarning into an error, every call raises it again, before anything changes.
    """
    for d in diagnostics:
        key = (scope, d.format())
        if key in seen:
            continue
        warnings.warn(PolicyWarning(d), stacklevel=user_stacklevel())
        seen.add(key)


def warn_never_observed(policy: Policy, watch: MetricWatch) -> list[Diagnostic]:
    """At the end of training: a PolicyWarning (FP231) for each metric-driven statement whose
    metric no observation held, so a misspelled or never-logged metric does not leave its groups
    frozen in silence. Returns the diagnostics warned about."""
    found = []
    for index, metric in watch.never_observed():
        st = policy.statements[index]
        found.append(
            policy.diagnostic(
                "FP231",
                f"`{metric}` was never observed, so `{clip(str(st))}` never took effect"
                f"{watch.suggestion(metric)}",
                st,
                st.condition,
                severity="warning",
            )
        )
    for d in found:
        warn(d)
    return found
