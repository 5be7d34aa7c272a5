"""What a policy means: `Policy.resolve` over parameter names at a moment of training."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_matcher import matches as reference_matches

import freezepolicy
from freezepolicy import Decision, Policy, Rate
from freezepolicy.lang.nodes import NamePattern, Statement, TypePattern

NAMES = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "layer4.0.conv1.weight",
    "layer4.0.bn1.weight",
    "layer4.0.bn1.bias",
    "fc.weight",
    "fc.bias",
]


def resolve(text: str, names: Sequence[str] = NAMES, **moment: int) -> dict[str, Decision]:
    return freezepolicy.parse(text).resolve(names, **moment)


def with_trainable(decisions: Mapping[str, Decision], value: bool | None) -> set[str]:
    return {n for n, d in decisions.items() if d.trainable is value}


def parts_rule(names: Sequence[str], rule: Callable[[list[str]], bool]) -> set[str]:
    """Expected selections worked out with plain string logic over the dotted parts."""
    return {n for n in names if rule(n.split("."))}


# --- last applied statement wins, per setting -------------------------------------------------


def test_later_statement_wins() -> None:
    p = freezepolicy.parse("freeze *\nunfreeze fc")
    freeze, unfreeze = p.statements
    d = p.resolve(NAMES)
    assert with_trainable(d, True) == {"fc.weight", "fc.bias"}
    assert with_trainable(d, False) == set(NAMES) - {"fc.weight", "fc.bias"}
    assert d["fc.bias"].trainable_by is unfreeze and d["fc.bias"].line == 2
    assert d["conv1.weight"].trainable_by is freeze and d["conv1.weight"].line == 1

    # The same two statements the other way round: `freeze *` now decides everything.
    d = resolve("unfreeze fc\nfreeze *")
    assert with_trainable(d, False) == set(NAMES)
    assert {x.line for x in d.values()} == {2}


def test_each_setting_has_its_own_last_statement() -> None:
    p = freezepolicy.parse("lr 1e-3 for *\nfreeze fc\nlr 1e-4 for fc\ndecay 0.01 for *")
    lr_all, freeze_fc, lr_fc, decay_all = p.statements
    d = p.resolve(NAMES)
    fc = d["fc.weight"]
    assert fc.trainable is False and fc.trainable_by is freeze_fc
    assert fc.lr == Rate(1e-4) and fc.lr_by is lr_fc
    assert fc.weight_decay == Rate(0.01) and fc.decay_by is decay_all
    conv = d["conv1.weight"]
    # Setting a learning rate does not make a parameter trainable or frozen.
    assert conv.trainable is None and conv.trainable_by is None
    assert conv.lr == Rate(1e-3) and conv.lr_by is lr_all
    # The statement shown first is the one that decided trainability, else the lr one.
    assert fc.statement is freeze_fc and fc.line == 2
    assert conv.statement is lr_all and conv.line == 1


def test_except_removes_from_its_own_statement_only() -> None:
    p = freezepolicy.parse("unfreeze *\nfreeze * except fc\nlr 0.1x for * except bias")
    unfreeze, freeze, lr = p.statements
    d = p.resolve(NAMES)
    # fc is excepted from the freeze, so the earlier `unfreeze *` still decides it.
    assert with_trainable(d, True) == {"fc.weight", "fc.bias"}
    assert d["fc.weight"].trainable_by is unfreeze
    assert with_trainable(d, False) == set(NAMES) - {"fc.weight", "fc.bias"}
    # The lr statement's own `except` is independent of the freeze's.
    biases = parts_rule(NAMES, lambda p: "bias" in p)
    assert {n for n, x in d.items() if x.lr is None} == biases
    assert {n for n, x in d.items() if x.lr_by is lr} == set(NAMES) - biases


def test_except_with_several_selectors() -> None:
    d = resolve("freeze layer4, fc except bias, bn1")
    expected = parts_rule(
        NAMES,
        lambda p: ("layer4" in p or "fc" in p) and "bias" not in p and "bn1" not in p,
    )
    assert expected == {"layer4.0.conv1.weight", "fc.weight"}
    assert with_trainable(d, False) == expected


def test_untouched_parameters_are_left_alone() -> None:
    d = resolve("freeze fc")
    for name in set(NAMES) - {"fc.weight", "fc.bias"}:
        assert d[name] == Decision(name)
        assert d[name].trainable is None and d[name].lr is None
        assert d[name].weight_decay is None and d[name].stats is None
        assert d[name].statement is None and d[name].line is None
    assert list(resolve("", NAMES)) == NAMES
    assert all(x == Decision(n) for n, x in resolve("# only a comment\n").items())


def test_empty_names() -> None:
    assert resolve("freeze *", []) == {}


# --- `lr 0` is a freeze -----------------------------------------------------------------------


@pytest.mark.parametrize("zero", ["0", "0x", "0.0", "0e-3"])
def test_lr_zero_means_frozen_decided_by_the_lr_line(zero: str) -> None:
    p = freezepolicy.parse(f"unfreeze *\nlr {zero} for fc")
    unfreeze, lr = p.statements
    d = p.resolve(NAMES)
    assert d["fc.weight"].trainable is False
    assert d["fc.weight"].trainable_by is lr and d["fc.weight"].lr_by is lr
    assert d["fc.weight"].line == 2
    assert d["fc.weight"].lr is not None and d["fc.weight"].lr.is_zero
    assert d["conv1.weight"].trainable is True and d["conv1.weight"].trainable_by is unfreeze


def test_lr_zero_is_not_undone_by_a_later_unfreeze() -> None:
    """Only a later learning rate lifts `lr 0` (lint reports the blocked unfreeze, FP204)."""
    p = freezepolicy.parse("lr 0 for fc\nunfreeze fc")
    d = p.resolve(NAMES)
    assert d["fc.bias"].trainable is False
    assert d["fc.bias"].trainable_by is p.statements[0]
    d = resolve("lr 0 for fc\nlr 1e-3 for fc")
    assert d["fc.bias"].trainable is None and d["fc.bias"].lr == Rate(1e-3)


def test_decay_zero_does_not_freeze() -> None:
    d = resolve("decay 0 for bias")
    assert d["fc.bias"].weight_decay == Rate(0.0)
    assert d["fc.bias"].trainable is None


# --- time -------------------------------------------------------------------------------------


def test_unfreeze_written_above_freeze_applies_from_its_epoch() -> None:
    p = freezepolicy.parse("unfreeze layer4 at epoch 3\nfreeze *")
    unfreeze, freeze = p.statements
    layer4 = parts_rule(NAMES, lambda p: p[0] == "layer4")
    for epoch in (0, 1, 2):
        d = p.resolve(NAMES, epoch=epoch)
        assert with_trainable(d, False) == set(NAMES), epoch
        assert all(x.trainable_by is freeze for x in d.values())
    for epoch in (3, 4, 100):
        d = p.resolve(NAMES, epoch=epoch)
        assert with_trainable(d, True) == layer4, epoch
        assert with_trainable(d, False) == set(NAMES) - layer4
        assert all(d[n].trainable_by is unfreeze and d[n].line == 1 for n in layer4)


@pytest.mark.parametrize(("clock", "at"), [("epoch", 5), ("step", 100), ("epoch", 1)])
def test_timed_statement_is_active_from_its_moment_on(clock: str, at: int) -> None:
    """Epochs and steps count from 0: `at epoch 5` holds once epoch >= 5."""
    p = freezepolicy.parse(f"freeze fc at {clock} {at}")
    before = p.resolve(NAMES, **{clock: at - 1})
    assert before["fc.weight"].trainable is None
    for moment in (at, at + 1):
        assert p.resolve(NAMES, **{clock: moment})["fc.weight"].trainable is False
    # The other clock does not move a statement timed on this one.
    other = "step" if clock == "epoch" else "epoch"
    assert p.resolve(NAMES, **{other: 10**6})["fc.weight"].trainable is None


def test_time_zero_is_the_start() -> None:
    # `at epoch 0` holds from the start and is ordered like a statement without a time, so the
    # file order decides between them.
    d = resolve("unfreeze fc at epoch 0\nfreeze *")
    assert d["fc.weight"].trainable is False
    d = resolve("freeze *\nunfreeze fc at step 0")
    assert d["fc.weight"].trainable is True
    # So `at step 0` comes before every later epoch, even without steps_per_epoch.
    d = resolve("freeze * at epoch 2\nunfreeze fc at step 0", epoch=2)
    assert d["fc.weight"].trainable is False


def test_untimed_statements_apply_before_timed_ones() -> None:
    p = freezepolicy.parse("unfreeze fc at step 1\nfreeze *")
    assert p.resolve(NAMES, step=0)["fc.weight"].trainable is False
    assert p.resolve(NAMES, step=1)["fc.weight"].trainable is True


def test_later_time_wins_over_file_order() -> None:
    p = freezepolicy.parse("unfreeze * at epoch 6\nfreeze * at epoch 2\nunfreeze fc at epoch 4")
    assert with_trainable(p.resolve(NAMES, epoch=1), None) == set(NAMES)
    assert with_trainable(p.resolve(NAMES, epoch=2), False) == set(NAMES)
    d = p.resolve(NAMES, epoch=5)
    assert with_trainable(d, True) == {"fc.weight", "fc.bias"}
    assert with_trainable(p.resolve(NAMES, epoch=6), True) == set(NAMES)
    assert p.resolve(NAMES, epoch=6)["fc.weight"].line == 1


def test_epoch_and_step_without_steps_per_epoch() -> None:
    """Without steps_per_epoch the clocks cannot be compared: epoch-timed statements apply
    before step-timed ones, whatever the numbers and the file order (`_time_key`)."""
    p = freezepolicy.parse("freeze * at step 1\nunfreeze fc at epoch 3")
    freeze, unfreeze = p.statements
    d = p.resolve(NAMES, epoch=3, step=1)
    assert d["fc.weight"].trainable is False and d["fc.weight"].trainable_by is freeze
    # Only the epoch statement has come: it decides.
    d = p.resolve(NAMES, epoch=3, step=0)
    assert d["fc.weight"].trainable is True and d["fc.weight"].trainable_by is unfreeze
    # Written the other way round, the step statement still applies last.
    q = freezepolicy.parse("unfreeze fc at epoch 3\nfreeze * at step 10000")
    assert q.resolve(NAMES, epoch=3, step=10000)["fc.weight"].trainable is False


def test_epoch_and_step_with_steps_per_epoch() -> None:
    """With steps_per_epoch, `at epoch N` sits at global step N * steps_per_epoch."""
    p = freezepolicy.parse("freeze * at step 1\nunfreeze fc at epoch 3")
    d = p.resolve(NAMES, epoch=3, step=30, steps_per_epoch=10)
    assert d["fc.weight"].trainable is True  # epoch 3 = step 30, after step 1
    q = freezepolicy.parse("freeze * at step 50\nunfreeze fc at epoch 3")
    d = q.resolve(NAMES, epoch=5, step=50, steps_per_epoch=10)
    assert d["fc.weight"].trainable is False  # step 50 comes after epoch 3 = step 30
    assert d["fc.weight"].trainable_by is q.statements[0]
    # The same moment on both clocks: file order decides.
    for text, expected in [
        ("freeze * at step 30\nunfreeze fc at epoch 3", True),
        ("unfreeze fc at epoch 3\nfreeze * at step 30", False),
    ]:
        d = resolve(text, epoch=3, step=30, steps_per_epoch=10)
        assert d["fc.weight"].trainable is expected, text


# --- values -----------------------------------------------------------------------------------


def test_multipliers_stay_relative() -> None:
    d = resolve("lr 0.1x for fc\nlr 1e-4 for conv1\ndecay 0.5x for bias\ndecay 0 for ^bn1")
    assert d["fc.weight"].lr == Rate(0.1, relative=True)
    assert d["fc.weight"].lr is not None and d["fc.weight"].lr.of(1e-3) == pytest.approx(1e-4)
    assert d["conv1.weight"].lr == Rate(1e-4, relative=False)
    assert d["conv1.weight"].lr is not None and d["conv1.weight"].lr.of(5.0) == 1e-4
    assert d["fc.bias"].weight_decay == Rate(0.5, relative=True)
    assert d["fc.bias"].trainable is None
    # `decay 0 for ^bn1` came later, so it decides bn1.bias over `decay 0.5x for bias`.
    assert d["bn1.bias"].weight_decay == Rate(0.0, relative=False)
    assert d["bn1.bias"].line == 4
    assert d["layer4.0.bn1.bias"].weight_decay == Rate(0.5, relative=True)
    assert str(Rate(0.1, True)) == "0.1x" and str(Rate(1e-4)) == "0.0001"


def test_stats_statements() -> None:
    p = freezepolicy.parse("freeze *\nstats freeze for bn?\nstats update for ^bn1")
    freeze, stats_freeze, stats_update = p.statements
    d = p.resolve(NAMES)
    assert d["bn1.weight"].stats is True and d["bn1.weight"].stats_by is stats_update
    assert d["layer4.0.bn1.bias"].stats is False
    assert d["layer4.0.bn1.bias"].stats_by is stats_freeze
    assert d["conv1.weight"].stats is None and d["conv1.weight"].stats_by is None
    # `stats` says nothing about trainability.
    assert d["bn1.weight"].trainable is False and d["bn1.weight"].trainable_by is freeze
    # A parameter only a `stats` statement touched still names it as its deciding line.
    d = resolve("stats update for bn1")
    assert d["bn1.weight"].trainable is None
    assert d["bn1.weight"].line == 1


# --- type selectors ---------------------------------------------------------------------------


def _resnet_module_types(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Class names (with bases) of the module holding each resnet18 parameter, by hand."""
    out = {}
    for n in names:
        p = n.split(".")
        if p[-2] == "fc":
            out[n] = ("Linear", "Module")
        elif p[-2].startswith("bn") or p[-3:-1] == ["downsample", "1"]:
            out[n] = ("BatchNorm2d", "_BatchNorm", "_NormBase", "Module")
        else:
            out[n] = ("Conv2d", "_ConvNd", "Module")
    return out


