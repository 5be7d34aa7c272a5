"""`freezepolicy.summary`: PEFT's line first, counted as PEFT counts, a breakdown per top-level
module, and with a policy the state it would set at a moment, without changing the model.
(tests/test_peft.py compares the line with PEFT's own output on a PEFT model.)"""

from __future__ import annotations

import json
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import freezepolicy as fp  # noqa: E402
from freezepolicy import PolicyResolveError  # noqa: E402

#: The line of PEFT's print_trainable_parameters (peft/peft_model.py):
#: f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}"
PEFT_LINE = re.compile(
    r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}"
)


class Tied(nn.Module):
    """An embedding and a head sharing one weight, plus an encoder: like a small language model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.scale = nn.Parameter(torch.ones(1))  # a parameter of the model itself


def peft_style(trainable: int, total: int) -> str:
    # PEFT's own f-string, copied: the reference the summary's first line must equal.
    return (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )


def test_first_line_is_peft_line_with_tied_tensors_counted_once() -> None:
    model = Tied()
    model.encoder.requires_grad_(False)
    result = fp.summary(model)
    # Tied: the 10 x 4 weight counted once (as `model.parameters()` and PEFT do).
    total = 40 + (16 + 4) + (4 + 4) + 1
    assert (result.trainable, result.total) == (40 + 1, total)
    assert result.total == sum(p.numel() for p in model.parameters())
    first = str(result).splitlines()[0]
    assert first == peft_style(41, total) and PEFT_LINE.fullmatch(first)
    assert first == "trainable params: 41 || all params: 69 || trainable%: 59.4203"
    assert (result.trainable_tensors, result.tensors) == (2, 6)
    assert result.trainable_names == ("scale", "embed.weight")  # a module's own come first


def test_breakdown_per_top_level_module_adds_up() -> None:
    model = Tied()
    model.encoder[1].requires_grad_(False)
    result = fp.summary(model)
    by_name = {m.name: m for m in result.modules}
    # The model's own parameter first (as named_parameters); head's only weight is embed's.
    assert [m.name for m in result.modules] == ["", "embed", "encoder"]
    assert (by_name["encoder"].cls, by_name["encoder"].trainable, by_name["encoder"].total) == (
        "Sequential",
        20,
        28,
    )
    assert by_name[""].cls == "Tied"
    assert sum(m.total for m in result.modules) == result.total
    assert sum(m.trainable for m in result.modules) == result.trainable
    text = str(result).splitlines()
    assert text[1].split() == ["module", "class", "trainable", "all", "trainable%"]
    assert text[2].split() == ["(own)", "Tied", "1", "1", "100.0000%"]
    assert text[4].split() == ["encoder", "Sequential", "20", "28", "71.4286%"]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["modules"][2]["name"] == "encoder" and data["policy"] is None


def test_with_a_policy_reports_that_moment_and_leaves_the_model_alone() -> None:
    model = Tied()
    policy = fp.parse("freeze *\nunfreeze encoder.0\nunfreeze embed, head at epoch 2\n")
    before = [p.requires_grad for p in model.parameters()]
    at0 = fp.summary(model, policy)
    at2 = fp.summary(model, policy, epoch=2)
    assert [p.requires_grad for p in model.parameters()] == before
    assert at0.trainable_names == ("encoder.0.weight", "encoder.0.bias")
    assert at2.trainable_names == ("embed.weight", "encoder.0.weight", "encoder.0.bias")
    assert str(at2).splitlines()[0] == peft_style(60, 69)
    assert "as <string> sets it at epoch 2, step 0 (the model is unchanged)" in str(at2)
    # The same counts apply_policy reports once it is applied.
    report = fp.apply_policy(model, policy, epoch=2)
    assert report.trainable_elements == at2.trainable and report.total_elements == at2.total


def test_steps_per_epoch_orders_the_two_clocks() -> None:
    policy = fp.parse("freeze *\nunfreeze encoder at step 250\n")
    model = Tied()
    assert fp.summary(model, policy, epoch=3, step=300, steps_per_epoch=100).trainable == 28
    assert fp.summary(model, policy, epoch=2, step=200, steps_per_epoch=100).trainable == 0


def test_untouched_tensors_count_as_the_model_has_them() -> None:
    model = Tied()
    model.scale.requires_grad_(False)
    result = fp.summary(model, fp.parse("freeze encoder"))
    assert result.trainable_names == ("embed.weight",)  # scale stays frozen, embed trainable


def test_policy_problems_warn_and_errors_raise_before_anything() -> None:
    model = Tied()
    with pytest.warns(fp.PolicyWarning, match=r"selector `nosuch` matches no parameter \[FP201\]"):
        result = fp.summary(model, fp.parse("freeze *\nunfreeze nosuch\n"))
    assert [d.code for d in result.diagnostics] == ["FP201"]
    assert "FP201" in str(result)
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(PolicyResolveError, match="FP205"):
        fp.summary(model, fp.parse("freeze *\nunfreeze head\n"))  # head.weight is embed.weight
    with pytest.raises(ValueError, match="summary: epoch must be a non-negative whole number"):
        fp.summary(model, fp.parse("freeze *"), epoch=-1)
    assert [p.requires_grad for p in model.parameters()] == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp.summary(model, fp.parse("freeze *"))  # nothing to say: no warning


def test_a_model_without_parameters_is_zero_percent() -> None:
    assert str(fp.summary(nn.ReLU())) == (
        "trainable params: 0 || all params: 0 || trainable%: 0.0000"
    )


def test_apply_report_uses_the_same_precision() -> None:
    model = Tied()
    report = fp.apply_policy(model, fp.parse("freeze *\nunfreeze encoder\n"))
    text = str(report)
    assert "(40.5797%)" in text and "(59.4203%)" in text  # 28 and 41 of 69


def test_meta_models_count_from_shapes() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 10))
    model[0].requires_grad_(False)
    result = fp.summary(model)
    assert str(result).splitlines()[0] == peft_style(10_010, 1_011_010)
