"""Printing: canonical files print back byte-identical; parse -> format -> parse is the identity
on ASTs; formatting is idempotent; and no generated or arbitrary input makes the parser raise
anything but PolicyError."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

import freezepolicy
from freezepolicy.lang.glob import compile_type_pattern
from freezepolicy.lang.grammar import build_parser
from freezepolicy.lang.matcher import compile_name_pattern
from freezepolicy.lang.nodes import (
    FOLLOW_KEYWORDS,
    Condition,
    Duration,
    Include,
    LayerDecay,
    NamePattern,
    Selection,
    ShapePattern,
    Statement,
    TypePattern,
    Value,
    When,
)
from freezepolicy.lang.parser import MAX_ERRORS
from freezepolicy.lang.policy import Policy

CANONICAL = sorted((Path(__file__).parent / "canonical").glob("*.freeze"))

# Deterministic runs (the suite must give the same answer every time); few examples each, so
# this whole file stays well under 15 s on two cores.
FAST = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --- canonical files -----------------------------------------------------------------------


def test_canonical_files_exist() -> None:
    names = {p.name for p in CANONICAL}
    assert {"empty.freeze", "comments_only.freeze", "bert_last2.freeze"} <= names
    assert len(CANONICAL) >= 6


@pytest.mark.parametrize("path", CANONICAL, ids=lambda p: p.name)
def test_canonical_file_prints_back_byte_identical(path: Path) -> None:
    data = path.read_bytes()
    policy = freezepolicy.load(path)
    assert policy.format().encode("utf-8") == data
    # Canonical text is LF-only, single-spaced and ends with exactly one newline (or is empty).
    text = data.decode("utf-8")
    assert "\r" not in text and "\t" not in text
    assert text == "" or (text.endswith("\n") and not text.endswith("\n\n"))
    assert "\n\n\n" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))


def _mess_up(line: str) -> str:
    """The same line with tabs and extra spaces in its code (its comment is left alone)."""
    code, hash_, comment = line.partition("#")
    code = code.replace(" ", " \t ").replace(", ", " ,  ")
    return "  " + code + hash_ + comment + "   "


@pytest.mark.parametrize("path", CANONICAL, ids=lambda p: p.name)
def test_canonical_file_survives_messy_layout(path: Path) -> None:
    """The same file with a BOM, CRLF, tabs, extra spaces and blank lines formats back to it."""
    text = path.read_text(encoding="utf-8")
    lines = [_mess_up(line) if line else "\t\n  " for line in text.split("\n")]
    messy = "\ufeff\n\n" + "\r\n".join(lines) + "\r\n\r\n"
    assert messy != text
    assert freezepolicy.parse(messy).format() == text
    assert freezepolicy.parse(messy).statements == freezepolicy.parse(text).statements


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("  freeze   *   except fc   \r\n\r\n\r\n# c   \n", "freeze * except fc\n\n# c\n"),
        ("freeze a;freeze b;;unfreeze   c", "freeze a\nfreeze b\nunfreeze c\n"),
        (
            "freeze a; freeze b # on b\n# own line\nfreeze c",
            "freeze a\nfreeze b  # on b\n# own line\nfreeze c\n",
        ),
        ("\n\n# top\n\n\n\nfreeze a\n\n\n", "# top\n\nfreeze a\n"),
        ("freeze a,b ,c except d , e", "freeze a, b, c except d, e\n"),
        ("lr   1e-4   for\tfc   at   step   9", "lr 1e-4 for fc at step 9\n"),
        ("stats  update  for  bn1;decay 0x for bias", "stats update for bn1\ndecay 0x for bias\n"),
        ("freeze a    #   spaced comment   ", "freeze a  #   spaced comment\n"),
        ("", ""),
        ("\n;\n  \n", ""),
    ],
)
def test_format_examples(text: str, canonical: str) -> None:
    assert freezepolicy.parse(text).format() == canonical
    assert freezepolicy.parse(canonical).format() == canonical


# --- an AST strategy -------------------------------------------------------------------------

LETTERS = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=6)
WORD = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
SMALL = st.integers(min_value=0, max_value=10**6)


@st.composite
def ranges(draw: st.DrawFn) -> str:
    lo, hi = sorted((draw(SMALL), draw(SMALL)))
    return f"{lo}..{hi}"


# One dot-separated part of a name pattern, in every form the pattern language offers. A range is
# never glued to digits (that would change its bounds), so it only follows letters.
PART = st.one_of(
    WORD,
    SMALL.map(str),
    st.builds(str.__add__, LETTERS | st.just(""), ranges()),
    st.builds(
        lambda a, glob, b: a + glob + b,
        LETTERS | st.just(""),
        st.sampled_from(["*", "?", "[01]", "[!0]", "[a-c]", "{q,k,v}", "{weight,bias}", "*?"]),
        LETTERS | st.just(""),
    ),
    st.sampled_from(["*", "**"]),
    # Whole parts counted from the end (resolved against names when bound).
    st.sampled_from(["-1", "-2..-1", "0..-3", "-4..2", "-10..-1"]),
)
#: Words that are keywords where a selector list ends in a layer decay (`down`, `to`).
NOT_SELECTORS = (*FOLLOW_KEYWORDS, "down", "to")
NAME_PATTERN_TEXT = (
    st.lists(PART, min_size=1, max_size=4).map(".".join).filter(lambda t: t not in NOT_SELECTORS)
)
NAME_PATTERN = st.builds(NamePattern, NAME_PATTERN_TEXT, st.booleans())
TYPE_PATTERN = st.builds(
    TypePattern,
    st.one_of(
        st.sampled_from(
            ["BatchNorm2d", "LayerNorm", "*Norm*", "BatchNorm?d", "Conv[12]d", "{Linear,Conv2d}"]
        ),
        st.from_regex(r"[A-Z][A-Za-z0-9_]{0,10}\*?", fullmatch=True),
    ),
)
SHAPE_PATTERN = st.builds(
    ShapePattern, st.sampled_from(["<", "<=", ">", ">=", "=", "!="]), st.integers(0, 999)
)
SELECTOR = st.one_of(NAME_PATTERN, NAME_PATTERN, TYPE_PATTERN, SHAPE_PATTERN)
SELECTION = st.builds(
    lambda inc, exc: Selection(tuple(inc), tuple(exc)),
    st.lists(SELECTOR, min_size=1, max_size=3),
    st.lists(SELECTOR, max_size=2),
)
NUMBER_TEXT = st.one_of(
    st.integers(min_value=0, max_value=1000).map(str),
    st.floats(min_value=0, max_value=100, allow_nan=False).map(repr),
    st.builds(lambda m, e: f"{m}e-{e}", st.integers(1, 9), st.integers(1, 9)),
    st.sampled_from([".5", "2.", "3E-5", "1e+2", "0.0"]),
)


@st.composite
def values(draw: st.DrawFn) -> Value:
    text = draw(NUMBER_TEXT)
    relative = draw(st.booleans())
    return Value(float(text), relative, text + ("x" if relative else ""))


WHEN = st.none() | st.builds(When, st.sampled_from(["epoch", "step"]), st.integers(0, 10**9))
CONDITION = st.builds(
    Condition,
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_./@-]{0,10}", fullmatch=True),
    st.sampled_from(["decreasing", "increasing"]),
    st.integers(1, 10**6),
)
FACTOR_TEXT = st.one_of(
    st.sampled_from(["1", "0.75", ".5", "1.0", "0.999", "1e-1", "7.5E-1"]),
    st.floats(min_value=1e-6, max_value=1, allow_nan=False).map(repr),
)


@st.composite
def layer_decays(draw: st.DrawFn) -> Statement:
    text = draw(FACTOR_TEXT)
    stack = draw(st.lists(NAME_PATTERN, min_size=1, max_size=2))
    layers = LayerDecay(
        Value(float(text), False, text),
        tuple(draw(st.lists(SELECTOR, max_size=2))),
        tuple(stack),
        tuple(draw(st.lists(SELECTOR, max_size=2))),
    )
    include = layers.top + layers.stack + layers.bottom
    selection = Selection(include, tuple(draw(st.lists(SELECTOR, max_size=2))))
    condition = draw(st.none() | CONDITION)
    when = None if condition is not None else draw(WHEN)
    warmup = draw(
        st.none() | st.builds(Duration, st.integers(1, 99), st.sampled_from(["epoch", "step"]))
    )
    return Statement("lr", selection, when=when, warmup=warmup, layers=layers, condition=condition)


@st.composite
def statements(draw: st.DrawFn) -> Statement:
    action = draw(st.sampled_from(["freeze", "unfreeze", "lr", "decay", "stats", "layers"]))
    if action == "layers":
        return draw(layer_decays())
    selection = draw(SELECTION)
    when = draw(WHEN)
    # A metric-driven statement: its `then` groups come at plateaus, with no `at` or `every`.
    condition = draw(st.none() | CONDITION) if when is None else None
    # Gradual statements: `then` groups always come with `every`, on the clock of `at`.
    every = None
    then = draw(st.lists(st.lists(SELECTOR, min_size=1, max_size=2).map(tuple), max_size=2))
    if then and condition is not None:
        selection = Selection(selection.include, selection.exclude, tuple(then))
    elif then:
        clock = when.clock if when is not None else draw(st.sampled_from(["epoch", "step"]))
        every = Duration(draw(st.integers(1, 50)), clock)
        selection = Selection(selection.include, selection.exclude, tuple(then))
    # A warm-up ramps a learning rate: only `unfreeze` and `lr` take one.
    warmup = None
    if action in ("unfreeze", "lr") and draw(st.booleans()):
        warmup = Duration(draw(st.integers(1, 1000)), draw(st.sampled_from(["epoch", "step"])))
    if action in ("lr", "decay"):
        return Statement(
            action,
            selection,
            value=draw(values()),
            when=when,
            every=every,
            warmup=warmup,
            condition=condition,
        )
    if action == "stats":
        mode = draw(st.sampled_from(["update", "freeze"]))
        return Statement(action, selection, when=when, mode=mode, every=every, condition=condition)
    return Statement(action, selection, when=when, every=every, warmup=warmup, condition=condition)


STATEMENTS = st.lists(statements(), max_size=6)
INCLUDES = st.lists(
    st.builds(
        Include,
        st.one_of(
            st.sampled_from(["builtin:bert_last2", "base.freeze", "../x/y z.freeze"]),
            st.from_regex(r"[A-Za-z0-9_./:-]{1,12}", fullmatch=True),
        ),
    ),
    max_size=2,
)


def _all_selectors(sts):
    for s in sts:
        yield from s.selection.selectors


@FAST
@given(STATEMENTS, INCLUDES)
def test_ast_format_parse_is_identity(sts: list[Statement], incs: list[Include]) -> None:
    for s in _all_selectors(sts):  # the strategy only draws valid selectors
        if isinstance(s, NamePattern):
            compile_name_pattern(s.text, s.anchored).select(["a.0.b"])
        elif isinstance(s, TypePattern):
            compile_type_pattern(s.text)
    text = Policy(tuple(sts), includes=tuple(incs)).format()
    # The include lines are kept, not read (the files need not exist).
    parsed = freezepolicy.parse(text, includes=False)
    assert parsed.statements == tuple(sts)
    assert parsed.includes == tuple(incs)
    assert parsed.format() == text  # idempotent
    assert [s.line for s in parsed.statements] == list(range(1, len(sts) + 1))


# --- messy layouts ---------------------------------------------------------------------------

SPACE = st.sampled_from([" ", "  ", "\t", " \t ", "\x0c "])
OPTIONAL_SPACE = st.sampled_from(["", " ", "\t", "  "])
COMMENT_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=("Cs",)),
    max_size=12,
)
SEPARATOR = st.sampled_from(["\n", ";", " ; ", ";\n", "\r\n", "\n\n\n", "\r", "\n \t\n", ";;"])


def _tokens(st_: Statement) -> list[str]:
    """The words of a statement as written (commas are separate tokens)."""
    out = [st_.action]
    if st_.layers is not None:
        layers = st_.layers
        out += ["decay", layers.factor.text, "per", "layer"]
        for word, group in (("from", layers.top), ("down", layers.stack), ("to", layers.bottom)):
            if group:
                out.append(word)
                for i, s in enumerate(group):
                    out += [",", str(s)] if i else [str(s)]
        if st_.selection.exclude:
            out.append("except")
            for i, s in enumerate(st_.selection.exclude):
                out += [",", str(s)] if i else [str(s)]
        out += _timing_tokens(st_)
        return out
    if st_.mode is not None:
        out += [st_.mode, "for"]
    elif st_.value is not None:
        out += [st_.value.text, "for"]

    def sels(nodes):
        for i, s in enumerate(nodes):
            if i:
                out.append(",")
            out.append(str(s))

    for g, group in enumerate(st_.selection.groups):
        if g:
            out.append("then")
        sels(group)
    if st_.selection.exclude:
        out.append("except")
        sels(st_.selection.exclude)
    return out + _timing_tokens(st_)


def _timing_tokens(st_: Statement) -> list[str]:
    out: list[str] = []
    if st_.when is not None:
        out += ["at", st_.when.clock, str(st_.when.at)]
    if st_.condition is not None:
        c = st_.condition
        unit = "evaluation" if c.patience == 1 else "evaluations"
        out += ["when", c.metric, "stops", c.trend, "for", str(c.patience), unit]
    for word, duration in (("every", st_.every), ("warmup", st_.warmup)):
        if duration is not None:
            # Either spelling of the unit, and `every epoch` for a count of 1.
            unit = duration.clock + ("s" if duration.count != 1 else "")
            if word == "every" and duration.count == 1:
                out += [word, duration.clock]
            else:
                out += [word, str(duration.count), unit]
    return out


@st.composite
def messy_layouts(draw: st.DrawFn) -> tuple[str, list[Statement]]:
    sts = draw(STATEMENTS)
    pieces = [draw(st.sampled_from(["", "\ufeff", "\n\n", ";", "# header\n", "\r\n"]))]
    for i, s in enumerate(sts):
        if i:
            pieces.append(draw(SEPARATOR))
        pieces.append(draw(OPTIONAL_SPACE))
        toks = _tokens(s)
        for j, tok in enumerate(toks):
            if j:
                # A comma needs no space around it; words need at least one between them.
                glue = OPTIONAL_SPACE if "," in (tok, toks[j - 1]) else SPACE
                pieces.append(draw(glue))
            pieces.append(tok)
        pieces.append(draw(OPTIONAL_SPACE))
        if draw(st.booleans()):
            pieces.append("#" + draw(COMMENT_TEXT) + "\n")
        if draw(st.booleans()):
            pieces.append("\n" + draw(OPTIONAL_SPACE) + "#" + draw(COMMENT_TEXT) + "\n")
    pieces.append(draw(st.sampled_from(["", "\n", "\r\n", ";", "  ", "\n\n# trailer"])))
    return "".join(pieces), sts


@FAST
@given(messy_layouts())
def test_messy_layout_parses_to_the_same_ast(case: tuple[str, list[Statement]]) -> None:
    text, sts = case
    first = freezepolicy.parse(text)
    assert first.statements == tuple(sts)
    canonical = first.format()
    second = freezepolicy.parse(canonical)
    assert second.statements == first.statements
    # Comments survive, minus trailing whitespace; formatting is idempotent.
    assert [c.text for c in second.comments] == [c.text.rstrip() for c in first.comments]
    assert second.format() == canonical


# --- generated from the grammar ----------------------------------------------------------------

PARSER = build_parser()


def _padded(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Tokens with whitespace around them, so adjacent tokens never run together."""
    return st.builds(lambda a, t, b: a + t + b, SPACE, strategy, SPACE)