def test_type_selectors_with_module_types(resnet18_names: list[str]) -> None:
    types = _resnet_module_types(resnet18_names)
    norms = parts_rule(
        resnet18_names, lambda p: p[-2].startswith("bn") or p[-3:-1] == ["downsample", "1"]
    )
    assert len(norms) == 2 + 8 * 4 + 3 * 2
    for selector in ("type:BatchNorm2d", "type:_BatchNorm", "type:Batch*", "type:*Norm2d"):
        d = freezepolicy.parse(f"freeze {selector}").resolve(resnet18_names, module_types=types)
        assert with_trainable(d, False) == norms, selector
    d = freezepolicy.parse("freeze * except type:Linear, type:BatchNorm2d").resolve(
        resnet18_names, module_types=types
    )
    convs = parts_rule(resnet18_names, lambda p: p[-2].startswith("conv") or p[-2] == "0")
    assert with_trainable(d, False) == convs
    # Types and names mix in one selection.
    d = freezepolicy.parse("freeze type:Conv2d, fc.bias").resolve(
        resnet18_names, module_types=types
    )
    assert with_trainable(d, False) == convs | {"fc.bias"}


def test_type_selectors_select_nothing_without_module_types(resnet18_names: list[str]) -> None:
    d = freezepolicy.parse("freeze type:BatchNorm2d").resolve(resnet18_names)
    assert with_trainable(d, None) == set(resnet18_names)
    # An `except type:` without types removes nothing (lint reports it, FP203).
    d = freezepolicy.parse("freeze * except type:BatchNorm2d").resolve(resnet18_names)
    assert with_trainable(d, False) == set(resnet18_names)
    # A name missing from the mapping has no modules, hence no types.
    d = freezepolicy.parse("freeze type:*").resolve(["a.w", "b.w"], module_types={"a.w": ["X"]})
    assert with_trainable(d, False) == {"a.w"}


