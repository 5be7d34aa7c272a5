"""Selector name patterns: what each must and must not match, ranges, and agreement with an
independent reference matcher (tests/reference_matcher.py) over generated patterns and names."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference_matcher import matches as reference_matches
from reference_matcher import split_parts

import freezepolicy
from freezepolicy.lang.glob import PartAutomaton, compile_part
from freezepolicy.lang.matcher import compile_name_pattern
from freezepolicy.lang.nodes import NamePattern, Selection, Statement
from freezepolicy.lang.patterns import NumberRange, parse_name_pattern, range_regex
from freezepolicy.lang.policy import Policy


def selects(pattern: str, name: str) -> bool:
    """Whether a selector as written in a policy (`^` for the anchored form) selects `name`."""
    anchored = pattern.startswith("^")
    body = pattern[1:] if anchored else pattern
    return compile_name_pattern(body, anchored).matches(name)


# (selector as written, names it must select, names it must not select)
TABLE: list[tuple[str, list[str], list[str]]] = [
    (
        "fc",
        ["fc.weight", "fc.bias", "head.fc.bias", "model.head.fc.weight", "fc"],
        ["fc1.weight", "head.fc1.bias", "xfc.weight", "fc_out.weight", "f.c", "fcx"],
    ),
    (
        "bias",
        ["fc.bias", "layer1.0.bn1.bias", "bias", "encoder.layer.3.output.LayerNorm.bias"],
        ["fc.weight", "bias_k", "fc.biases", "in_proj_bias", "fc.bia"],
    ),
    (
        "encoder.layer.1[01]",
        [
            "encoder.layer.10.attention.self.query.weight",
            "encoder.layer.11.output.LayerNorm.bias",
            "bert.encoder.layer.10.attention.output.dense.bias",
            "bert.encoder.layer.11.intermediate.dense.weight",
            "encoder.layer.10",
        ],
        [
            "encoder.layer.1.attention.self.query.weight",
            "bert.encoder.layer.1.output.dense.bias",
            "encoder.layer.12.output.dense.bias",
            "encoder.layer.100.output.dense.bias",
            "encoder.layer.110.output.dense.bias",
            "decoder.layer.10.output.dense.bias",
            "encoder.layers.10.output.dense.bias",
            "encoder.layer.0.output.dense.bias",
        ],
    ),
    (
        "layer1..3",
        [
            "layer1.0.conv1.weight",
            "layer2.1.bn2.bias",
            "layer3.0.downsample.0.weight",
            "m.layer2.w",
        ],
        [
            "layer4.0.conv1.weight",
            "layer0.0.conv1.weight",
            "layer10.0.conv1.weight",
            "layer13.0.conv1.weight",
            "layer01.0.conv1.weight",
            "layer.1.conv1.weight",
            "conv1.weight",
            "layer1x.weight",
        ],
    ),
    (
        "encoder.layer.8..11",
        [
            "encoder.layer.8.attention.self.key.bias",
            "encoder.layer.9.output.dense.weight",
            "encoder.layer.10.output.dense.weight",
            "bert.encoder.layer.11.output.LayerNorm.bias",
        ],
        [
            "encoder.layer.7.output.dense.weight",
            "encoder.layer.12.output.dense.weight",
            "encoder.layer.1.output.dense.weight",
            "encoder.layer.80.output.dense.weight",
            "encoder.layer.08.output.dense.weight",
            "encoder.layer.110.output.dense.weight",
        ],
    ),
    (
        "{query,key}",
        ["encoder.layer.0.attention.self.query.weight", "attention.self.key.bias", "key"],
        ["attention.self.value.weight", "query_proj.weight", "querykey.weight", "keys.weight"],
    ),
    (
        "layer{1..2,4}",
        ["layer1.0.w", "layer2.1.w", "layer4.0.w"],
        ["layer3.0.w", "layer12.0.w", "layer41.0.w", "layer0.0.w", "layer.w"],
    ),
    (
        "attention.self.{query,key}.bias",
        ["encoder.layer.3.attention.self.query.bias", "attention.self.key.bias"],
        ["attention.self.value.bias", "attention.self.query.weight", "attention.query.bias"],
    ),
    (
        "encoder.**.bias",
        [
            "encoder.layer.0.attention.self.query.bias",
            "bert.encoder.layer.11.output.LayerNorm.bias",
            "encoder.bias",  # `**` may match no part at all
        ],
        [
            "encoder.layer.0.attention.self.query.weight",
            "embeddings.LayerNorm.bias",
            "encoder.layer.0.bias_x",
            "encoders.layer.0.bias",
        ],
    ),
    ("**.bias", ["fc.bias", "bias", "a.b.c.bias"], ["fc.weight", "fc.bias_k"]),
    (
        "layer4.**",
        ["layer4.0.conv1.weight", "layer4", "m.layer4.fc.bias"],
        ["layer40.0.conv1.weight", "layer3.0.conv1.weight"],
    ),
    ("**", ["fc.weight", "a", "layer1.0.conv1.weight"], []),
    ("^**.fc", ["fc.weight", "head.fc.bias"], ["fc1.weight", "head.fc1.bias"]),
    (
        "^**.bn1",
        ["bn1.weight", "layer1.0.bn1.bias"],
        ["bn2.weight", "bn10.weight"],
    ),
    (
        "bn?",
        ["bn1.weight", "layer1.0.bn2.bias", "bnx.w"],
        ["bn.weight", "bn10.weight", "bn1x.weight", "xbn1.weight"],
    ),
    (
        "layer1.[!0]",
        ["layer1.1.conv1.weight", "layer1.2.bn1.bias"],
        ["layer1.0.conv1.weight", "layer1.10.conv1.weight", "layer1.weight", "layer2.1.w"],
    ),
    (
        "layer[^1].0",
        ["layer2.0.conv1.weight", "layer4.0.bn1.bias"],
        ["layer1.0.conv1.weight", "layer2.1.conv1.weight", "layer22.0.w"],
    ),
    ("[a-c]?", ["ab.w", "x.c1.w", "c_"], ["a.w", "abc.w", "d1.w", "A1.w"]),
    (
        "^fc",
        ["fc.weight", "fc.bias", "fc"],
        ["head.fc.bias", "fc1.weight", "model.fc.weight"],
    ),
    (
        "head.fc",
        ["head.fc.bias", "model.head.fc.weight"],
        ["fc.weight", "head.fc1.weight", "head.x.fc.weight", "myhead.fc.weight"],
    ),
    ("^head.fc", ["head.fc.bias"], ["model.head.fc.weight", "fc.weight"]),
    (
        "conv*",
        ["conv1.weight", "layer1.0.conv2.weight", "conv.weight"],
        ["xconv1.weight", "downsample.0.weight", "Conv1.weight"],
    ),
    ("*.weight", ["fc.weight", "a.b.weight"], ["weight", "fc.bias", "fc.weight_g"]),
    # Names are case-sensitive, as in PyTorch.
    ("*Norm*", ["embeddings.LayerNorm.weight", "Norm.w"], ["embeddings.layernorm.weight"]),
    # Ranges: zero bounds, single and multi-digit bounds, never leading zeros.
    ("layer0..0", ["layer0.w"], ["layer00.w", "layer1.w", "layer.w", "layer01.w"]),
    ("x.0..9", ["x.0.w", "x.9.w", "x.5"], ["x.10.w", "x.00.w", "x.09.w", "x.a.w"]),
    ("block0..10", ["block0.w", "block1.w", "block9.w", "block10.w"], ["block11.w", "block010.w"]),
    (
        "layer.95..105",
        ["layer.95.w", "layer.99.w", "layer.100.w", "layer.105.w"],
        ["layer.94.w", "layer.106.w", "layer.9.w", "layer.1000.w", "layer.0100.w", "layer.10.w"],
    ),
    ("h.0..99.mlp", ["h.0.mlp.w", "h.42.mlp.w", "h.99.mlp.w"], ["h.100.mlp.w", "h.007.mlp.w"]),
    ("1..3", ["1.w", "m.3.w"], ["4.w", "13.w", "0.w", "01.w"]),
    ("v1..3x", ["v1x.w", "v3x"], ["v4x.w", "v13x.w", "v1.w"]),
    # A range takes the whole run of digits, even when a wildcard after it could take some.
    ("layer1..3*", ["layer1.w", "layer2x.w", "layer3_a.w"], ["layer12.w", "layer10x.w"]),
    ("0..5?", ["1a.w", "5x.w"], ["12.w", "55.w", "1.w", "01a.w"]),
]


def _cases() -> list[tuple[str, str, bool]]:
    return [
        (pattern, name, expected)
        for pattern, good, bad in TABLE
        for names, expected in ((good, True), (bad, False))
        for name in names
    ]


@pytest.mark.parametrize(("pattern", "name", "expected"), _cases())
def test_pattern_table(pattern: str, name: str, expected: bool) -> None:
    assert selects(pattern, name) is expected
    # The reference matcher is held to the same hand-written expectations.
    anchored = pattern.startswith("^")
    assert reference_matches(pattern.lstrip("^"), name, anchored) is expected


@pytest.mark.parametrize(("pattern", "good", "bad"), TABLE)
def test_pattern_table_through_a_parsed_policy(
    pattern: str, good: list[str], bad: list[str]
) -> None:
    """The same selections hold when the selector is written in a policy and resolved."""
    policy = freezepolicy.parse(f"freeze {pattern}")
    decisions = policy.resolve(good + bad)
    assert {n for n, d in decisions.items() if d.trainable is False} == set(good)


def test_anchored_and_unanchored_differ_only_in_where_the_run_starts() -> None:
    names = ["fc.weight", "head.fc.bias", "fc1.weight"]
    policy = freezepolicy.parse("freeze ^fc\nunfreeze fc")
    (anchored, unanchored) = policy.statements
    assert anchored.selection.include == (NamePattern("fc", anchored=True),)
    assert unanchored.selection.include == (NamePattern("fc", anchored=False),)
    assert [n for n in names if selects("^fc", n)] == ["fc.weight"]
    assert [n for n in names if selects("fc", n)] == ["fc.weight", "head.fc.bias"]


# --- numeric ranges -------------------------------------------------------------------------


def test_huge_range_compiles_instantly_into_two_numbers() -> None:
    text = "layer0..99999999999999"
    started = time.perf_counter()
    parts = parse_name_pattern.__wrapped__(text)  # bypass the cache: time the real work
    pattern = compile_name_pattern.__wrapped__(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    # A range stays its two bounds, never a list of numbers.
    assert parts[0][-1] == NumberRange(0, 99999999999999)
    assert pattern.matches("layer123456789.weight")
    assert pattern.matches("layer0.weight")
    assert pattern.matches("layer99999999999999.weight")
    assert not pattern.matches("layer100000000000000.weight")
    assert not pattern.matches("layer0123.weight")
    policy = freezepolicy.parse(f"freeze {text}")
    decisions = policy.resolve(["layer123456789.w", "layer100000000000000.w"])
    assert decisions["layer123456789.w"].trainable is False
    assert decisions["layer100000000000000.w"].trainable is None


def test_forty_digit_range_stays_small() -> None:
    text = "x.0.." + "9" * 40
    assert len(range_regex(0, 10**40 - 1)) < 1000
    assert compile_name_pattern(text).matches("x." + "9" * 40)
    assert not compile_name_pattern(text).matches("x.1" + "0" * 40)


def _numbers_text(top: int) -> tuple[str, list[str]]:
    """Every number 0..top, plus zero-padded spellings that a range must never match."""
    words = [str(n) for n in range(top + 1)]
    words += ["0" + str(n) for n in range(0, top + 1, 7)] + ["00", "000", "0099"]
    return "\n".join(words), words


def test_range_regex_exhaustive_small_bounds() -> None:
    """range_regex(lo, hi) matches exactly the numbers lo..hi, for every 0 <= lo <= hi <= 150."""
    top = 1200
    text, _ = _numbers_text(top)
    for lo in range(151):
        for hi in range(lo, 151):
            found = re.findall(f"^(?:{range_regex(lo, hi)})$", text, re.MULTILINE)
            expected = [str(n) for n in range(lo, hi + 1)]
            assert found == expected, (lo, hi, range_regex(lo, hi))


def test_range_regex_exhaustive_bounds_around_powers_of_ten() -> None:
    """Bounds on both sides of 10, 100 and 1000 against every number 0..1200."""
    top = 1200
    text, _ = _numbers_text(top)
    edges = sorted({e + d for e in (0, 1, 9, 10, 99, 100, 999, 1000) for d in (-1, 0, 1)} - {-1})
    for lo in edges:
        for hi in edges:
            if lo > hi:
                continue
            found = re.findall(f"^(?:{range_regex(lo, hi)})$", text, re.MULTILINE)
            assert found == [str(n) for n in range(lo, min(hi, top) + 1)], (lo, hi)


@st.composite
def _range_and_probe(draw: st.DrawFn) -> tuple[int, int, int]:
    lo = draw(st.integers(0, 10**25))
    hi = lo + draw(st.one_of(st.integers(0, 1000), st.integers(0, 10**25)))
    probe = draw(
        st.one_of(
            st.sampled_from([lo, hi, lo - 1, hi + 1, 0, 10 ** len(str(hi)), 10 ** len(str(lo))]),
            st.integers(lo, hi),
            st.integers(0, 10**26),
        )
    )
    return lo, hi, max(probe, 0)


@settings(max_examples=300, deadline=None)
@given(_range_and_probe())
def test_range_regex_large_bounds(case: tuple[int, int, int]) -> None:
    lo, hi, probe = case
    regex = range_regex(lo, hi)
    assert (re.fullmatch(regex, str(probe)) is not None) == (lo <= probe <= hi)
    # Leading zeros never match, whatever the value.
    assert re.fullmatch(regex, "0" + str(probe)) is None
    # Size grows with the number of digits, not with hi - lo.
    assert len(regex) < 60 * len(str(hi)) + 20


# --- generated patterns and names against the reference matcher ------------------------------

_LETTERS = "ab_"
_CLASS_CHARS = "ab012"


@st.composite
def _class(draw: st.DrawFn) -> str:
    items = draw(
        st.lists(
            st.one_of(
                st.sampled_from(_CLASS_CHARS),
                st.tuples(st.sampled_from(_CLASS_CHARS), st.sampled_from(_CLASS_CHARS)).map(
                    lambda t: f"{min(t)}-{max(t)}"
                ),
            ),
            min_size=1,
            max_size=2,
        )
    )
    return "[" + draw(st.sampled_from(["", "!"])) + "".join(items) + "]"


@st.composite
def _range(draw: st.DrawFn) -> str:
    lo = draw(st.sampled_from([0, 0, 1, 2, 5, 9, 10, 12, 99, 100]))
    hi = lo + draw(st.sampled_from([0, 1, 2, 3, 10, 90, 1000]))
    return f"{lo}..{hi}"


# (kind, text) atoms: the kind keeps ranges away from digits, where the text would merge into
# a different range (`1` + `2..3` is `12..3`), and keeps two `*` from making a `**`.
_SIMPLE_ATOMS = st.one_of(
    st.sampled_from(_LETTERS).map(lambda c: ("char", c)),
    st.sampled_from(["0", "1", "2", "9"]).map(lambda c: ("digit", c)),
    st.just(("star", "*")),
    st.just(("one", "?")),
    _class().map(lambda c: ("class", c)),
    # Ranges are drawn more often: they are where the translation is hardest.
    _range().map(lambda r: ("range", r)),
    _range().map(lambda r: ("range", r)),
)


def _well_formed(atoms: list[tuple[str, str]]) -> bool:
    for (k1, _), (k2, _) in zip(atoms, atoms[1:], strict=False):
        if {k1, k2} <= {"star"}:
            return False
        if (k1 == "range" and k2 in ("digit", "range")) or (k2 == "range" and k1 == "digit"):
            return False
    return True


def _atom_list(atom: st.SearchStrategy, min_size: int) -> st.SearchStrategy:
    return st.lists(atom, min_size=min_size, max_size=3).filter(_well_formed)


_ALTERNATIVES = (
    st.lists(_atom_list(_SIMPLE_ATOMS, 0), min_size=1, max_size=3)
    .map(lambda options: ",".join("".join(t for _, t in o) for o in options))
    .filter(lambda body: body != "")
    .map(lambda body: ("alt", "{" + body + "}"))
)
_ATOMS_PART = _atom_list(st.one_of(_SIMPLE_ATOMS, _ALTERNATIVES), 1).map(
    lambda atoms: "".join(t for _, t in atoms)
)
# `**` is one part in four, so most patterns have several ordinary parts.
_PART = st.one_of(_ATOMS_PART, _ATOMS_PART, _ATOMS_PART, st.just("**"))
PATTERNS = st.lists(_PART, min_size=1, max_size=3).map(".".join)

_NAME_TOKENS = ["a", "b", "_", "0", "1", "2", "9", "10", "12", "01", "100", "1000"]
NAME_PARTS = st.lists(st.sampled_from(_NAME_TOKENS), min_size=1, max_size=3).map("".join)
NAMES = st.lists(NAME_PARTS, min_size=1, max_size=4).map(".".join)


def _run_property(
    check: Callable[..., bool], strategy: st.SearchStrategy, examples: int
) -> Counter:
    """Run `check` under Hypothesis and count how often it reported a match."""
    seen: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(strategy)
    def run(example: tuple) -> None:
        seen["examples"] += 1
        seen["matched"] += check(*example)

    run()
    return seen


def _agree(pattern: str, names: list[str], anchored: bool) -> bool:
    compiled = compile_name_pattern(pattern, anchored)
    hits = 0
    for name in names:
        got = compiled.matches(name)
        want = reference_matches(pattern, name, anchored)
        assert got == want, (pattern, name, anchored)
        # Each part alone, through the automaton as well as through whatever compile_part
        # chose: the two implementations of a part agree.
        for part in parse_name_pattern(pattern):
            if isinstance(part, tuple):
                for name_part in name.split("."):
                    fast = compile_part(part).fullmatch(name_part)
                    assert PartAutomaton(part).fullmatch(name_part) == fast, (part, name_part)
        hits += want
    return hits > 0


def test_compiled_matcher_agrees_with_reference() -> None:
    strategy = st.tuples(PATTERNS, st.lists(NAMES, min_size=1, max_size=12), st.booleans())
    seen = _run_property(_agree, strategy, examples=500)
    # Not vacuous: a fair share of examples select some of their names (and many do not).
    assert seen["matched"] >= 0.25 * seen["examples"], seen
    assert seen["matched"] <= 0.95 * seen["examples"], seen


_WILD = re.compile(r"\{([^}]*)\}|\[!?([^\]]*)\]|(\d+)\.\.(\d+)|([*?])")


def _instance(draw: st.DrawFn, text: str) -> str:
    """A string that `text` (one part, or one alternative) often matches, and sometimes not."""

    def fill(m: re.Match[str]) -> str:
        options, chars, lo, hi, wild = m.groups()
        if options is not None:
            return _instance(draw, draw(st.sampled_from(options.split(","))))
        if chars is not None:  # a character listed in the class (a near miss when negated)
            return draw(st.sampled_from(chars.replace("-", "")))
        if lo is not None:  # a number at, inside or just outside the bounds
            lo_n, hi_n = int(lo), int(hi)
            return str(draw(st.sampled_from([lo_n, hi_n, (lo_n + hi_n) // 2, hi_n + 1])))
        if wild == "?":
            return draw(st.sampled_from("ab1"))
        return draw(st.sampled_from(["", "a", "1", "10"]))

    return _WILD.sub(fill, text)


@st.composite
def _names_matching(draw: st.DrawFn) -> tuple[str, list[str], bool]:
    """A pattern and names made by filling in its wildcards, so that matches are common."""
    pattern = draw(PATTERNS)
    concrete = []
    for part in split_parts(pattern):
        if part == "**":
            concrete.extend(draw(st.lists(NAME_PARTS, max_size=2)))
        else:
            concrete.append(_instance(draw, part) or "a")
    prefix = draw(st.lists(NAME_PARTS, max_size=1))
    suffix = draw(st.lists(NAME_PARTS, max_size=2))
    name = ".".join(prefix + concrete + suffix) or "a"
    others = draw(st.lists(NAMES, max_size=3))
    return pattern, [name, *others], draw(st.booleans())


def test_compiled_matcher_agrees_with_reference_on_near_matches() -> None:
    seen = _run_property(_agree, _names_matching(), examples=300)
    assert seen["matched"] >= 0.4 * seen["examples"], seen


def _agree_in_policy(
    include: list[tuple[str, bool]], exclude: list[tuple[str, bool]], names: list[str]
) -> bool:
    """A statement's selection is the union of its selectors minus the union of its excepts."""
    statement = Statement(
        "freeze",
        Selection(
            tuple(NamePattern(p, a) for p, a in include),
            tuple(NamePattern(p, a) for p, a in exclude),
        ),
    )
    decisions = Policy((statement,)).resolve(names)
    hits = 0
    for name in names:
        want = any(reference_matches(p, name, a) for p, a in include) and not any(
            reference_matches(p, name, a) for p, a in exclude
        )
        assert (decisions[name].trainable is False) == want, (include, exclude, name)
        hits += want
    return hits > 0


