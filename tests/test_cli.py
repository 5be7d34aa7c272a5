"""The `freezepolicy` command, run as a real subprocess: `python -m freezepolicy` and the
console script installed next to the interpreter. Exit codes: 0 clean, 1 problems, 2 usage or
file errors; never a Python traceback for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CANONICAL = HERE / "canonical"
SCRIPT = shutil.which("freezepolicy", path=str(Path(sys.executable).parent))
MODULE = [sys.executable, "-m", "freezepolicy"]
STATEMENT_WORDS = (
    "(a statement starts with `freeze`, `unfreeze`, `lr`, `decay`, `stats` or `include`)"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FREEZEPOLICY_DEBUG", None)  # the user's view: no tracebacks on purpose
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run(*args: str, cwd: Path, command: list[str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*(command or MODULE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        timeout=120,
    )
    # Whatever the input, the user never sees a Python traceback.
    assert "Traceback" not in done.stderr, done.stderr
    assert "Traceback" not in done.stdout, done.stdout
    return done


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory of policies, names and non-policies; tests run with it as cwd."""
    (tmp_path / "ok.freeze").write_text("freeze * except fc\n", encoding="utf-8")
    (tmp_path / "bad.freeze").write_text("frezee *\nlr -1 for fc\n", encoding="utf-8")
    (tmp_path / "messy.freeze").write_text("freeze  *   except fc\r\n", encoding="utf-8")
    (tmp_path / "binary.freeze").write_bytes(b"PK\x03\x04\x00\x00\x00")
    (tmp_path / "latin1.freeze").write_bytes(b"freeze caf\xe9\n")
    (tmp_path / "policies").mkdir()
    shutil.copy(HERE / "resnet18_names.txt", tmp_path / "resnet18.txt")
    shutil.copy(HERE / "bert_base_names.txt", tmp_path / "bert.txt")
    shutil.copy(HERE / "bert_base_seqcls_names.txt", tmp_path / "bert_cls.txt")
    (tmp_path / "empty_names.txt").write_text("# nothing\n\n", encoding="utf-8")
    return tmp_path


# --- the two ways to start the command ---------------------------------------------------------


def test_console_script_is_installed_next_to_the_interpreter() -> None:
    assert SCRIPT is not None, f"no freezepolicy script in {Path(sys.executable).parent}"
    assert Path(SCRIPT).parent == Path(sys.executable).parent


@pytest.fixture(params=["module", "script"])
def command(request) -> list[str]:
    if request.param == "script":
        assert SCRIPT is not None
        return [SCRIPT]
    return MODULE


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["lint", "ok.freeze"], 0),
        (["lint", "bad.freeze"], 1),
        (["lint", "missing.freeze"], 2),
        (["lint", "binary.freeze"], 2),
        (["lint", "--bogus", "ok.freeze"], 2),
        (["lint", "--names", "missing.txt", "ok.freeze"], 2),
        (["fmt", "--check", "messy.freeze"], 1),
        (["fmt", "--check", "ok.freeze"], 0),
        (["--version"], 0),
        ([], 2),
    ],
)
def test_exit_codes_from_both_entry_points(files, command, args, status) -> None:
    done = run(*args, cwd=files, command=command)
    assert done.returncode == status, (done.stdout, done.stderr)


def test_version(files, command) -> None:
    import freezepolicy

    done = run("--version", cwd=files, command=command)
    assert done.stdout == f"freezepolicy {freezepolicy.__version__}\n"


# --- lint ---------------------------------------------------------------------------------------


def test_lint_clean_file_prints_nothing(files) -> None:
    """Clean files print nothing but the notes of their metric-driven statements (FP232), one
    per `when` statement, which lint shows as conditional events."""
    done = run(
        "lint", "ok.freeze", *[str(p) for p in sorted(CANONICAL.glob("*.freeze"))], cwd=files
    )
    assert (done.returncode, done.stderr) == (0, "")
    heads = [line for line in done.stdout.splitlines() if not line.startswith(" ")]
    expected = [
        (str(path), number)
        for path in sorted(CANONICAL.glob("*.freeze"))
        for number, text in enumerate(path.read_text().splitlines(), start=1)
        if " when " in text and not text.lstrip().startswith("#")
    ]
    assert expected, "the canonical files should hold a metric-driven statement"
    assert [(h.split(":")[0], int(h.split(":")[1])) for h in heads] == expected
    assert all(": note: conditional event: " in h and h.endswith("[FP232]") for h in heads)


def test_lint_reports_every_syntax_problem(files) -> None:
    done = run("lint", "bad.freeze", cwd=files)
    assert done.returncode == 1
    assert done.stdout == (
        "bad.freeze:1:1: unknown statement `frezee`; did you mean `freeze`? "
        f"{STATEMENT_WORDS} [FP101]\n"
        "    frezee *\n"
        "    ^~~~~~\n"
        "bad.freeze:2:4: a learning rate cannot be negative, got `-1` [FP107]\n"
        "    lr -1 for fc\n"
        "       ^~\n"
    )
    assert done.stderr == "2 problems in 1 file(s)\n"