def test_type_selectors_on_bert(bert_names: list[str]) -> None:
    types = {
        n: ("LayerNorm", "Module") if "LayerNorm" in n.split(".") else ("Linear", "Module")
        for n in bert_names
    }
    d = freezepolicy.parse("freeze *\nunfreeze type:LayerNorm").resolve(
        bert_names, module_types=types
    )
    layer_norms = parts_rule(bert_names, lambda p: "LayerNorm" in p)
    assert len(layer_norms) == 2 + 12 * 4
    assert with_trainable(d, True) == layer_norms
    assert all(d[n].line == 2 for n in layer_norms)


# --- deciding statements and their lines ------------------------------------------------------


def test_decision_lines_and_columns() -> None:
    text = (
        "# head only\n"
        "\n"
        "freeze * except fc\n"
        "  lr 0.1x for fc # faster\n"
        "unfreeze bn1; decay 0 for bias"
    )
    p = freezepolicy.parse(text)
    freeze, lr, unfreeze, decay = p.statements
    assert [s.line for s in p.statements] == [3, 4, 5, 5]
    assert (unfreeze.span.column, decay.span.column) == (1, 15)
    d = p.resolve(NAMES)
    assert d["conv1.weight"].trainable_by is freeze and d["conv1.weight"].line == 3
    assert d["fc.weight"].trainable_by is None and d["fc.weight"].lr_by is lr
    assert d["fc.weight"].line == 4
    assert d["fc.bias"].decay_by is decay and d["fc.bias"].lr_by is lr
    assert d["bn1.bias"].trainable_by is unfreeze and d["bn1.bias"].decay_by is decay
    assert d["bn1.bias"].line == 5
    assert d["bn1.bias"].statement is unfreeze


