# ruff: noqa: E501  (pinned error messages are quoted whole, as a user sees them)
"""Errors on bad input: the pinned text of every message in the catalogue, the attributes and
classes of the errors, collected and capped reports, and inputs that must never hang.

Each pinned message was read and judged as a message for a user before it was pinned: it says
where (`path:line:col`), what was wrong and what was expected, in the words of the language.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

import freezepolicy
from freezepolicy import (
    PolicyError,
    PolicyResolveError,
    PolicySourceError,
    PolicySyntaxError,
)
from freezepolicy.lang.errors import CODES, Diagnostic
from freezepolicy.lang.parser import MAX_ERRORS

PATH = "policy.freeze"
STATEMENT_WORDS = "(a statement starts with `freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)"


def error_of(source: str | bytes) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        freezepolicy.parse(source, PATH)
    return info.value


def pinned(text: str) -> str:
    """Expected error text, written as an indented block in the test for readability."""
    return textwrap.dedent(text).strip("\n")


# (policy text, expected str(error), code, line, column, error class)
CATALOGUE = [
    pytest.param(
        "frezee fc",
        f"""
        policy.freeze:1:1: unknown statement `frezee`; did you mean `freeze`? {STATEMENT_WORDS} [FP101]
            frezee fc
            ^~~~~~
        """,
        "FP101",
        1,
        1,
        PolicySyntaxError,
        id="unknown-keyword",
    ),
    pytest.param(
        "freeze fc\nunfreez layer4",
        f"""
        policy.freeze:2:1: unknown statement `unfreez`; did you mean `unfreeze`? {STATEMENT_WORDS} [FP101]
            unfreez layer4
            ^~~~~~~
        """,
        "FP101",
        2,
        1,
        PolicySyntaxError,
        id="unknown-keyword-unfreeze",
    ),
    pytest.param(
        "fc",
        f"""
        policy.freeze:1:1: unknown statement `fc` {STATEMENT_WORDS} [FP101]
            fc
            ^~
        """,
        "FP101",
        1,
        1,
        PolicySyntaxError,
        id="unknown-keyword-no-suggestion",
    ),
    pytest.param(
        "freeze",
        """
        policy.freeze:1:7: expected a selector such as `layer1` or `*` after `freeze`, found the end of the statement [FP102]
            freeze
                  ^
        """,
        "FP102",
        1,
        7,
        PolicySyntaxError,
        id="missing-selector",
    ),
    pytest.param(
        "freeze except fc",
        """
        policy.freeze:1:8: expected a selector such as `layer1` or `*` before `except` [FP102]
            freeze except fc
                   ^~~~~~
        """,
        "FP102",
        1,
        8,
        PolicySyntaxError,
        id="missing-selector-before-except",
    ),
    pytest.param(
        "unfreeze at epoch 3",
        """
        policy.freeze:1:10: expected a selector such as `layer1` or `*` before `at` [FP102]
            unfreeze at epoch 3
                     ^~
        """,
        "FP102",
        1,
        10,
        PolicySyntaxError,
        id="missing-selector-before-at",
    ),
    pytest.param(
        "freeze * except",
        """
        policy.freeze:1:16: expected a selector after `except`, found the end of the statement [FP102]
            freeze * except
                           ^
        """,
        "FP102",
        1,
        16,
        PolicySyntaxError,
        id="missing-selector-after-except",
    ),
    pytest.param(
        "lr 1e-4 for",
        """
        policy.freeze:1:12: expected a selector such as `layer1` or `*` after `for`, found the end of the statement [FP102]
            lr 1e-4 for
                       ^
        """,
        "FP102",
        1,
        12,
        PolicySyntaxError,
        id="missing-selector-after-for",
    ),
    pytest.param(
        "freeze fc,",
        """
        policy.freeze:1:11: expected a selector such as `layer1` or `*` after `,`, found the end of the statement [FP102]
            freeze fc,
                      ^
        """,
        "FP102",
        1,
        11,
        PolicySyntaxError,
        id="missing-selector-after-comma",
    ),
    pytest.param(
        "freeze except",
        """
        policy.freeze:1:8: `except` is a keyword, not a selector; is a selector missing before it? [FP108]
            freeze except
                   ^~~~~~
        """,
        "FP108",
        1,
        8,
        PolicySyntaxError,
        id="keyword-as-selector",
    ),
    pytest.param(
        "freeze * at epoch",
        """
        policy.freeze:1:18: expected a whole number after `at epoch`, as in `at epoch 3`, found the end of the statement [FP104]
            freeze * at epoch
                             ^
        """,
        "FP104",
        1,
        18,
        PolicySyntaxError,
        id="at-epoch-no-number",
    ),
    pytest.param(
        "unfreeze fc at step soon",
        """
        policy.freeze:1:21: expected a whole number after `at step`, as in `at step 3`, found `soon` [FP104]
            unfreeze fc at step soon
                                ^~~~
        """,
        "FP104",
        1,
        21,
        PolicySyntaxError,
        id="at-step-not-a-number",
    ),
    pytest.param(
        "freeze * at",
        """
        policy.freeze:1:12: expected `epoch` or `step` after `at`, as in `at epoch 3`, found the end of the statement [FP103]
            freeze * at
                       ^
        """,
        "FP103",
        1,
        12,
        PolicySyntaxError,
        id="at-no-clock",
    ),
    pytest.param(
        "freeze * at epch 3",
        """
        policy.freeze:1:13: expected `epoch` or `step` after `at`, as in `at epoch 3`, found `epch`; did you mean `epoch`? [FP101]
            freeze * at epch 3
                        ^~~~
        """,
        "FP101",
        1,
        13,
        PolicySyntaxError,
        id="misspelled-clock",
    ),
    pytest.param(
        "freeze * at epoch -1",
        """
        policy.freeze:1:19: epoch cannot be negative (epochs and steps count from 0), got `-1` [FP105]
            freeze * at epoch -1
                              ^~
        """,
        "FP105",
        1,
        19,
        PolicySyntaxError,
        id="negative-epoch",
    ),
    pytest.param(
        "freeze * at step -30",
        """
        policy.freeze:1:18: step cannot be negative (epochs and steps count from 0), got `-30` [FP105]
            freeze * at step -30
                             ^~~
        """,
        "FP105",
        1,
        18,
        PolicySyntaxError,
        id="negative-step",
    ),
    pytest.param(
        "freeze * at epoch 1.5",
        """
        policy.freeze:1:19: epoch must be a whole number, got `1.5` [FP105]
            freeze * at epoch 1.5
                              ^~~
        """,
        "FP105",
        1,
        19,
        PolicySyntaxError,
        id="fractional-epoch",
    ),
    pytest.param(
        "freeze * at epoch 2x",
        """
        policy.freeze:1:19: epoch must be a whole number, got `2x` [FP105]
            freeze * at epoch 2x
                              ^~
        """,
        "FP105",
        1,
        19,
        PolicySyntaxError,
        id="multiplier-epoch",
    ),
    pytest.param(
        "freeze * at epoch +3",
        """
        policy.freeze:1:19: epoch is written without a sign, got `+3` [FP105]
            freeze * at epoch +3
                              ^~
        """,
        "FP105",
        1,
        19,
        PolicySyntaxError,
        id="signed-epoch",
    ),
    pytest.param(
        "freeze * at step 1234567890123456789",
        """
        policy.freeze:1:18: step is too large (at most 18 digits), got `1234567890123456789` [FP105]
            freeze * at step 1234567890123456789
                             ^~~~~~~~~~~~~~~~~~~
        """,
        "FP105",
        1,
        18,
        PolicySyntaxError,
        id="huge-step",
    ),
    pytest.param(
        "lr abc for fc",
        """
        policy.freeze:1:4: expected a learning rate such as `1e-4`, `0` or `0.1x` after `lr`, found `abc` [FP106]
            lr abc for fc
               ^~~
        """,
        "FP106",
        1,
        4,
        PolicySyntaxError,
        id="lr-not-a-number",
    ),
    pytest.param(
        "decay none for bias",
        """
        policy.freeze:1:7: expected a weight decay such as `1e-4`, `0` or `0.1x` after `decay`, found `none` [FP106]
            decay none for bias
                  ^~~~
        """,
        "FP106",
        1,
        7,
        PolicySyntaxError,
        id="decay-not-a-number",
    ),
    pytest.param(
        "lr -1e-4 for fc",
        """
        policy.freeze:1:4: a learning rate cannot be negative, got `-1e-4` [FP107]
            lr -1e-4 for fc
               ^~~~~
        """,
        "FP107",
        1,
        4,
        PolicySyntaxError,
        id="lr-negative",
    ),
    pytest.param(
        "decay -0.5x for bias",
        """
        policy.freeze:1:7: a weight decay cannot be negative, got `-0.5x` [FP107]
            decay -0.5x for bias
                  ^~~~~
        """,
        "FP107",
        1,
        7,
        PolicySyntaxError,
        id="decay-negative-multiplier",
    ),
    pytest.param(
        "lr 1e999 for fc",
        """
        policy.freeze:1:4: learning rate `1e999` is too large [FP106]
            lr 1e999 for fc
               ^~~~~
        """,
        "FP106",
        1,
        4,
        PolicySyntaxError,
        id="lr-infinite",
    ),
    pytest.param(
        "lr 1e-4 fc",
        """
        policy.freeze:1:9: expected `for` after `1e-4`, as in `lr 1e-4 for fc`, found `fc` [FP103]
            lr 1e-4 fc
                    ^~
        """,
        "FP103",
        1,
        9,
        PolicySyntaxError,
        id="lr-missing-for",
    ),
    pytest.param(
        "stats keep for bn1",
        """
        policy.freeze:1:7: expected `update` or `freeze` after `stats`, as in `stats update for bn1`, found `keep` [FP103]
            stats keep for bn1
                  ^~~~
        """,
        "FP103",
        1,
        7,
        PolicySyntaxError,
        id="stats-bad-mode",
    ),
    pytest.param(
        "freeze fc bn1",
        """
        policy.freeze:1:11: unexpected `bn1`; expected `,`, `then`, `except`, `at`, `every`, `warmup`, `when` or the end of the statement (separate selectors with `,`) [FP103]
            freeze fc bn1
                      ^~~
        """,
        "FP103",
        1,
        11,
        PolicySyntaxError,
        id="selectors-without-comma",
    ),
    pytest.param(
        "freeze * exept fc",
        """
        policy.freeze:1:10: unknown word `exept`; did you mean `except`? [FP101]
            freeze * exept fc
                     ^~~~~
        """,
        "FP101",
        1,
        10,
        PolicySyntaxError,
        id="exept",
    ),
    pytest.param(
        "freeze layer[01",
        """
        policy.freeze:1:13: unclosed `[`: add `]` to end the character class [FP121]
            freeze layer[01
                        ^
        """,
        "FP121",
        1,
        13,
        PolicySyntaxError,
        id="unclosed-bracket",
    ),
    pytest.param(
        "unfreeze encoder.layer.{10,11.attention",
        """
        policy.freeze:1:24: unclosed `{`: add `}` to end the alternatives [FP121]
            unfreeze encoder.layer.{10,11.attention
                                   ^
        """,
        "FP121",
        1,
        24,
        PolicySyntaxError,
        id="unclosed-brace",
    ),
    pytest.param(
        "freeze type:{BatchNorm2d,LayerNorm",
        """
        policy.freeze:1:13: unclosed `{`: add `}` to end the alternatives [FP121]
            freeze type:{BatchNorm2d,LayerNorm
                        ^
        """,
        "FP121",
        1,
        13,
        PolicySyntaxError,
        id="unclosed-brace-in-type",
    ),
    pytest.param(
        "freeze layer1]",
        """
        policy.freeze:1:14: `]` without a matching `[` [FP126]
            freeze layer1]
                         ^
        """,
        "FP126",
        1,
        14,
        PolicySyntaxError,
        id="stray-closing-bracket",
    ),
    pytest.param(
        "lr 0 for layer3..1",
        """
        policy.freeze:1:15: range `3..1` is reversed; write `1..3` [FP122]
            lr 0 for layer3..1
                          ^~~~
        """,
        "FP122",
        1,
        15,
        PolicySyntaxError,
        id="reversed-range",
    ),
    pytest.param(
        "freeze type:",
        """
        policy.freeze:1:13: `type:` needs a class name, as in `type:BatchNorm2d` [FP129]
            freeze type:
                        ^
        """,
        "FP129",
        1,
        13,
        PolicySyntaxError,
        id="empty-type",
    ),
    pytest.param(
        b"freeze fc\nunfreeze caf\xe9\n",
        """
        policy.freeze:2:13: invalid UTF-8 (byte 0xe9); save the policy as UTF-8 text [FP003]
            unfreeze caf\N{REPLACEMENT CHARACTER}
                        ^
        """,
        "FP003",
        2,
        13,
        PolicySourceError,
        id="invalid-utf8",
    ),
    pytest.param(
        b"\xef\xbb\xbffreeze \xff\xfe",
        """
        policy.freeze:1:8: invalid UTF-8 (byte 0xff); save the policy as UTF-8 text [FP003]
            freeze \N{REPLACEMENT CHARACTER}\N{REPLACEMENT CHARACTER}
                   ^
        """,
        "FP003",
        1,
        8,
        PolicySourceError,
        id="invalid-utf8-after-bom",
    ),
    pytest.param(
        b"freeze fc\r\nfree\x00ze layer1\r\n",
        """
        policy.freeze:2:5: this is not a policy file: it contains NUL bytes (is it binary?) [FP002]
            free\N{SYMBOL FOR NULL}ze layer1
                ^
        """,
        "FP002",
        2,
        5,
        PolicySourceError,
        id="nul-bytes",
    ),
    pytest.param(
        "freeze fc\nfree\x00ze layer1\n",
        """
        policy.freeze:2:5: this is not a policy: it contains NUL characters [FP002]
            free\N{SYMBOL FOR NULL}ze layer1
                ^
        """,
        "FP002",
        2,
        5,
        PolicySourceError,
        id="nul-characters",
    ),
    pytest.param(
        "freeze fc\n\tlr\t-1\tfor\tfc",
        """
        policy.freeze:2:5: a learning rate cannot be negative, got `-1` [FP107]
            \tlr\t-1\tfor\tfc
            \t  \t^~
        """,
        "FP107",
        2,
        5,
        PolicySyntaxError,
        id="tabs",
    ),
    pytest.param(
        "freeze fc\r\n\r\n  unfreeze layer4 at epoch -2\r\n",
        """
        policy.freeze:3:28: epoch cannot be negative (epochs and steps count from 0), got `-2` [FP105]
              unfreeze layer4 at epoch -2
                                       ^~
        """,
        "FP105",
        3,
        28,
        PolicySyntaxError,
        id="crlf",
    ),
    pytest.param(
        "freezefc",
        """
        policy.freeze:1:1: `freezefc` runs words together; did you mean `freeze fc`? (a keyword or number ends at a space, `,`, `;`, `#` or the end of the line) [FP110]
            freezefc
            ^~~~~~~~
        """,
        "FP110",
        1,
        1,
        PolicySyntaxError,
        id="run-on-statement-keyword",
    ),
    pytest.param(
        "lr0.1xforfc",
        """
        policy.freeze:1:1: `lr0.1xforfc` runs words together; did you mean `lr 0.1x for fc`? (a keyword or number ends at a space, `,`, `;`, `#` or the end of the line) [FP110]
            lr0.1xforfc
            ^~~~~~~~~~~
        """,
        "FP110",
        1,
        1,
        PolicySyntaxError,
        id="run-on-lr",
    ),
    pytest.param(
        "freeze encoder exceptional",
        """
        policy.freeze:1:16: `exceptional` runs words together; did you mean `except ional`; or, for another selector, put `,` before it? (a keyword or number ends at a space, `,`, `;`, `#` or the end of the line) [FP110]
            freeze encoder exceptional
                           ^~~~~~~~~~~
        """,
        "FP110",
        1,
        16,
        PolicySyntaxError,
        id="run-on-except",
    ),
    pytest.param(
        "stats updatefor bn",
        """
        policy.freeze:1:7: `updatefor` runs words together; did you mean `update for`? (a keyword or number ends at a space, `,`, `;`, `#` or the end of the line) [FP110]
            stats updatefor bn
                  ^~~~~~~~~
        """,
        "FP110",
        1,
        7,
        PolicySyntaxError,
        id="run-on-stats-mode",
    ),
    pytest.param(
        "unfreeze fc at epoch 3warmup 2 epochs",
        """
        policy.freeze:1:22: `3warmup` runs words together; did you mean `3 warmup`? (a keyword or number ends at a space, `,`, `;`, `#` or the end of the line) [FP110]
            unfreeze fc at epoch 3warmup 2 epochs
                                 ^~~~~~~
        """,
        "FP110",
        1,
        22,
        PolicySyntaxError,
        id="run-on-number",
    ),
    pytest.param(
        "freeze\u200b*",
        """
        policy.freeze:1:7: U+200B ZERO WIDTH SPACE is invisible: delete it (only comments may hold invisible characters) [FP111]
            freeze\ufffd*
                  ^
        """,
        "FP111",
        1,
        7,
        PolicySyntaxError,
        id="zero-width-space",
    ),
    pytest.param(
        "freeze\u00a0fc",
        """
        policy.freeze:1:7: U+00A0 NO-BREAK SPACE is not a plain space: write ` ` (U+0020) instead [FP111]
            freeze\ufffdfc
                  ^
        """,
        "FP111",
        1,
        7,
        PolicySyntaxError,
        id="no-break-space",
    ),
    pytest.param(
        "# comments may hold \u200b and \u202e\nfreeze fc\u202e, bias",
        """
        policy.freeze:2:10: U+202E RIGHT-TO-LEFT OVERRIDE is invisible: delete it (only comments may hold invisible characters) [FP111]
            freeze fc\ufffd, bias
                     ^
        """,
        "FP111",
        2,
        10,
        PolicySyntaxError,
        id="bidi-override-outside-a-comment",
    ),
    pytest.param(
        "lr 1e-400 for fc",
        """
        policy.freeze:1:4: learning rate `1e-400` is too small to represent: it would round to 0, which freezes what it selects; write `0` to freeze [FP112]
            lr 1e-400 for fc
               ^~~~~~
        """,
        "FP112",
        1,
        4,
        PolicySyntaxError,
        id="lr-underflows-to-zero",
    ),
    pytest.param(
        "decay 0.5e-330x for bias",
        """
        policy.freeze:1:7: weight decay `0.5e-330x` is too small to represent: it would round to 0, which turns weight decay off; write `0` for none [FP112]
            decay 0.5e-330x for bias
                  ^~~~~~~~~
        """,
        "FP112",
        1,
        7,
        PolicySyntaxError,
        id="decay-underflows-to-zero",
    ),
    pytest.param(
        "unfreeze layer4 at step 3 every 2 epochs",
        """
        policy.freeze:1:27: `every` spaces out groups listed with `then`, as in `unfreeze layer4 then layer3 every 2 epochs`; this statement has one group [FP131]
            unfreeze layer4 at step 3 every 2 epochs
                                      ^~~~~~~~~~~~~~
        """,
        "FP131",
        1,
        27,
        PolicySyntaxError,
        id="every-without-then-on-another-clock-is-one-problem",
    ),
]


@pytest.mark.parametrize(("source", "expected", "code", "line", "column", "cls"), CATALOGUE)
def test_catalogue(source, expected, code, line, column, cls) -> None:
    error = error_of(source)
    assert str(error) == pinned(expected)
    assert type(error) is cls
    assert isinstance(error, PolicyError)
    assert (error.path, error.line, error.column, error.code) == (PATH, line, column, code)
    assert code in CODES
    assert len(error.diagnostics) == 1


def test_multiple_errors_are_all_reported_in_file_order() -> None:
    text = (
        "# a policy with one mistake per line\n"
        "frezee *\n"
        "unfreeze fc\n"
        "lr -1 for fc\n"
        "freeze layer[01\n"
        "\n"
        "unfreeze layer4 at epoch 1.5; freeze * exept fc\n"
    )
    error = error_of(text)
    assert isinstance(error, PolicySyntaxError)
    assert [(d.line, d.column, d.code) for d in error.diagnostics] == [
        (2, 1, "FP101"),
        (4, 4, "FP107"),
        (5, 13, "FP121"),
        (7, 26, "FP105"),
        (7, 40, "FP101"),
    ]
    # The error itself is the first problem; str() shows every one, each with its caret.
    assert (error.line, error.column, error.code) == (2, 1, "FP101")
    assert str(error) == pinned(
        f"""
        policy.freeze:2:1: unknown statement `frezee`; did you mean `freeze`? {STATEMENT_WORDS} [FP101]
            frezee *
            ^~~~~~
        policy.freeze:4:4: a learning rate cannot be negative, got `-1` [FP107]
            lr -1 for fc
               ^~
        policy.freeze:5:13: unclosed `[`: add `]` to end the character class [FP121]
            freeze layer[01
                        ^
        policy.freeze:7:26: epoch must be a whole number, got `1.5` [FP105]
            unfreeze layer4 at epoch 1.5; freeze * exept fc
                                     ^~~
        policy.freeze:7:40: unknown word `exept`; did you mean `except`? [FP101]
            unfreeze layer4 at epoch 1.5; freeze * exept fc
                                                   ^~~~~
        """
    )


def test_semantic_error_before_a_syntax_error_comes_first() -> None:
    # The syntax error on line 3 is found first, the negative rate on line 2 while re-reading
    # the lines before it; the report is still in file order.
    error = error_of("freeze fc\r\nlr -1 for fc\r\nfrezee x\r\n")
    assert [(d.line, d.code) for d in error.diagnostics] == [(2, "FP107"), (3, "FP101")]


def test_errors_are_capped_with_a_final_line() -> None:
    text = "\n".join(f"frezee layer{i}" for i in range(1, 31))
    error = error_of(text)
    assert len(error.diagnostics) == MAX_ERRORS + 1 == 21
    assert [d.line for d in error.diagnostics[:MAX_ERRORS]] == list(range(1, 21))
    assert all(d.code == "FP101" for d in error.diagnostics[:MAX_ERRORS])
    last = error.diagnostics[-1]
    assert (last.code, last.line, last.column) == ("FP109", 20, None)
    assert str(error).endswith(
        "\n    frezee layer20\n    ^~~~~~\n"
        "policy.freeze:20: too many errors; stopped after 20 [FP109]"
    )


def test_cap_counts_value_errors_too() -> None:
    error = error_of("lr -1 for fc\n" * 25)
    assert [d.code for d in error.diagnostics] == ["FP107"] * 20 + ["FP109"]


@pytest.mark.parametrize("bad_lines", [19, 20])
def test_no_cap_line_when_nothing_was_left_out(bad_lines: int) -> None:
    error = error_of("\n".join(["frezee fc"] * bad_lines) + "\nfreeze ok\n")
    assert len(error.diagnostics) == bad_lines
    assert "FP109" not in {d.code for d in error.diagnostics}


def test_good_statements_between_bad_ones_are_not_reported() -> None:
    error = error_of("freeze a\nfrezee b\nfreeze c\nfreeze d e\nfreeze f\n")
    assert [(d.line, d.code) for d in error.diagnostics] == [(2, "FP101"), (4, "FP103")]


def test_error_attributes_and_pickling() -> None:
    error = error_of("lr -1 for fc")
    assert isinstance(error, Exception)
    assert error.message == "a learning rate cannot be negative, got `-1`"
    assert error.first.end_column == 6
    assert error.first.severity == "error"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is PolicySyntaxError
    assert str(copy) == str(error)
    assert (copy.path, copy.line, copy.column, copy.code) == (PATH, 1, 4, "FP107")


def test_every_error_class_is_a_policy_error() -> None:
    for cls in (PolicySourceError, PolicySyntaxError, PolicyResolveError):
        assert issubclass(cls, PolicyError)
        assert issubclass(cls, Exception)
    assert issubclass(PolicyError, Exception)


def test_load_reports_file_problems(tmp_path) -> None:
    missing = tmp_path / "missing.freeze"
    with pytest.raises(PolicySourceError) as info:
        freezepolicy.load(missing)
    assert str(info.value) == f"{missing}: no such policy file [FP001]"
    assert (info.value.path, info.value.line, info.value.code) == (str(missing), None, "FP001")

    with pytest.raises(PolicySourceError) as info:
        freezepolicy.load(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a policy file [FP001]"

    binary = tmp_path / "weights.freeze"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(PolicySourceError) as info:
        freezepolicy.load(binary)
    assert info.value.code == "FP002"
    assert str(info.value).startswith(f"{binary}:1:5: this is not a policy file")

    bad = tmp_path / "bad.freeze"
    bad.write_text("freeze fc\nfrezee layer4\n", encoding="utf-8")
    with pytest.raises(PolicySyntaxError) as info:
        freezepolicy.load(bad)
    assert str(info.value).startswith(f"{bad}:2:1: unknown statement `frezee`")


def test_long_lines_are_shown_as_a_window_around_the_caret() -> None:
    line = "freeze " + "a," * 3000 + "b c"
    error = error_of(line)
    col = len(line) - 1 + 1  # the `c`
    assert (error.line, error.column, error.code) == (1, col, "FP103")
    shown, caret = str(error).split("\n")[1:]
    assert shown.startswith("    ...") and shown.endswith("b c")
    assert len(shown) < 140
    # The caret is under the `c`.
    assert caret.index("^") == shown.index("b c") + 2


def test_a_huge_word_is_quoted_short() -> None:
    error = error_of("x" * 100_000)
    first = str(error).split("\n")[0]
    assert first == (
        "policy.freeze:1:1: unknown statement `" + "x" * 37 + "...` " + STATEMENT_WORDS + " [FP101]"
    )


def test_diagnostic_without_position_formats_as_one_line() -> None:
    d = Diagnostic(
        "FP201", "selector `x` matches no parameter", "p.freeze", 3, 8, None, None, "warning"
    )
    assert d.format() == "p.freeze:3:8: warning: selector `x` matches no parameter [FP201]"
    assert Diagnostic("FP001", "no such policy file", "p.freeze").format() == (
        "p.freeze: no such policy file [FP001]"
    )


# --- inputs that must not hang ---------------------------------------------------------------

# Each case runs in its own interpreter: a regular expression stuck in backtracking cannot be
# interrupted from inside the process. All cases start at once (the machine's cores share the
# work) and each test waits for its own; the limit is generous and no tight timing is asserted.
HANG_LIMIT_S = 90

_CHILD = textwrap.dedent(
    """
    import sys
    import freezepolicy
    from freezepolicy.lang.checks import check_names
    case = sys.argv[1]
    mb = 1_000_000
    line = "lr 1e-4 for layer1..4.0..3.conv[12].weight, ^fc except bias at epoch 3  # ok\\n"
    sources = {
        "valid_1mb": line * (mb // len(line)),
        "garbage_line_1mb": "freeze " + "a b ! ] ? ^ " * (mb // 12),
        "brackets_1mb": "[" * mb,
        "braces_1mb": "freeze " + "{" * mb,
        "newlines_1mb": "\\n" * mb,
        "crlf_1mb": "\\r\\n" * (mb // 2),
        "semicolons_1mb": ";" * mb,
        "commas_1mb": "freeze " + "," * mb,
        "stars_1mb": "freeze " + "*?" * (mb // 2),
        "stars_many_lines": ("freeze " + "*?" * 400 + "\\n") * 2000,
        "bad_lines": "lr -1 for x\\n" * 25_000,
        "unknown_lines_1mb": "frezee x\\n" * (mb // 9),
        "digits_1mb": "freeze a at epoch " + "9" * mb,
        "number_1mb": "lr " + "1" * mb + " for fc",
        "comment_1mb": "#" + "x" * mb,
        "wildcards_vs_long_name": "freeze " + "*?" * 40 + "\\nfreeze " + "*a" * 14 + "*b",
    }
    text = sources[case]
    try:
        policy = freezepolicy.parse(text)
    except freezepolicy.PolicyError as exc:
        str(exc)
        print("error", len(exc.diagnostics), exc.code)
    else:
        names = ["layer1.0.conv1.weight", "layer1.0.bn1.bias", "fc.weight", "a" * 39 + ".b"]
        found = check_names(policy, names)
        print("ok", len(policy.statements), len(policy.format()), len(found))
    """
)

HANG_CASES = {
    "valid_1mb": "ok 12987 ",
    "garbage_line_1mb": "error 1 FP103",
    # A word of a million characters is refused before the lexer sees it (FP113).
    "brackets_1mb": "error 1 FP113",
    "braces_1mb": "error 1 FP113",
    "newlines_1mb": "ok 0 0 0",
    "crlf_1mb": "ok 0 0 0",
    "semicolons_1mb": "ok 0 0 0",
    "commas_1mb": "error 1 FP113",
    "stars_1mb": "error 1 FP113",
    "stars_many_lines": "ok 2000 ",
    "bad_lines": "error 21 FP107",
    "unknown_lines_1mb": "error 21 FP101",
    "digits_1mb": "error 1 FP113",
    "number_1mb": "error 1 FP113",
    "comment_1mb": "ok 0 1000002 0",  # the comment and a final newline
}


@pytest.fixture(scope="module")
def hang_runs():
    procs = {
        case: subprocess.Popen(
            [sys.executable, "-c", _CHILD, case],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case in HANG_CASES
    }
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("case", list(HANG_CASES))
def test_large_and_pathological_inputs_do_not_hang(hang_runs, case: str) -> None:
    proc = hang_runs[case]
    try:
        out, err = proc.communicate(timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{case}: still running after {HANG_LIMIT_S} s")
    assert proc.returncode == 0, err
    assert out.startswith(HANG_CASES[case]), out


def test_repetitive_wildcards_checked_against_names_do_not_hang() -> None:
    """`*?*?...` or `*a*a...b` against a name part that almost matches.

    With each `*` a plain backtracking `[^.]*` this took exponential time in the number of
    wildcards (hours); patterns.py matches fixed-width runs between stars atomically, as
    fnmatch does, so it takes well under a second.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, "wildcards_vs_long_name"],
            capture_output=True,
            text=True,
            timeout=3,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("still running after 3 s")
    assert done.returncode == 0, done.stderr
    # Both selectors match nothing; each is reported once (FP201), after trying every name.
    assert done.stdout.startswith("ok 2 "), done.stdout
    assert done.stdout.split()[-1] == "2", done.stdout


# --- lint messages name what they are about ---------------------------------------------------


def test_never_effective_names_the_lines_that_override_it() -> None:
    from freezepolicy.lang.checks import check_names

    names = ["fc.weight", "fc.bias", "layer1.0.conv1.weight"]
    cases = {
        "freeze fc\nunfreeze *\n": "(line 2)",
        "freeze fc\nunfreeze fc.weight\nunfreeze fc.bias\n": "(lines 2 and 3)",
        "lr 0.1 for fc\nlr 0 for *\n": "(line 2)",
        "unfreeze fc at epoch 2\nfreeze * at epoch 3\nunfreeze * at epoch 2\n": "(lines 2 and 3)",
    }
    for text, where in cases.items():
        (d,) = check_names(freezepolicy.parse(text, PATH), names)
        assert (d.code, d.line) == ("FP202", 1)
        assert d.message.endswith(f"later statements always override it {where}"), d.message
