"""Layer 4, the command line: `freezepolicy lint | fmt | show`.

It reads arguments, calls the library, formats results and picks an exit code; it holds no policy
logic. `show`'s view model and renderings, model specs (`--model`) and the layout cache live here
because only the command line needs them. May import every lower layer (lang, runtime,
integrations); nothing imports it. docs/architecture.md has the rules.
"""

from .main import main

__all__ = ["main"]