# --- the examples of the language issue -------------------------------------------------------

FREEZE_ALL_BUT_FC = "freeze * except fc"
LR0_LAYERS = "lr 0 for layer1..3"
UNFREEZE_LAST_TWO = "unfreeze encoder.layer.1[01] at epoch 5"


def _fc(p: list[str]) -> bool:
    return "fc" in p


def _layers_1_to_3(p: list[str]) -> bool:
    return any(x in ("layer1", "layer2", "layer3") for x in p)


def _last_two_blocks(p: list[str]) -> bool:
    return any(
        p[i : i + 3] in (["encoder", "layer", "10"], ["encoder", "layer", "11"])
        for i in range(len(p))
    )


def test_freeze_all_except_fc(resnet18_names: list[str], bert_names: list[str]) -> None:
    p = freezepolicy.parse(FREEZE_ALL_BUT_FC)
    d = p.resolve(resnet18_names)
    fc = parts_rule(resnet18_names, _fc)
    assert fc == {"fc.weight", "fc.bias"}
    assert with_trainable(d, None) == fc
    assert with_trainable(d, False) == set(resnet18_names) - fc
    # BERT has no `fc`: everything is frozen.
    assert with_trainable(p.resolve(bert_names), False) == set(bert_names)


def test_lr_zero_for_layer_range(resnet18_names: list[str], bert_names: list[str]) -> None:
    p = freezepolicy.parse(LR0_LAYERS)
    d = p.resolve(resnet18_names)
    layers = parts_rule(resnet18_names, _layers_1_to_3)
    assert len(layers) == 12 + 15 + 15
    assert with_trainable(d, False) == layers
    assert all(d[n].lr == Rate(0.0) and d[n].line == 1 for n in layers)
    assert with_trainable(d, None) == set(resnet18_names) - layers
    assert with_trainable(p.resolve(bert_names), None) == set(bert_names)


