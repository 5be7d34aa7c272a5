"""Exit code 3 ("internal error") is reachable only by a real bug: every command runs over every
bad input of the tests' catalogues (tests/test_errors.py CATALOGUE, tests/test_cli.py
BAD_INPUTS and the cases below, with files that are not regular files among them) and must end
with 0, 1 or 2, with no traceback and no "internal error" on stderr.

Real subprocesses: one CLI process per command over all the files at once, and, for `show`
(one policy per run) and single-file refusals, one process that calls the command's `main()`
for each (tests/cli_driver.py), so torch is imported once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_driver import run_many
from test_cli import BAD_INPUTS, MODULE, _env
from test_errors import CATALOGUE

from freezepolicy.lang.characters import MAX_WORD_LENGTH

HERE = Path(__file__).parent

#: Bad inputs found since the catalogues were written (issue 11), and their neighbours.
MORE_BAD_INPUTS: dict[str, str | bytes] = {
    "run_on.freeze": "freezefc\nlr0.1xforfc\nstatsupdatefor bn\nfreeze encoder exceptional\n",
    "invisible.freeze": "freeze\u200b*\nfreeze a\u202eb\nunfreeze\u00a0fc\nfreeze x\x0b\n",
    "bom_inside.freeze": "freeze fc\n\ufefffreeze x\n",
    "underflow.freeze": "lr 1e-400 for fc\ndecay 1e-999x for bias\n",
    "overflow.freeze": "lr 1e999 for fc\nunfreeze x at epoch 99999999999999999999\n",
    "long_word.freeze": "freeze " + "[]" * (MAX_WORD_LENGTH // 2 + 10) + "\n",
    "long_selectors.freeze": "freeze " + ", ".join(["{a,b}" * 300] * 3) + "\n",
    "backtracking.freeze": "freeze " + "{*,x}" * 30 + "c, " + "{a,aa}" * 30 + "b, *1..3" * 9,
    "type_backtracking.freeze": "decay 0 for type:" + "{*,X}" * 30 + "C\n",
    "double_stars.freeze": "freeze " + "**.a." * 100 + "b\n",
    "mixed_warmup.freeze": "freeze *\nunfreeze out at epoch 1 warmup 100 steps\n",
    "mixed_warmup_then.freeze": "unfreeze fc1 then fc2 at epoch 1 every 2 epochs warmup 5 steps\n",
    "every_without_then.freeze": "unfreeze layer4 at step 3 every 2 epochs\n",
    "dead.freeze": "freeze fc1\nunfreeze *\nlr 0 for out\nunfreeze out at epoch 2\n",
    "comment_only_controls.freeze": "# \u202e\u200b\x0b\x7f in a comment\nfreeze *\n",
    "only_separators.freeze": ";;;\n\n;",
    "deep_alternatives.freeze": "freeze {" * 50 + "}" * 50 + "\n",
    "all_keywords.freeze": (
        "freeze freeze unfreeze lr decay stats update for at epoch step every then warmup except\n"
    ),
    # The constructs of issue 13: indices from the end, layer decay, shapes, `when`, include.
    "from_end.freeze": "freeze layers.-0\nfreeze a.-1..-2\nfreeze layer1..-1\nfreeze {-1,2}\n",
    "from_end_nothing.freeze": "unfreeze encoder.layer.-2..-1\nfreeze *.layers.-30, -1\n",
    "layer_decay.freeze": (
        "lr decay 1.5 per layer down blocks\nlr decay 0.5x per layer down b\n"
        "lr decay 0.5 per layer down type:Block, ndim<2\nlr decay 0.5 per layer from down to\n"
        "lr decay per layer down x\nlr decay 0.5 per layers down x\n"
    ),
    "layer_decay_ok.freeze": "lr decay 0.75 per layer from * down fc1, blocks.-2..-1 to embed\n",
    "shape.freeze": "decay 0 for ndim==2\nfreeze ndim<x\nfreeze ndim<9999, ndim\nfreeze ndim<\n",
    "shape_ok.freeze": "decay 0 for ndim<2, ndim>7\nfreeze ndim!=2 except fc1\n",
    "when.freeze": (
        "unfreeze a at epoch 1 when m stops decreasing for 2 evaluations\n"
        "unfreeze a when m stops decreasing for 0 evaluations\nunfreeze a when 3x stops falling\n"
        "freeze when\nunfreeze b then c when m stops increasing for 1 evaluation every 2 epochs\n"
        "unfreeze b when m stops increasing for 99999999999999999999 evaluations\n"
    ),
    "when_ok.freeze": (
        "freeze *\nunfreeze fc1 then fc2 when val_loss stops decreasing for 1 evaluation"
        " warmup 2 epochs\nlr 0.1x for out when val/acc stops increasing for 3 evaluations\n"
        "lr decay 0.5 per layer down fc1 when x stops increasing for 1 evaluation\n"
    ),
    "include_missing.freeze": 'include "no_such_file.freeze"\n',
    "include_cycle.freeze": 'freeze *\ninclude "more_include_cycle.freeze"\n',
    "include_bad.freeze": 'include "more_run_on.freeze"\ninclude "more_invisible.freeze"\n',
    "include_not_regular.freeze": 'include "a_directory.freeze"\ninclude "pipe.freeze"\n',
    "include_device.freeze": 'include "/dev/zero"\n',
    "include_builtin.freeze": (
        'include "builtin:nope"\ninclude ""\ninclude builtin\ninclude "builtin:../../x"\n'
        'include "builtin:bert_last2"\n'
    ),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> tuple[Path, list[str]]:
    """Every bad input as a file, plus things that are not regular policy files."""
    folder = tmp_path_factory.mktemp("bad")
    names: list[str] = []

    def add(name: str, data: str | bytes) -> None:
        path = folder / name
        if isinstance(data, str):
            path.write_bytes(data.encode("utf-8"))
        else:
            path.write_bytes(data)
        names.append(name)

    for i, case in enumerate(CATALOGUE):
        add(f"catalogue_{i:02}_{case.id}.freeze", case.values[0])
    for name, data in BAD_INPUTS.items():
        add(f"cli_{name}", data)
    for name, data in MORE_BAD_INPUTS.items():
        add(f"more_{name}", data)
    (folder / "a_directory.freeze").mkdir()
    names.append("a_directory.freeze")
    names.append("missing.freeze")
    (folder / "loop.freeze").symlink_to("loop.freeze")
    names.append("loop.freeze")
    with (folder / "huge.freeze").open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse, over the 16 MiB limit
    names.append("huge.freeze")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.freeze")
        names.append("pipe.freeze")
    if Path("/dev/zero").exists():
        names.append("/dev/zero")
    shutil.copy(HERE / "resnet18_names.txt", folder / "resnet18.txt")
    (folder / "odd_names.txt").write_text(
        "a\nfc.weight\n" + "x" * 5000 + "\nnew\nline.\n..\n\u00e9.\u200b\n", encoding="utf-8"
    )
    return folder, names


def _clean(text: str, where: object) -> None:
    for bad in ("Traceback", "internal error", "Exception ignored"):
        assert bad not in text, (where, text[-2000:])


@pytest.mark.parametrize(
    "command",
    [
        ["lint"],
        ["lint", "--format", "json"],
        ["lint", "--names", "resnet18.txt"],
        ["lint", "--names", "odd_names.txt"],
        ["lint", "--model", "tests.model_factories:mlp"],
        ["fmt"],
        ["fmt", "--check"],
        ["fmt", "-w"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_bad_input_through_each_command_is_never_an_internal_error(
    bad_files, tmp_path, command
) -> None:
    folder, names = bad_files
    cwd = folder
    if command == ["fmt", "-w"]:  # rewrites files: on a copy
        cwd = tmp_path / "copy"
        shutil.copytree(folder, cwd, symlinks=True, ignore=_not_regular)
        if hasattr(os, "mkfifo"):
            os.mkfifo(cwd / "pipe.freeze")
    if "--model" in command:
        # A model spec is imported from the current directory: run at the repository root.
        names = [str(folder / n) if not n.startswith("/") else n for n in names]
        cwd = HERE.parent
    done = subprocess.run(
        [*MODULE, *command, *names],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=_env(),
        timeout=240,
    )
    assert done.returncode == 2, done.stderr[-2000:]  # some inputs are file errors
    _clean(done.stdout + done.stderr, command)
    if command[:1] == ["lint"] and "--names" not in command:
        # Each file got its report: every one of them has something to say.
        said = done.stdout + done.stderr
        quiet = {"more_comment_only_controls.freeze", "more_only_separators.freeze"}
        if "--model" not in command:
            quiet |= {"more_backtracking.freeze", "more_double_stars.freeze"}
            quiet |= {"more_type_backtracking.freeze", "more_dead.freeze"}
            quiet |= {"more_from_end_nothing.freeze", "more_layer_decay_ok.freeze"}
            quiet |= {"more_shape_ok.freeze"}
        unreported = [n for n in names if Path(n).name not in said and Path(n).name not in quiet]
        assert unreported == [], command


def _not_regular(folder: str, entries: list[str]) -> list[str]:
    return [e for e in entries if e == "pipe.freeze"]


def test_show_over_every_bad_input_is_never_an_internal_error(bad_files) -> None:
    folder, names = bad_files
    argvs = []
    for name in names:
        path = name if name.startswith("/") else str(folder / name)
        show = ["show", path, "--model", "tests.model_factories:mlp"]
        argvs += [show, [*show, "--format", "json"], [*show, "--epoch", "3", "--step", "40"]]
    results = run_many(argvs, cwd=HERE.parent, timeout=600)
    for argv, result in zip(argvs, results, strict=True):
        assert result["code"] in (0, 1, 2), (argv, result)
        _clean(result["stdout"] + result["stderr"], argv)


def test_bad_names_files_are_never_an_internal_error(bad_files, tmp_path) -> None:
    folder, names = bad_files
    (tmp_path / "ok.freeze").write_text("freeze *\n", encoding="utf-8")
    argvs = [
        ["lint", "--names", name if name.startswith("/") else str(folder / name), "ok.freeze"]
        for name in names
    ]
    for argv, result in zip(argvs, run_many(argvs, cwd=tmp_path), strict=True):
        assert result["code"] in (0, 1, 2), (argv, result)
        _clean(result["stdout"] + result["stderr"], argv)
