"""`include` statements: another policy's statements in place of the include.

`include "base.freeze"` names a file relative to the directory of the file it is written in
(of `source` for `parse(text, source)`: the current directory for the default `<string>`);
`include "builtin:NAME"` names one of the policies shipped in the package (policies/ in a
checkout, `freezepolicy/policies` in a wheel). An included file is read as `load` reads one
(source.py: regular files only, at most 16 MiB, UTF-8) and may include others.

Every problem names the chain of files, each with the line of its include: a missing file
(FP146), an include cycle (FP147), more than `MAX_INCLUDES` includes (FP148), and any problem
inside an included file, which keeps its own code and is located in that file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .errors import Diagnostic, PolicyError, PolicySourceError, PolicySyntaxError
from .nodes import Include, Statement
from .parser import parse_text
from .source import decode_source, normalize_text, read_policy_file

BUILTIN = "builtin:"
#: Most includes one policy may make, counted over every file it includes: a file included
#: twice by each of 20 nested files would otherwise be read a million times.
MAX_INCLUDES = 256
_BUILTIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def builtin_dir() -> Path:
    """Where the built-in policies are: inside the installed package (pyproject.toml
    force-includes policies/ there), else the checkout's top-level policies/ directory."""
    packaged = resources.files("freezepolicy") / "policies"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "policies"


def builtin_names() -> list[str]:
    """The names `builtin:NAME` accepts, sorted."""
    folder = builtin_dir()
    return sorted(p.stem for p in folder.glob("*.freeze")) if folder.is_dir() else []


def builtin_path(name: str) -> str | None:
    """The file of built-in policy `name` (`bert_last2`), or None when there is none."""
    if _BUILTIN_NAME.fullmatch(name) is None or name.endswith(".freeze"):
        return None
    path = builtin_dir() / f"{name}.freeze"
    return str(path) if path.is_file() else None


#: One step of an include chain: the file, and the line of its include (None for the first).
Link = tuple[str, int | None]


class Expander:
    """Expands the includes of one policy, keeping the text of every file it read."""

    def __init__(self, source: str, text: str) -> None:
        self.count = 0
        #: Path as shown -> text, for every included file (source lines of diagnostics).
        self.texts: dict[str, str] = {}
        self._lines = {source: text.split("\n")}

    def expand(
        self, items: Sequence[Statement | Include], source: str, chain: tuple[Link, ...]
    ) -> list[Statement]:
        """The statements of `items` (the file `source`, reached by `chain`), each include
        replaced by the statements of the file it names."""
        out: list[Statement] = []
        for item in items:
            if isinstance(item, Statement):
                out.append(item)
                continue
            path, text = self._read(item, source, chain)
            self._lines[path] = text.split("\n")
            inner = (*chain[:-1], (chain[-1][0], item.line), (path, None))
            try:
                statements, _ = parse_text(text, path)
            except PolicyError as exc:
                raise type(exc)([_located(d, inner) for d in exc.diagnostics]) from None
            nested = self.expand(statements, path, inner)
            out.extend(st if st.origin else dataclasses.replace(st, origin=path) for st in nested)
        return out

    def _read(self, item: Include, source: str, chain: tuple[Link, ...]) -> tuple[str, str]:
        self.count += 1
        here = (*chain[:-1], (chain[-1][0], item.line))
        if self.count > MAX_INCLUDES:
            message = f"more than {MAX_INCLUDES} includes"
            raise PolicySyntaxError(self._at(item, source, "FP148", message, here))
        if item.path.startswith(BUILTIN):
            name = item.path[len(BUILTIN) :]
            found = builtin_path(name)
            if found is None:
                names = ", ".join(builtin_names()) or "none"
                message = f"no built-in policy `{name}` (there are: {names})"
                raise PolicySyntaxError(self._at(item, source, "FP146", message, here))
            path = found
        else:
            path = os.path.normpath(os.path.join(os.path.dirname(source), item.path))
        real = os.path.realpath(path)
        if any(os.path.realpath(p) == real for p, _ in chain):
            cycle = " -> ".join(f"{p}:{line}" for p, line in here) + f" -> {path}"
            raise PolicySyntaxError(self._at(item, source, "FP147", f"include cycle: {cycle}", ()))
        try:
            data = read_policy_file(path)
            text = normalize_text(decode_source(data, path))
        except PolicySourceError as exc:
            d = exc.first
            if d.code == "FP001":
                reason = d.message.removeprefix("cannot read policy file: ")
                if reason == "no such policy file":
                    reason = "no such file"
                message = f"cannot include `{item.path}`: {reason} ({path})"
                raise PolicySyntaxError(self._at(item, source, "FP146", message, here)) from None
            located = [_located(x, (*here, (path, None))) for x in exc.diagnostics]
            raise PolicySourceError(located) from None
        self.texts[path] = text
        return path, text


    def _at(
        self, item: Include, source: str, code: str, message: str, chain: Sequence[Link]
    ) -> Diagnostic:
        """A problem of an include statement, at its path in the file `source` (`chain`: the
        includes that led to `source`, ending with its own include)."""
        span = item.span
        column = span.end_column - len(item.path) - 2
        text = _chain_text(chain[:-1])
        lines = self._lines.get(source, [])
        return Diagnostic(
            code,
            f"{message} ({text})" if text else message,
            source,
            span.line,
            max(column, span.column),
            span.end_column,
            lines[span.line - 1] if 0 < span.line <= len(lines) else None,
        )


def _chain_text(chain: Sequence[Link]) -> str:
    """`included from mid.freeze:3, from top.freeze:1`: the includes that led here, nearest
    first (the last link is the file the diagnostic is in: not an include)."""
    links = [f"{p}:{line}" for p, line in reversed(chain) if line is not None]
    return "included from " + ", from ".join(links) if links else ""


def _located(d: Diagnostic, chain: Sequence[Link]) -> Diagnostic:
    """A diagnostic of an included file, with the chain of includes that led to it."""
    text = _chain_text(chain)
    return dataclasses.replace(d, message=f"{d.message} ({text})") if text else d


