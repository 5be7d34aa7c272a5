"""The examples a user copies first lint clean against the models they are written for.

The README's language quick-start block says, in its first comment, which model it is for and the
lint command that checks it; this test runs that command on the block as it is in the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

from freezepolicy.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def quick_start_block() -> str:
    """The first code block under `## Quick start: the language` in README.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start: the language", 1)[1]
    match = re.search(r"^```\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match, "no code block in the language quick start"
    return match.group(1)


def test_the_readme_quick_start_lints_clean_against_its_model(tmp_path, capsys) -> None:
    block = quick_start_block()
    first = block.splitlines()[0]
    specs = re.findall(r"--model (\S+?)`", first)
    assert specs == ["torchvision:resnet18"], first  # the block says what it is for
    policy = tmp_path / "quick_start.freeze"
    policy.write_text(block, encoding="utf-8")
    argv = ["lint"] + [arg for spec in specs for arg in ("--model", spec)] + [str(policy)]
    status = main(argv)
    out = capsys.readouterr().out
    # No error, no warning and no note: every statement selects something and takes effect.
    assert (status, out) == (0, "")
