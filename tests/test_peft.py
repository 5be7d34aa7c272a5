"""Policies over PEFT-wrapped models, tested with PEFT itself on a tiny BERT (random weights).

PEFT's `get_peft_model` sets its own trainable set (the LoRA adapters and the trainable copy of
each module in `modules_to_save`); policies/lora.freeze must give exactly that set, and
`freezepolicy.summary` must count it as PEFT's `print_trainable_parameters` does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft_factories import lora_bert  # noqa: E402

import freezepolicy as fp  # noqa: E402
from freezepolicy.cli import main  # noqa: E402
from freezepolicy.runtime.modelinfo import inspect_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LORA = ROOT / "policies" / "lora.freeze"
PREFIX = "base_model.model."

# (peft 0.21's FutureWarning about transformers' `is_gradient_checkpointing` is ignored for the
# whole suite in pyproject.toml: lora.freeze's lint test builds a PEFT model too.)
pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def peft_printed(model) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.print_trainable_parameters()
    return out.getvalue().strip()


@pytest.fixture
def peft_model():
    torch.manual_seed(0)
    return lora_bert()


def test_selectors_see_the_names_inside_peft_without_its_prefix(peft_model) -> None:
    names = inspect_model(peft_model).names
    full = [n for n, _ in peft_model.named_parameters()]
    # Every name is PEFT's own, minus the `base_model.model.` that PeftModel and LoraModel add.
    assert all(n.startswith(PREFIX) for n in full)
    assert names == [n[len(PREFIX) :] for n in full]
    assert "bert.encoder.layer.0.attention.self.query.lora_A.default.weight" in names
    assert "bert.encoder.layer.0.attention.self.query.base_layer.weight" in names
    assert "classifier.modules_to_save.default.weight" in names
    assert "classifier.original_module.weight" in names
    policy = fp.parse("freeze **.lora_A\nfreeze ^bert.embeddings\nfreeze classifier")
    found = policy.resolve(names)
    selected = {n for n, d in found.items() if d.trainable is False}
    lora_a = {n for n in names if ".lora_A." in n}
    embeddings = {n for n in names if n.startswith("bert.embeddings.")}
    classifier = {n for n in names if n.startswith("classifier.")}
    assert len(lora_a) == 4 and len(embeddings) == 5 and len(classifier) == 4
    assert selected == lora_a | embeddings | classifier


def test_lora_policy_trains_exactly_what_peft_trains(peft_model) -> None:
    peft_set = trainable(peft_model)
    nb = peft_model.get_nb_trainable_parameters()
    printed = peft_printed(peft_model)
    for p in peft_model.parameters():  # undo PEFT's choice: the policy alone decides
        p.requires_grad_(True)
    assert trainable(peft_model) != peft_set
    report = fp.apply_policy(peft_model, LORA)
    assert trainable(peft_model) == peft_set
    assert peft_model.get_nb_trainable_parameters() == nb
    assert not report.untouched and not report.warnings
    # The adapters and the saved head's trainable copy, nothing else.
    assert {n.split(".")[-3] for n in peft_set} == {"lora_A", "lora_B", "modules_to_save"}
    assert report.trainable_elements == nb[0]
    assert str(fp.summary(peft_model)).splitlines()[0] == printed


def test_summary_of_a_policy_counts_as_peft_and_changes_nothing(peft_model) -> None:
    printed = peft_printed(peft_model)
    assert printed.startswith("trainable params: ")
    for p in peft_model.parameters():
        p.requires_grad_(True)
    before = trainable(peft_model)
    result = fp.summary(peft_model, LORA)
    assert trainable(peft_model) == before  # a preview: the model is untouched
    assert str(result).splitlines()[0] == printed
    assert (result.trainable, result.total) == (
        sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
        + sum(p.numel() for n, p in peft_model.named_parameters() if "modules_to_save" in n),
        peft_model.get_nb_trainable_parameters()[1],
    )
    assert [(m.name, m.cls) for m in result.modules] == [
        ("bert", "BertModel"),
        ("classifier", "ModulesToSaveWrapper"),
    ]
    assert result.modules[1].trainable == result.modules[1].total // 2  # the copy, not the original


def test_lora_plus_top_blocks_trains_and_leaves_the_rest_bit_identical(peft_model) -> None:
    # The docs' policy (docs/peft.md): LoRA everywhere, the top block in full.
    policy = fp.parse("freeze *\nunfreeze lora_*, modules_to_save, encoder.layer.1\n")
    fp.apply_policy(peft_model, policy)
    expected = {
        n
        for n, _ in peft_model.named_parameters()
        if ".lora_" in n or "modules_to_save" in n or ".encoder.layer.1." in n
    }
    assert trainable(peft_model) == expected
    optimizer = torch.optim.AdamW(fp.param_groups(peft_model, policy, lr=1e-2))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    ids = torch.randint(0, 100, (4, 8))
    for _ in range(2):
        loss = peft_model(input_ids=ids, labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in peft_model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        if n not in expected:
            assert not moved, n
    # The base weights of block 1 train in full (LoRA B starts at zero, so LoRA A may not move
    # at the first step; the block's dense weights always do).
    assert not torch.equal(
        before[f"{PREFIX}bert.encoder.layer.1.output.dense.weight"],
        peft_model.base_model.model.bert.encoder.layer[1].output.dense.weight.detach(),
    )


def test_show_displays_the_adapters_in_the_tree(capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # where `tests.peft_factories` is found, as from a checkout
    assert main(["show", str(LORA), "--model", "tests.peft_factories:lora_bert"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2] == (
        "peft    LoRA adapter `default` in 4 modules; modules_to_save adapter `default`: classifier"
    )

    def row(name: str) -> list[str]:
        """The first tree row of a module named `name`: its name, class, state, ..."""
        cells = [line.split("─ ", 1)[1].split() for line in lines if "─ " in line]
        return next(c for c in cells if c[0] == name)

    assert row("query")[:3] == ["query", "lora.Linear", "mixed"]
    assert row("lora_A")[:3] == ["lora_A", "ModuleDict", "trainable"]
    assert row("base_layer")[:3] == ["base_layer", "Linear", "frozen"]
    assert row("original_module")[:3] == ["original_module", "Linear", "frozen"]
    assert row("modules_to_save")[:3] == ["modules_to_save", "ModuleDict", "trainable"]
    # LoRA A (4 x 32) and B (32 x 4) on query and value in 2 blocks; the 3-label head copy.
    lora, head = 2 * 2 * (4 * 32 + 32 * 4), 3 * 32 + 3
    assert f"trainable  10 tensors   {lora + head:,} params" in out