def test_unfreeze_last_two_bert_blocks_at_epoch_5(
    bert_names: list[str], bert_cls_names: list[str]
) -> None:
    p = freezepolicy.parse(UNFREEZE_LAST_TWO)
    for names in (bert_names, bert_cls_names):
        blocks = parts_rule(names, _last_two_blocks)
        assert len(blocks) == 2 * 16
        assert with_trainable(p.resolve(names, epoch=4), None) == set(names)
        d = p.resolve(names, epoch=5)
        assert with_trainable(d, True) == blocks
        assert with_trainable(d, None) == set(names) - blocks


@pytest.mark.parametrize(
    "text",
    [
        f"{FREEZE_ALL_BUT_FC}; {LR0_LAYERS}; {UNFREEZE_LAST_TWO}",
        f"{FREEZE_ALL_BUT_FC}\n{LR0_LAYERS}\n{UNFREEZE_LAST_TWO}\n",
    ],
)
def test_the_three_examples_together(
    text: str, resnet18_names: list[str], bert_names: list[str], bert_cls_names: list[str]
) -> None:
    p = freezepolicy.parse(text)
    freeze, lr, unfreeze = p.statements
    one_line = ";" in text
    assert [s.line for s in p.statements] == ([1, 1, 1] if one_line else [1, 2, 3])

    for epoch in (0, 5):
        d = p.resolve(resnet18_names, epoch=epoch)
        fc = parts_rule(resnet18_names, _fc)
        layers = parts_rule(resnet18_names, _layers_1_to_3)
        assert with_trainable(d, None) == fc
        assert with_trainable(d, False) == set(resnet18_names) - fc
        assert {n for n, x in d.items() if x.trainable_by is lr} == layers
        assert {n for n, x in d.items() if x.trainable_by is freeze} == (
            set(resnet18_names) - fc - layers
        )

    for names in (bert_names, bert_cls_names):
        blocks = parts_rule(names, _last_two_blocks)
        before = p.resolve(names, epoch=4)
        assert with_trainable(before, False) == set(names)
        after = p.resolve(names, epoch=5)
        assert with_trainable(after, True) == blocks
        assert with_trainable(after, False) == set(names) - blocks
        assert all(after[n].trainable_by is unfreeze for n in blocks)
        assert {after[n].statement.span.column for n in blocks} == {  # type: ignore[union-attr]
            unfreeze.span.column
        }


