"""What a policy needs to know about a torch model: normalized parameter names, tied tensors, and
the classes of the modules around each parameter.

Selectors see the names of the user's own model, whatever wraps it: DistributedDataParallel and
DataParallel (`module.`), torch.compile (`_orig_mod.`), FSDP1 and activation checkpointing
(`_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.`). FSDP2 (`fully_shard`) keeps names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

#: Parts that wrappers insert inside names; they are never part of what a selector sees.
WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / torch.compile wrappers."""
    seen = 0
    while seen < 16:  # wrappers nest a few levels at most; the bound guards a cycle
        seen += 1
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            break
    return model


def normalize_name(name: str) -> str:
    """Drop the parts wrappers insert (`_orig_mod`, `_fsdp_wrapped_module`, ...) from a name."""
    if not any(part in name for part in WRAPPER_PARTS):
        return name
    return ".".join(p for p in name.split(".") if p not in WRAPPER_PARTS)


@dataclass
class ModelInfo:
    """A model's parameters as a policy sees them."""

    #: Normalized name -> parameter, one entry per *name* (a tied tensor appears once per name).
    params: dict[str, nn.Parameter]
    #: Normalized names in model order (tied tensors under each of their names).
    names: list[str]
    #: For each tensor with several names, all of them (first name first).
    tied: list[list[str]]
    #: Normalized name -> class names (and base classes) of every module that contains it.
    module_types: dict[str, frozenset[str]]
    #: Normalized module path -> module, in model order.
    modules: dict[str, nn.Module]
    #: Ids of every parameter slot in walk order (`parameter_ids(model)`): how `apply_policy`
    #: notices, cheaply, that a model's parameters were replaced.
    fingerprint: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def unique(self) -> dict[str, nn.Parameter]:
        """One entry per tensor, under its first name."""
        out: dict[str, nn.Parameter] = {}
        seen: set[int] = set()
        for name in self.names:
            p = self.params[name]
            if id(p) not in seen:
                seen.add(id(p))
                out[name] = p
        return out


def _class_names(module: nn.Module) -> frozenset[str]:
    return frozenset(c.__name__ for c in type(module).__mro__ if c is not object)


def inspect_model(model: nn.Module) -> ModelInfo:
    """Collect names, tied groups, module types and modules of `model` (wrappers removed).

    One walk in the order of `named_parameters(remove_duplicate=False)`, with each module's
    path normalized once (not each name) and the class names above a module shared between
    modules with the same ancestry, so a model with 100k tensors takes a fraction of a second.
    """
    root = unwrap(model)
    modules: dict[str, nn.Module] = {}
    above: dict[str, frozenset[str]] = {}  # path -> classes of the modules at it and above
    unions: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
    classes_of: dict[type, frozenset[str]] = {}
    params: dict[str, nn.Parameter] = {}
    names: list[str] = []
    module_types: dict[str, frozenset[str]] = {}
    first_of: dict[int, str] = {}  # tensor id -> its first name
    tied_by: dict[int, list[str]] = {}  # tensor id -> all its names, for tensors with several
    nothing: frozenset[str] = frozenset()
    ids: list[int] = []
    # Pre-order, children in registration order, as named_modules(remove_duplicate=False);
    # each entry carries the classes above it (of its parent's path).
    stack: list[tuple[str, nn.Module, frozenset[str]]] = [("", root, nothing)]
    while stack:
        path, module, parent = stack.pop()
        classes = above.get(path)
        if classes is None:  # the first module at this (normalized) path
            modules[path] = module
            own = classes_of.get(type(module))
            if own is None:
                own = classes_of[type(module)] = _class_names(module)
            classes = unions.get((parent, own))
            if classes is None:
                classes = unions[(parent, own)] = parent | own
            above[path] = classes
        prefix = path + "." if path else ""
        ids.extend(map(id, module._parameters.values()))
        for key, p in module._parameters.items():
            if p is None:
                continue
            if key in WRAPPER_PARTS:  # never in practice; keep the general rule
                name = normalize_name(prefix + key)
                types = _types_of(name, modules)
            else:
                name = prefix + key
                types = classes
            if name in params:
                continue
            params[name] = p
            names.append(name)
            module_types[name] = types
            first = first_of.setdefault(id(p), name)
            if first is not name:
                tied_by.setdefault(id(p), [first]).append(name)
        for key, child in reversed(module._modules.items()):
            if child is not None:
                child_path = path if key in WRAPPER_PARTS else prefix + key
                stack.append((child_path, child, classes))
    # In model order of each tensor's first name.
    if len(tied_by) > 1:
        order = {n: i for i, n in enumerate(names)}
        tied = sorted(tied_by.values(), key=lambda g: order[g[0]])
    else:
        tied = list(tied_by.values())
    return ModelInfo(params, names, tied, module_types, modules, tuple(ids))


def parameter_ids(model: nn.Module) -> tuple[int, ...]:
    """Ids of every parameter slot of `model` (unwrapped root), in the order `inspect_model`
    walks, as its `fingerprint`. Runs at every apply, so it reads the module dicts directly:
    several times faster than `parameters()` (no generators, no dedup)."""
    ids: list[int] = []
    stack: list[nn.Module | None] = [model]
    while stack:
        module = stack.pop()
        if module is None:  # a child slot set to None
            continue
        ids.extend(map(id, module._parameters.values()))
        stack.extend(reversed(module._modules.values()))
    return tuple(ids)


def _types_of(name: str, modules: dict[str, nn.Module]) -> frozenset[str]:
    """Class names of the modules above `name`: at the root and at every proper prefix."""
    parts = name.split(".")
    classes: set[str] = set()
    for i in range(len(parts)):
        module = modules.get(".".join(parts[:i]))
        if module is not None:
            classes |= _class_names(module)
    return frozenset(classes)


def is_meta(param: torch.Tensor) -> bool:
    return param.device.type == "meta"
