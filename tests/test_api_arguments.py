"""Wrong types and values given to the language's functions get a message that says what was
expected, before anything is computed: `resolve("fc.weight")` iterated characters, `parse(None)`
failed inside the parser, `resolve(epoch=-1)` answered for a moment that does not exist, and a
policy given where a path belongs said only "no such policy file"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import freezepolicy
from freezepolicy.lang.checks import check_names
from freezepolicy.lang.lint import lint_file, lint_text

NAMES = ["fc.weight", "fc.bias", "layer1.0.conv1.weight"]
POLICY = freezepolicy.parse("freeze *\nunfreeze fc at epoch 2\n")


class Index:
    """An integer type that is not int (as numpy's and torch's are): accepted via __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


# --- parse and load --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "parse() takes policy text (str or bytes), got NoneType"),
        (3, "parse() takes policy text (str or bytes), got int"),
        (["freeze *"], "parse() takes policy text (str or bytes), got list"),
        (
            Path("p.freeze"),
            f"parse() takes policy text (str or bytes), got {type(Path()).__name__}; to read a"
            " policy file, use freezepolicy.load(path)",
        ),
    ],
)
def test_parse_says_it_takes_text(value, message) -> None:
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        freezepolicy.parse(value)


def test_parse_takes_bytes_like_text_and_a_str_source() -> None:
    assert freezepolicy.parse(bytearray(b"freeze *")).statements == POLICY.statements[:1]
    assert freezepolicy.parse(memoryview(b"freeze *")).statements == POLICY.statements[:1]
    with pytest.raises(TypeError, match="source must be a str"):
        freezepolicy.parse("freeze *", source=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 3, 3.5, ["p.freeze"]])
def test_load_says_it_takes_a_path(value) -> None:
    with pytest.raises(TypeError) as info:
        freezepolicy.load(value)
    assert str(info.value) == (
        f"load() takes the path of a policy file (str or os.PathLike), got {type(value).__name__};"
        " to parse policy text, use freezepolicy.parse(text)"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("freeze * except fc", "freeze * except fc"),
        ("freeze *\nunfreeze fc", "freeze *\\nunfreeze fc"),
        ("lr 0 for layer1; unfreeze fc", "lr 0 for layer1; unfreeze fc"),
    ],
)
def test_policy_text_given_as_a_path_suggests_parse(tmp_path, monkeypatch, text, shown) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(freezepolicy.PolicySourceError) as info:
        freezepolicy.load(text)
    assert str(info.value) == (
        f"{shown}: no such policy file; this looks like policy text, not a path: to parse text,"
        " use freezepolicy.parse(text) [FP001]"
    )
    # lint_file goes through load, and reports it the same way.
    assert lint_file(text).diagnostics[0].message.endswith("use freezepolicy.parse(text)")


def test_a_missing_path_that_is_not_policy_text_gets_the_plain_message(tmp_path) -> None:
    with pytest.raises(freezepolicy.PolicySourceError) as info:
        freezepolicy.load(tmp_path / "policies" / "freeze.freeze")
    assert info.value.message == "no such policy file"


def test_load_takes_bytes_paths(tmp_path) -> None:
    path = tmp_path / "p.freeze"
    path.write_text("freeze *\n", encoding="utf-8")
    assert freezepolicy.load(bytes(path)).statements == POLICY.statements[:1]


