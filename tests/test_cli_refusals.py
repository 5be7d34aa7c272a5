"""What the command does with input that is not a policy file or with an environment that
fails: every case ends with a message and exit 2 (or the documented code), never a hang, a
traceback, a half-written file, or exit 3. Real subprocesses throughout."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cli_driver import run_many
from test_cli import MODULE, _env, run

HERE = Path(__file__).parent
MESSY = "".join(
    f"freeze   layer{i}.conv{i % 3}   except bias ;lr 0.1x for  fc{i}\n" for i in range(150)
)
CANONICAL = "".join(
    f"freeze layer{i}.conv{i % 3} except bias\nlr 0.1x for fc{i}\n" for i in range(150)
)

# --- fmt -w writes atomically --------------------------------------------------------------------


def _in_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a shell line (`ulimit`, `>&-`): `{cmd}` in `script` is the command."""
    return subprocess.run(
        ["bash", "-c", script.format(cmd=" ".join(MODULE))],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def _no_temporary_files(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == []


def test_fmt_write_that_hits_the_file_size_limit_leaves_the_file_untouched(tmp_path) -> None:
    """`ulimit -f` makes the write fail half-way, as a full disk would. Writing in place left a
    shorter policy that still linted clean; now the file is the same, byte for byte."""
    policy = tmp_path / "p.freeze"
    policy.write_text(MESSY, encoding="utf-8")
    before = policy.read_bytes()
    assert len(CANONICAL.encode()) > 4 * 1024  # larger than the limit below
    done = _in_bash("ulimit -f 4; exec {cmd} fmt -w p.freeze", tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "p.freeze: cannot write the file, left unchanged: File too large [FP006]\n"
    )
    assert policy.read_bytes() == before
    _no_temporary_files(tmp_path)
    # Without the limit the same command succeeds, so the failure was the write.
    done = run("fmt", "-w", "p.freeze", cwd=tmp_path)
    assert done.returncode == 0
    assert policy.read_text(encoding="utf-8") == CANONICAL


@contextlib.contextmanager
def _read_only(path: Path):
    """Make a folder or file unwritable for this process. Root ignores permission bits, so as
    root the file system's immutable attribute is used (`chattr +i`), where it exists."""
    if os.geteuid() != 0:
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root, and this file system has no immutable attribute")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
@pytest.mark.parametrize("what", ["read-only folder", "read-only file"])
def test_fmt_write_without_permission_leaves_the_file_untouched(tmp_path, what) -> None:
    policy = tmp_path / "p.freeze"
    policy.write_text(MESSY, encoding="utf-8")
    with _read_only(tmp_path if what == "read-only folder" else policy):
        done = run("fmt", "-w", "p.freeze", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("p.freeze: cannot write the file, left unchanged: ")
    assert done.stderr.endswith(" [FP006]\n")
    assert policy.read_text(encoding="utf-8") == MESSY
    _no_temporary_files(tmp_path)


def test_fmt_write_keeps_the_mode_and_writes_through_a_symbolic_link(tmp_path) -> None:
    real = tmp_path / "real.freeze"
    real.write_text(MESSY, encoding="utf-8")
    real.chmod(0o640)
    (tmp_path / "link.freeze").symlink_to("real.freeze")
    done = run("fmt", "-w", "link.freeze", cwd=tmp_path)
    assert done.returncode == 0
    assert (tmp_path / "link.freeze").is_symlink()
    assert real.read_text(encoding="utf-8") == CANONICAL
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    _no_temporary_files(tmp_path)


# --- files that are not regular files --------------------------------------------------------


def _all_finish(
    commands: dict[str, list[str]], cwd: Path
) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once; each must end within the limit (a FIFO opened for reading
    without a writer used to block forever)."""
    procs = {
        name: subprocess.Popen(
            args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
        )
        for name, args in commands.items()
    }
    out = {}
    try:
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name}: still running after 90 s (blocked on the FIFO?)")
            out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_by_every_command_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe.freeze")
    os.mkfifo(tmp_path / "names.txt")
    (tmp_path / "ok.freeze").write_text("freeze *\n", encoding="utf-8")
    refused = (
        "pipe.freeze: is a FIFO (named pipe), not a regular file; a policy file must be a"
        " regular file [FP004]"
    )
    done = _all_finish(
        {
            "lint": [*MODULE, "lint", "ok.freeze", "pipe.freeze"],
            "fmt": [*MODULE, "fmt", "pipe.freeze"],
            "fmt -w": [*MODULE, "fmt", "-w", "pipe.freeze"],
            "fmt --check": [*MODULE, "fmt", "--check", "pipe.freeze"],
            "show": [*MODULE, "show", "pipe.freeze", "--model", "tests.model_factories:mlp"],
            "--names": [*MODULE, "lint", "--names", "names.txt", "ok.freeze"],
        },
        tmp_path,
    )
    for name, result in done.items():
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr
    assert done["lint"].stdout == refused + "\n"
    for name in ("fmt", "fmt -w", "fmt --check", "show"):
        assert done[name].stderr == refused + "\n", name
    assert done["--names"].stderr == (
        "freezepolicy lint: error: cannot read names file names.txt: is a FIFO (named pipe), not"
        " a regular file; a names file must be a regular file [FP004]\n"
    )
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.freeze").st_mode)  # fmt -w left it alone


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_before_anything_is_read(tmp_path) -> None:
    done = run("lint", "/dev/zero", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == (
        "/dev/zero: is a character device, not a regular file; a policy file must be a regular"
        " file [FP004]\n"
    )
    done = run("lint", "--names", "/dev/zero", "/dev/null", cwd=tmp_path)
    assert done.returncode == 2
    assert "is a character device" in done.stderr and "[FP004]" in done.stderr


def test_a_file_over_the_size_limit_is_refused_without_reading_it(tmp_path) -> None:
    from freezepolicy.lang.source import MAX_POLICY_BYTES

    big = tmp_path / "big.freeze"
    with big.open("wb") as f:  # sparse: no disk space, and nothing to read if it were
        f.truncate(MAX_POLICY_BYTES + 1)
    done = run("lint", "big.freeze", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == (
        f"big.freeze: is {MAX_POLICY_BYTES + 1:,} bytes; a policy file is at most"
        f" {MAX_POLICY_BYTES:,} bytes [FP005]\n"
    )


# --- --model factories -----------------------------------------------------------------------

FACTORIES = '''
import sys

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message")

def unprintable():
    raise Unprintable()

def exits():
    sys.exit(7)

class Holder:
    @property
    def model(self):
        raise ValueError("broken property")

holder = Holder()
'''


FACTORY_ERRORS = [
    (
        "builtins:exit",
        "calling `builtins:exit()` raised SystemExit(None) instead of returning a model",
    ),
    (
        "factories:exits",
        "calling `factories:exits()` raised SystemExit(7) instead of returning a model",
    ),
    ("exits_on_import:model", "importing `exits_on_import` raised SystemExit(3)"),
    (
        "factories:unprintable",
        "calling `factories:unprintable()` failed: Unprintable: (its message could not be"
        " shown: str() of it failed)",
    ),
    (
        "factories:holder.model",
        "looking up `factories:holder.model` failed: ValueError: broken property",
    ),
]


@pytest.fixture
def factories(tmp_path) -> Path:
    (tmp_path / "factories.py").write_text(FACTORIES, encoding="utf-8")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    (tmp_path / "p.freeze").write_text("freeze *\n", encoding="utf-8")
    return tmp_path


def test_a_factory_that_exits_does_not_end_the_command_with_its_code(factories) -> None:
    """`--model builtins:exit` ended the command silently with exit 0."""
    done = run("lint", "--model", "builtins:exit", "p.freeze", cwd=factories)
    assert done.returncode == 2
    assert done.stderr == f"freezepolicy lint: error: {FACTORY_ERRORS[0][1]}\n"


def test_a_model_factory_cannot_end_or_break_the_command(factories) -> None:
    argvs = []
    for spec, _ in FACTORY_ERRORS:
        argvs += [["lint", "--model", spec, "p.freeze"], ["show", "p.freeze", "--model", spec]]
    results = run_many(argvs, cwd=factories)
    for argv, result in zip(argvs, results, strict=True):
        spec = argv[2] if argv[0] == "lint" else argv[3]
        message = dict(FACTORY_ERRORS)[spec]
        assert result == {
            "code": 2,
            "stdout": "",
            "stderr": f"freezepolicy {argv[0]}: error: {message}\n",
        }, argv


# --- standard output that cannot be written --------------------------------------------------


@pytest.mark.parametrize("args", [["lint", "bad.freeze"], ["fmt", "ok.freeze"], ["--version"]])
def test_closed_standard_output_is_a_clean_error(tmp_path, args) -> None:
    (tmp_path / "ok.freeze").write_text("freeze *\n", encoding="utf-8")
    (tmp_path / "bad.freeze").write_text("frezee *\n", encoding="utf-8")
    done = _in_bash("exec {cmd} " + " ".join(args) + " >&-", tmp_path)
    assert done.returncode == 2, done.stderr
    name = args[0]
    assert done.stderr == (
        f"freezepolicy {name}: error: standard output is closed; nothing can be printed\n"
    )


def test_fmt_write_needs_no_standard_output(tmp_path) -> None:
    (tmp_path / "p.freeze").write_text("freeze  *\n", encoding="utf-8")
    done = _in_bash("exec {cmd} fmt -w p.freeze >&-", tmp_path)
    assert (done.returncode, done.stderr) == (0, "formatted p.freeze\n")
    assert (tmp_path / "p.freeze").read_text() == "freeze *\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_output_device_is_a_clean_error(tmp_path) -> None:
    (tmp_path / "bad.freeze").write_text("frezee *\n", encoding="utf-8")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*MODULE, "lint", "bad.freeze"],
            cwd=tmp_path,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            timeout=120,
        )
    assert done.returncode == 2
    assert done.stderr == (
        "freezepolicy lint: error: cannot write the output: No space left on device\n"
    )


# --- show: what lint accepts, show reports cleanly ----------------------------------------------

WARMUP = "freeze *\nunfreeze out at epoch 1 warmup 100 steps\n"


def test_a_warmup_that_mixes_clocks_is_noted_by_lint_and_refused_by_show(tmp_path) -> None:
    """`show` exited 3 (an internal error) on a policy that lint accepted."""
    policy = tmp_path / "w.freeze"
    policy.write_text(WARMUP, encoding="utf-8")
    caret = "    unfreeze out at epoch 1 warmup 100 steps\n" + " " * 28 + "^~~~~~~~~~~~~~~~\n"
    done = run("lint", str(policy), cwd=tmp_path)
    assert done.returncode == 0  # a note: the policy is right when steps_per_epoch is known
    assert done.stdout == (
        f"{policy}:2:25: note: `unfreeze out at epoch 1 warmup 100 steps` mixes epochs and steps"
        " in its warm-up: applying it needs the number of steps per epoch (`steps_per_epoch=`,"
        " which FreezeScheduler and the Trainer callback pass; `show --steps-per-epoch`)"
        " [FP207]\n" + caret
    )
    show = ["show", str(policy), "--model", "tests.model_factories:mlp"]
    refused = {
        "code": 2,
        "stdout": "",
        "stderr": (
            f"{policy}:2:25: `unfreeze out at epoch 1 warmup 100 steps` mixes epochs and steps in"
            " its warm-up, which needs the number of steps per epoch: pass --steps-per-epoch N"
            " [FP207]\n" + caret
        ),
    }
    given = ["--epoch", "2", "--steps-per-epoch", "9"]
    moments = [["--epoch", "2"], [], ["--step", "7"], ["--format", "json"], given]
    at_epoch, plain, at_step, as_json, given = run_many(
        [show + m for m in moments], cwd=HERE.parent
    )
    assert at_epoch == refused  # the command
    assert plain == refused and at_step == refused  # the schedule resolves every event
    assert as_json["code"] == 2 and as_json["stderr"] == ""
    assert [d["code"] for d in json.loads(as_json["stdout"])["diagnostics"]] == ["FP207"]
    assert given["code"] == 0, given["stderr"]
    assert "moment  epoch 2, step 18 (9 steps per epoch)" in given["stdout"]
    assert "FP207" not in given["stdout"]  # given, so nothing to note


def test_show_json_reports_errors_as_json(tmp_path) -> None:
    """`show --format json` printed a syntax error as text, unlike `lint --format json`."""
    (tmp_path / "syntax.freeze").write_text("frezee *\n", encoding="utf-8")
    cases = [("syntax.freeze", 1, "FP101"), ("missing.freeze", 2, "FP001")]
    argvs = [
        ["show", str(tmp_path / name), "--model", "tests.model_factories:mlp", "--format", "json"]
        for name, _, _ in cases
    ]
    for (_, status, code), result in zip(cases, run_many(argvs, cwd=HERE.parent), strict=True):
        assert result["code"] == status, result["stderr"]
        assert result["stderr"] == ""
        report = json.loads(result["stdout"])
        assert report["version"] == 1
        assert [d["code"] for d in report["diagnostics"]] == [code]
        assert report["summary"] == {"files": 1, "errors": 1, "warnings": 0, "notes": 0}
