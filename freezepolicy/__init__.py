"""freezepolicy: declare which parameters of a PyTorch model train, at what learning rate, and when.

This file is the public face of the package: a short list of names from its layers (lang,
runtime, integrations; docs/architecture.md). The core (parse, compile, resolve, lint) imports
without torch; the torch-facing names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lang.api import load, parse
from .lang.bound import BoundPolicy
from .lang.errors import (
    Diagnostic,
    PolicyError,
    PolicyResolveError,
    PolicySourceError,
    PolicySyntaxError,
    PolicyWarning,
)
from .lang.policy import Policy
from .lang.rules import Decision, Rate
from .version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from .integrations.loop import FreezeScheduler
    from .runtime.apply import apply_policy
    from .runtime.cache import CachedModule, CacheStats, cache_frozen
    from .runtime.groups import group_lrs, param_groups
    from .runtime.report import ApplyReport
    from .runtime.summary import ModelSummary, summary

# Torch-facing names, imported on first use: `import freezepolicy` (and `lint`) never loads torch.
_LAZY = {
    "apply_policy": "freezepolicy.runtime.apply",
    "ApplyReport": "freezepolicy.runtime.report",
    "param_groups": "freezepolicy.runtime.groups",
    "group_lrs": "freezepolicy.runtime.groups",
    "FreezeScheduler": "freezepolicy.integrations.loop",
    "summary": "freezepolicy.runtime.summary",
    "ModelSummary": "freezepolicy.runtime.summary",
    "cache_frozen": "freezepolicy.runtime.cache",
    "CachedModule": "freezepolicy.runtime.cache",
    "CacheStats": "freezepolicy.runtime.cache",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'freezepolicy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "ApplyReport",
    "BoundPolicy",
    "CacheStats",
    "CachedModule",
    "Decision",
    "Diagnostic",
    "FreezeScheduler",
    "ModelSummary",
    "Policy",
    "PolicyError",
    "PolicyResolveError",
    "PolicySourceError",
    "PolicySyntaxError",
    "PolicyWarning",
    "Rate",
    "__version__",
    "apply_policy",
    "cache_frozen",
    "group_lrs",
    "load",
    "param_groups",
    "parse",
    "summary",
]
