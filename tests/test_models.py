"""Model specs (`freezepolicy.models.build_model`): every kind builds on the meta device, with the
published sizes of each architecture, and every bad spec is a `ModelSpecError` with suggestions.

The expected parameter counts are the published ones (torchvision's model docs, the Hugging Face
model cards), not numbers read off this code.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from freezepolicy.cli.models import (  # noqa: E402
    HF_ALIASES,
    HF_ARCHITECTURES,
    ModelSpecError,
    build_model,
)

HERE = Path(__file__).parent
ROOT = HERE.parent


def unique_count(model: torch.nn.Module) -> int:
    """Elements of the distinct tensors (a tied tensor once), from shapes: works on meta."""
    return sum(math.prod(p.shape) for p in model.parameters())


def names_of(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def read_names(filename: str) -> list[str]:
    return [n.strip() for n in (HERE / filename).read_text().splitlines() if n.strip()]


def all_on_meta(model: torch.nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.device.type == "meta" for t in tensors)


# Published sizes: torchvision's weight tables; the Hugging Face model cards and configs.
PUBLISHED = {
    "torchvision:resnet18": 11_689_512,
    "torchvision:resnet50": 25_557_032,
    "torchvision:regnet_x_400mf": 5_495_976,
    "transformers:bert-base-uncased": 109_482_240,
    "transformers:roberta-base": 124_645_632,
    "transformers:distilbert-base-uncased": 66_362_880,
    "transformers:gpt2": 124_439_808,
    "transformers:llama-2-7b": 6_738_415_616,
    "transformers:llama-3-8b": 8_030_261_248,
    "transformers:llama-3-70b": 70_553_706_496,
}


@pytest.mark.parametrize("spec", sorted(PUBLISHED))
def test_published_parameter_counts(spec):
    model = build_model(spec)
    assert all_on_meta(model)
    assert unique_count(model) == PUBLISHED[spec]


@pytest.mark.parametrize("name", [*HF_ARCHITECTURES, *HF_ALIASES])
def test_every_transformers_spec_builds_on_meta(name):
    model = build_model(f"transformers:{name}")
    assert all_on_meta(model)
    arch = HF_ARCHITECTURES[HF_ALIASES.get(name, name)]
    assert type(model).__name__ == arch.model


def test_bert_names_match_the_real_name_lists():
    # tests/*_names.txt were dumped from the real classes; the specs must give the same names.
    assert names_of(build_model("transformers:bert-base-uncased")) == read_names(
        "bert_base_names.txt"
    )
    cls = build_model("transformers:bert-base-uncased-cls")
    assert type(cls).__name__ == "BertForSequenceClassification"
    assert names_of(cls) == read_names("bert_base_seqcls_names.txt")
    # The classification head: 768 features to 2 labels, on top of BertModel's count.
    assert unique_count(cls) == PUBLISHED["transformers:bert-base-uncased"] + 768 * 2 + 2
    assert names_of(build_model("torchvision:resnet18")) == read_names("resnet18_names.txt")


def test_llama_70b_has_80_layers_and_builds_fast():
    build_model("transformers:gpt2")  # import transformers before timing
    start = time.perf_counter()
    model = build_model("transformers:llama-70b")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"building llama-70b on meta took {elapsed:.2f} s"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 80
    attn = model.model.layers[79].self_attn
    # 64 query heads and 8 key-value heads of 128: k_proj maps 8192 to 8 * 128.
    assert tuple(attn.q_proj.weight.shape) == (8192, 8192)
    assert tuple(attn.k_proj.weight.shape) == (1024, 8192)
    assert tuple(model.model.layers[0].mlp.gate_proj.weight.shape) == (28672, 8192)
    assert tuple(model.lm_head.weight.shape) == (128256, 8192)
    assert all_on_meta(model)


def test_transformers_class_option_picks_another_head():
    model = build_model("transformers:gpt2:GPT2Model")
    assert type(model).__name__ == "GPT2Model"
    mlm = build_model("transformers:bert-base-uncased:BertForMaskedLM")
    assert type(mlm).__name__ == "BertForMaskedLM"


def test_gpt2_head_is_tied_to_the_embeddings():
    model = build_model("transformers:gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight


def test_torchvision_detection_model_builds_without_backbone_download():
    # Its builder defaults to ImageNet backbone weights; the spec must not fetch them.
    model = build_model("torchvision:fasterrcnn_mobilenet_v3_large_fpn")
    assert all_on_meta(model)


def test_regnet_builds_on_meta_although_its_constructor_computes_with_tensors():
    model = build_model("torchvision:regnet_x_400mf")
    assert all_on_meta(model)
    assert not any(p.requires_grad is False for p in model.parameters())


def test_factory_spec_builds_on_meta():
    model = build_model("tests.model_factories:mlp")
    assert [n for n, _ in model.named_children()] == ["fc1", "fc2", "out", "act"]
    assert all_on_meta(model)
    assert unique_count(model) == (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)


def test_factory_spec_imports_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "my_models_for_spec.py").write_text(
        "import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(3, 4))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        model = build_model("my_models_for_spec:make")
    finally:
        sys.modules.pop("my_models_for_spec", None)
    assert all_on_meta(model)
    assert names_of(model) == ["0.weight", "0.bias"]


def spec_error(spec: str) -> ModelSpecError:
    with pytest.raises(ModelSpecError) as info:
        build_model(spec)
    message = str(info.value)
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize(
    ("spec", "suggestion"),
    [
        ("torchvision:resnet81", "resnet18"),
        ("transformers:bert-base", "transformers:bert-base-uncased"),
        ("transformers:lama-70b", "transformers:llama-70b"),
        ("transformers:gpt2:GPT2Modle", "GPT2Model"),
        ("resnet18", "torchvision:resnet18"),
        ("bert-base-uncased", "transformers:bert-base-uncased"),
        ("torchvison:resnet18", "torchvision:resnet18"),
        ("tests.model_factories:mpl", "tests.model_factories:mlp"),
    ],
)
def test_typos_get_suggestions(spec, suggestion):
    assert suggestion in spec_error(spec).suggestions


def test_head_class_must_fit_the_configuration():
    err = spec_error("transformers:bert-base-uncased:GPT2Model")
    assert "not a transformers model class for BertConfig" in err.message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "is not `torchvision:NAME`"),
        ("torchvision:", "is not `torchvision:NAME`"),
        ("a b:c", "is not `torchvision:NAME`"),
        ("no_such_module_xyz:make", "no module named `no_such_module_xyz`"),
        ("tests.model_factories:not_a_model", "returned str, not a torch.nn.Module"),
        ("tests.model_factories:needs_an_argument", "missing 1 required positional argument"),
        ("tests.model_factories:pretrained_resnet", "would download https://"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, fragment):
    assert fragment in str(spec_error(spec))


# --- any transformers architecture, and config files -----------------------------------------


def auto_model(head_class: str, model_type: str) -> torch.nn.Module:
    """The model transformers' own auto classes build for a model type's default config: the
    reference a `transformers:TYPE/HEAD` spec must match, name for name."""
    import transformers

    config = transformers.AutoConfig.for_model(model_type)
    with torch.device("meta"):
        return getattr(transformers, head_class).from_config(config)


@pytest.mark.parametrize(
    ("spec", "auto", "cls"),
    [
        ("transformers:mistral/causal-lm", "AutoModelForCausalLM", "MistralForCausalLM"),
        (
            "transformers:deberta-v2/sequence-classification",
            "AutoModelForSequenceClassification",
            "DebertaV2ForSequenceClassification",
        ),
        ("transformers:vit", "AutoModel", "ViTModel"),
        ("transformers:whisper/base", "AutoModel", "WhisperModel"),
        (
            "transformers:t5/seq-to-seq-causal-lm",
            "AutoModelForSeq2SeqLM",
            "T5ForConditionalGeneration",
        ),
        ("transformers:t5", "AutoModel", "T5Model"),
    ],
)
def test_any_model_type_builds_with_the_head_transformers_auto_classes_pick(spec, auto, cls):
    model = build_model(spec)
    assert type(model).__name__ == cls and all_on_meta(model)
    model_type = spec.partition(":")[2].partition("/")[0]
    assert names_of(model) == names_of(auto_model(auto, model_type))


def test_model_types_accept_underscores_a_class_and_heads_on_named_specs():
    assert type(build_model("transformers:deberta_v2")).__name__ == "DebertaV2Model"
    token = build_model("transformers:mistral:MistralForTokenClassification")
    assert type(token).__name__ == "MistralForTokenClassification"
    # A head on a named spec keeps the named shape: BERT base with its masked-LM head.
    mlm = build_model("transformers:bert-base-uncased/masked-lm")
    assert type(mlm).__name__ == "BertForMaskedLM"
    assert len(mlm.bert.encoder.layer) == 12


@pytest.mark.parametrize(
    ("spec", "fragment", "suggestion"),
    [
        ("transformers:mistrall", "transformers knows no model type", "transformers:mistral"),
        ("transformers:debreta-v2", "transformers knows no model type", "transformers:deberta-v2"),
        (
            "transformers:mistral/causal",
            "no head `causal` for `mistral` (heads: base, ",
            "causal-lm",
        ),
        ("transformers:t5/causal-lm", "no head `causal-lm` for `t5`", "seq-to-seq-causal-lm"),
        ("t5", "is not `torchvision:NAME`", "transformers:t5"),
    ],
)
def test_unknown_model_types_and_heads_list_close_names(spec, fragment, suggestion):
    err = spec_error(spec)
    assert fragment in err.message and suggestion in err.suggestions


def test_a_head_and_a_class_together_is_an_error():
    assert "give one" in spec_error("transformers:mistral/causal-lm:MistralModel").message


def write_config(path: Path, **fields) -> Path:
    from model_factories import tiny_bert_config

    tiny_bert_config(num_hidden_layers=3, vocab_size=120, **fields).to_json_file(str(path))
    return path


def test_config_file_builds_the_exact_architecture_of_the_checkpoint(tmp_path):
    file = write_config(
        tmp_path / "config.json", architectures=["BertForSequenceClassification"], num_labels=5
    )
    model = build_model(str(file))
    assert type(model).__name__ == "BertForSequenceClassification" and all_on_meta(model)
    assert len(model.bert.encoder.layer) == 3
    assert tuple(model.classifier.weight.shape) == (5, 32)
    assert tuple(model.bert.embeddings.word_embeddings.weight.shape) == (120, 32)
    # A directory holding config.json, as a checkpoint is saved; and another class or head.
    assert names_of(build_model(str(tmp_path))) == names_of(model)
    assert type(build_model(f"{file}:BertForMaskedLM")).__name__ == "BertForMaskedLM"
    assert type(build_model(f"{file}:base")).__name__ == "BertModel"


def test_config_file_without_architectures_builds_the_base_model(tmp_path):
    file = write_config(tmp_path / "plain.json")
    assert type(build_model(str(file))).__name__ == "BertModel"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"model_type": "bert",\n  "hidden_size": }', ":2:18: not valid JSON: Expecting value"),
        ("[1, 2]", "holds list, not a JSON object"),
        ('{"hidden_size": 8}', "has no `model_type`"),
        ('{"model_type": "bertt"}', "transformers knows no model type or architecture `bertt` in"),
        ('{"model_type": "bert", "architectures": ["GPT2Model"]}', "not a transformers model"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, fragment):
    file = tmp_path / "config.json"
    file.write_text(text, encoding="utf-8")
    err = spec_error(str(file))
    assert fragment in err.message
    if "bertt" in text:
        assert "bert" in err.suggestions


def test_a_missing_config_file_is_an_error(tmp_path):
    assert "cannot read config file" in spec_error(str(tmp_path / "nosuch.json")).message


NO_NETWORK = """
import socket, sys

def refuse(*args, **kwargs):
    sys.stderr.write(f"NETWORK: {args!r}\\n")
    raise OSError("network access refused in this test")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
"""


def test_building_never_touches_the_network(tmp_path):
    # A fresh interpreter where every connection fails loudly, HF_HUB_OFFLINE unset: lint a
    # policy against a model type with a head and against a config file.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK, encoding="utf-8")
    config = write_config(tmp_path / "config.json", architectures=["BertForMaskedLM"])
    policy = tmp_path / "p.freeze"
    policy.write_text("freeze *\nunfreeze lm_head, encoder.layer.2\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), FREEZEPOLICY_NO_CACHE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "freezepolicy",
            "lint",
            "--model",
            "transformers:mistral/causal-lm",
            "--model",
            str(config),
            str(policy),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "NETWORK:" not in done.stderr
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