# --- resolve is a pure function ---------------------------------------------------------------

_SELECTORS = [
    "*",
    "fc",
    "bias",
    "layer1..3",
    "layer4",
    "bn?",
    "conv*",
    "downsample.**",
    "^fc",
    "layer[!1].0",
    "{bn1,conv2}",
    "type:BatchNorm2d",
    "type:Conv*",
]


@st.composite
def _statement_text(draw: st.DrawFn) -> str:
    include = draw(st.lists(st.sampled_from(_SELECTORS), min_size=1, max_size=2, unique=True))
    exclude = draw(st.lists(st.sampled_from(_SELECTORS), max_size=1))
    selection = ", ".join(include) + (" except " + ", ".join(exclude) if exclude else "")
    value = draw(st.sampled_from(["0", "1e-3", "0.1x", "0x", "0.5"]))
    head = draw(
        st.sampled_from(
            [
                "freeze",
                "unfreeze",
                f"lr {value} for",
                f"decay {value} for",
                "stats update for",
                "stats freeze for",
            ]
        )
    )
    when = draw(
        st.sampled_from(
            [
                "",
                " at epoch 0",
                " at epoch 2",
                " at epoch 3",
                " at step 0",
                " at step 5",
                " at step 40",
            ]
        )
    )
    return f"{head} {selection}{when}"


