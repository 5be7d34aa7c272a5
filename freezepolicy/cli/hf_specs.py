"""`transformers:` model specs and config files, built offline on the meta device.

- `transformers:NAME`: a well-known checkpoint's shape, its configuration written below
  (`bert-base-uncased`, `llama-3-70b`, ...).
- `transformers:MODEL_TYPE[/HEAD]`: any architecture transformers knows (`t5`, `deberta-v2`,
  `mistral`, `vit`, `whisper`, ...: the keys of its `CONFIG_MAPPING`) from its default
  configuration. The head is one of the auto classes' tasks (`causal-lm`,
  `sequence-classification`, ...: transformers' `MODEL_FOR_*_MAPPING_NAMES`), `base` (the bare
  model, `MODEL_MAPPING_NAMES`) when none is given.
- `:CLASS` after either picks a model class by name (`transformers:gpt2:GPT2Model`).
- `path/to/config.json[:HEAD or CLASS]`: the exact architecture of a checkpoint from its config
  file: its `model_type` picks the configuration class and its `architectures` the model class.

Nothing here reaches the network: configurations are built from their defaults or from the file,
and HF_HUB_OFFLINE is set before transformers is imported. A name a spec gets wrong is a
`ModelSpecError` with the closest names.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import describe_exception
from .meta import ModelSpecError, on_meta

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class HFArchitecture:
    """A transformers architecture with its configuration written here (no hub access)."""

    config: str  # config class name in `transformers`
    model: str  # default model class
    about: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_LLAMA3_ROPE = {"rope_type": "default", "rope_theta": 500000.0}

#: `transformers:NAME` specs. Sizes are the published ones of each checkpoint; only names and
#: shapes matter here, so dropout and similar settings keep the library defaults.
HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "bert-base-uncased": HFArchitecture(
        "BertConfig", "BertModel", "BERT base, uncased: 12 layers, hidden 768"
    ),
    "bert-base-uncased-cls": HFArchitecture(
        "BertConfig",
        "BertForSequenceClassification",
        "BERT base with a 2-label sequence-classification head",
    ),
    "bert-base-cased": HFArchitecture(
        "BertConfig",
        "BertModel",
        "BERT base, cased (vocabulary 28996)",
        {"vocab_size": 28996},
    ),
    "bert-large-uncased": HFArchitecture(
        "BertConfig",
        "BertModel",
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
        "RoBERTa base: 12 layers, hidden 768",
        {"max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5},
    ),
    "distilbert-base-uncased": HFArchitecture(
        "DistilBertConfig", "DistilBertModel", "DistilBERT base: 6 layers, hidden 768"
    ),
    "gpt2": HFArchitecture(
        "GPT2Config",
        "GPT2LMHeadModel",
        "GPT-2 small with its LM head (tied to the token embeddings)",
    ),
    "llama-2-7b": HFArchitecture(
        "LlamaConfig",
        "LlamaForCausalLM",
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


def transformers_specs() -> dict[str, str]:
    """`transformers:NAME` specs with a one-line description (for docs and `--help`)."""
    out = {f"transformers:{name}": arch.about for name, arch in HF_ARCHITECTURES.items()}
    for alias, target in HF_ALIASES.items():
        out[f"transformers:{alias}"] = f"same as transformers:{target}"
    return out


#: The head a model is built with when a spec names none.
BASE = "base"


def _transformers() -> Any:
    # Never reach for the hub, even if something below asks for it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ModelSpecError(
            "`transformers:` specs and config files need transformers "
            "(pip install 'freezepolicy[hf]')"
        ) from None
    return transformers


def model_types() -> list[str]:
    """Every model type transformers can configure (`bert`, `deberta-v2`, `t5`, ...)."""
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return list(CONFIG_MAPPING_NAMES)


def heads() -> dict[str, dict[str, str]]:
    """Head (`causal-lm`, ...) -> model type -> model class name, from transformers' auto
    mappings: `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` is the head `causal-lm`, `MODEL_MAPPING_NAMES`
    the head `base`. Where a mapping lists several classes for a type, the first is the default
    (the others remain reachable by `:CLASS`)."""
    from transformers.models.auto import modeling_auto

    out: dict[str, dict[str, str]] = {}
    for attr in sorted(dir(modeling_auto)):
        if not (attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES")):
            continue
        task = attr[len("MODEL_") : -len("_MAPPING_NAMES")].removeprefix("FOR_")
        head = task.lower().replace("_", "-") if task else BASE
        mapping = getattr(modeling_auto, attr)
        out[head] = {t: (c if isinstance(c, str) else c[0]) for t, c in mapping.items() if c}
    return out


def build_transformers(rest: str) -> nn.Module:
    """`transformers:REST`: a named spec, or a model type with an optional head or class."""
    rest = rest.strip()
    name, _, class_name = rest.partition(":")
    name, _, head = name.partition("/")
    if head and class_name:
        raise ModelSpecError(
            f"`transformers:{rest}` gives both a head (`/{head}`) and a class (`:{class_name}`); "
            "give one"
        )
    key = HF_ALIASES.get(name.lower(), name.lower())
    arch = HF_ARCHITECTURES.get(key)
    transformers = _transformers()
    if arch is not None:
        config = getattr(transformers, arch.config)(**arch.kwargs)
        if head or class_name:
            return _build(transformers, config, head or class_name, f"transformers:{rest}")
        return _build(transformers, config, arch.model, f"transformers:{rest}")
    model_type = _model_type(key)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config = _call(
        lambda: CONFIG_MAPPING[model_type](), f"the default configuration of `{model_type}`"
    )
    return _build(transformers, config, head or class_name or BASE, f"transformers:{rest}")


def build_config_file(path: str, choice: str = "") -> nn.Module:
    """The model of a checkpoint's `config.json` (a file, or a directory holding one)."""
    file = config_file(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ModelSpecError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ModelSpecError(f"config file {file} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(
            f"{file}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    except RecursionError:
        raise ModelSpecError(f"config file {file} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"config file {file} holds {type(data).__name__}, not a JSON object")
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelSpecError(
            f"config file {file} has no `model_type`, so the architecture is unknown "
            '(a transformers config.json names it, e.g. "model_type": "bert")'
        )
    transformers = _transformers()
    model_type = _model_type(model_type, where=f"in {file}")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    config = _call(lambda: config_cls.from_dict(data), f"the configuration in {file}")
    if not choice:
        listed = data.get("architectures")
        if isinstance(listed, list) and listed and isinstance(listed[0], str):
            choice = listed[0]
    return _build(transformers, config, choice or BASE, str(file))


def config_file(path: str) -> Path:
    """The config file a path names: the file itself, or `config.json` in a directory."""
    file = Path(path)
    return file / "config.json" if file.is_dir() else file


def _model_type(name: str, where: str = "") -> str:
    """`name` as a model type transformers knows (`deberta_v2` finds `deberta-v2`)."""
    known = model_types()
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        if candidate in known:
            return candidate
    names = [*HF_ARCHITECTURES, *HF_ALIASES, *known]
    # Names that extend what was typed (`bert-base` -> `bert-base-uncased`) come first.
    close = [n for n in names if n.startswith(name)][:3] if name else []
    close += [c for c in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if c not in close]
    suffix = f" {where}" if where else ""
    raise ModelSpecError(
        f"transformers knows no model type or architecture `{name}`{suffix} (model types "
        "such as bert, t5, mistral, vit, whisper; named specs such as bert-base-uncased, "
        "llama-3-70b; `package.module:factory` for any other model)",
        [n if where else f"transformers:{n}" for n in close[:4]],
    )


def _build(transformers: Any, config: Any, choice: str, label: str) -> nn.Module:
    """Build the head or class `choice` for `config` on the meta device."""
    model_type = getattr(config, "model_type", "") or ""
    # Heads are lower case with dashes, classes CamelCase: `causal-lm`, `MistralForCausalLM`.
    if choice.islower():
        by_head = heads()
        classes = {h: m[model_type] for h, m in by_head.items() if model_type in m}
        if choice not in classes:
            what = "no base model" if choice == BASE else f"no head `{choice}`"
            raise ModelSpecError(
                f"transformers has {what} for `{model_type}` (heads: "
                + (", ".join(sorted(classes)) or "none")
                + ")",
                difflib.get_close_matches(choice, list(classes), n=3, cutoff=0.5),
            )
        choice = classes[choice]
    cls = _model_class(transformers, choice, config)
    return _call(lambda: on_meta(lambda: cls(config)), f"`{cls.__name__}` ({label})")


def _model_class(transformers: Any, name: str, config: Any) -> Any:
    cls: Any
    try:
        cls = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        cls = None
    wanted: Any = getattr(cls, "config_class", None)
    fits = isinstance(cls, type) and isinstance(wanted, type) and isinstance(config, wanted)
    if not fits:
        model_type = getattr(config, "model_type", "")
        family = sorted({m[model_type] for m in heads().values() if model_type in m})
        raise ModelSpecError(
            f"`{name}` is not a transformers model class for {type(config).__name__}",
            difflib.get_close_matches(name, family, n=3, cutoff=0.5),
        )
    return cls


def _call(build: Any, what: str) -> Any:
    """Run a transformers constructor; its failure, whatever the type, is a one-line
    ModelSpecError naming what could not be built."""
    try:
        return build()
    except ModelSpecError:
        raise
    except Exception as exc:
        raise ModelSpecError(f"cannot build {what}: {describe_exception(exc)}") from None
