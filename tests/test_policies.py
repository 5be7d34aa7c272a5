"""The example policies in policies/: each lints clean against the models it is written for, is in
canonical form, and does what its comment says on those models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from freezepolicy import load  # noqa: E402
from freezepolicy.cli import main  # noqa: E402
from freezepolicy.cli.models import build_model  # noqa: E402
from freezepolicy.runtime.modelinfo import inspect_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

#: The review demo's classifier, built from the installed model package's config.json.
MINILM = "freezepolicy.demo.minilm:minilm_classifier"
#: Each example policy and the models it is written for (linted together: see docs/cli.md).
MODELS = {
    "resnet_head_only.freeze": [["torchvision:resnet18"], ["torchvision:resnet50"]],
    "bert_last2.freeze": [
        ["transformers:bert-base-uncased", "transformers:bert-base-uncased-cls"],
    ],
    "no_decay_bias_norm.freeze": [
        ["torchvision:resnet18"],
        ["transformers:bert-base-uncased"],
        ["transformers:llama-3-8b"],
    ],
    # What it gives each tensor is checked against timm's own in tests/test_layer_decay.py.
    "vit_layer_decay.freeze": [
        ["tests.model_factories:timm_vit"],
        ["tests.model_factories:timm_vit_registers"],
    ],
    "mlp_two_phase.freeze": [["tests.model_factories:mlp"]],
    "mlp_head_only.freeze": [["freezepolicy.demo.digits_runs:mlp"]],
    # What it trains is checked against PEFT's own choice in tests/test_peft.py.
    "lora.freeze": [["tests.peft_factories:lora_bert"]],
    "minilm_full.freeze": [[MINILM]],
    "minilm_head_only.freeze": [[MINILM]],
    "minilm_last2.freeze": [[MINILM]],
    "minilm_gradual.freeze": [[MINILM]],
}

_built: dict[str, nn.Module] = {}


def model(spec: str) -> nn.Module:
    if spec not in _built:
        _built[spec] = build_model(spec)
    return _built[spec]


def decisions(policy_name: str, spec: str, epoch: int = 0, step: int = 0):
    info = inspect_model(model(spec))
    policy = load(POLICIES / policy_name)
    return info, policy.resolve(info.names, epoch=epoch, step=step, module_types=info.module_types)


def test_every_policy_is_covered():
    assert sorted(p.name for p in POLICIES.glob("*.freeze")) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_policy_starts_with_a_comment_and_is_canonical(name, capsys):
    text = (POLICIES / name).read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert main(["fmt", "--check", str(POLICIES / name)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("name", "specs"), [(name, specs) for name, groups in MODELS.items() for specs in groups]
)
def test_policy_lints_clean_against_its_models(name, specs, capsys):
    argv = ["lint"]
    for spec in specs:
        argv += ["--model", spec]
    code = main([*argv, str(POLICIES / name)])
    out = capsys.readouterr().out
    assert (code, out) == (0, "")


def test_bert_last2_against_bert_model_alone_flags_the_classifier(capsys):
    # BertModel has no classifier: one model alone reports it; the two together do not.
    code = main(
        ["lint", "--model", "transformers:bert-base-uncased", str(POLICIES / "bert_last2.freeze")]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("[FP") == 1
    assert "bert_last2.freeze:" in out and "`classifier` matches no parameter [FP201]" in out


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "torchvision:resnet50"])
def test_resnet_head_only_trains_fc_alone(spec):
    info, found = decisions("resnet_head_only.freeze", spec)
    trainable = {n for n, d in found.items() if d.trainable}
    assert trainable == {"fc.weight", "fc.bias"}
    assert all(d.trainable is False for n, d in found.items() if n not in trainable)


@pytest.mark.parametrize(
    "spec", ["transformers:bert-base-uncased", "transformers:bert-base-uncased-cls"]
)
def test_bert_last2_trains_the_top(spec):
    info, found = decisions("bert_last2.freeze", spec)

    def top(name: str) -> bool:
        parts = name.split(".")
        if parts[0] == "bert":
            parts = parts[1:]
        block = parts[:2] == ["encoder", "layer"] and parts[2] in ("10", "11")
        return block or parts[0] in ("pooler", "classifier")

    expected = {n for n in info.names if top(n)}
    assert {n for n, d in found.items() if d.trainable} == expected
    assert all(d.trainable is False for n, d in found.items() if n not in expected)
    # Two blocks of 16 tensors, the pooler (2), and the classifier (2) when there is one.
    assert len(expected) == 32 + 2 + (2 if spec.endswith("-cls") else 0)


@pytest.mark.parametrize(
    "spec", ["torchvision:resnet18", "transformers:bert-base-uncased", "transformers:llama-3-8b"]
)
def test_no_decay_bias_norm(spec):
    # On more models, and through param_groups, in tests/test_shapes.py.
    info = inspect_model(model(spec))
    policy = load(POLICIES / "no_decay_bias_norm.freeze")
    shapes = {n: tuple(p.shape) for n, p in info.params.items()}
    found = policy.resolve(info.names, module_types=info.module_types, shapes=shapes)
    for name, d in found.items():
        no_decay = len(shapes[name]) < 2
        assert (d.weight_decay is not None) == no_decay, name
        if no_decay:
            assert d.weight_decay.value == 0
        assert d.trainable is None and d.lr is None


def test_mlp_two_phase():
    for epoch in range(5):
        _, found = decisions("mlp_two_phase.freeze", "tests.model_factories:mlp", epoch)
        assert {n for n, d in found.items() if d.trainable} == {"out.weight", "out.bias"}
        assert {n for n, d in found.items() if d.trainable is False} == {
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
        }
    for epoch in (5, 6, 50):
        _, found = decisions("mlp_two_phase.freeze", "tests.model_factories:mlp", epoch)
        assert all(d.trainable for d in found.values())
        assert len(found) == 6


def test_lint_without_model_never_imports_torch():
    files = [str(p) for p in sorted(POLICIES.glob("*.freeze"))]
    code = (
        "import sys\n"
        "from freezepolicy.cli import main\n"
        f"status = main(['lint', *{files!r}])\n"
        "assert 'torch' not in sys.modules, 'lint imported torch'\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_shared_lint_reports_only_what_holds_for_every_model(capsys, tmp_path):
    # The recipe by name and class: Llama has no biases.
    policy = tmp_path / "no_decay_by_name.freeze"
    policy.write_text("decay 0 for bias, type:*Norm\n")
    assert main(["lint", "--model", "transformers:llama-3-8b", str(policy)]) == 1
    out = capsys.readouterr().out
    assert out.count("[FP") == 1 and "selector `bias` matches no parameter [FP201]" in out
    # `bias` matches in resnet18, so with both models nothing is reported.
    both = ["lint", "--model", "transformers:llama-3-8b", "--model", "torchvision:resnet18"]
    assert main([*both, str(policy)]) == 0
    assert capsys.readouterr().out == ""


def minilm_trainable(name: str, step: int = 0) -> tuple[set[str], dict]:
    _, found = decisions(name, MINILM, step=step)
    return {n for n, d in found.items() if d.trainable}, found


def minilm_blocks(names, blocks) -> set[str]:
    prefixes = [["bert", "encoder", "layer", str(b)] for b in blocks]
    return {n for n in names if n.split(".")[:4] in prefixes}


HEAD = {"head.weight", "head.bias"}


def test_minilm_policies_train_what_they_say():
    full, found = minilm_trainable("minilm_full.freeze")
    names = set(found)
    assert full == names and len(names) == 103
    head_only, _ = minilm_trainable("minilm_head_only.freeze")
    assert head_only == HEAD
    last2, _ = minilm_trainable("minilm_last2.freeze")
    assert last2 == HEAD | minilm_blocks(names, (4, 5))
    # Every policy gives the new head 3e-3 and leaves the rest at the optimizer's base rate.
    for policy in ("minilm_full.freeze", "minilm_head_only.freeze", "minilm_last2.freeze"):
        _, found = minilm_trainable(policy)
        assert {n for n, d in found.items() if d.lr is not None} == HEAD
        assert found["head.weight"].lr.of(1e-4) == pytest.approx(3e-3)


def test_minilm_gradual_unfreezes_from_the_top_every_10_steps():
    expected = [
        (0, HEAD),
        (9, HEAD),
        (10, HEAD | {"blocks 4-5"}),
        (20, HEAD | {"blocks 2-5"}),
        (29, HEAD | {"blocks 2-5"}),
        (30, {"everything"}),
        (39, {"everything"}),
    ]
    _, found = minilm_trainable("minilm_gradual.freeze")
    names = set(found)
    spelled = {
        "blocks 4-5": minilm_blocks(names, (4, 5)),
        "blocks 2-5": minilm_blocks(names, (2, 3, 4, 5)),
        "everything": names,
    }
    for step, parts in expected:
        want = set().union(*(spelled.get(p, {p}) for p in parts))
        got, found = minilm_trainable("minilm_gradual.freeze", step)
        assert got == want, step
        assert found["head.weight"].lr.of(1e-4) == pytest.approx(3e-3)