def _summary(d: Decision) -> tuple:
    """A decision with the identity of its deciding statements (Statement equality ignores
    spans, so two statements with the same text would otherwise compare equal)."""
    return (
        d.name,
        d.trainable,
        d.lr,
        d.weight_decay,
        d.stats,
        tuple(id(s) for s in (d.trainable_by, d.lr_by, d.decay_by, d.stats_by)),
    )


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(_statement_text(), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 5),
    step=st.integers(0, 60),
    steps_per_epoch=st.sampled_from([None, 1, 10]),
    with_types=st.booleans(),
)
def test_resolve_is_a_pure_function_of_names_and_moment(
    resnet18_names: list[str],
    texts: list[str],
    seed: int,
    epoch: int,
    step: int,
    steps_per_epoch: int | None,
    with_types: bool,
) -> None:
    policy = freezepolicy.parse("\n".join(texts))
    types = _resnet_module_types(resnet18_names) if with_types else None
    moment = {"epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch}

    first = policy.resolve(resnet18_names, module_types=types, **moment)
    again = policy.resolve(resnet18_names, module_types=types, **moment)
    assert list(first) == resnet18_names
    assert {n: _summary(d) for n, d in first.items()} == {n: _summary(d) for n, d in again.items()}

    rng = random.Random(seed)
    shuffled = resnet18_names[:]
    rng.shuffle(shuffled)
    subset = rng.sample(resnet18_names, rng.randint(1, len(resnet18_names)))
    for names in (shuffled, subset):
        other = policy.resolve(names, module_types=types, **moment)
        assert list(other) == names
        for n in names:
            assert _summary(other[n]) == _summary(first[n]), n

    # A bound policy caches its answers; the caller may not corrupt them.
    bound = policy.bind(resnet18_names, types)
    got = bound.resolve(**moment)
    got.clear()
    assert {n: _summary(d) for n, d in bound.resolve(**moment).items()} == {
        n: _summary(d) for n, d in first.items()
    }

    # And resolve agrees with the semantics written out plainly.
    expected = _reference_resolve(policy, resnet18_names, types, epoch, step, steps_per_epoch)
    assert {n: _summary(d) for n, d in first.items()} == expected


def _reference_resolve(
    policy: Policy,
    names: Sequence[str],
    types: Mapping[str, Sequence[str]] | None,
    epoch: int,
    step: int,
    steps_per_epoch: int | None,
) -> dict[str, tuple]:
    """The documented meaning, step by step, with the reference matcher for name patterns."""

    def selects(selector: NamePattern | TypePattern, name: str) -> bool:
        if isinstance(selector, NamePattern):
            return reference_matches(selector.text, name, selector.anchored)
        glob = selector.text.replace("*", "")  # the selectors above are `Prefix*` or exact
        classes = types.get(name, ()) if types is not None else ()
        if selector.text.endswith("*"):
            return any(c.startswith(glob) for c in classes)
        return glob in classes

    def when_key(index: int, st_: Statement) -> tuple:
        w = st_.when
        if w is None or w.at == 0:
            moment: tuple = (0, 0)  # the start
        elif steps_per_epoch is None:
            moment = (0 if w.clock == "epoch" else 1, w.at)  # all epoch events, then steps
        else:
            moment = (0, w.at * steps_per_epoch if w.clock == "epoch" else w.at)
        return (moment, index)

    def has_come(st_: Statement) -> bool:
        w = st_.when
        return w is None or (epoch if w.clock == "epoch" else step) >= w.at

    active = sorted(
        ((i, s) for i, s in enumerate(policy.statements) if has_come(s)),
        key=lambda item: when_key(*item),
    )
    out = {}
    for name in names:
        setting: dict[str, Statement | None] = dict.fromkeys(("trainable", "lr", "decay", "stats"))
        for _, s in active:
            chosen = any(selects(x, name) for x in s.selection.include) and not any(
                selects(x, name) for x in s.selection.exclude
            )
            if chosen:
                key = {"freeze": "trainable", "unfreeze": "trainable"}.get(s.action, s.action)
                setting[key] = s
        lr_st, t_st = setting["lr"], setting["trainable"]
        lr = Rate(lr_st.value.number, lr_st.value.relative) if lr_st and lr_st.value else None
        decay_st = setting["decay"]
        decay = (
            Rate(decay_st.value.number, decay_st.value.relative)
            if decay_st and decay_st.value
            else None
        )
        if lr is not None and lr.value == 0:
            trainable, t_st = False, lr_st
        elif t_st is not None:
            trainable = t_st.action == "unfreeze"
        else:
            trainable = None
        stats_st = setting["stats"]
        out[name] = (
            name,
            trainable,
            lr,
            decay,
            None if stats_st is None else stats_st.mode == "update",
            tuple(id(s) for s in (t_st, lr_st, decay_st, stats_st)),
        )
    return out
