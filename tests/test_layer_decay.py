"""Layer-wise learning-rate decay in one statement: policies/vit_layer_decay.freeze gives every
tensor of a timm VisionTransformer, of any depth, exactly the learning-rate scale and weight
decay of timm's own `param_groups_layer_decay`; and the statement's meaning on plain names."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm_param_groups = pytest.importorskip("timm.optim._param_groups")

from model_factories import timm_vit, timm_vit_registers  # noqa: E402

import freezepolicy  # noqa: E402

POLICY = Path(__file__).resolve().parent.parent / "policies" / "vit_layer_decay.freeze"
#: A power of two: lr / BASE is then exactly the scale freezepolicy multiplied BASE by.
BASE = 2.0**-10


@pytest.mark.parametrize(
    "build", [lambda: timm_vit(6), lambda: timm_vit(12), timm_vit_registers], ids=["6", "12", "reg"]
)
def test_vit_layer_decay_is_timms(build, recwarn) -> None:
    model = build()
    timm_groups = timm_param_groups.param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=model.no_weight_decay()
    )
    expected = {id(p): (g["lr_scale"], g["weight_decay"]) for g in timm_groups for p in g["params"]}
    ours = freezepolicy.param_groups(model, freezepolicy.load(POLICY), lr=BASE, weight_decay=0.05)
    got = {id(p): (g["lr"] / BASE, g["weight_decay"]) for g in ours for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(got) == len(expected) == len(names)
    differ = {names[i]: (got[i], expected[i]) for i in expected if got[i] != expected[i]}
    assert differ == {}
    # Every layer of timm's is there: depth + 2 distinct scales, the smallest 0.75 ** (depth+1).
    depth = len(model.blocks)
    assert sorted({s for s, _ in got.values()}) == [0.75**k for k in range(depth + 1, -1, -1)]
    assert not [w for w in recwarn if issubclass(w.category, freezepolicy.PolicyWarning)]


def rates(policy: str, names: list[str]) -> dict[str, float | None]:
    found = freezepolicy.parse(policy).resolve(names)
    return {n: None if d.lr is None else d.lr.of(1.0) for n, d in found.items()}


NAMES = ["embed.w", "blocks.0.w", "blocks.1.w", "blocks.2.w", "norm.w", "head.w"]


def test_each_layer_down_gets_the_factor_once_more() -> None:
    got = rates("lr decay 0.5 per layer from head down blocks to embed", NAMES)
    assert got == {
        "head.w": 1.0,
        "blocks.2.w": 0.5,
        "blocks.1.w": 0.25,
        "blocks.0.w": 0.125,
        "embed.w": 0.0625,
        "norm.w": None,  # no group selects it
    }


def test_without_a_top_group_the_last_block_is_the_top() -> None:
    got = rates("lr decay 0.5 per layer down blocks", NAMES)
    assert [got[f"blocks.{i}.w"] for i in range(3)] == [0.25, 0.5, 1.0]
    assert got["head.w"] is None and got["embed.w"] is None


def test_a_name_in_several_groups_is_in_the_lowest() -> None:
    got = rates("lr decay 0.5 per layer from * down blocks, ^norm to embed", NAMES)
    # `*` takes head; the stack takes the blocks and `norm` (no index: the stack's top layer).
    assert got["head.w"] == 1.0 and got["norm.w"] == 0.5 == got["blocks.2.w"]
    assert got["embed.w"] == 0.0625


def test_stacks_count_per_parent_and_the_bottom_is_below_the_deepest() -> None:
    names = [f"enc.blocks.{i}.w" for i in range(4)] + [f"dec.blocks.{i}.w" for i in range(2)]
    got = rates("lr decay 0.5 per layer from * down blocks to ^x", [*names, "x.w", "y.w"])
    assert [got[f"enc.blocks.{i}.w"] for i in range(4)] == [0.0625, 0.125, 0.25, 0.5]
    assert [got[f"dec.blocks.{i}.w"] for i in range(2)] == [0.25, 0.5]
    assert got["x.w"] == 0.5**5 and got["y.w"] == 1.0


def test_a_stack_of_some_indices_only() -> None:
    got = rates("lr decay 0.5 per layer from * down blocks.-2..-1", NAMES)
    assert got["blocks.2.w"] == 0.5 and got["blocks.1.w"] == 0.25
    assert got["blocks.0.w"] == 1.0  # not in the stack: `*` puts it on top


def test_layer_decay_with_except_time_and_later_overrides() -> None:
    text = "lr decay 0.5 per layer down blocks except blocks.0 at epoch 1\nlr 3x for blocks.2"
    before = rates(text, NAMES)
    assert before["blocks.1.w"] is None and before["blocks.2.w"] == 3.0
    after = freezepolicy.parse(text).resolve(NAMES, epoch=1)
    # `except` leaves blocks.0 out of the statement, not out of the model's layers.
    assert after["blocks.1.w"].lr.of(1.0) == 0.5
    # From epoch 1 the decay is the statement applied last (its time is later): blocks.2 is
    # its top layer.
    assert after["blocks.0.w"].lr is None and after["blocks.2.w"].lr.of(1.0) == 1.0


@pytest.mark.parametrize(
    ("text", "code", "column"),
    [
        ("lr decay 1.5 per layer down blocks", "FP142", 10),
        ("lr decay 0 per layer down blocks", "FP142", 10),
        ("lr decay 0.5x per layer down blocks", "FP142", 10),
        ("lr decay 0.5 per layer down type:Block", "FP142", 29),
        ("lr decay 0.5 per layer from head down to", "FP108", 39),
    ],
)
def test_layer_decay_errors(text: str, code: str, column: int) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(text)
    assert (info.value.code, info.value.column) == (code, column)


def test_layer_decay_prints_in_one_canonical_form() -> None:
    messy = "lr   decay 0.75 per\tlayer from *,x down blocks to  a ,b except c warmup 2 epochs"
    canonical = "lr decay 0.75 per layer from *, x down blocks to a, b except c warmup 2 epochs\n"
    assert freezepolicy.parse(messy).format() == canonical
    assert freezepolicy.parse(canonical).format() == canonical


def test_a_factor_that_rounds_to_0_at_the_deepest_layer_is_an_error_before_any_change() -> None:
    """`1e-100` is a valid number, but its 4th power is 0: the lowest layer would get rate 0,
    which freezes it. resolve, param_groups, apply_policy and lint say so (FP112), as they do
    for `lr 1e-400` written out; nothing is changed."""
    from torch import nn

    from freezepolicy.lang.checks import check_names

    model = nn.Sequential(
        nn.Linear(2, 2), nn.Sequential(*[nn.Linear(2, 2) for _ in range(3)]), nn.Linear(2, 2)
    )
    names = [n for n, _ in model.named_parameters()]
    policy = freezepolicy.parse("lr decay 1e-100 per layer from 2 down 1 to 0")
    calls = [
        lambda: policy.resolve(names),
        lambda: freezepolicy.param_groups(model, policy, lr=1e-3),
        lambda: freezepolicy.apply_policy(model, policy),
    ]
    for call in calls:
        with pytest.raises(freezepolicy.PolicyResolveError) as info:
            call()
        found = info.value.first
        assert (found.code, found.line, found.column) == ("FP112", 1, 10)
        assert "rounds to 0 at depth 4" in found.message
    assert all(p.requires_grad for p in model.parameters())
    (found,) = check_names(policy, names)
    assert found.code == "FP112" and found.severity == "error"
    # A factor whose powers stay above 0 at this depth is fine.
    freezepolicy.parse("lr decay 1e-50 per layer from 2 down 1 to 0").resolve(names)
