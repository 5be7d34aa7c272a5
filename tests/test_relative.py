"""Indices counted from the end (`encoder.layer.-2..-1`, `blocks.-1`, `layers.0..-3`): what they
select in names of any depth, per parent, the errors in writing them, and a property check
against an independent reference written from the documented meaning."""

from __future__ import annotations

import json
import re

import pytest
from cli_driver import run_many
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_matcher import parse_atoms, part_matches, split_parts

import freezepolicy
from freezepolicy.lang.checks import check_names


def bert_names(depth: int, prefix: str = "") -> list[str]:
    names = [f"{prefix}embeddings.word_embeddings.weight"]
    for i in range(depth):
        names += [f"{prefix}encoder.layer.{i}.attention.self.query.weight"]
        names += [f"{prefix}encoder.layer.{i}.output.dense.bias"]
    return names + [f"{prefix}pooler.dense.weight", "classifier.weight"]


def selected(policy_text: str, names: list[str]) -> list[str]:
    decisions = freezepolicy.parse(policy_text).resolve(names)
    return [n for n in names if decisions[n].trainable is not None]


def blocks_of(names: list[str]) -> list[int]:
    parts = [n.split(".") for n in names]
    return sorted({int(p[p.index("layer") + 1]) for p in parts})


@pytest.mark.parametrize("depth", [2, 6, 12, 24])
@pytest.mark.parametrize("prefix", ["", "bert."])
def test_last_two_blocks_of_a_bert_of_any_depth(depth: int, prefix: str) -> None:
    names = bert_names(depth, prefix)
    assert blocks_of(selected("unfreeze encoder.layer.-2..-1", names)) == [depth - 2, depth - 1]
    assert blocks_of(selected("unfreeze encoder.layer.-1", names)) == [depth - 1]
    # All but the last two; and a low bound past the first index starts at the first.
    assert blocks_of(selected("unfreeze encoder.layer.0..-3", names)) == list(range(depth - 2))
    assert blocks_of(selected("unfreeze encoder.layer.-30..-1", names)) == list(range(depth))
    # A single index past the first, or a high bound past it, is no block at all.
    assert selected("unfreeze encoder.layer.-30", names) == []
    assert selected("unfreeze encoder.layer.-30..-25", names) == []


def test_parents_count_separately() -> None:
    names = [f"encoder.layers.{i}.w" for i in range(6)] + [
        f"decoder.layers.{i}.w" for i in range(3)
    ]
    assert selected("freeze *.layers.-1", names) == ["encoder.layers.5.w", "decoder.layers.2.w"]
    assert selected("freeze layers.-1", names) == ["encoder.layers.5.w", "decoder.layers.2.w"]
    assert selected("freeze ^decoder.layers.-2..-1", names) == names[-2:]
    # Mixed bounds resolve per parent: 3..-1 is 3..5 in the encoder and nothing in the decoder.
    assert selected("freeze layers.3..-1", names) == names[3:6]


def test_indices_that_are_not_consecutive_count_as_present() -> None:
    names = ["h.0.w", "h.2.w", "h.7.w", "h.7.b", "h.x.w"]
    assert selected("freeze h.-1", names) == ["h.7.w", "h.7.b"]
    assert selected("freeze h.-2..-1", names) == ["h.2.w", "h.7.w", "h.7.b"]


def test_numbered_parameters_and_the_root_count_too() -> None:
    # nn.ParameterList under `scales`, nn.Sequential at the root.
    names = ["0.weight", "1.weight", "2.weight", "scales.0", "scales.1"]
    assert selected("freeze ^-1", names) == ["2.weight"]
    assert selected("freeze scales.-1", names) == ["scales.1"]
    assert selected("freeze -1", names) == ["2.weight", "scales.1"]
    assert selected("freeze **.-1.weight", names) == ["2.weight"]


def test_the_rest_of_the_selector_still_applies() -> None:
    names = bert_names(4)
    assert selected("freeze encoder.layer.-1.output", names) == [
        "encoder.layer.3.output.dense.bias"
    ]
    assert selected("freeze layer.-1 except bias", names) == [
        "encoder.layer.3.attention.self.query.weight"
    ]


