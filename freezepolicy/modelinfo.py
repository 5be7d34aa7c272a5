"""What a policy needs to know about a torch model: normalized parameter names, tied tensors, and
the classes of the modules around each parameter.

Selectors see the names of the user's own model, whatever wraps it: DistributedDataParallel and
DataParallel (`module.`), torch.compile (`_orig_mod.`), FSDP1 and activation checkpointing
(`_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.`). FSDP2 (`fully_shard`) keeps names.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

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
    """Collect names, tied groups, module types and modules of `model` (wrappers removed)."""
    root = unwrap(model)
    modules: dict[str, nn.Module] = {}
    types_at: dict[str, frozenset[str]] = {}
    for path, module in root.named_modules(remove_duplicate=False):
        path = normalize_name(path)
        if path not in modules:
            modules[path] = module
            types_at[path] = _class_names(module)
    params: dict[str, nn.Parameter] = {}
    names: list[str] = []
    by_tensor: dict[int, list[str]] = defaultdict(list)
    for raw, p in root.named_parameters(remove_duplicate=False):
        name = normalize_name(raw)
        if name in params:
            continue
        params[name] = p
        names.append(name)
        by_tensor[id(p)].append(name)
    module_types: dict[str, frozenset[str]] = {}
    for name in names:
        parts = name.split(".")
        classes: set[str] = set(types_at.get("", ()))
        for i in range(1, len(parts)):
            classes |= types_at.get(".".join(parts[:i]), frozenset())
        module_types[name] = frozenset(classes)
    tied = [group for group in by_tensor.values() if len(group) > 1]
    return ModelInfo(params, names, tied, module_types, modules)


def is_meta(param: torch.Tensor) -> bool:
    return param.device.type == "meta"
