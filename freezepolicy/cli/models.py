"""Models from a short spec string, for `freezepolicy lint --model` and `freezepolicy show`.

Three kinds of spec, all built on the meta device (parameters have shapes but no storage, so even
an 80-layer Llama takes a fraction of a second and no memory), and none ever downloads anything:

- `torchvision:NAME`: any model of `torchvision.models.list_models()`, with `weights=None` (and
  `weights_backbone=None` for detection and segmentation models).
- `transformers:NAME[:CLASS]`: a well-known architecture whose configuration is written below (no
  hub access); `CLASS` picks another model class for the same configuration, such as
  `transformers:bert-base-uncased:BertForMaskedLM`.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import describe_exception

if TYPE_CHECKING:
    from torch import nn


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


@dataclass(frozen=True)
class HFArchitecture:
    """A transformers architecture with its configuration written here (no hub access)."""

    config: str  # config class name in `transformers`
    model: str  # default model class
    family: str  # class-name prefix of this architecture's model classes, for suggestions
    about: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_LLAMA3_ROPE = {"rope_type": "default", "rope_theta": 500000.0}

#: `transformers:NAME` specs. Sizes are the published ones of each checkpoint; only names and
#: shapes matter here, so dropout and similar settings keep the library defaults.
HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "bert-base-uncased": HFArchitecture(
        "BertConfig", "BertModel", "Bert", "BERT base, uncased: 12 layers, hidden 768"
    ),
    "bert-base-uncased-cls": HFArchitecture(
        "BertConfig",
        "BertForSequenceClassification",
        "Bert",
        "BERT base with a 2-label sequence-classification head",
    ),
    "bert-base-cased": HFArchitecture(
        "BertConfig",
        "BertModel",
        "Bert",
        "BERT base, cased (vocabulary 28996)",
        {"vocab_size": 28996},
    ),
    "bert-large-uncased": HFArchitecture(
        "BertConfig",
        "BertModel",
        "Bert",
        "BERT large, uncased: 24 layers, hidden 1024",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
        },
    ),
    "roberta-base": HFArchitecture(
        "RobertaConfig",
        "RobertaModel",
        "Roberta",
        "RoBERTa base: 12 layers, hidden 768",
        {"max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5},
    ),
    "distilbert-base-uncased": HFArchitecture(
        "DistilBertConfig", "DistilBertModel", "DistilBert", "DistilBERT base: 6 layers, hidden 768"
    ),
    "gpt2": HFArchitecture(
        "GPT2Config",
        "GPT2LMHeadModel",
        "GPT2",
        "GPT-2 small with its LM head (tied to the token embeddings)",
    ),
    "llama-2-7b": HFArchitecture(
        "LlamaConfig",
        "LlamaForCausalLM",
        "Llama",
        "Llama 2 7B shape: 32 layers, hidden 4096, vocabulary 32000",
        {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
        },
    ),
    "llama-3-8b": HFArchitecture(
        "LlamaConfig",
        "LlamaForCausalLM",
        "Llama",
        "Llama 3 8B shape: 32 layers, hidden 4096, 8 key-value heads",
        {
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_parameters": _LLAMA3_ROPE,
        },
    ),
    "llama-3-70b": HFArchitecture(
        "LlamaConfig",
        "LlamaForCausalLM",
        "Llama",
        "Llama 3 70B shape: 80 layers, hidden 8192, 64 heads, 8 key-value heads",
        {
            "vocab_size": 128256,
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_parameters": _LLAMA3_ROPE,
        },
    ),
}
#: Other spellings of the same specs.
HF_ALIASES: dict[str, str] = {"llama-70b": "llama-3-70b", "llama-8b": "llama-3-8b"}

SPEC_FORMS = "`torchvision:NAME`, `transformers:NAME[:CLASS]` or `package.module:factory`"


def build_model(spec: str) -> nn.Module:
    """The model a spec names, on the meta device, with random (meta) weights and no download.

    Raises `ModelSpecError` for a spec that names no model, with the closest names as suggestions.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or not kind or not rest:
        raise ModelSpecError(
            f"model spec `{spec}` is not {SPEC_FORMS}", _bare_name_suggestions(spec)
        )
    if kind == "torchvision":
        return _torchvision(rest)
    if kind == "transformers":
        return _transformers(rest)
    return _factory(kind, rest)


def transformers_specs() -> dict[str, str]:
    """`transformers:NAME` specs with a one-line description (for docs and `--help`)."""
    out = {f"transformers:{name}": arch.about for name, arch in HF_ARCHITECTURES.items()}
    for alias, target in HF_ALIASES.items():
        out[f"transformers:{alias}"] = f"same as transformers:{target}"
    return out


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
    return hits


# --- building on the meta device ------------------------------------------------------------


def _on_meta(build: Callable[[], Any]) -> Any:
    """Call `build` with the meta device as default, downloads refused.

    A few constructors compute with tensor data (torchvision's RegNet derives its widths from
    tensors), which the meta device cannot do; for those the model is built with its
    parameters and buffers moved to meta one by one as they are registered, so ordinary tensor
    arithmetic still runs on the CPU and no full-size weight is ever kept.
    """
    import torch

    with _no_downloads():
        try:
            with torch.device("meta"):
                return build()
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc):
                raise
        with _register_on_meta():
            return build()


@contextlib.contextmanager
def _register_on_meta() -> Iterator[None]:
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
def _no_downloads() -> Iterator[None]:
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
    return _on_meta(lambda: builder(**kwargs))


# --- transformers --------------------------------------------------------------------------


def _transformers(rest: str) -> nn.Module:
    name, _, class_name = rest.partition(":")
    key = HF_ALIASES.get(name.lower(), name.lower())
    arch = HF_ARCHITECTURES.get(key)
    if arch is None:
        names = [*HF_ARCHITECTURES, *HF_ALIASES]
        # Names that extend what was typed (`bert-base` -> `bert-base-uncased`) come first.
        close = [n for n in names if n.startswith(key)] if key else []
        close += [
            c for c in difflib.get_close_matches(key, names, n=3, cutoff=0.5) if c not in close
        ]
        close = close[:3]
        known = ", ".join(HF_ARCHITECTURES)
        raise ModelSpecError(
            f"unknown transformers architecture `{name}` (known: {known}; "
            "use `package.module:factory` for others)",
            [f"transformers:{c}" for c in close],
        )
    # Never reach for the hub, even if something below asks for it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ModelSpecError(
            "`transformers:` specs need transformers (pip install 'freezepolicy[hf]')"
        ) from None
    config_cls = getattr(transformers, arch.config)
    model_cls = _transformers_class(transformers, arch, class_name or arch.model, config_cls)
    config = config_cls(**arch.kwargs)
    return _on_meta(lambda: model_cls(config))


def _transformers_class(transformers: Any, arch: HFArchitecture, name: str, config_cls: Any) -> Any:
    cls: Any
    try:
        cls = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        cls = None
    wanted: Any = getattr(cls, "config_class", None)
    fits = isinstance(cls, type) and isinstance(wanted, type) and issubclass(config_cls, wanted)
    if not fits:
        family = [
            n
            for n in dir(transformers)
            if n.startswith(arch.family)
            and ("Model" in n or "For" in n)
            and "PreTrained" not in n
            and n[len(arch.family) :][:1].isupper()
        ]
        raise ModelSpecError(
            f"`{name}` is not a transformers model class for {arch.config}",
            difflib.get_close_matches(name, family, n=3, cutoff=0.5),
        )
    return cls


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
        model = _on_meta(target)
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