# 1 or more: valid as a time (`at epoch 3`) and as a count (`every 3 epochs`).
_WHOLE = st.integers(1, 10**6).map(str)

# Explicit strategies for every terminal that give only well-formed tokens: every generated text
# must parse. NUMBER serves both values and times, so it is a whole number, valid for both
# (multipliers and fractions are covered by the AST strategy above).
VALID_TERMINALS: dict[str, st.SearchStrategy[str]] = {
    "FREEZE": _padded(st.just("freeze")),
    "UNFREEZE": _padded(st.just("unfreeze")),
    "LR": _padded(st.just("lr")),
    "DECAY": _padded(st.just("decay")),
    "STATS": _padded(st.just("stats")),
    "STATS_MODE": _padded(st.sampled_from(["update", "freeze"])),
    "_EXCEPT": _padded(st.just("except")),
    "CLOCK": _padded(st.sampled_from(["epoch", "step", "epochs", "steps"])),
    "_FOR": _padded(st.just("for")),
    "THEN": _padded(st.just("then")),
    "EVERY": _padded(st.just("every")),
    "WARMUP": _padded(st.just("warmup")),
    "_AT": _padded(st.just("at")),
    "COMMA": st.sampled_from([",", " , ", ",\t"]),
    "NUMBER": _padded(_WHOLE),
    "PATTERN": _padded(st.one_of(NAME_PATTERN.map(str), SHAPE_PATTERN.map(str))),
    "TYPE_PATTERN": _padded(TYPE_PATTERN.map(str)),
    "_SEP": st.sampled_from(["\n", ";", " ; ", "\r\n", "  # note\n", "\n\n", ";\n# c\n"]),
    "WS": SPACE,
    # A comment inside a statement would swallow the rest of it; comments come with _SEP.
    "COMMENT": SPACE,
    "INCLUDE": _padded(st.just("include")),
    # Built-in policies exist wherever the package is: a generated include always resolves.
    "STRING": _padded(st.sampled_from(['"builtin:bert_last2"', '"builtin:no_decay_bias_norm"'])),
    "_PER": _padded(st.just("per")),
    "_LAYER": _padded(st.just("layer")),
    "FROM": _padded(st.just("from")),
    "DOWN": _padded(st.just("down")),
    "TO": _padded(st.just("to")),
    "_WHEN": _padded(st.just("when")),
    "_STOPS": _padded(st.just("stops")),
    "TREND": _padded(st.sampled_from(["decreasing", "increasing"])),
    "EVALUATIONS": _padded(st.sampled_from(["evaluations", "evaluation"])),
    "METRIC": _padded(CONDITION.map(lambda c: c.metric)),
}


