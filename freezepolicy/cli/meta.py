"""Building models on the meta device, downloads refused: what every `--model` spec shares.

`ModelSpecError` is the one error a spec can give; its text is one line, which the CLI prints
before exiting 2. torch is imported only when a model is built.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


class ModelSpecError(ValueError):
    """A model spec that names no model, or a model that cannot be built.

    `str()` is one line: the CLI prints it and exits 2, with no traceback.
    """

    def __init__(self, message: str, suggestions: tuple[str, ...] | list[str] = ()) -> None:
        self.message = message
        self.suggestions = tuple(suggestions)
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.suggestions:
            return self.message
        shown = ", ".join(f"`{s}`" for s in self.suggestions)
        return f"{self.message}; did you mean {shown}?"


def on_meta(build: Callable[[], Any]) -> Any:
    """Call `build` with the meta device as default, downloads refused.

    A few constructors compute with tensor data (torchvision's RegNet derives its widths from
    tensors), which the meta device cannot do; for those the model is built with its
    parameters and buffers moved to meta one by one as they are registered, so ordinary tensor
    arithmetic still runs on the CPU and no full-size weight is ever kept.
    """
    import torch

    with no_downloads():
        try:
            with torch.device("meta"):
                return build()
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc):
                raise
        with register_on_meta():
            return build()


@contextlib.contextmanager
def register_on_meta() -> Iterator[None]:
    from torch import nn

    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter_on_meta(module: nn.Module, name: str, param: Any) -> None:
        register_parameter(module, name, param)
        if param is not None and param.device.type != "meta":
            # Keep the parameter's class and attributes (subclasses carry extra state).
            param_cls: Any = type(module._parameters[name])
            extra = dict(module._parameters[name].__dict__)
            extra["requires_grad"] = param.requires_grad
            module._parameters[name] = param_cls(param.to("meta"), **extra)

    def buffer_on_meta(module: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(module, name, tensor, persistent=persistent)
        if tensor is not None and tensor.device.type != "meta":
            module._buffers[name] = tensor.to("meta")

    nn.Module.register_parameter = parameter_on_meta  # type: ignore[method-assign,assignment]
    nn.Module.register_buffer = buffer_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Make every weight download torch or torchvision could start fail at once.

    Building from a spec only needs names and shapes. A user's factory that asks for pretrained
    weights gets a clear error instead of a silent multi-gigabyte download.
    """
    import torch.hub

    def refuse(url: str, *args: Any, **kwargs: Any) -> Any:
        raise ModelSpecError(
            f"building the model would download {url}; freezepolicy builds models without "
            "weights (pass `weights=None` in your factory)"
        )

    patched: list[tuple[Any, str, Any]] = [
        (torch.hub, "load_state_dict_from_url", refuse),
        (torch.hub, "download_url_to_file", refuse),
    ]
    # torchvision keeps its own reference to the download function. Only patched when already
    # imported: importing torchvision just for this would slow down every transformers spec.
    tv_api = sys.modules.get("torchvision.models._api")
    if tv_api is not None and hasattr(tv_api, "load_state_dict_from_url"):
        patched.append((tv_api, "load_state_dict_from_url", refuse))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    for obj, name, value in patched:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
