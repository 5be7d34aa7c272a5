"""Selecting by tensor shape (`ndim<2`): policies/no_decay_bias_norm.freeze decays exactly the
tensors with 2 or more dimensions of real architectures (built on the meta device: their real
names and shapes, no weights), and `ndim` selectors in resolve, lint and show."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")

import freezepolicy  # noqa: E402
from freezepolicy.cli import main  # noqa: E402
from freezepolicy.cli.models import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NO_DECAY = ROOT / "policies" / "no_decay_bias_norm.freeze"

SPECS = [
    "torchvision:resnet50",
    "tests.model_factories:timm_convnext",
    "tests.model_factories:timm_vit",
    "transformers:bert-base-uncased",
    "transformers:gpt2",
    "transformers:llama-3-8b",
]


@pytest.mark.parametrize("spec", SPECS)
def test_no_decay_bias_norm_decays_exactly_the_tensors_of_two_or_more_dimensions(spec, recwarn):
    model = build_model(spec)
    groups = freezepolicy.param_groups(
        model, freezepolicy.load(NO_DECAY), lr=1e-3, weight_decay=0.05
    )
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(decay) == len(params)
    wrong = {
        n: (tuple(p.shape), decay[id(p)])
        for n, p in params.items()
        if decay[id(p)] != (0.05 if p.ndim >= 2 else 0.0)
    }
    assert wrong == {}
    # Both kinds are there in every model: vectors (biases, norms, gammas) and matrices.
    assert {p.ndim >= 2 for p in params.values()} == {True, False}
    assert not [w for w in recwarn if issubclass(w.category, freezepolicy.PolicyWarning)]


def test_the_old_name_based_policy_missed_layer_scale_gammas():
    # What the issue found: by name and class, LayerScale gammas (1-D) kept their decay.
    model = build_model("tests.model_factories:timm_convnext")
    old = freezepolicy.parse("decay 0 for bias, type:*Norm")
    names = [n for n, p in model.named_parameters() if p.ndim < 2]
    from freezepolicy.runtime.modelinfo import inspect_model

    info = inspect_model(model)
    found = old.resolve(info.names, module_types=info.module_types)
    missed = [n for n in names if found[n].weight_decay is None]
    assert missed and all(n.endswith("gamma") for n in missed)


SHAPES = {"w2": (4, 3), "b": (4,), "s": (), "k": (8, 3, 3, 3)}


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ("ndim<2", ["b", "s"]),
        ("ndim<=1", ["b", "s"]),
        ("ndim>2", ["k"]),
        ("ndim>=2", ["w2", "k"]),
        ("ndim=0", ["s"]),
        ("ndim!=1", ["w2", "s", "k"]),
    ],
)
def test_shape_selectors(selector: str, selected: list[str]) -> None:
    found = freezepolicy.parse(f"freeze {selector}").resolve(list(SHAPES), shapes=SHAPES)
    assert [n for n, d in found.items() if d.trainable is False] == selected


def test_without_shapes_a_shape_selector_selects_nothing_and_lint_notes_it(tmp_path, capsys):
    policy = freezepolicy.parse("freeze ndim<2")
    assert all(d.trainable is None for d in policy.resolve(list(SHAPES)).values())
    names = tmp_path / "names.txt"
    names.write_text("fc.weight\nfc.bias\n")
    assert main(["lint", "--names", str(names), str(NO_DECAY)]) == 0
    out = capsys.readouterr().out
    assert "no_decay_bias_norm.freeze:6:13: note: `ndim<2` selects by tensor shape" in out
    assert "[FP230]" in out


def test_with_a_model_lint_checks_shape_selectors(tmp_path, capsys):
    policy = tmp_path / "p.freeze"
    policy.write_text("decay 0 for ndim<2\nfreeze ndim>4\n")
    assert main(["lint", "--model", "torchvision:resnet18", str(policy)]) == 1
    out = capsys.readouterr().out
    assert "p.freeze:2:8: warning: selector `ndim>4` matches no parameter [FP201]" in out
    assert out.count("[FP") == 1


def test_show_resolves_shape_selectors(capsys):
    code = main(["show", str(NO_DECAY), "--model", "torchvision:resnet18", "--format", "json"])
    assert code == 0
    import json

    report = json.loads(capsys.readouterr().out)
    for p in report["parameters"]:
        decayed = p["decay"] is None
        assert decayed == (len(p["shape"]) >= 2), p["name"]


@pytest.mark.parametrize(
    ("shapes", "error", "message"),
    [
        ([("b", (4,))], TypeError, "shapes must map each parameter name to its shape"),
        ({"b": (4,)}, ValueError, "no shape for 's'"),
        ({"b": "4", "s": ()}, TypeError, "must be a shape"),
    ],
)
def test_shape_arguments_are_checked(shapes, error, message) -> None:
    with pytest.raises(error, match=message):
        freezepolicy.parse("freeze ndim<2").resolve(["b", "s"], shapes=shapes)


@pytest.mark.parametrize(
    "text", ["freeze ndim==1", "freeze ndim<x", "freeze ndim<02", "freeze ndim<9999"]
)
def test_malformed_shape_selectors(text: str) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(text)
    assert (info.value.code, info.value.column) == ("FP143", 8)