def test_valid_terminals_cover_the_grammar() -> None:
    names = {t.name for t in PARSER.terminals}
    assert names == set(VALID_TERMINALS)


@FAST
@given(from_lark(PARSER, explicit=VALID_TERMINALS))
def test_text_generated_from_the_grammar_parses(text: str) -> None:
    # Rules tie clauses together beyond what a context-free grammar says: `then` and `every`
    # come together, `warmup` only on `unfreeze`/`lr`, `every` and `at` count on one clock,
    # `when` takes neither `at` nor `every`; a layer decay's factor is at most 1 and its stack
    # a name selector. Generated text may break them; it must then fail with those codes.
    try:
        policy = freezepolicy.parse(text)
    except freezepolicy.PolicySyntaxError as exc:
        codes = {d.code for d in exc.diagnostics}
        assert codes <= {"FP130", "FP131", "FP132", "FP133", "FP142", "FP144"}, str(exc)
        words = ("then", "every", "warmup", "per", "when")
        assert any(word in text for word in words), str(exc)
        return
    canonical = policy.format()
    again = freezepolicy.parse(canonical)
    assert again.statements == policy.statements
    assert again.format() == canonical


# Messier terminals: numbers straight from the NUMBER regex (signs, fractions, exponents),
# arbitrary selector tokens, no padding, unicode and stray separators.
NOISY_TERMINALS: dict[str, st.SearchStrategy[str]] = {
    "NUMBER": st.from_regex(
        r"[+-]?(\d{1,3}\.?\d{0,2}|\.\d{1,2})([eE][+-]?\d{1,4})?x?", fullmatch=True
    ),
    "PATTERN": st.one_of(
        NAME_PATTERN.map(str),
        st.from_regex(r"\^?(?:[^\s,;#\[{]|\[[^\]\s;#]*\]?|\{[^}\s;#]*\}?){1,6}", fullmatch=True),
        st.sampled_from(["except", "at", "for", "3..1", "a[", "b{x", "]", "**x", "..", "a..b"]),
        st.from_regex(r"ndim[<>=!][^\s,;#]{0,5}", fullmatch=True),
    ),
    "TYPE_PATTERN": st.one_of(
        TYPE_PATTERN.map(str), st.from_regex(r"type:[^\s,;#]{0,6}", fullmatch=True)
    ),
    "METRIC": st.from_regex(r"[^\s,;#]{1,8}", fullmatch=True),
    "STRING": st.one_of(
        st.from_regex(r'"[^"\n]{0,10}"', fullmatch=True),
        st.sampled_from(['"builtin:bert_last2"', '""', '"builtin:"', '"."', '"/dev/null"']),
    ),
    "_SEP": st.sampled_from(["\n", ";", "\r", "\r\n", "#x\n", "\x0c\n", "\n\ufeff"]),
    "WS": st.sampled_from([" ", "\t", "", "\x0c", "\u00a0", "\u3000"]),
    "COMMENT": st.text(max_size=5).map(lambda t: "#" + t),
}


