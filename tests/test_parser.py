"""The parser: statements parse into exactly the AST written by hand, with the right spans.

Expected ASTs are built from freezepolicy.lang.nodes directly, never copied from parser output.
Spans are excluded from node equality, so they are checked separately, against columns counted
by hand (1-based, end column exclusive)."""

from __future__ import annotations

import pytest

import freezepolicy
from freezepolicy.lang.grammar import build_parser, grammar_path
from freezepolicy.lang.nodes import (
    Comment,
    NamePattern,
    Selection,
    Span,
    Statement,
    TypePattern,
    Value,
    When,
)


def statements(text: str | bytes) -> tuple[Statement, ...]:
    return freezepolicy.parse(text).statements


def name(text: str) -> NamePattern:
    return NamePattern(text)


def sel(*include: str | TypePattern | NamePattern, exclude: tuple = ()) -> Selection:
    def node(s):
        return NamePattern(s) if isinstance(s, str) else s

    return Selection(tuple(node(s) for s in include), tuple(node(s) for s in exclude))


# The three statements the language issue says must parse exactly as written.
FREEZE_ALL_BUT_FC = Statement("freeze", sel("*", exclude=("fc",)))
LR0_LAYERS = Statement("lr", sel("layer1..3"), value=Value(0.0, False, "0"))
UNFREEZE_AT_5 = Statement("unfreeze", sel("encoder.layer.1[01]"), when=When("epoch", 5))


def test_freeze_all_except_fc() -> None:
    (st,) = statements("freeze * except fc")
    assert st == FREEZE_ALL_BUT_FC
    assert st.span == Span(1, 1, 1, 19)
    assert st.selection.include[0].span == Span(1, 8, 1, 9)
    assert st.selection.exclude[0].span == Span(1, 17, 1, 19)
    assert st.value is None and st.when is None and st.mode is None


def test_lr_zero_for_range() -> None:
    (st,) = statements("lr 0 for layer1..3")
    assert st == LR0_LAYERS
    assert st.value is not None and st.value.number == 0 and not st.value.relative
    assert st.value.span == Span(1, 4, 1, 5)
    assert st.selection.include[0].span == Span(1, 10, 1, 19)
    assert st.span == Span(1, 1, 1, 19)


def test_unfreeze_at_epoch() -> None:
    (st,) = statements("unfreeze encoder.layer.1[01] at epoch 5")
    assert st == UNFREEZE_AT_5
    assert st.selection.include[0].span == Span(1, 10, 1, 29)
    # The time's span starts at the clock word: `epoch` is at column 33, `5` ends before 40.
    assert st.when is not None and st.when.span == Span(1, 33, 1, 40)
    assert st.span == Span(1, 1, 1, 40)


def test_the_three_joined_by_semicolons_on_one_line() -> None:
    text = "freeze * except fc; lr 0 for layer1..3; unfreeze encoder.layer.1[01] at epoch 5"
    sts = statements(text)
    assert sts == (FREEZE_ALL_BUT_FC, LR0_LAYERS, UNFREEZE_AT_5)
    # "freeze * except fc" is 18 characters, then "; " -> `lr` at 21; it ends at 38, then
    # "; " -> `unfreeze` at 41. `layer1..3` is at 30 to 38 (end column 39, exclusive).
    assert [s.span.column for s in sts] == [1, 21, 41]
    assert [s.span.line for s in sts] == [1, 1, 1]
    assert sts[1].selection.include[0].span == Span(1, 30, 1, 39)
    assert sts[2].span.end_column == len(text) + 1
    assert [s.line for s in sts] == [1, 1, 1]


