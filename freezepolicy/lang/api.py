"""The top-level verbs, one per stage, in the manner of the `json` module: `parse` and `load`."""

from __future__ import annotations

import os
import re

from .errors import Diagnostic, PolicySourceError
from .includes import BUILTIN, Expander, builtin_names, builtin_path
from .nodes import Include, Statement
from .parser import parse_text
from .policy import Policy
from .source import decode_source, normalize_text, read_policy_file


def parse(text: str | bytes, source: str = "<string>", *, includes: bool = True) -> Policy:
    """Parse and compile policy text. Raises `PolicyError` listing every problem in it.

    `include "file"` statements are read relative to the directory of `source` (the current
    directory for the default `<string>`), `include "builtin:NAME"` from the policies shipped
    with freezepolicy. `includes=False` leaves them unread: the policy then holds this text's
    own statements only (what `freezepolicy fmt` formats)."""
    if isinstance(text, (bytearray, memoryview)):
        text = bytes(text)
    if not isinstance(text, (str, bytes)):
        hint = (
            "; to read a policy file, use freezepolicy.load(path)"
            if isinstance(text, os.PathLike)
            else ""
        )
        got = type(text).__name__
        raise TypeError(f"parse() takes policy text (str or bytes), got {got}{hint}")
    if not isinstance(source, str):
        got = type(source).__name__
        raise TypeError(f"parse(): source must be a str naming the text, got {got}")
    if isinstance(text, bytes):
        text = decode_source(text, source)
    text = normalize_text(text)
    items, comments = parse_text(text, source)
    own = tuple(item for item in items if isinstance(item, Include))
    if includes and own:
        expander = Expander(source, text)
        statements = tuple(expander.expand(items, source, ((source, None),)))
        included = expander.texts
    else:
        statements = tuple(item for item in items if isinstance(item, Statement))
        included = {}
    return Policy(
        statements, source=source, text=text, comments=comments, includes=own, included=included
    )


def load(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and compile a policy file."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"load() takes the path of a policy file (str or os.PathLike), got"
            f" {type(path).__name__}; to parse policy text, use freezepolicy.parse(text)"
        )
    name = os.fspath(path)
    if not isinstance(name, str):  # a PathLike whose __fspath__ gives bytes
        name = os.fsdecode(name)
    if name.startswith(BUILTIN):
        found = builtin_path(name[len(BUILTIN) :])
        if found is None:
            names = ", ".join(builtin_names()) or "none"
            raise PolicySourceError(
                Diagnostic("FP001", f"no such built-in policy (there are: {names})", name)
            )
        name = found
    try:
        data = read_policy_file(name)
    except PolicySourceError as exc:
        if exc.code == "FP001" and looks_like_policy_text(name):
            raise PolicySourceError(
                Diagnostic(
                    "FP001",
                    "no such policy file; this looks like policy text, not a path: to parse"
                    " text, use freezepolicy.parse(text)",
                    _shown_path(name),
                )
            ) from None
        raise
    return parse(decode_source(data, name), name)


_STATEMENT_START = re.compile(r"\s*(freeze|unfreeze|lr|decay|stats|include)\s")


def looks_like_policy_text(path: str) -> bool:
    """Whether a string given as a path is more likely policy text (`freeze * except fc`)."""
    return "\n" in path or ";" in path or _STATEMENT_START.match(path) is not None


def _shown_path(path: str) -> str:
    """A path that may be a whole policy, fit for the head of a one-line message."""
    shown = path.replace("\n", "\\n")
    return shown if len(shown) <= 60 else shown[:57] + "..."