def test_combined_selectors_agree_with_reference() -> None:
    selector = st.tuples(PATTERNS, st.booleans())
    strategy = st.tuples(
        st.lists(selector, min_size=1, max_size=3),
        st.lists(selector, max_size=2),
        st.lists(NAMES, min_size=1, max_size=10, unique=True),
    )
    seen = _run_property(_agree_in_policy, strategy, examples=200)
    assert seen["matched"] >= 0.2 * seen["examples"], seen


@settings(max_examples=200, deadline=None)
@given(PATTERNS)
def test_generated_patterns_parse_as_selectors(pattern: str) -> None:
    """Every generated pattern is a valid selector in policy text, with the same meaning."""
    assume(pattern not in ("except", "at", "for"))
    policy = freezepolicy.parse(f"freeze {pattern} except ^{pattern}")
    (statement,) = policy.statements
    assert statement.selection.include == (NamePattern(pattern, False),)
    assert statement.selection.exclude == (NamePattern(pattern, True),)


# --- real name lists -------------------------------------------------------------------------

Parts = list[str]


def _any_run(parts: Parts, *tests: Callable[[str], bool]) -> bool:
    """Plain-Python selection: some run of consecutive parts passes `tests` one by one."""
    k = len(tests)
    return any(
        all(t(p) for t, p in zip(tests, parts[i : i + k], strict=True))
        for i in range(len(parts) - k + 1)
    )


