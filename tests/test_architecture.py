"""The package's shape, read from its source with `ast` (nothing is imported or run).

docs/architecture.md states the rules checked here:

- every module belongs to one layer: `lang` (1, torch-free), `runtime` (2), `integrations` (3),
  `cli` (4), `demo` (5), or the base (`version`, 0);
- a module imports only modules of its own layer or lower ones, and only the demos import the
  package's public face (`freezepolicy/__init__.py`);
- there is no import cycle between modules (imports inside functions count; imports under
  `if TYPE_CHECKING:` are for type checkers only and do not);
- no private name (`_x`) is imported across modules, or read as an attribute of another module;
- the language layer imports nothing outside the standard library and lark;
- no module is longer than 500 lines.

Each rule is also tried on a small made-up package, so a checker that found nothing because it
looked at nothing would fail.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "freezepolicy"

#: Layer of each subpackage; top-level modules other than these are not allowed.
LAYERS = {"lang": 1, "runtime": 2, "integrations": 3, "cli": 4, "demo": 5}
BASE = {"version": 0}
#: The public face and the `python -m freezepolicy` entry: above every layer, imported by none
#: but the demos.
TOP = {"__init__": 9, "__main__": 9}
MAX_LINES = 500
#: What the language layer may import besides the standard library.
LANG_THIRD_PARTY = {"lark"}


@dataclass
class Module:
    name: str  # dotted, e.g. freezepolicy.lang.parser
    path: Path
    is_package: bool
    tree: ast.Module
    #: (imported module, line, under TYPE_CHECKING) for imports of the package's own modules.
    imports: list[tuple[str, int, bool]] = field(default_factory=list)
    #: (top-level name, line) of every import of something outside the package.
    external: list[tuple[str, int]] = field(default_factory=list)
    #: (module, private name, line): `from m import _x`, or `m._x` for an imported module m.
    private: list[tuple[str, str, int]] = field(default_factory=list)


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def read_package(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        name, is_package = module_name(root, path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        modules[name] = Module(name, path, is_package, tree)
    for module in modules.values():
        _collect(module, modules)
    return modules


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for inner in node.body:
                    for sub in ast.walk(inner):
                        out.add(id(sub))
    return out


def _resolve(module: Module, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` in `module`."""
    if level == 0:
        return target or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _collect(module: Module, modules: dict[str, Module]) -> None:
    root = module.name.split(".")[0]
    typing_only = _type_checking_nodes(module.tree)
    bound: dict[str, str] = {}  # local name -> package module it is bound to
    for node in ast.walk(module.tree):
        only_types = id(node) in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    module.imports.append((alias.name, node.lineno, only_types))
                    if alias.asname:
                        bound[alias.asname] = alias.name
                else:
                    module.external.append((alias.name.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node.level, node.module)
            if source.split(".")[0] != root:
                module.external.append((source.split(".")[0], node.lineno))
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in modules:  # `from . import x` where x is a module
                    module.imports.append((full, node.lineno, only_types))
                    bound[alias.asname or alias.name] = full
                else:
                    module.imports.append((source, node.lineno, only_types))
                    if _private(alias.name):
                        module.private.append((source, alias.name, node.lineno))
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
        ):
            module.private.append((bound[node.value.id], node.attr, node.lineno))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def layer_of(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return TOP["__init__"]
    head = parts[1]
    if head in LAYERS:
        return LAYERS[head]
    if head in BASE:
        return BASE[head]
    if head in TOP:
        return TOP[head]
    raise KeyError(name)


def problems(modules: dict[str, Module]) -> Iterator[str]:
    """Every break of the rules in the module docstring, one message each."""
    for m in modules.values():
        where = m.path.name if m.path.parent.name == "freezepolicy" else m.path.parent.name
        rel = f"{where}/{m.path.name}" if where != m.path.name else where
        try:
            own = layer_of(m.name)
        except KeyError:
            yield f"{rel}: in no layer (put it in one of {sorted(LAYERS)})"
            continue
        lines = len(m.path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            yield f"{rel}: {lines} lines, more than {MAX_LINES}"
        for target, line, _typing in m.imports:
            if target.count(".") == 0:  # the public face: for the demos, as for any user
                if own not in (LAYERS["demo"], TOP["__init__"]):
                    yield f"{rel}:{line}: imports the package's public face; import the module"
            elif layer_of(target) > own and own != TOP["__init__"]:
                yield f"{rel}:{line}: imports {target}, a higher layer"
        for source, name, line in m.private:
            if source != m.name:
                yield f"{rel}:{line}: uses private name {name} of {source}"
        if own == LAYERS["lang"]:
            allowed = LANG_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__"}
            for top, line in m.external:
                if top not in allowed:
                    yield f"{rel}:{line}: the language layer imports {top}"
    yield from cycles(modules)


def cycles(modules: dict[str, Module]) -> Iterator[str]:
    """One message per import cycle (Tarjan's strongly connected components)."""
    graph = {
        name: sorted(
            {t for t, _, typing in m.imports if not typing and t != name and t in modules}
        )
        for name, m in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    for component in found:
        yield "import cycle: " + " -> ".join(component)


# --- the package itself ---------------------------------------------------------------------


def test_the_package_keeps_its_layers() -> None:
    modules = read_package(PACKAGE)
    # The subpackages are there and hold modules (a typo in a path would make this vacuous).
    for layer in LAYERS:
        assert any(name.startswith(f"freezepolicy.{layer}.") for name in modules), layer
    assert list(problems(modules)) == []


def test_docs_architecture_names_every_module() -> None:
    """docs/architecture.md is the map of the package: a module it does not name is a module a
    newcomer cannot place (package markers and `__main__` entry points aside)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and path.name not in text
    ]
    assert missing == []


def test_the_console_script_and_public_names_are_where_pyproject_and_docs_say() -> None:
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert 'freezepolicy = "freezepolicy.cli.main:main"' in pyproject
    face = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    exported = next(
        node.value
        for node in face.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    )
    names = {elt.value for elt in exported.elts}  # type: ignore[attr-defined]
    assert {
        "parse",
        "load",
        "apply_policy",
        "param_groups",
        "FreezeScheduler",
        "ApplyReport",
        "PolicyError",
        "PolicySyntaxError",
        "PolicySourceError",
        "PolicyResolveError",
    } <= names


# --- the checker, on made-up packages ---------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    root = tmp_path / "freezepolicy"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for sub in {Path(rel).parts[0] for rel in files if "/" in rel}:
        (root / sub / "__init__.py").touch()
    return read_package(root)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"lang/a.py": "from ..runtime import b\n", "runtime/b.py": ""}, "a higher layer"),
        ({"lang/a.py": "import torch\n"}, "the language layer imports torch"),
        (
            {"lang/a.py": "from .b import x\n", "lang/b.py": "from .a import y\n"},
            "import cycle: freezepolicy.lang.a -> freezepolicy.lang.b",
        ),
        (
            {"lang/a.py": "def f():\n    from .b import x\n", "lang/b.py": "from .a import y\n"},
            "import cycle",
        ),
        ({"lang/a.py": "from .b import _hidden\n", "lang/b.py": ""}, "private name _hidden"),
        ({"lang/a.py": "from . import b\nb._hidden()\n", "lang/b.py": ""}, "private name"),
        ({"runtime/a.py": "import freezepolicy\n"}, "public face"),
        ({"stray.py": ""}, "in no layer"),
        ({"lang/a.py": "x = 1\n" * (MAX_LINES + 1)}, "more than 500"),
    ],
)
def test_the_checker_finds_each_kind_of_problem(tmp_path, files, expected) -> None:
    found = list(problems(_package(tmp_path, files)))
    assert any(expected in p for p in found), found


def test_the_checker_allows_what_the_rules_allow(tmp_path) -> None:
    files = {
        "lang/a.py": "import re\nfrom lark import Lark\nfrom .b import x\n",
        "lang/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n",
        "runtime/c.py": "import torch\nfrom ..lang.a import z\n",
        "demo/d.py": "import freezepolicy\nfrom freezepolicy.runtime import c\n",
        "version.py": "",
    }
    assert list(problems(_package(tmp_path, files))) == []