def test_same_statements_on_separate_lines() -> None:
    text = "freeze * except fc\nlr 0 for layer1..3\n\nunfreeze encoder.layer.1[01] at epoch 5\n"
    sts = statements(text)
    assert sts == (FREEZE_ALL_BUT_FC, LR0_LAYERS, UNFREEZE_AT_5)
    assert [s.line for s in sts] == [1, 2, 4]
    assert [s.span.column for s in sts] == [1, 1, 1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("freeze fc", Statement("freeze", sel("fc"))),
        ("unfreeze layer4", Statement("unfreeze", sel("layer4"))),
        ("freeze a, b.c, d*", Statement("freeze", sel("a", "b.c", "d*"))),
        (
            "freeze * except bias, norm",
            Statement("freeze", sel("*", exclude=("bias", "norm"))),
        ),
        ("lr 1e-4 for fc", Statement("lr", sel("fc"), value=Value(1e-4, False, "1e-4"))),
        ("lr 0.1x for layer4", Statement("lr", sel("layer4"), value=Value(0.1, True, "0.1x"))),
        ("lr 0x for fc", Statement("lr", sel("fc"), value=Value(0.0, True, "0x"))),
        ("lr 2x for fc", Statement("lr", sel("fc"), value=Value(2.0, True, "2x"))),
        ("lr .5 for fc", Statement("lr", sel("fc"), value=Value(0.5, False, ".5"))),
        ("lr 3E-5 for fc", Statement("lr", sel("fc"), value=Value(3e-5, False, "3E-5"))),
        ("decay 0 for bias", Statement("decay", sel("bias"), value=Value(0.0, False, "0"))),
        (
            "decay 0.01 for * except bias",
            Statement("decay", sel("*", exclude=("bias",)), value=Value(0.01, False, "0.01")),
        ),
        ("decay 0.5x for fc", Statement("decay", sel("fc"), value=Value(0.5, True, "0.5x"))),
        ("stats update for bn1", Statement("stats", sel("bn1"), mode="update")),
        ("stats freeze for *", Statement("stats", sel("*"), mode="freeze")),
        (
            "stats update for type:BatchNorm2d at epoch 2",
            Statement(
                "stats", sel(TypePattern("BatchNorm2d")), when=When("epoch", 2), mode="update"
            ),
        ),
        ("freeze * at step 100", Statement("freeze", sel("*"), when=When("step", 100))),
        ("freeze * at step 0", Statement("freeze", sel("*"), when=When("step", 0))),
        ("unfreeze * at epoch 0", Statement("unfreeze", sel("*"), when=When("epoch", 0))),
        ("freeze ^fc", Statement("freeze", sel(NamePattern("fc", anchored=True)))),
        (
            "freeze ^bert.embeddings, ^pooler except ^pooler.dense.bias",
            Statement(
                "freeze",
                sel(
                    NamePattern("bert.embeddings", True),
                    NamePattern("pooler", True),
                    exclude=(NamePattern("pooler.dense.bias", True),),
                ),
            ),
        ),
        ("freeze type:LayerNorm", Statement("freeze", sel(TypePattern("LayerNorm")))),
        ("freeze type:*Norm*", Statement("freeze", sel(TypePattern("*Norm*")))),
        (
            "freeze type:{BatchNorm2d,LayerNorm}, fc",
            Statement("freeze", sel(TypePattern("{BatchNorm2d,LayerNorm}"), "fc")),
        ),
        (
            "freeze * except type:BatchNorm?d",
            Statement("freeze", sel("*", exclude=(TypePattern("BatchNorm?d"),))),
        ),
        ("freeze encoder.**.bias", Statement("freeze", sel("encoder.**.bias"))),
        ("freeze layer{1,2}.*.conv?", Statement("freeze", sel("layer{1,2}.*.conv?"))),
        ("freeze layer[!0].x", Statement("freeze", sel("layer[!0].x"))),
        ("freeze encoder.layer.8..11", Statement("freeze", sel("encoder.layer.8..11"))),
        # Statement words other than `except`, `at` and `for` may name modules.
        (
            "freeze lr, stats, epoch, freeze",
            Statement("freeze", sel("lr", "stats", "epoch", "freeze")),
        ),
        ("stats freeze for freeze", Statement("stats", sel("freeze"), mode="freeze")),
        (
            "lr 1e-4 for a, b except c at epoch 3",
            Statement(
                "lr",
                sel("a", "b", exclude=("c",)),
                value=Value(1e-4, False, "1e-4"),
                when=When("epoch", 3),
            ),
        ),
    ],
)
def test_statement_forms(text: str, expected: Statement) -> None:
    assert statements(text) == (expected,)