def test_str_of_a_policy_is_its_canonical_text() -> None:
    policy = freezepolicy.parse("freeze  * ;unfreeze fc at epoch 2  # head\n")
    assert str(policy) == policy.format() == "freeze *\nunfreeze fc at epoch 2  # head\n"
    assert f"{policy}" == policy.format()
    assert repr(policy).startswith("Policy(statements=")


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda names: POLICY.resolve(names),
        lambda names: POLICY.bind(names),
        lambda names: check_names(POLICY, names),
        lambda names: lint_text("freeze *", names=names),
    ],
    ids=["resolve", "bind", "check_names", "lint_text"],
)
def test_one_name_where_a_list_belongs_is_a_type_error(call) -> None:
    with pytest.raises(TypeError) as info:
        call("fc.weight")
    message = str(info.value)
    assert "names must be a list of parameter names, got a single str 'fc.weight'" in message
    assert message.endswith("to use one name, pass ['fc.weight']")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (5, "names must be an iterable of parameter names (str), got int"),
        ([b"fc.weight"], "every parameter name must be a str, got bytes b'fc.weight'"),
        (["fc.weight", None], "every parameter name must be a str, got NoneType None"),
        (b"fc.weight", "got a single bytes b'fc.weight'"),
    ],
)
def test_names_of_the_wrong_type(names, message) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        POLICY.resolve(names)


def test_module_types_of_the_wrong_type() -> None:
    policy = freezepolicy.parse("freeze type:Linear")
    with pytest.raises(TypeError, match="module_types must map each parameter name"):
        policy.resolve(NAMES, module_types=["Linear"])  # type: ignore[arg-type]
    with pytest.raises(TypeError) as info:
        policy.resolve(NAMES, module_types={n: "Linear" for n in NAMES})  # type: ignore[misc]
    assert str(info.value) == (
        "module_types: module_types['fc.weight'] must be a collection of class names, got the"
        " str 'Linear'; write ['Linear']"
    )
    types = {n: ["Linear"] for n in NAMES}
    assert all(d.trainable is False for d in policy.resolve(NAMES, module_types=types).values())


def test_check_names_takes_a_policy() -> None:
    with pytest.raises(TypeError, match="check_names\\(\\) takes a Policy"):
        check_names("freeze *", NAMES)  # type: ignore[arg-type]


# --- moments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "error", "message"),
    [
        ({"epoch": -1}, ValueError, "epoch must be 0 or more (epochs and steps count from 0)"),
        ({"step": -3}, ValueError, "step must be 0 or more (epochs and steps count from 0)"),
        ({"epoch": 2.7}, TypeError, "epoch must be a whole number, got 2.7 (float)"),
        ({"epoch": 2.0}, TypeError, "epoch must be a whole number, got 2.0 (float)"),
        ({"step": "3"}, TypeError, "step must be a whole number, got '3' (str)"),
        ({"epoch": True}, TypeError, "epoch must be a whole number, got True"),
        ({"epoch": None}, TypeError, "epoch must be a whole number, got None (NoneType)"),
        ({"steps_per_epoch": 0}, ValueError, "steps_per_epoch must be 1 or more, got 0"),
        ({"steps_per_epoch": 2.5}, TypeError, "steps_per_epoch must be a whole number, got 2.5"),
    ],
)
def test_a_moment_that_does_not_exist_is_an_error(moment, error, message) -> None:
    bound = POLICY.bind(NAMES)
    calls = [
        lambda: POLICY.resolve(NAMES, **moment),
        lambda: bound.resolve(**moment),
        lambda: bound.decisions(**moment),
        lambda: bound.decide_signatures(**moment),
    ]
    for call in calls:
        with pytest.raises(error) as info:
            call()
        assert str(info.value).startswith(message)


def test_integers_of_other_types_are_moments() -> None:
    decisions = POLICY.resolve(NAMES, epoch=Index(2), step=Index(0), steps_per_epoch=Index(10))
    assert decisions["fc.weight"].trainable is True
    assert POLICY.bind(NAMES).decisions(epoch=Index(1))["fc.weight"].trainable is False


def test_apply_policy_with_policy_text_suggests_parse(tmp_path, monkeypatch) -> None:
    """`apply_policy(model, "freeze *")` reads its policy argument as a path."""
    torch = pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(freezepolicy.PolicySourceError) as info:
        freezepolicy.apply_policy(model, "freeze * except bias")
    assert info.value.message.endswith("to parse text, use freezepolicy.parse(text)")
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed
