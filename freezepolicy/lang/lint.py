"""Linting a policy file: syntax always; with parameter names or models, the checks of checks.py.

Pure Python (no torch), so syntax-only lint is fast enough for a pre-commit hook.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from . import arguments
from .api import load, parse
from .checks import ModelNames, check_models, check_names, check_policy
from .errors import Diagnostic, PolicyError
from .policy import Policy

#: Problems in the file itself (missing, not a regular file, too large, not text, not
#: writable): the CLI exits 2 for these, 1 for the rest.
FILE_ERROR_CODES = frozenset({"FP001", "FP002", "FP003", "FP004", "FP005", "FP006"})


@dataclass
class LintReport:
    """What lint found in one policy source."""

    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    policy: Policy | None = None

    @property
    def problems(self) -> list[Diagnostic]:
        """Errors and warnings (notes are information only and do not fail lint)."""
        return [d for d in self.diagnostics if d.severity in ("error", "warning")]

    @property
    def file_error(self) -> bool:
        return any(d.code in FILE_ERROR_CODES for d in self.diagnostics)


def lint_file(
    path: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    module_types: Mapping[str, Collection[str]] | None = None,
) -> LintReport:
    try:
        policy = load(path)
    except PolicyError as exc:
        return LintReport(os.fspath(path), list(exc.diagnostics))
    return _lint_policy(policy, names, module_types)


def lint_text(
    text: str,
    source: str = "<string>",
    *,
    names: Sequence[str] | None = None,
    module_types: Mapping[str, Collection[str]] | None = None,
) -> LintReport:
    try:
        policy = parse(text, source)
    except PolicyError as exc:
        return LintReport(source, list(exc.diagnostics))
    return _lint_policy(policy, names, module_types)


def _lint_policy(
    policy: Policy,
    names: Sequence[str] | None,
    module_types: Mapping[str, Collection[str]] | None,
) -> LintReport:
    report = LintReport(policy.source, check_policy(policy), policy)
    if names is not None:
        names = arguments.parameter_names(names, "lint: names")
        report.diagnostics.extend(check_names(policy, names, module_types))
    report.diagnostics.sort(key=_place)
    return report


def lint_file_models(path: str | os.PathLike[str], models: Sequence[ModelNames]) -> LintReport:
    """Lint one policy file against one or more models (`freezepolicy lint --model`)."""
    try:
        policy = load(path)
    except PolicyError as exc:
        return LintReport(os.fspath(path), list(exc.diagnostics))
    found = check_policy(policy) + check_models(policy, models)
    return LintReport(policy.source, sorted(found, key=_place), policy)


def _place(d: Diagnostic) -> tuple[int, int, str]:
    return (d.line or 0, d.column or 0, d.code)