def test_value_spans_and_multiplier() -> None:
    (st,) = statements("lr 0.1x for layer4 at step 250")
    assert st.value == Value(0.1, True, "0.1x")
    assert st.value is not None and st.value.span == Span(1, 4, 1, 8)
    assert st.selection.include[0].span == Span(1, 13, 1, 19)
    assert st.when == When("step", 250)
    assert st.when is not None and st.when.span == Span(1, 23, 1, 31)


def test_anchored_and_type_selector_spans_include_their_prefix() -> None:
    (st,) = statements("freeze ^fc, type:LayerNorm")
    anchored, typed = st.selection.include
    assert anchored.span == Span(1, 8, 1, 11)  # `^fc`
    assert typed.span == Span(1, 13, 1, 27)  # `type:LayerNorm`


def test_comments_and_blank_lines() -> None:
    text = (
        "# Train only the head.\n"
        "\n"
        "freeze *  # everything\n"
        "   # indented comment\n"
        "\n"
        "\n"
        "unfreeze fc # the head\n"
    )
    policy = freezepolicy.parse(text)
    assert policy.statements == (
        Statement("freeze", sel("*")),
        Statement("unfreeze", sel("fc")),
    )
    assert [s.line for s in policy.statements] == [3, 7]
    assert policy.comments == (
        Comment("# Train only the head."),
        Comment("# everything"),
        Comment("# indented comment"),
        Comment("# the head"),
    )
    assert [c.span for c in policy.comments] == [
        Span(1, 1, 1, 23),
        Span(3, 11, 3, 23),
        Span(4, 4, 4, 22),
        Span(7, 13, 7, 23),
    ]


def test_comment_right_after_a_selector_and_after_a_semicolon() -> None:
    policy = freezepolicy.parse("freeze a#x\nfreeze b;# y\n")
    assert policy.statements == (Statement("freeze", sel("a")), Statement("freeze", sel("b")))
    assert policy.comments == (Comment("#x"), Comment("# y"))


def test_separators_repeated_leading_and_trailing() -> None:
    expected = (Statement("freeze", sel("a")), Statement("unfreeze", sel("b")))
    for text in (
        ";;freeze a;;;unfreeze b;;",
        "\n\n; \nfreeze a ;\n ; unfreeze b ;\n",
        "freeze a\n\n\n\nunfreeze b",
    ):
        assert statements(text) == expected, text


CRLF_TEXT = (
    "freeze * except fc\r\n\r\nlr 0 for layer1..3\r\nunfreeze encoder.layer.1[01] at epoch 5\r\n"
)


def test_crlf_line_endings() -> None:
    sts = statements(CRLF_TEXT)
    assert sts == (FREEZE_ALL_BUT_FC, LR0_LAYERS, UNFREEZE_AT_5)
    assert [s.line for s in sts] == [1, 3, 4]
    # Columns are unchanged by the \r: the range ends at column 19 of line 3.
    assert sts[1].selection.include[0].span == Span(3, 10, 3, 19)
    assert statements(CRLF_TEXT.encode()) == sts


def test_lone_cr_line_endings() -> None:
    sts = statements(CRLF_TEXT.replace("\r\n", "\r"))
    assert sts == (FREEZE_ALL_BUT_FC, LR0_LAYERS, UNFREEZE_AT_5)
    assert [s.line for s in sts] == [1, 3, 4]


def test_mixed_line_endings() -> None:
    sts = statements("freeze a\rfreeze b\r\nfreeze c\nfreeze d")
    assert [s.selection.include[0].text for s in sts] == ["a", "b", "c", "d"]
    assert [s.line for s in sts] == [1, 2, 3, 4]


def test_tabs_are_whitespace_and_count_one_column() -> None:
    (st,) = statements("\tfreeze\t*\texcept\tfc\tat\tstep\t7\t")
    assert st == Statement("freeze", sel("*", exclude=("fc",)), when=When("step", 7))
    assert st.span.column == 2
    assert st.selection.include[0].span == Span(1, 9, 1, 10)
    assert st.selection.exclude[0].span == Span(1, 18, 1, 20)


def test_form_feed_is_whitespace() -> None:
    assert statements("freeze\x0ca") == (Statement("freeze", sel("a")),)


