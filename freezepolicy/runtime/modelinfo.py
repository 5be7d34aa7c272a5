"""What a policy needs to know about a torch model: normalized parameter names, tied tensors, and
the classes of the modules around each parameter.

Selectors see the names of the user's own model, whatever wraps it: DistributedDataParallel and
DataParallel (`module.`), torch.compile (`_orig_mod.`), FSDP1 and activation checkpointing
(`_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.`). FSDP2 (`fully_shard`) keeps names.
PEFT's `PeftModel` and its tuner (`LoraModel`, ...) add `base_model.model.` in front of every
name; they are removed too, so a policy written for a model works on the model with adapters,
whose own parts (`lora_A.default`, `base_layer`, `modules_to_save.default`, `original_module`)
stay in the names for selectors to use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: Parts that wrappers insert inside names; they are never part of what a selector sees.
WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DataParallel / torch.compile / PEFT wrappers."""
    seen = 0
    while seen < 16:  # wrappers nest a few levels at most; the bound guards a cycle
        seen += 1
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif (inner := peft_inner(model)) is not None:
            model = inner
        else:
            break
    return model


def peft_inner(model: nn.Module) -> nn.Module | None:
    """The module a PEFT wrapper holds, if `model` is one that holds nothing else.

    `PeftModel` holds its tuner as `base_model`, and the tuner (`LoraModel`, `IA3Model`, ...)
    holds the user's model, with the adapters inside it, as `model`. Recognized by where the
    class comes from, so that peft is never imported here. A wrapper with parameters of its own
    or other children (prompt learning's `prompt_encoder`) is kept: dropping it would hide
    parameters, so its names keep their prefix.
    """
    if not type(model).__module__.startswith("peft."):
        return None
    children = model._modules
    if len(children) != 1 or model._parameters:
        return None
    [(key, inner)] = children.items()
    return inner if key in ("base_model", "model") and inner is not None else None


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
    #: Every module and its normalized path, in walk order (pre-order, as named_modules). Where
    #: a wrapper holds a module both are listed, at one path, the wrapper first.
    module_paths: list[str] = field(repr=False, compare=False)
    module_list: list[nn.Module] = field(repr=False, compare=False)
    #: The class of every module (a few dozen, where a model can have 100k modules).
    classes: frozenset[type] = field(default=frozenset(), repr=False, compare=False)
    #: Ids of every parameter slot in walk order (`parameter_ids(model)`): how `apply_policy`
    #: notices, cheaply, that a model's parameters were replaced.
    fingerprint: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @functools.cached_property
    def modules(self) -> dict[str, nn.Module]:
        """Normalized module path -> module, in model order; where a wrapper holds a module, the
        wrapped one (the user's module, as its parameters' names say). Made on first use: an
        apply needs it for no model, and it costs 0.03 s at 100k modules."""
        return dict(zip(self.module_paths, self.module_list, strict=True))


def _class_names(module: nn.Module) -> frozenset[str]:
    return frozenset(c.__name__ for c in type(module).__mro__ if c is not object)