def _eq(word: str) -> Callable[[str], bool]:
    return lambda p: p == word


def _in(*words: str) -> Callable[[str], bool]:
    return lambda p: p in words


def _expected(names: list[str], rule: Callable[[Parts], bool]) -> list[str]:
    return [n for n in names if rule(n.split("."))]


def _selected(pattern: str, names: list[str]) -> list[str]:
    return [n for n in names if selects(pattern, n)]


# (selector, plain-Python rule over the parts, expected count worked out by hand)
RESNET_CASES: list[tuple[str, Callable[[Parts], bool], int]] = [
    # Two blocks of (conv1, bn1 w/b, conv2, bn2 w/b) plus a downsample conv and bn w/b.
    ("layer4", lambda p: _any_run(p, _eq("layer4")), 15),
    # bn1 of the stem, two per block in eight blocks, three downsample norms, and fc.
    ("bias", lambda p: _any_run(p, _eq("bias")), 1 + 16 + 3 + 1),
    ("fc", lambda p: _any_run(p, _eq("fc")), 2),
    ("^fc", lambda p: p[0] == "fc", 2),
    ("layer1..3", lambda p: _any_run(p, _in("layer1", "layer2", "layer3")), 12 + 15 + 15),
    ("downsample.0", lambda p: _any_run(p, _eq("downsample"), _eq("0")), 3),
    ("conv*", lambda p: _any_run(p, lambda s: s.startswith("conv")), 1 + 16),
    ("bn?", lambda p: _any_run(p, lambda s: len(s) == 3 and s.startswith("bn")), 2 + 32),
    (
        "layer[!1].0",
        lambda p: _any_run(p, lambda s: s in ("layer2", "layer3", "layer4"), _eq("0")),
        3 * 9,
    ),
    ("*.1.*", lambda p: _any_run(p, lambda s: True, _eq("1"), lambda s: True), 4 * 6 + 3 * 2),
    ("**.weight", lambda p: p[-1] == "weight", 62 - 21),
    ("layer5", lambda p: False, 0),
]