def test_lint_several_files(files) -> None:
    done = run("lint", "ok.freeze", "bad.freeze", "messy.freeze", cwd=files)
    assert done.returncode == 1
    assert [line.split(":")[0] for line in done.stdout.splitlines() if "[FP" in line] == [
        "bad.freeze",
        "bad.freeze",
    ]
    # A file that cannot be read makes the exit status 2, and the others are still checked.
    done = run("lint", "bad.freeze", "missing.freeze", "ok.freeze", cwd=files)
    assert done.returncode == 2
    assert "bad.freeze:1:1:" in done.stdout
    assert "missing.freeze: no such policy file [FP001]" in done.stdout


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("missing.freeze", "missing.freeze: no such policy file [FP001]\n"),
        ("policies", "policies: is a directory, not a policy file [FP001]\n"),
        (
            "binary.freeze",
            "binary.freeze:1:5: this is not a policy file: it contains NUL bytes "
            "(is it binary?) [FP002]\n"
            "    PK\x03\x04\N{SYMBOL FOR NULL}\N{SYMBOL FOR NULL}\N{SYMBOL FOR NULL}\n"
            "        ^\n",
        ),
        (
            "latin1.freeze",
            "latin1.freeze:1:11: invalid UTF-8 (byte 0xe9); save the policy as UTF-8 text [FP003]\n"
            "    freeze caf\N{REPLACEMENT CHARACTER}\n"
            "              ^\n",
        ),
    ],
)
def test_lint_file_errors_exit_2(files, target: str, expected: str) -> None:
    done = run("lint", target, cwd=files)
    assert done.returncode == 2
    assert done.stdout == expected
    assert done.stderr == "1 problem in 1 file(s)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lint"], "the following arguments are required: FILE"),
        (["lint", "--format", "xml", "ok.freeze"], "invalid choice: 'xml'"),
        (["lint", "--bogus", "ok.freeze"], "unrecognized arguments: --bogus"),
        (["fmt", "--check", "-w", "ok.freeze"], "not allowed with argument"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (
            ["lint", "--names", "missing.txt", "ok.freeze"],
            "freezepolicy lint: error: cannot read names file missing.txt: "
            "No such file or directory",
        ),
        (
            ["lint", "--names", "empty_names.txt", "ok.freeze"],
            "freezepolicy lint: error: names file empty_names.txt lists no parameter names",
        ),
        (
            ["lint", "--names", "binary.freeze", "ok.freeze"],
            "freezepolicy lint: error: names file binary.freeze is not text "
            "(it contains NUL bytes)",
        ),
        (
            ["lint", "--names", "latin1.freeze", "ok.freeze"],
            "freezepolicy lint: error: names file latin1.freeze:1: invalid UTF-8",
        ),
    ],
)
def test_bad_arguments_exit_2_with_a_message(files, args, message) -> None:
    done = run(*args, cwd=files)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_no_command_prints_help_and_exits_2(files) -> None:
    done = run(cwd=files)
    assert done.returncode == 2
    assert "usage: freezepolicy" in done.stderr
    assert "lint" in done.stderr and "fmt" in done.stderr


def test_lint_json(files) -> None:
    done = run("lint", "--format", "json", "bad.freeze", "ok.freeze", cwd=files)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["version"] == 1
    assert [
        (d["path"], d["line"], d["column"], d["code"], d["severity"]) for d in report["diagnostics"]
    ] == [
        ("bad.freeze", 1, 1, "FP101", "error"),
        ("bad.freeze", 2, 4, "FP107", "error"),
    ]
    assert report["diagnostics"][0]["name"] == "unknown-keyword"
    assert report["diagnostics"][1]["message"] == "a learning rate cannot be negative, got `-1`"
    assert report["summary"] == {"files": 2, "errors": 2, "warnings": 0, "notes": 0}


def test_lint_json_clean_and_file_error(files) -> None:
    done = run("lint", "--format", "json", "ok.freeze", cwd=files)
    assert done.returncode == 0
    assert json.loads(done.stdout)["diagnostics"] == []
    done = run("lint", "--format", "json", "missing.freeze", cwd=files)
    assert done.returncode == 2
    (diag,) = json.loads(done.stdout)["diagnostics"]
    assert (diag["code"], diag["line"], diag["name"]) == ("FP001", None, "file-not-found")


# --- lint --names -------------------------------------------------------------------------------


def write(directory: Path, name: str, text: str) -> str:
    (directory / name).write_text(text, encoding="utf-8")
    return name