def inspect_model(model: nn.Module) -> ModelInfo:
    """Collect names, tied groups, module types and modules of `model` (wrappers removed).

    One walk in the order of `named_parameters(remove_duplicate=False)`. It is most of the cost
    of a first `apply_policy` on a large model (0.2 s for 100k tensors and 130k modules), so it is
    written for speed: a stack of child iterators rather than one entry per module, the classes
    at a module computed once per (classes above, type), list appends only, and the dicts built
    in C at the end. A module a wrapper holds (`_orig_mod`, `_checkpoint_wrapped_module`, ...)
    takes the wrapper's path, and the classes there are the wrapper's and its own.
    """
    root = unwrap(model)
    # (classes above a module, its type) -> the classes at it: a few dozen distinct sets, shared.
    unions: dict[tuple[frozenset[str], type], frozenset[str]] = {}
    names: list[str] = []
    tensors: list[nn.Parameter] = []
    types: list[frozenset[str]] = []
    ids: list[int] = []
    paths: list[str] = []
    modules: list[nn.Module] = []
    add_name, add_tensor, add_types, add_id = names.append, tensors.append, types.append, ids.append
    add_path, add_module = paths.append, modules.append
    # Frames of (prefix of the children's paths, classes at the parent, its children, whether
    # some child is a wrapper part). A module is handled when its parent's iterator yields it,
    # and its own children are entered at once: pre-order, children in registration order.
    root_frame: Iterator[tuple[str, nn.Module | None]] = iter((("", root),))
    stack: list[tuple[str, frozenset[str], Iterator[tuple[str, nn.Module | None]], bool]]
    stack = [("", frozenset(), root_frame, False)]
    push, pop = stack.append, stack.pop
    while stack:
        prefix, above, children, wrapped = stack[-1]
        for key, module in children:
            if module is None:  # a child slot set to None
                continue
            path = prefix[:-1] if wrapped and key in WRAPPER_PARTS else prefix + key
            add_path(path)
            add_module(module)
            at = (above, type(module))
            classes = unions.get(at)
            if classes is None:
                classes = unions[at] = above | _class_names(module)
            own = module._parameters
            if own:
                dot = path + "." if path else ""
                plain = WRAPPER_PARTS.isdisjoint(own)  # else: never in practice; keep the rule
                for k, p in own.items():
                    add_id(id(p))  # here, while the dict is in the CPU cache
                    if p is not None:
                        add_name(dot + k if plain else normalize_name(dot + k))
                        add_tensor(p)
                        add_types(classes)
            below = module._modules
            if below:
                inner = not WRAPPER_PARTS.isdisjoint(below)
                push((path + "." if path else "", classes, iter(below.items()), inner))
                break
        else:
            pop()
    params = dict(zip(names, tensors, strict=True))
    if len(params) != len(names):  # a name twice (once wrappers are removed): the first counts
        names, tensors, types = _first_of_each_name(names, tensors, types)
        params = dict(zip(names, tensors, strict=True))
    module_types = dict(zip(names, types, strict=True))
    return ModelInfo(
        params,
        names,
        _tied(names, tensors),
        module_types,
        paths,
        modules,
        classes=frozenset(t for _, t in unions),
        fingerprint=tuple(ids),
    )


def _first_of_each_name(
    names: list[str], tensors: list[nn.Parameter], types: list[frozenset[str]]
) -> tuple[list[str], list[nn.Parameter], list[frozenset[str]]]:
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        first.setdefault(n, i)
    keep = sorted(first.values())
    return [names[i] for i in keep], [tensors[i] for i in keep], [types[i] for i in keep]


def _tied(names: list[str], tensors: list[nn.Parameter]) -> list[list[str]]:
    """For each tensor with several names, all of them (first name first), in model order of
    the first names. Most models have none, which one C-level count shows."""
    if len(set(map(id, tensors))) == len(tensors):
        return []
    first_of: dict[int, str] = {}
    tied_by: dict[int, list[str]] = {}
    for name, p in zip(names, tensors, strict=True):
        first = first_of.setdefault(id(p), name)
        if first is not name:
            tied_by.setdefault(id(p), [first]).append(name)
    order = {n: i for i, n in enumerate(names)}
    return sorted(tied_by.values(), key=lambda g: order[g[0]])


def parameter_ids(model: nn.Module) -> tuple[int, ...]:
    """Ids of every parameter slot of `model` (unwrapped root), in the order `inspect_model`
    walks, as its `fingerprint`. Runs at every apply, so it walks as `inspect_model` does (a
    stack of child iterators) and reads the module dicts directly: no generators, no dedup."""
    ids: list[int] = []
    add = ids.append
    for p in model._parameters.values():
        add(id(p))
    stack: list[Iterator[nn.Module | None]] = [iter(model._modules.values())]
    push, pop = stack.append, stack.pop
    while stack:
        for module in stack[-1]:
            if module is None:  # a child slot set to None
                continue
            for p in module._parameters.values():
                add(id(p))
            below = module._modules
            if below:
                push(iter(below.values()))
                break
        else:
            pop()
    return tuple(ids)


def is_meta(param: torch.Tensor) -> bool:
    return param.device.type == "meta"


def shapes_of(params: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Each parameter name's shape, for the `ndim` selectors of a policy."""
    return {name: tuple(p.shape) for name, p in params.items()}
