"""Models from a short spec string, for `freezepolicy lint --model` and `freezepolicy show`.

Four kinds of spec, all built on the meta device (parameters have shapes but no storage, so even
an 80-layer Llama takes a fraction of a second and no memory), and none ever downloads anything:

- `torchvision:NAME`: any model of `torchvision.models.list_models()`, with `weights=None` (and
  `weights_backbone=None` for detection and segmentation models).
- `transformers:NAME[:CLASS]`, `transformers:MODEL_TYPE[/HEAD]`: a well-known checkpoint's shape
  or any architecture transformers knows, from its default configuration (hf_specs.py).
- `path/to/config.json[:CLASS]`: the exact architecture of a checkpoint from its config file.
- `package.module:factory`: the user's own model. The module is imported (the current directory
  is searched first) and `factory` is called with no arguments.

torch is imported only when a model is built, so importing this module (for `ModelSpecError`)
stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any

from .exceptions import describe_exception
from .hf_specs import (
    HF_ALIASES,
    HF_ARCHITECTURES,
    HFArchitecture,
    build_config_file,
    build_transformers,
    transformers_specs,
)
from .meta import ModelSpecError, on_meta

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "HF_ALIASES",
    "HF_ARCHITECTURES",
    "HFArchitecture",
    "ModelSpecError",
    "build_model",
    "config_path",
    "transformers_specs",
]

SPEC_FORMS = (
    "`torchvision:NAME`, `transformers:NAME[/HEAD][:CLASS]`, `path/to/config.json` or "
    "`package.module:factory`"
)


def build_model(spec: str) -> nn.Module:
    """The model a spec names, on the meta device, with random (meta) weights and no download.

    Raises `ModelSpecError` for a spec that names no model, with the closest names as suggestions.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if kind == "torchvision" and rest:
        return _torchvision(rest)
    if kind == "transformers" and rest:
        return build_transformers(rest)
    path = config_path(spec)
    if path is not None:
        return build_config_file(*path)
    if not sep or not kind or not rest:
        raise ModelSpecError(
            f"model spec `{spec}` is not {SPEC_FORMS}", _bare_name_suggestions(spec)
        )
    return _factory(kind, rest)


def config_path(spec: str) -> tuple[str, str] | None:
    """(path, class or head) if `spec` names a config file rather than a module: it ends in
    `.json` (before an optional `:CLASS`), or is a path with a directory part or an existing
    directory. None for every other spec; a Python module path has neither."""
    spec = spec.strip()
    path, choice = spec, ""
    head, sep, tail = spec.rpartition(":")
    if sep and head.lower().endswith(".json") and "/" not in tail and os.sep not in tail:
        path, choice = head, tail
    if path.partition(":")[0] in ("torchvision", "transformers"):
        return None
    if path.lower().endswith(".json") or "/" in path or os.sep in path or os.path.isdir(path):
        return path, choice
    return None


def _bare_name_suggestions(spec: str) -> list[str]:
    """For a spec without its kind (`resnet18`), the full specs it may have meant."""
    if not spec or ":" in spec:
        return []
    candidates = [f"transformers:{n}" for n in (*HF_ARCHITECTURES, *HF_ALIASES)]
    hits = [c for c in candidates if c.endswith(":" + spec)]
    try:
        from torchvision.models import list_models

        if spec.lower() in list_models():
            hits.append(f"torchvision:{spec.lower()}")
    except ImportError:
        pass
    if not hits:
        # `t5` for `transformers:t5`; without transformers, simply no suggestion.
        with contextlib.suppress(ImportError, ModelSpecError):
            from .hf_specs import model_types

            if spec.lower() in model_types():
                hits.append(f"transformers:{spec.lower()}")
    return hits


# --- torchvision ---------------------------------------------------------------------------


def _torchvision(name: str) -> nn.Module:
    try:
        from torchvision.models import get_model_builder, list_models
    except ImportError:
        raise ModelSpecError(
            "`torchvision:` specs need torchvision (pip install 'freezepolicy[vision]')"
        ) from None
    known = list_models()
    key = name.lower()
    if key not in known:
        raise ModelSpecError(
            f"unknown torchvision model `{name}`", difflib.get_close_matches(key, known, n=3)
        )
    builder = get_model_builder(key)
    # Every `weights*` argument to None: detection and segmentation models otherwise fetch
    # ImageNet weights for their backbone by default.
    kwargs = {p: None for p in inspect.signature(builder).parameters if p.startswith("weights")}
    try:
        return on_meta(lambda: builder(**kwargs))
    except ModelSpecError:
        raise
    except Exception as exc:  # a torchvision that cannot build it here: a usage error, not a bug
        what = describe_exception(exc)
        raise ModelSpecError(f"cannot build `torchvision:{key}`: {what}") from None


# --- package.module:factory ----------------------------------------------------------------


def _factory(module_name: str, attr_path: str) -> nn.Module:
    from torch import nn

    spec = f"{module_name}:{attr_path}"
    if not all(part.isidentifier() for part in module_name.split(".")) or not all(
        part.isidentifier() for part in attr_path.split(".")
    ):
        raise ModelSpecError(
            f"model spec `{spec}` is not {SPEC_FORMS}",
            difflib.get_close_matches(module_name, ["torchvision", "transformers"], n=1),
        )
    module = _import(module_name, attr_path)
    try:
        target = _attribute(module, module_name, attr_path)
    except ModelSpecError:
        raise
    except (Exception, SystemExit) as exc:  # a property or module __getattr__ of the user's
        raise ModelSpecError(f"looking up `{spec}` failed: {describe_exception(exc)}") from None
    if not callable(target):
        raise ModelSpecError(f"`{spec}` is not callable: it should build and return a model")
    try:
        model = on_meta(target)
    except ModelSpecError:
        raise
    except SystemExit as exc:
        # `builtins:exit`, or a factory that calls sys.exit(): it must not end the command
        # silently with its own exit code.
        raise ModelSpecError(
            f"calling `{spec}()` raised SystemExit({exc.code!r}) instead of returning a model"
        ) from None
    except Exception as exc:
        raise ModelSpecError(f"calling `{spec}()` failed: {describe_exception(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"`{spec}()` returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _attribute(module: Any, module_name: str, attr_path: str) -> Any:
    """`module.attr.path`, or a ModelSpecError naming the first part that is missing."""
    target: Any = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(target, part):
            where = ".".join([module_name, *attr_path.split(".")[:i]])
            options = [n for n in dir(target) if not n.startswith("_")]
            raise ModelSpecError(
                f"`{where}` has no attribute `{part}`",
                [
                    f"{module_name}:{'.'.join([*attr_path.split('.')[:i], c])}"
                    for c in difflib.get_close_matches(part, options, n=3)
                ],
            )
        target = getattr(target, part)
    return target


def _import(module_name: str, attr_path: str) -> Any:
    """Import a user's module, the current directory first (as `python -m` would)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ModelSpecError(
                f"no module named `{missing}` (looked in the current directory and installed "
                "packages)",
                [
                    f"{kind}:{attr_path}"
                    for kind in difflib.get_close_matches(
                        missing, ["torchvision", "transformers"], n=1
                    )
                ],
            ) from None
        raise ModelSpecError(
            f"importing `{module_name}` failed: {describe_exception(exc)}"
        ) from exc
    except SystemExit as exc:  # the module calls sys.exit() when imported
        raise ModelSpecError(
            f"importing `{module_name}` raised SystemExit({exc.code!r})"
        ) from None
    except Exception as exc:
        raise ModelSpecError(
            f"importing `{module_name}` failed: {describe_exception(exc)}"
        ) from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