def test_utf8_bom_as_str_and_bytes() -> None:
    text = "freeze * except fc\nlr 0 for layer1..3\n"
    for source in ("\ufeff" + text, b"\xef\xbb\xbf" + text.encode()):
        sts = statements(source)
        assert sts == (FREEZE_ALL_BUT_FC, LR0_LAYERS)
        # The mark takes no column: the statement starts at column 1.
        assert sts[0].span == Span(1, 1, 1, 19)


def test_bytes_input_is_utf8() -> None:
    (st,) = statements("freeze café.poids".encode())
    assert st == Statement("freeze", sel("café.poids"))


@pytest.mark.parametrize(
    "text",
    ["", "\n", "\n\n\n", "   \t ", ";", ";;\n;", "\r\n\r\n", "\ufeff", b"", b"\xef\xbb\xbf"],
)
def test_empty_sources_are_valid_with_no_statements(text: str | bytes) -> None:
    policy = freezepolicy.parse(text)
    assert policy.statements == ()
    assert policy.comments == ()
    assert policy.resolve(["fc.weight"]) == {"fc.weight": freezepolicy.Decision("fc.weight")}


def test_comments_only_file_is_valid() -> None:
    policy = freezepolicy.parse("# nothing yet\n\n   # still nothing\r\n#\n")
    assert policy.statements == ()
    assert [c.text for c in policy.comments] == ["# nothing yet", "# still nothing", "#"]
    assert [c.span.line for c in policy.comments] == [1, 3, 4]


def test_comment_without_final_newline() -> None:
    policy = freezepolicy.parse("freeze a # last")
    assert policy.statements == (Statement("freeze", sel("a")),)
    assert policy.comments == (Comment("# last"),)


def test_equality_ignores_spans_only() -> None:
    a = statements("freeze   a ,b   except c")
    b = statements("\n\n  freeze a, b except c")
    assert a == b
    assert a[0].span != b[0].span
    # ...but not the way a number is written: `1e-4` and `0.0001` are different texts.
    assert statements("lr 1e-4 for a") != statements("lr 0.0001 for a")


def test_load_reads_a_file(tmp_path) -> None:
    path = tmp_path / "p.freeze"
    path.write_bytes(b"\xef\xbb\xbffreeze * except fc\r\nlr 0 for layer1..3\r\n")
    policy = freezepolicy.load(path)
    assert policy.statements == (FREEZE_ALL_BUT_FC, LR0_LAYERS)
    assert policy.source == str(path)
    assert freezepolicy.load(str(path)).statements == policy.statements


# Keywords and numbers end at a word boundary: none of these may be read as a statement.
RUN_ON = [
    "freezefc",
    "freeze*",
    "unfreezelayer4",
    "lr0.1xforfc",
    "lr 0.1xfor fc",
    "lr 1e-4forfc",
    "decay 0for bias",
    "statsupdatefor bn",
    "stats update forbn",
    "freeze encoder exceptional",
    "freeze encoder exceptfc",
    "unfreeze fc atepoch 3",
    "unfreeze fc at epoch3",
    "unfreeze fc at epoch 3warmup 2 epochs",
    "unfreeze fc warmup 2epochs",
    "unfreeze a thenb every 2 epochs",
    "unfreeze a then b every2 epochs",
]


@pytest.mark.parametrize("text", RUN_ON)
def test_keywords_and_numbers_end_at_a_word_boundary(text: str) -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(text)
    assert info.value.code == "FP110", str(info.value)
    assert "did you mean `" in info.value.message


@pytest.mark.parametrize(
    "text",
    ["freeze a,b", "freeze a ,b", "freeze a;freeze b", "freeze a#c", "lr 0.1x\tfor fc"],
)
def test_a_keyword_may_touch_a_separator_comma_or_comment(text: str) -> None:
    assert freezepolicy.parse(text).statements


def test_grammar_builds_in_lalr_strict_mode() -> None:
    """Shift/reduce or reduce/reduce conflicts and terminal collisions fail here, in CI."""
    import interegular  # noqa: F401  (lark needs it to check terminal collisions)

    parser = build_parser(strict=True)
    assert parser.options.parser == "lalr"
    assert parser.options.strict
    assert grammar_path().name == "freeze.lark"