@FAST
@given(from_lark(PARSER, explicit=NOISY_TERMINALS))
def test_noisy_grammar_text_raises_only_policy_errors(text: str) -> None:
    _parse_only_policy_errors(text)


def _parse_only_policy_errors(text: str | bytes) -> None:
    try:
        policy = freezepolicy.parse(text)
    except freezepolicy.PolicyError as exc:
        assert exc.diagnostics
        rendered = str(exc)  # formatting an error must not fail either
        assert rendered.startswith("<string>:")
        assert len(exc.diagnostics) <= MAX_ERRORS + 1
        return
    # What parses must print and parse back to the same statements.
    assert freezepolicy.parse(policy.format()).statements == policy.statements


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_policy_errors(text: str) -> None:
    _parse_only_policy_errors(text)


@FAST
@given(
    st.lists(
        st.sampled_from(
            [
                "freeze",
                "unfreeze",
                "lr",
                "decay",
                "stats",
                "update",
                "for",
                "except",
                "at",
                "epoch",
                "step",
                "type:",
                "^",
                "*",
                "**",
                "?",
                ".",
                "..",
                ",",
                ";",
                "\n",
                "#",
                "[",
                "]",
                "{",
                "}",
                "!",
                "0",
                "1",
                "-1",
                "0.5",
                "1e-4",
                "x",
                "fc",
                " ",
                "\t",
                "\r",
            ]
        ),
        max_size=30,
    ).map("".join)
)
def test_keyword_soup_raises_only_policy_errors(text: str) -> None:
    _parse_only_policy_errors(text)


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_policy_errors(data: bytes) -> None:
    _parse_only_policy_errors(data)
