"""What policy text may contain, and what reading hostile text costs.

Invisible characters outside comments are refused (FP111); memory while parsing stays a small
multiple of the text, whatever its shape (a huge word is refused before the lexer, FP113).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import freezepolicy
from freezepolicy.lang.characters import MAX_WORD_LENGTH, is_invisible

# --- invisible characters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    [
        "\u200b",  # zero width space (Cf)
        "\u200c",  # zero width non-joiner
        "\u200d",  # zero width joiner
        "\u2060",  # word joiner
        "\ufeff",  # a byte-order mark that is not at the start
        "\u00ad",  # soft hyphen
        "\u202a",  # left-to-right embedding
        "\u202e",  # right-to-left override
        "\u2066",  # left-to-right isolate
        "\u2069",  # pop directional isolate
        "\u200e",  # left-to-right mark
        "\u061c",  # arabic letter mark
        "\u2028",  # line separator (Zl)
        "\u2029",  # paragraph separator (Zp)
        "\u00a0",  # no-break space (Zs)
        "\u3000",  # ideographic space
        "\u2009",  # thin space
        "\x0b",  # vertical tab (Cc)
        "\x1f",  # unit separator
        "\x7f",  # delete
        "\x85",  # next line
        "\u3164",  # hangul filler (Lo, but default-ignorable)
        "\ufe0f",  # variation selector (Mn, default-ignorable)
        "\U000e0041",  # tag latin capital a
        "\ue000",  # private use
        "\ud800",  # a lone surrogate
    ],
)
def test_invisible_characters_outside_comments_are_errors(char: str) -> None:
    assert is_invisible(char)
    texts = [f"freeze{char}*", f"freeze fc{char}", f"freeze a,{char}b", f"fc\n{char}freeze fc"]
    for text in texts:
        with pytest.raises(freezepolicy.PolicySyntaxError) as info:
            freezepolicy.parse(text)
        assert info.value.code == "FP111", (text, str(info.value))
        assert f"U+{ord(char):04X}" in info.value.message
    # Comments may hold anything.
    assert freezepolicy.parse(f"freeze fc  # {char} here\n# {char}").statements


@pytest.mark.parametrize("char", ["é", "ß", "Ω", "層", "\u0301", "\t", "\x0c", "�"])
def test_visible_characters_are_not_refused(char: str) -> None:
    """Letters of any script (module names may use them), a combining accent, tab, form feed."""
    assert not is_invisible(char)


def test_every_invisible_character_is_reported_with_its_column() -> None:
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse("freeze a\u200bb\nunfreeze\u00a0c\u200b")
    found = [(d.code, d.line, d.column) for d in info.value.diagnostics]
    assert found == [("FP111", 1, 9), ("FP111", 2, 9), ("FP111", 2, 11)]


def test_the_byte_order_mark_at_the_start_is_still_fine() -> None:
    assert freezepolicy.parse("\ufefffreeze fc").statements
    assert freezepolicy.parse(b"\xef\xbb\xbffreeze fc").statements


# --- long words -------------------------------------------------------------------------------


def test_a_word_longer_than_the_limit_is_refused_before_parsing() -> None:
    word = "[]" * (MAX_WORD_LENGTH // 2 + 1)
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse(f"freeze fc\nfreeze {word}")
    (d,) = info.value.diagnostics
    assert (d.code, d.line, d.column) == ("FP113", 2, 8)
    assert f"{len(word):,} characters" in d.message
    # A long word in a comment is no word at all, and one at the limit is read: a list of
    # selectors written without spaces is valid.
    assert freezepolicy.parse(f"# {word}").statements == ()
    policy = freezepolicy.parse("freeze " + "a," * (MAX_WORD_LENGTH // 2 - 1) + "a")
    assert len(policy.statements[0].selection.include) == MAX_WORD_LENGTH // 2


# --- memory -----------------------------------------------------------------------------------

# Peak memory (traced by tracemalloc, which sees the regular-expression engine's stack too) while
# parsing texts of about 4 MB, as a multiple of the text's size. Each text is one huge token or
# one line of repetitive garbage: a 10 MB one-token file used to peak at 1.7 GB (170x).
_MEMORY_CHILD = textwrap.dedent(
    """
    import tracemalloc
    import freezepolicy
    freezepolicy.parse("freeze x")  # build the parser first
    n = 4_000_000
    shapes = {
        "letters": "freeze " + "a" * n,
        "brackets": "freeze " + "[]" * (n // 2),
        "braces": "freeze " + "{}" * (n // 2),
        "classes": "freeze " + "a[b]{c}" * (n // 7),
        "type": "freeze type:" + "{}" * (n // 2),
        "open": "[" * n,
        "digits": "lr " + "1" * n + " for fc",
        "commas": "freeze " + "a," * (n // 2) + "a",
        # Forty selectors just under the word limit: each is read, and is too long (FP128).
        "long selectors": "freeze " + ", ".join(["[]" * 49_000] * (n // 98_002)),
        "spaced": "freeze " + "a[] " * (n // 4),
        "newlines": "\\n" * n,
        "comment": "#" + "{" * n,
    }
    tracemalloc.start()
    for name, text in shapes.items():
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            freezepolicy.parse(text)
        except freezepolicy.PolicyError as exc:
            str(exc)
        peak = tracemalloc.get_traced_memory()[1] - before
        print(repr(name), round(peak / len(text), 2), flush=True)
    """
)

#: Peak extra memory allowed while parsing, as a multiple of the text's size. Most shapes take
#: about 1x (a copy of the text); a selector just under the word limit costs the lexer about
#: 20 MB, a fixed amount that is 5x of these 4 MB texts.
MEMORY_RATIO = 6


def test_parsing_memory_is_a_small_multiple_of_the_text() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    ratios = {
        name.strip("'"): float(r)
        for name, r in (line.rsplit(" ", 1) for line in done.stdout.splitlines())
    }
    assert len(ratios) == 12, done.stdout
    over = {name: r for name, r in ratios.items() if r > MEMORY_RATIO}
    assert not over, ratios