def test_names_selects_nothing_and_never_effective(files) -> None:
    policy = write(
        files,
        "p.freeze",
        "freeze layer1\n"  # line 1: always overridden by line 3 for every layer1 parameter
        "unfreeze layer5\n"  # line 2: resnet18 has layer1..4 only
        "unfreeze layer1..2\n",
    )
    done = run("lint", "--names", "resnet18.txt", "--format", "json", policy, cwd=files)
    assert done.returncode == 1
    diags = json.loads(done.stdout)["diagnostics"]
    assert [(d["line"], d["column"], d["code"], d["severity"]) for d in diags] == [
        (1, 1, "FP202", "warning"),
        (2, 10, "FP201", "warning"),
    ]
    assert diags[0]["message"] == (
        "`freeze layer1` never changes anything: later statements always override it (line 3)"
    )
    assert diags[1]["message"].startswith("selector `layer5` matches no parameter")


def test_names_unfreeze_blocked_by_lr_zero(files) -> None:
    policy = write(files, "p.freeze", "lr 0 for layer4\nunfreeze layer4 at epoch 3\n")
    done = run("lint", "--names", "resnet18.txt", policy, cwd=files)
    assert done.returncode == 1
    assert done.stdout == (
        "p.freeze:2:1: warning: `unfreeze layer4 at epoch 3` never takes effect: the learning "
        "rate of what it selects is 0 (line 1), which keeps it frozen [FP204]\n"
        "    unfreeze layer4 at epoch 3\n"
        "    ^~~~~~~~~~~~~~~~~~~~~~~~~~\n"
    )
    assert done.stderr == "1 problem in 1 file(s)\n"


def test_names_type_selector_is_a_note_that_does_not_fail_lint(files) -> None:
    policy = write(files, "p.freeze", "freeze *\nunfreeze fc\nstats freeze for type:BatchNorm2d\n")
    done = run("lint", "--names", "resnet18.txt", policy, cwd=files)
    assert done.returncode == 0, done.stdout
    assert done.stdout == (
        "p.freeze:3:18: note: `type:BatchNorm2d` selects by module type, which needs a model; "
        "check it with `--model` [FP203]\n"
        "    stats freeze for type:BatchNorm2d\n"
        "                     ^~~~~~~~~~~~~~~~\n"
    )
    assert done.stderr == ""
    done = run("lint", "--names", "resnet18.txt", "--format", "json", policy, cwd=files)
    assert done.returncode == 0
    assert json.loads(done.stdout)["summary"] == {
        "files": 1,
        "errors": 0,
        "warnings": 0,
        "notes": 1,
    }


def test_names_bert_last2_fits_the_classifier_model_only(files) -> None:
    """The same policy against BertForSequenceClassification and BertModel (no classifier)."""
    policy = str(CANONICAL / "bert_last2.freeze")
    done = run("lint", "--names", "bert_cls.txt", policy, cwd=files)
    assert (done.returncode, done.stdout) == (0, "")
    done = run("lint", "--names", "bert.txt", "--format", "json", policy, cwd=files)
    assert done.returncode == 1
    diags = json.loads(done.stdout)["diagnostics"]
    # `classifier` on lines 5 and 8 selects nothing in BertModel; everything else is used.
    assert [(d["line"], d["code"]) for d in diags] == [(5, "FP201"), (8, "FP201")]
    assert all("`classifier`" in d["message"] for d in diags)


def test_names_with_a_syntax_error_reports_the_syntax_error(files) -> None:
    done = run("lint", "--names", "resnet18.txt", "bad.freeze", cwd=files)
    assert done.returncode == 1
    assert "bad.freeze:1:1: unknown statement `frezee`" in done.stdout


# --- fmt ----------------------------------------------------------------------------------------


def test_fmt_prints_canonical_text(files) -> None:
    write(files, "p.freeze", "# head\n\n\n  freeze   *  except fc ;unfreeze  fc  # again\r\n")
    done = run("fmt", "p.freeze", "messy.freeze", cwd=files)
    assert done.returncode == 0
    assert done.stdout == "# head\n\nfreeze * except fc\nunfreeze fc  # again\nfreeze * except fc\n"
    assert done.stderr == ""


def test_fmt_check(files) -> None:
    canonical = [str(p) for p in sorted(CANONICAL.glob("*.freeze"))]
    done = run("fmt", "--check", *canonical, cwd=files)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = run("fmt", "--check", "ok.freeze", "messy.freeze", cwd=files)
    assert done.returncode == 1
    assert done.stdout == (
        "messy.freeze: not in canonical form (run `freezepolicy fmt -w messy.freeze`)\n"
    )
    # A byte-order mark is not canonical either: `fmt -w` drops it.
    (files / "bom.freeze").write_bytes(b"\xef\xbb\xbffreeze * except fc\n")
    assert run("fmt", "--check", "bom.freeze", cwd=files).returncode == 1


