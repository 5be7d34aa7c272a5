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

__all__ = [
    "BoundPolicy",
    "Decision",
    "Diagnostic",
    "Policy",
    "PolicyError",
    "PolicyResolveError",
    "PolicySourceError",
    "PolicySyntaxError",
    "Rate",
    "__version__",
    "load",
    "parse",
]