def test_nested_indices_counted_from_the_end() -> None:
    names = [f"layers.{i}.experts.{e}.w" for i in range(3) for e in range(4 if i else 2)]
    assert selected("freeze layers.-1.experts.-1", names) == ["layers.2.experts.3.w"]
    assert selected("freeze layers.0..-1.experts.-1", names) == [
        "layers.0.experts.1.w",
        "layers.1.experts.3.w",
        "layers.2.experts.3.w",
    ]


def test_over_names_without_indices_it_selects_nothing_and_lint_says_so() -> None:
    policy = freezepolicy.parse("freeze *\nunfreeze encoder.layer.-2..-1")
    names = ["fc.weight", "fc.bias", "encoder.layer.weight"]
    (found,) = check_names(policy, names)
    assert (found.code, found.line, found.column) == ("FP201", 2, 10)
    assert "`encoder.layer.-2..-1` matches no parameter" in found.message


def test_the_printer_keeps_the_relative_form() -> None:
    text = "unfreeze encoder.layer.-2..-1, blocks.-1 then layers.0..-3 at epoch 1 every 2 epochs\n"
    assert freezepolicy.parse(text).format() == text


@pytest.mark.parametrize(
    ("selector", "code", "column", "message"),
    [
        ("a.-0", "FP141", 3, "counting from the end starts at -1"),
        ("a.-1..-2", "FP122", 3, "range `-1..-2` is reversed; write `-2..-1`"),
        ("a.-01", "FP123", 3, "without leading zeros"),
        ("layer1..-1", "FP140", 1, "must be a whole part"),
        ("a.-1x", "FP140", 3, "must be a whole part"),
        ("a.{-1,2}", "FP140", 4, "not an alternative"),
    ],
)
def test_errors_in_indices_counted_from_the_end(
    selector: str, code: str, column: int, message: str
) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(f"freeze {selector}")
    d = info.value.first
    assert (d.code, d.column) == (code, len("freeze ") + column)
    assert message in d.message


def test_a_dash_inside_a_name_stays_literal() -> None:
    names = ["x-1.w", "-foo.w", "x.1.w"]
    assert selected("freeze x-1", names) == ["x-1.w"]
    assert selected("freeze -foo", names) == ["-foo.w"]


# --- property: the binding agrees with a reference written from the documented meaning --------

_FROM_END = re.compile(r"(-?[0-9]+)(?:\.\.(-?[0-9]+))?")


def _reference(pattern: str, anchored: bool, name: str, names: list[str]) -> bool:
    """Whether `pattern` selects `name`: parts matched one by one (`**` any number of non-empty
    parts); a part with a negative bound must meet a whole-number name part whose value lies in
    the range the bounds give among the indices present under the same parent in `names`."""
    parts = split_parts(pattern)
    target = name.split(".")

    def index_ok(spec: str, at: int) -> bool:
        value = target[at]
        if not value.isdigit() or (len(value) > 1 and value[0] == "0"):
            return False
        parent = target[:at]
        present = sorted(
            {
                int(n.split(".")[at])
                for n in names
                if n.split(".")[:at] == parent
                and len(n.split(".")) > at
                and n.split(".")[at].isdigit()
                and (n.split(".")[at] == "0" or n.split(".")[at][0] != "0")
            }
        )
        lo_text, hi_text = _FROM_END.fullmatch(spec).groups()  # type: ignore[union-attr]
        lo, hi = int(lo_text), int(hi_text or lo_text)
        if hi < 0:
            if -hi > len(present):
                return False
            hi = present[hi]
        if lo < 0:
            if -lo > len(present):
                if hi_text is None:
                    return False
                lo = present[0]
            else:
                lo = present[lo]
        return lo <= int(value) <= hi

    def run(p: int, at: int) -> bool:
        if p == len(parts):
            return True
        if parts[p] == "**":
            return run(p + 1, at) or (at < len(target) and target[at] != "" and run(p, at + 1))
        if at == len(target):
            return False
        if parts[p].startswith("-") or "..-" in parts[p]:
            ok = index_ok(parts[p], at)
        else:
            ok = part_matches(parse_atoms(parts[p]), target[at])
        return ok and run(p + 1, at + 1)

    starts = [0] if anchored else range(len(target))
    return any(run(p=0, at=s) for s in starts)


