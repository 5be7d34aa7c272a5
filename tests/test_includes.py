"""Composition: `include "base.freeze"` (relative to the including file) and `include
"builtin:NAME"` bring another policy's statements in at that place; errors name the chain of
files with the line in each; `fmt` keeps the include line; diagnostics point at the included
file's own lines; a file is read as `load` reads one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import freezepolicy
from freezepolicy.cli import main
from freezepolicy.lang.includes import MAX_INCLUDES, builtin_names

NAMES = ["body.weight", "fc.weight", "fc.bias"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def trainable(policy: freezepolicy.Policy) -> list[str]:
    return [n for n, d in policy.resolve(NAMES).items() if d.trainable]


def test_statements_come_in_at_the_place_of_the_include(tmp_path: Path) -> None:
    write(tmp_path / "common" / "base.freeze", "freeze *\nunfreeze fc\n")
    top = write(tmp_path / "top.freeze", 'unfreeze body\ninclude "common/base.freeze"\n')
    policy = freezepolicy.load(top)
    assert [str(s) for s in policy.statements] == ["unfreeze body", "freeze *", "unfreeze fc"]
    # At the include's place: `freeze *` comes after `unfreeze body`, so body is frozen.
    assert trainable(policy) == ["fc.weight", "fc.bias"]
    # Relative to the including file, from any working directory; nested ones to theirs.
    write(tmp_path / "common" / "mid.freeze", 'include "base.freeze"\nlr 0.1x for fc\n')
    deep = write(tmp_path / "deep" / "x.freeze", 'include "../common/mid.freeze"\n')
    assert [str(s) for s in freezepolicy.load(deep).statements][-1] == "lr 0.1x for fc"


def test_builtin_policies_load_and_include(tmp_path: Path) -> None:
    assert "bert_last2" in builtin_names() and "vit_layer_decay" in builtin_names()
    builtin = freezepolicy.load("builtin:bert_last2")
    shipped = Path(__file__).resolve().parent.parent / "policies" / "bert_last2.freeze"
    assert builtin.statements == freezepolicy.load(shipped).statements
    mine = write(tmp_path / "mine.freeze", 'include "builtin:bert_last2"\nlr 1e-3 for classifier\n')
    assert len(freezepolicy.load(mine).statements) == 3
    with pytest.raises(freezepolicy.PolicySourceError) as info:
        freezepolicy.load("builtin:bert_last3")
    assert info.value.code == "FP001" and "bert_last2" in info.value.message


def test_parse_reads_relative_includes_from_the_directory_of_its_source(tmp_path: Path) -> None:
    write(tmp_path / "base.freeze", "freeze *\n")
    text = 'include "base.freeze"\nunfreeze fc'
    assert len(freezepolicy.parse(text, str(tmp_path / "virtual.freeze")).statements) == 2
    old = os.getcwd()
    os.chdir(tmp_path)
    try:  # `<string>`, the default source: the current directory
        assert len(freezepolicy.parse(text).statements) == 2
    finally:
        os.chdir(old)
    # includes=False: this text's own statements, the include left unread.
    own = freezepolicy.parse('include "nowhere.freeze"\nunfreeze fc', includes=False)
    assert [str(s) for s in own.statements] == ["unfreeze fc"]


def test_a_missing_file_names_the_chain(tmp_path: Path) -> None:
    write(tmp_path / "mid.freeze", 'freeze *\n\ninclude "gone.freeze"\n')
    top = write(tmp_path / "top.freeze", '# top\ninclude "mid.freeze"\n')
    with pytest.raises(freezepolicy.PolicyError) as info:
        freezepolicy.load(top)
    d = info.value.first
    assert (d.code, d.path, d.line, d.column) == ("FP146", str(tmp_path / "mid.freeze"), 3, 9)
    assert f"cannot include `gone.freeze`: no such file ({tmp_path / 'gone.freeze'})" in d.message
    assert d.message.endswith(f"(included from {top}:2)")
    assert d.source_line == 'include "gone.freeze"'


def test_a_cycle_names_every_file_and_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.freeze", tmp_path / "b.freeze"
    write(a, 'freeze *\ninclude "b.freeze"\n')
    write(b, 'include "a.freeze"\n')
    with pytest.raises(freezepolicy.PolicyError) as info:
        freezepolicy.load(a)
    d = info.value.first
    assert (d.code, d.path, d.line) == ("FP147", str(b), 1)
    assert d.message == f"include cycle: {a}:2 -> {b}:1 -> {a}"
    self_include = write(tmp_path / "self.freeze", 'include "self.freeze"\n')
    with pytest.raises(freezepolicy.PolicyError, match="include cycle"):
        freezepolicy.load(self_include)


def test_an_error_inside_an_included_file_is_located_there(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.freeze", "freeze *\nunfreez fc\nlr -1 for fc\n")
    top = write(tmp_path / "top.freeze", '\ninclude "bad.freeze"\n')
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.load(top)
    first, second = info.value.diagnostics
    assert (first.code, first.path, first.line, first.column) == ("FP101", str(bad), 2, 1)
    assert (second.code, second.line) == ("FP107", 3)
    for d in (first, second):
        assert d.message.endswith(f"(included from {top}:2)")
    assert first.source_line == "unfreez fc"
    binary = tmp_path / "binary.freeze"
    binary.write_bytes(b"freeze *\x00")
    write(top, 'include "binary.freeze"\n')
    with pytest.raises(freezepolicy.PolicySourceError) as info:
        freezepolicy.load(top)
    assert (info.value.code, info.value.path) == ("FP002", str(binary))


def test_included_files_are_read_as_load_reads_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.freeze"
    os.mkfifo(fifo)
    top = write(tmp_path / "top.freeze", 'include "pipe.freeze"\n')
    with pytest.raises(freezepolicy.PolicySourceError) as info:  # and never waits on it
        freezepolicy.load(top)
    assert info.value.code == "FP004" and f"included from {top}:1" in info.value.message
    write(top, 'include "."\n')
    with pytest.raises(freezepolicy.PolicyError) as info:
        freezepolicy.load(top)
    assert info.value.code == "FP146" and "is a directory" in info.value.message


def test_too_many_includes(tmp_path: Path) -> None:
    write(tmp_path / "leaf.freeze", "freeze fc\n")
    # Each level includes the next twice: 2 ** 9 includes in all, past the cap of 256.
    for level in range(9):
        target = "leaf" if level == 0 else f"level{level - 1}"
        write(tmp_path / f"level{level}.freeze", f'include "{target}.freeze"\n' * 2)
    with pytest.raises(freezepolicy.PolicyError) as info:
        freezepolicy.load(tmp_path / "level8.freeze")
    assert info.value.code == "FP148" and f"more than {MAX_INCLUDES} includes" in info.value.message


def test_fmt_keeps_the_include_line_and_reads_nothing_else(tmp_path: Path, capsys) -> None:
    top = write(tmp_path / "top.freeze", '# base\ninclude   "gone.freeze"  # kept\nfreeze  x\n')
    assert main(["fmt", str(top)]) == 0
    assert capsys.readouterr().out == '# base\ninclude "gone.freeze"  # kept\nfreeze x\n'


def test_lint_points_at_the_included_files_own_line(tmp_path: Path, capsys) -> None:
    base = write(tmp_path / "base.freeze", "freeze *\n\nunfreeze classifer\n")
    top = write(tmp_path / "top.freeze", 'include "base.freeze"\nunfreeze fc\n')
    names = write(tmp_path / "names.txt", "\n".join(NAMES))
    assert main(["lint", "--names", str(names), str(top)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{base}:3:10: warning: selector `classifer` matches no parameter")
    assert "    unfreeze classifer\n" in out


def test_include_syntax_errors(tmp_path: Path) -> None:
    for text, code in (
        ('include ""', "FP149"),
        ("include base.freeze", "FP103"),
        ("include", "FP103"),
    ):
        with pytest.raises(freezepolicy.PolicySyntaxError) as info:
            freezepolicy.parse(text)
        assert info.value.code == code, text
    with pytest.raises(freezepolicy.PolicySyntaxError) as info:
        freezepolicy.parse('include "builtin:nope"')
    assert info.value.code == "FP146" and "no built-in policy `nope`" in info.value.message


def test_a_policy_applied_by_path_sees_an_edited_included_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.ModuleDict({"fc": torch.nn.Linear(2, 2), "body": torch.nn.Linear(2, 2)})
    base = write(tmp_path / "base.freeze", "freeze body\n")
    top = write(tmp_path / "top.freeze", 'include "base.freeze"\n')
    report = freezepolicy.apply_policy(model, str(top))
    assert "body.weight" in report.frozen
    base.write_text("freeze fc\n# longer, so the size changes too\n")
    report = freezepolicy.apply_policy(model, str(top))
    assert "fc.weight" in report.frozen and "body.weight" not in report.frozen
