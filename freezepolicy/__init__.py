"""freezepolicy: declare which parameters of a PyTorch model train, at what learning rate, and when.

The core (parse, compile, resolve, lint) imports without torch; the torch-facing names are loaded
on first use.
"""

from __future__ import annotations

from .api import load, parse
from .errors import (
    Diagnostic,
    PolicyError,
    PolicyResolveError,
    PolicySourceError,
    PolicySyntaxError,
)
from .policy import BoundPolicy, Decision, Policy, Rate

__version__ = "0.1.0"

# Torch-facing names, imported on first use: `import freezepolicy` (and `lint`) never loads torch.
_LAZY = {
    "apply_policy": "freezepolicy.apply",
    "ApplyReport": "freezepolicy.apply",
    "param_groups": "freezepolicy.optim",
    "FreezeScheduler": "freezepolicy.schedule",
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
    "Decision",
    "Diagnostic",
    "FreezeScheduler",
    "Policy",
    "PolicyError",
    "PolicyResolveError",
    "PolicySourceError",
    "PolicySyntaxError",
    "Rate",
    "__version__",
    "apply_policy",
    "load",
    "param_groups",
    "parse",
]