_PART = st.sampled_from(["enc", "dec", "layers", "h", "w", "0", "1", "2", "3", "5", "10"])
_NAMES = st.lists(
    st.lists(_PART, min_size=1, max_size=4).map(".".join), min_size=1, max_size=25, unique=True
)
_INDEX = st.sampled_from(["-1", "-2", "-3", "-2..-1", "0..-2", "-3..1", "1..-1", "-9..-1"])
_PLAIN = st.sampled_from(["layers", "h", "*", "**", "enc", "w", "1..3"])


@st.composite
def _relative_selectors(draw: st.DrawFn) -> tuple[str, bool]:
    before = draw(st.lists(_PLAIN, max_size=2))
    after = draw(st.lists(st.one_of(_PLAIN, _INDEX), max_size=2))
    parts = [*before, draw(_INDEX), *after]
    while parts and parts[-1] == "**":  # `a.**` means what `a` means, but `**` alone does not
        parts.pop()
    return ".".join(parts), draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(_NAMES, _relative_selectors())
def test_binding_agrees_with_the_reference(names: list[str], selector: tuple[str, bool]) -> None:
    pattern, anchored = selector
    text = ("^" if anchored else "") + pattern
    got = selected(f"freeze {text}", names)
    want = [n for n in names if _reference(pattern, anchored, n, names)]
    assert got == want, (text, names)


# --- the same through apply_policy and the command line ---------------------------------------


@pytest.mark.parametrize("depth", [3, 5])
def test_apply_policy_trains_the_last_two_blocks_of_any_depth(depth: int) -> None:
    transformers = pytest.importorskip("transformers")
    from model_factories import tiny_bert_config

    model = transformers.BertForSequenceClassification(
        tiny_bert_config(num_hidden_layers=depth, num_labels=2)
    )
    freezepolicy.apply_policy(
        model,
        freezepolicy.parse("freeze *\nunfreeze bert.encoder.layer.-2..-1, classifier"),
        strict=True,
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert blocks_of([n for n in trainable if ".layer." in n]) == [depth - 2, depth - 1]
    assert {n for n in trainable if ".layer." not in n} == {"classifier.weight", "classifier.bias"}


def test_lint_names_lint_model_and_show_resolve_indices_from_the_end(tmp_path) -> None:
    (tmp_path / "p.freeze").write_text("freeze *\nunfreeze encoder.layer.-2..-1, classifier\n")
    (tmp_path / "deep.txt").write_text("\n".join(bert_names(7, "bert.")) + "\n")
    (tmp_path / "flat.txt").write_text("fc.weight\nencoder.layer.weight\nclassifier.weight\n")
    spec = "transformers:bert/sequence-classification"  # 12 blocks in the default config
    deep, flat, model, show = (
        (r["code"], r["stdout"], r["stderr"])
        for r in run_many(
            [
                ["lint", "p.freeze", "--names", "deep.txt"],
                ["lint", "p.freeze", "--names", "flat.txt"],
                ["lint", "p.freeze", "--model", spec],
                ["show", "p.freeze", "--model", spec, "--format", "json"],
            ],
            cwd=tmp_path,
        )
    )
    assert deep == (0, "", "") and model == (0, "", "")
    code, out, _ = flat
    assert code == 1 and "p.freeze:2:10: warning:" in out and "[FP201]" in out
    code, out, err = show
    assert code == 0, err
    states = {m["path"]: m["state"] for m in json.loads(out)["modules"]}
    assert [b for b in range(12) if states[f"bert.encoder.layer.{b}"] == "trainable"] == [10, 11]
    assert states["classifier"] == "trainable" and states["bert.embeddings"] == "frozen"
