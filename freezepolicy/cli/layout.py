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
    #: PEFT adapters in the model, in words (`LoRA adapter `default` in 4 modules; ...`), or
    #: "" for a model without them.
    adapters: str = ""


def layout_from_model(model: nn.Module) -> ModelLayout:
    """The layout of a torch model (wrapper prefixes removed, as selectors see the names)."""
    from ..runtime.modelinfo import inspect_model

    info = inspect_model(model)
    return ModelLayout(
        names=tuple(info.names),
        shapes={n: tuple(p.shape) for n, p in info.params.items()},
        module_types=info.module_types,
        module_classes={path: class_label(m) for path, m in info.modules.items()},
        tied=[list(g) for g in info.tied],
        adapters=describe_adapters(info.modules),
    )


def class_label(module: nn.Module) -> str:
    """A module's class as `show` prints it: its name, and for a PEFT tuner layer the tuner
    too, as PEFT's own repr does (`lora.Linear`, which would otherwise read as torch's Linear)."""
    cls = type(module)
    parts = cls.__module__.split(".")
    if is_tuner_layer(module):
        return f"{parts[2]}.{cls.__name__}"
    return cls.__name__


def is_tuner_layer(module: nn.Module) -> bool:
    """A layer PEFT has adapted (its `BaseTunerLayer`), told by duck typing: peft stays optional."""
    return type(module).__module__.startswith("peft.tuners.") and isinstance(
        getattr(module, "adapter_layer_names", None), tuple
    )


def describe_adapters(modules: Mapping[str, nn.Module]) -> str:
    """The PEFT adapters among `modules` (path -> module) in words, or "" if there are none:
    which tuner, which adapter names, how many layers carry them, and the `modules_to_save`."""
    from torch import nn

    tuners: dict[str, set[str]] = {}  # tuner (lora, ia3, ...) -> adapter names
    adapted: dict[str, int] = {}
    saved: list[str] = []
    saved_names: set[str] = set()
    for path, module in modules.items():
        if is_tuner_layer(module):
            kind = type(module).__module__.split(".")[2]
            tuner = TUNER_NAMES.get(kind, kind)
            adapted[tuner] = adapted.get(tuner, 0) + 1
            names = tuners.setdefault(tuner, set())
            attrs: tuple[str, ...] = getattr(module, "adapter_layer_names", ())
            for attr in attrs:
                held = getattr(module, attr, None)
                if isinstance(held, (nn.ModuleDict, nn.ParameterDict)):
                    names.update(held.keys())
        elif type(module).__name__ == "ModulesToSaveWrapper":
            saved.append(path or "(model)")
            held = getattr(module, "modules_to_save", None)
            if isinstance(held, nn.ModuleDict):
                saved_names.update(held.keys())
    parts = [
        f"{tuner} {_adapter_names(tuners[tuner])} in {n} module{'s' if n != 1 else ''}"
        for tuner, n in adapted.items()
    ]
    if saved:
        parts.append(f"modules_to_save {_adapter_names(saved_names)}: {', '.join(saved)}")
    return "; ".join(parts)


def _adapter_names(names: set[str]) -> str:
    if not names:
        return "adapter"
    label = "adapter" if len(names) == 1 else "adapters"
    return f"{label} " + ", ".join(f"`{n}`" for n in sorted(names))


#: How PEFT's documentation writes the tuners it has (the rest are shown as their package name).
TUNER_NAMES = {"lora": "LoRA", "ia3": "IA3", "loha": "LoHa", "lokr": "LoKr", "adalora": "AdaLoRA"}
