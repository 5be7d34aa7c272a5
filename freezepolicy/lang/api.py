"""The top-level verbs, one per stage, in the manner of the `json` module: `parse` and `load`."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import Diagnostic, PolicySourceError
from .parser import parse_text
from .policy import Policy
from .source import decode_source, normalize_text


def parse(text: str | bytes, source: str = "<string>") -> Policy:
    """Parse and compile policy text. Raises `PolicyError` listing every problem in it."""
    if isinstance(text, bytes):
        text = decode_source(text, source)
    text = normalize_text(text)
    statements, comments = parse_text(text, source)
    return Policy(statements, source=source, text=text, comments=comments)


def load(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and compile a policy file."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise PolicySourceError(Diagnostic("FP001", "no such policy file", name)) from None
    except IsADirectoryError:
        raise PolicySourceError(
            Diagnostic("FP001", "is a directory, not a policy file", name)
        ) from None
    except OSError as exc:
        raise PolicySourceError(
            Diagnostic("FP001", f"cannot read policy file: {exc.strerror}", name)
        ) from None
    return parse(decode_source(data, name), name)