BERT_CASES: list[tuple[str, Callable[[Parts], bool], int]] = [
    (
        "encoder.layer.1[01]",
        lambda p: _any_run(p, _eq("encoder"), _eq("layer"), _in("10", "11")),
        2 * 16,
    ),
    (
        "encoder.layer.8..11",
        lambda p: _any_run(p, _eq("encoder"), _eq("layer"), _in("8", "9", "10", "11")),
        4 * 16,
    ),
    ("{query,key}", lambda p: _any_run(p, _in("query", "key")), 12 * 4),
    ("LayerNorm", lambda p: _any_run(p, _eq("LayerNorm")), 2 + 12 * 4),
    (
        "encoder.**.bias",
        lambda p: "encoder" in p and p[-1] == "bias",
        12 * 8,
    ),
    ("pooler", lambda p: _any_run(p, _eq("pooler")), 2),
    (
        "layer.0..5.attention",
        lambda p: _any_run(p, _eq("layer"), _in(*map(str, range(6))), _eq("attention")),
        6 * 10,
    ),
]


@pytest.mark.parametrize(("pattern", "rule", "count"), RESNET_CASES)
def test_resnet18_selections(
    resnet18_names: list[str], pattern: str, rule: Callable[[Parts], bool], count: int
) -> None:
    assert len(resnet18_names) == 62
    expected = _expected(resnet18_names, rule)
    assert len(expected) == count
    assert _selected(pattern, resnet18_names) == expected


