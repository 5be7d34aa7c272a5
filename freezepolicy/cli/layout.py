"""`ModelLayout`: what `show` and model-aware `lint` need to know about a model, torch-free.

Parameter names and shapes, module classes and tied groups. `layout_from_model` reads one from a
torch model; layout_cache.py saves and loads them, so a warm `lint --model` never imports torch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelLayout:
    """What `show` needs to know about a model."""

    #: Parameter names in model order (a tied tensor under each of its names).
    names: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    #: Parameter name -> class names (with bases) of the modules around it, for `type:`.
    module_types: Mapping[str, Collection[str]]
    #: Module path -> class name, in model order; "" is the model itself.
    module_classes: Mapping[str, str]
    #: Each tied tensor's names, first name first.
    tied: Sequence[Sequence[str]] = ()


def layout_from_model(model: nn.Module) -> ModelLayout:
    """The layout of a torch model (wrapper prefixes removed, as selectors see the names)."""
    from ..runtime.modelinfo import inspect_model

    info = inspect_model(model)
    return ModelLayout(
        names=tuple(info.names),
        shapes={n: tuple(p.shape) for n, p in info.params.items()},
        module_types=info.module_types,
        module_classes={path: type(m).__name__ for path, m in info.modules.items()},
        tied=[list(g) for g in info.tied],
    )
