"""Matching takes time linear in the name for every pattern: generated worst cases run in a
subprocess under a time limit (a regex stuck in backtracking cannot be interrupted from inside
the process), and which implementation each shape of part gets.

docs/language.md states the bound: O(pattern length x name length) per selector and name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from freezepolicy.lang.glob import PartAutomaton, RegexPart, compile_part
from freezepolicy.lang.patterns import parse_name_pattern

TESTS = Path(__file__).resolve().parent

# Each family: a pattern made of k repetitions of a piece that, with a backtracking matcher,
# multiplies the ways to try a near-miss name (k = 1..K), and names that almost match. The child
# matches each through the policy (bind, signatures, lint's checks) and checks the answers
# against the reference matcher on the shorter names.
_CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from reference_matcher import matches as reference
    import freezepolicy
    from freezepolicy.lang.checks import check_names
    from freezepolicy.lang.glob import compile_type_pattern

    families = {
        # The issue's example: `*` inside alternatives, against a 40-character name.
        "star-in-braces": (lambda k: "{*,x}" * k + "c", ["x" * 40, "x" * 39 + "c", "x" * 400]),
        "ambiguous-braces": (lambda k: "{a,aa}" * k + "b", ["a" * 40, "a" * 60 + "b"]),
        "stars-and-braces": (lambda k: "*{a,b}" * k + "*c", ["ab" * 20, "ab" * 200]),
        "stars-and-ranges": (lambda k: "*0..9" * k + "x", ["1a" * 20, "1a" * 200]),
        "stars-and-classes": (lambda k: "*[ab]?" * k + "c", ["ab" * 20, "ab" * 200]),
        "stars-fixed": (lambda k: "*a" * k + "*b", ["a" * 40, "a" * 400]),
        "double-stars": (lambda k: "**.a." * k + "b", [".".join("a" * 40), ".".join("a" * 300)]),
        "double-stars-stars": (lambda k: "**.*a." * k + "b", [".".join("ba" * 20)]),
        "unusual-characters": (
            lambda k: "{*,\\u00e9}" * k + "*$(",
            ["\\u00e9" * 40, "\\u00e9\\n$(" * 10, "*{[\\n" * 10 + "$(", "$(\\n"],
        ),
    }
    K = 30
    for family, (make, names) in families.items():
        started = time.perf_counter()
        for k in range(1, K + 1):
            pattern = make(k)
            policy = freezepolicy.parse(f"freeze {pattern}\\nunfreeze ^{pattern}")
            bound = policy.bind(names)
            got = [bool(bits) for bits in bound.signatures]
            check_names(policy, names, bound=bound)
            for name in names:
                selected = bound.decisions()[name].trainable is not None
                if len(name) <= 60:
                    assert selected == reference(pattern, name), (family, k, name)
        print(family, round(time.perf_counter() - started, 3), flush=True)
    # Indices counted from the end: the parts before the index are matched against each parent
    # with the same part matchers (relative.py).
    started = time.perf_counter()
    names = ["x" * 39 + "c.0.w", "x" * 39 + "c.1.w", "x" * 40 + ".0.w", "x" * 400 + ".5.w"]
    for k in range(1, K + 1):
        bound = freezepolicy.parse("freeze " + "{*,x}" * k + "c.-1").bind(names)
        chosen = [n for n in names if bound.decisions()[n].trainable is not None]
        assert chosen == ["x" * 39 + "c.1.w"], (k, chosen)
    print("from-end", round(time.perf_counter() - started, 3), flush=True)
    # `type:` selectors use the same part matchers.
    started = time.perf_counter()
    for k in range(1, K + 1):
        glob = compile_type_pattern("{*,X}" * k + "C")
        assert not glob.fullmatch("X" * 40)
        assert glob.fullmatch("X" * 39 + "C")
    print("type", round(time.perf_counter() - started, 3), flush=True)
    """
)

#: Generous: every family takes well under a second; a backtracking matcher took hours.
LIMIT_S = 120


def test_generated_worst_cases_match_in_linear_time() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(TESTS)],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {LIMIT_S} s; finished: {exc.stdout!r}")
    assert done.returncode == 0, done.stderr
    finished = [line.split()[0] for line in done.stdout.splitlines()]
    assert len(finished) == 11, done.stdout


@pytest.mark.parametrize(
    "pattern",
    ["fc", "layer*", "encoder.layer.1[01]", "layer1..3", "{query,key}", "*_proj", "bn?"]
    + ["layer{1..2,4}", "a*b?c*[de]", "*.1.*", "h.0..99.mlp", "1..3x4..6"],
)
def test_common_patterns_keep_the_regex_fast_path(pattern: str) -> None:
    for part in parse_name_pattern(pattern):
        assert isinstance(compile_part(part), RegexPart), part  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pattern", ["{*,x}{*,x}c", "{a,aa}{a,aa}b", "*1..3*", "*{a,b}*c", "{a,b}{c,d}", "*{a*,b}"]
)
def test_shapes_that_could_backtrack_take_the_automaton(pattern: str) -> None:
    (part,) = parse_name_pattern(pattern)
    assert isinstance(compile_part(part), PartAutomaton)  # type: ignore[arg-type]