@pytest.mark.parametrize(("pattern", "rule", "count"), BERT_CASES)
def test_bert_selections(
    bert_names: list[str],
    bert_cls_names: list[str],
    pattern: str,
    rule: Callable[[Parts], bool],
    count: int,
) -> None:
    """Unanchored selectors select the same blocks of BertModel and of the `bert.` wrapper."""
    assert len(bert_names) == 199
    for names in (bert_names, bert_cls_names):
        expected = _expected(names, rule)
        assert len(expected) == count
        assert _selected(pattern, names) == expected


def test_anchored_selectors_on_bert(bert_names: list[str], bert_cls_names: list[str]) -> None:
    encoder = _expected(bert_names, lambda p: p[0] == "encoder")
    assert len(encoder) == 12 * 16
    assert _selected("^encoder", bert_names) == encoder
    assert _selected("^encoder", bert_cls_names) == []
    assert len(_selected("^bert.encoder", bert_cls_names)) == 12 * 16
    assert _selected("classifier", bert_cls_names) == ["classifier.weight", "classifier.bias"]
    assert _selected("classifier", bert_names) == []


@pytest.mark.parametrize(
    "pattern",
    [
        "layer4",
        "bias",
        "encoder.layer.1[01]",
        "{query,key}",
        "encoder.**.bias",
        "*.1.*",
        "bn?",
        "layer[!1].0",
        "^bert.encoder.layer.0..3",
        "**",
    ],
)
def test_reference_agrees_on_real_names(
    resnet18_names: list[str], bert_names: list[str], bert_cls_names: list[str], pattern: str
) -> None:
    anchored = pattern.startswith("^")
    body = pattern.lstrip("^")
    for name in resnet18_names + bert_names + bert_cls_names:
        assert selects(pattern, name) == reference_matches(body, name, anchored), name


def test_stars_before_variable_width_text_are_no_longer_capped() -> None:
    """More than 3 `*` followed by a range or `{...}` in one part used to be refused (FP125):
    the regex engine could take polynomial time of high degree on them. The automaton takes
    linear time, so they are valid selectors now."""
    four = "*{a,b}" * 4 + "*c"
    assert compile_name_pattern(four).matches("x.abaxbc.y")
    assert not compile_name_pattern(four).matches("x.abac.y")  # three of {a,b} before the c
    assert freezepolicy.parse(f"freeze {'*{a,b}' * 50}*c, {'*1..3' * 50}").statements


def test_many_fixed_width_stars_agree_with_the_reference() -> None:
    """Atomic runs between stars (the no-hang translation) still mean what the stars mean.
    test_errors.py runs the near-miss cases in a subprocess with a time limit."""
    name = "x." + "a" * 12 + "b.y"
    for pattern in ("*?" * 6, "*a" * 4 + "*b", "*a?" * 3 + "*", "a*a*b", "*b*a"):
        assert compile_name_pattern(pattern).matches(name) == reference_matches(
            pattern, name
        ), pattern
