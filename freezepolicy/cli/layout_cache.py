"""A cache on disk of the layouts of built-in model specs, so `lint --model` and `show --model`
can skip importing torch and transformers (several seconds) when they saw the spec before.

Only `torchvision:` and `transformers:` specs and config files are cached: they are fully
described by the spec (for a config file, the file's content), freezepolicy's own sources and the
installed library versions, which together make the key. A `package.module:factory` spec runs
user code that may change at any time, so it is always built.

The cache is an optimisation and nothing more: a file that is unreadable, malformed or written
for another key is a miss (and is overwritten), and a directory that cannot be written is
skipped silently. This module imports neither torch nor transformers until a model really has
to be built (models.py and hf_specs.py import them only to build).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ..lang.errors import PolicyError
from ..lang.source import read_file_bytes
from ..version import __version__
from .hf_specs import config_file
from .layout import ModelLayout
from .models import config_path

#: Bumped when the file layout below changes, so old files are never read as new ones.
FORMAT = 2
#: Spec kind -> the distributions (besides torch) whose versions decide what it builds.
BUILTIN_KINDS: dict[str, tuple[str, ...]] = {
    "torchvision": ("torchvision",),
    "transformers": ("transformers",),
    "config": ("transformers",),  # path/to/config.json
}
#: freezepolicy sources that define the built-in specs and how a layout is read from a model.
KEY_SOURCES = (
    "cli/models.py",
    "cli/hf_specs.py",
    "cli/meta.py",
    "runtime/modelinfo.py",
    "cli/layout.py",
)


class _Invalid(Exception):
    """A cache file that is not what this version writes: treated as a miss."""


def model_layout(spec: str, *, use_cache: bool = True) -> ModelLayout:
    """The layout of the model `spec` names: from the cache for a built-in spec seen before,
    else built (raising `freezepolicy.cli.models.ModelSpecError` for a spec that names no model)."""
    key = key_fields(spec) if use_cache and cache_enabled() else None
    path = cache_file(key) if key is not None else None
    if key is None or path is None:
        return _build(spec)
    cached = _load(path, key)
    if cached is not None:
        return cached
    layout = _build(spec)
    _store(path, key, layout)
    return layout


def _build(spec: str) -> ModelLayout:
    # Imported here: building is what needs torch (and transformers or torchvision).
    from .layout import layout_from_model
    from .models import build_model

    return layout_from_model(build_model(spec))


# --- where, and under which key --------------------------------------------------------------


def cache_enabled() -> bool:
    return os.environ.get("FREEZEPOLICY_NO_CACHE", "") in ("", "0")


def cache_dir() -> Path | None:
    """$FREEZEPOLICY_CACHE_DIR, else $XDG_CACHE_HOME/freezepolicy, else ~/.cache/freezepolicy."""
    explicit = os.environ.get("FREEZEPOLICY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "freezepolicy"
    try:
        return Path.home() / ".cache" / "freezepolicy"
    except RuntimeError:  # no home directory to be found: no cache
        return None


def cache_file(key: Mapping[str, Any]) -> Path | None:
    base = cache_dir()
    if base is None:
        return None
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return base / "layouts" / f"{hashlib.sha256(text.encode()).hexdigest()}.json"


def key_fields(spec: str) -> dict[str, Any] | None:
    """Everything the layout of a built-in spec depends on; None if the spec is not built-in or
    the key cannot be known (then the model is built and nothing is cached)."""
    spec = spec.strip()
    kind = spec.partition(":")[0]
    content: dict[str, str] = {}
    if kind not in BUILTIN_KINDS:
        path = config_path(spec)
        if path is None:
            return None
        kind = "config"
        try:
            data = config_file(path[0]).read_bytes()
        except OSError:
            return None  # the build reports the unreadable file
        # The layout depends on the file's content and the class asked for, not on where the
        # file is: the same config.json in another checkout is the same layout.
        spec = f"config.json:{path[1]}" if path[1] else "config.json"
        content["config_sha256"] = hashlib.sha256(data).hexdigest()
    sources = _source_hashes()
    if sources is None:
        return None
    try:
        versions = {name: installed_version(name) for name in ("torch", *BUILTIN_KINDS[kind])}
    except metadata.PackageNotFoundError:
        return None  # the build reports the missing package with its own clear error
    return {
        "format": FORMAT,
        "spec": spec,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "freezepolicy": __version__,
        "sources": sources,
        "versions": versions,
        **content,
    }


def installed_version(name: str) -> str:
    """The installed version of distribution `name`, read from its metadata: importing the
    package itself would cost the seconds the cache is there to save."""
    return metadata.version(name)


def _source_hashes() -> dict[str, str] | None:
    # Editing the spec table or the name walk during development must not reuse stale layouts,
    # and the package version alone does not change with such edits.
    here = Path(__file__).parents[1]  # the freezepolicy package
    try:
        return {
            name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in KEY_SOURCES
        }
    except OSError:
        return None


# --- the file: writing -----------------------------------------------------------------------


def encode(layout: ModelLayout) -> dict[str, Any]:
    """The layout as JSON data; module types as a table of distinct class-name lists plus one
    index per name, since most parameters share the classes above them."""
    table: dict[tuple[str, ...], int] = {}
    types = []
    for name in layout.names:
        classes = tuple(sorted(layout.module_types[name]))
        types.append(table.setdefault(classes, len(table)))
    return {
        "names": list(layout.names),
        "shapes": [list(layout.shapes[name]) for name in layout.names],
        "type_sets": [list(classes) for classes in table],
        "types": types,
        "modules": [[path, cls] for path, cls in layout.module_classes.items()],
        "tied": [list(group) for group in layout.tied],
        "adapters": layout.adapters,
    }


def _store(path: Path, key: Mapping[str, Any], layout: ModelLayout) -> None:
    text = json.dumps({"key": key, "layout": encode(layout)}, separators=(",", ":"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file in the same directory, then one rename: a reader (another process
        # running at the same time) sees the old file or the whole new one, never a partial one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # read-only or full disk, a file where the directory should be: just no cache


# --- the file: reading -----------------------------------------------------------------------


#: Largest cache file read; the layout of an 80-layer Llama is about 90 kB.
MAX_CACHE_FILE_BYTES = 64 * 1024 * 1024


def _load(path: Path, key: Mapping[str, Any]) -> ModelLayout | None:
    try:
        # As policy files are read: a FIFO or device where the file should be is a miss, and
        # is never waited on.
        data = json.loads(read_file_bytes(str(path), what="cache file", limit=MAX_CACHE_FILE_BYTES))
        if not isinstance(data, dict) or data.get("key") != key:
            raise _Invalid("written for another key")
        return decode(data.get("layout"))
    except (PolicyError, ValueError, RecursionError, _Invalid):
        # ValueError covers bad JSON and bad UTF-8; RecursionError absurdly nested JSON.
        return None


def decode(data: Any) -> ModelLayout:
    """The layout `encode` wrote; raises `_Invalid` for anything else."""
    if not isinstance(data, dict):
        raise _Invalid("layout is not an object")
    names = _str_list(data.get("names"))
    if len(set(names)) != len(names):
        raise _Invalid("repeated parameter name")
    shapes = _list(data.get("shapes"), len(names))
    type_sets = [frozenset(_str_list(classes)) for classes in _list(data.get("type_sets"))]
    types = _list(data.get("types"), len(names))
    if not all(_is_int(i) and 0 <= i < len(type_sets) for i in types):
        raise _Invalid("module-type index out of range")
    modules: dict[str, str] = {}
    for pair in _list(data.get("modules")):
        path, cls = _str_list(pair, 2)
        modules[path] = cls
    known = set(names)
    tied = [_str_list(group) for group in _list(data.get("tied"))]
    if not all(len(group) > 1 and known.issuperset(group) for group in tied):
        raise _Invalid("tied group of unknown names")
    adapters = data.get("adapters")
    if not isinstance(adapters, str):
        raise _Invalid("adapters is not a string")
    return ModelLayout(
        names=tuple(names),
        shapes={name: _shape(shape) for name, shape in zip(names, shapes, strict=True)},
        module_types={name: type_sets[i] for name, i in zip(names, types, strict=True)},
        module_classes=modules,
        tied=tied,
        adapters=adapters,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(value: Any, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise _Invalid("expected a list" if length is None else f"expected a list of {length}")
    return value


def _str_list(value: Any, length: int | None = None) -> list[str]:
    items = _list(value, length)
    if not all(isinstance(item, str) for item in items):
        raise _Invalid("expected a list of strings")
    return items


def _shape(value: Any) -> tuple[int, ...]:
    dims = _list(value)
    if not all(_is_int(d) and d >= 0 for d in dims):
        raise _Invalid("a shape is a list of non-negative whole numbers")
    return tuple(dims)