def test_fmt_write_rewrites_only_what_changes(files) -> None:
    before_ok = (files / "ok.freeze").stat().st_mtime_ns
    done = run("fmt", "-w", "messy.freeze", "ok.freeze", cwd=files)
    assert done.returncode == 0
    assert done.stderr == "formatted messy.freeze\n"
    assert (files / "messy.freeze").read_bytes() == b"freeze * except fc\n"
    assert (files / "ok.freeze").stat().st_mtime_ns == before_ok
    assert run("fmt", "--check", "messy.freeze", cwd=files).returncode == 0


def test_fmt_leaves_broken_files_alone(files) -> None:
    before = (files / "bad.freeze").read_bytes()
    done = run("fmt", "-w", "bad.freeze", cwd=files)
    assert done.returncode == 1
    assert done.stderr.startswith("bad.freeze:1:1: unknown statement `frezee`")
    assert (files / "bad.freeze").read_bytes() == before
    assert run("fmt", "missing.freeze", cwd=files).returncode == 2
    assert run("fmt", "binary.freeze", cwd=files).returncode == 2


def test_fmt_output_is_utf8_whatever_the_locale(files) -> None:
    write(files, "u.freeze", "freeze  café  # été\n")
    env = {**_env(), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [*MODULE, "fmt", "u.freeze"], cwd=files, capture_output=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "freeze café  # été\n".encode()


def test_lint_on_an_ascii_terminal_escapes_what_it_cannot_print(files) -> None:
    write(files, "u.freeze", "freeze café bar\n")
    env = {**_env(), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [*MODULE, "lint", "u.freeze"], cwd=files, capture_output=True, env=env, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert b"Traceback" not in done.stderr and b"internal error" not in done.stderr
    assert b"    freeze caf\\xe9 bar\n" in done.stdout


# --- never a traceback --------------------------------------------------------------------------

BAD_INPUTS = {
    "nul.freeze": b"freeze \x00",
    "utf16.freeze": "freeze fc\n".encode("utf-16"),
    "garbage.freeze": bytes(range(256)) * 4,
    "long.freeze": b"freeze " + b"[" * 200_000,
    "deep.freeze": b"freeze " + b"{" * 5000 + b"}" * 5000,
    "numbers.freeze": b"lr 1" + b"0" * 5000 + b" for fc at epoch " + b"9" * 5000,
    "soup.freeze": b"except at for ; , . .. ** ^ type: # \r\n\r" * 100,
    "crlf_errors.freeze": b"frezee a\r\nlr x for b\r\n\tfreeze c at step -1\r\n",
}


@pytest.mark.parametrize(
    "mode",
    [["lint"], ["lint", "--format", "json"], ["lint", "--names", "resnet18.txt"], ["fmt"]],
    ids=["lint", "json", "names", "fmt"],
)
def test_bad_input_never_shows_a_traceback(files, mode: list[str]) -> None:
    for name, data in BAD_INPUTS.items():
        (files / name).write_bytes(data)
    done = run(*mode, *BAD_INPUTS, cwd=files)  # run() asserts there is no traceback
    assert done.returncode == 2, done.stderr  # some of them are not text at all
    assert "internal error" not in done.stderr
    # Every file got its own report.
    for name in BAD_INPUTS:
        assert name in done.stdout + done.stderr, name


def test_names_file_that_is_a_directory(files) -> None:
    done = run("lint", "--names", "policies", "ok.freeze", cwd=files)
    assert done.returncode == 2
    assert done.stderr.startswith("freezepolicy lint: error: cannot read names file policies:")


# --- broken pipes -------------------------------------------------------------------------------


def _many_bad_files(directory: Path, count: int) -> list[str]:
    text = "".join(f"frezee layer{i}\n" for i in range(25))
    names = []
    for i in range(count):
        names.append(write(directory, f"bad{i:03}.freeze", text))
    return names


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_reader_that_goes_away_gets_no_traceback(files, fmt: str) -> None:
    """`freezepolicy lint ... | head -1`: the reader closes the pipe before the output ends."""
    bad = _many_bad_files(files, 60)
    proc = subprocess.Popen(
        [*MODULE, "lint", "--format", fmt, *bad],
        cwd=files,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # like `head -1`: read one line, then go away
    _, err = proc.communicate(timeout=120)
    assert first
    assert b"Traceback" not in err
    assert b"Exception ignored" not in err
    assert b"BrokenPipeError" not in err


def test_shell_pipeline_into_head(files) -> None:
    head = shutil.which("head")
    if head is None:
        pytest.skip("no head command")
    bad = _many_bad_files(files, 60)
    quoted = " ".join(bad)
    done = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m freezepolicy lint {quoted} | head -1"],
        cwd=files,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.stdout.startswith("bad000.freeze:1:1: unknown statement `frezee`")
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
