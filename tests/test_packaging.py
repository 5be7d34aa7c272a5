"""The built wheel: it carries the grammar and a working console script, and an installed copy
finds its grammar inside the package, from any directory, with no checkout on the path.

The slowest test of the suite (it builds and installs the wheel): marked `slow`.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammar" / "freeze.lark"

pytestmark = pytest.mark.slow


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the hatchling already installed (no network needed).
    _run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(ROOT),
        ]
    )
    (path,) = out.glob("freezepolicy-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ]
    )
    return target


def test_wheel_carries_the_grammar_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "freezepolicy/lang/freeze.lark" in names
        assert zf.read("freezepolicy/lang/freeze.lark") == GRAMMAR.read_bytes()
        # RECORD lists the grammar with the right hash, so installers accept and verify it.
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        rows = {row[0]: row[1] for row in csv.reader(io.StringIO(zf.read(record).decode()))}
        digest = base64.urlsafe_b64encode(hashlib.sha256(GRAMMAR.read_bytes()).digest())
        assert rows["freezepolicy/lang/freeze.lark"] == "sha256=" + digest.rstrip(b"=").decode()
        # The core modules are there; the checkout-only directories are not.
        for module in (
            "__init__",
            "__main__",
            "lang/api",
            "lang/grammar",
            "lang/parser",
            "lang/policy",
            "runtime/apply",
            "integrations/loop",
            "cli/main",
        ):
            assert f"freezepolicy/{module}.py" in names
        assert not any(n.startswith(("tests/", "grammar/")) for n in names)
        # The policies of policies/, byte for byte: the built-in ones.
        shipped = sorted(n for n in names if n.startswith("freezepolicy/policies/"))
        policies = sorted(ROOT.glob("policies/*.freeze"))
        assert shipped == [f"freezepolicy/policies/{p.name}" for p in policies]
        for p in policies:
            assert zf.read(f"freezepolicy/policies/{p.name}") == p.read_bytes()


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        config = configparser.ConfigParser()
        config.read_string(zf.read(entry_points).decode())
        target = config["console_scripts"]["freezepolicy"]
        assert target == "freezepolicy.cli.main:main"
        # The module it names is in the wheel and defines `main` (cel-python once shipped a
        # console script pointing at a module that did not exist).
        module, _, attr = target.partition(":")
        source = zf.read(module.replace(".", "/") + ".py").decode()
        assert f"\ndef {attr}(" in source


def _outside_env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)
    env.pop("FREEZEPOLICY_DEBUG", None)
    return env


def test_installed_package_loads_its_grammar_outside_the_checkout(
    installed: Path, tmp_path
) -> None:
    script = (
        "import sys, freezepolicy\n"
        "from freezepolicy.cli import main\n"
        "from freezepolicy.lang.grammar import grammar_path\n"
        "print(freezepolicy.__file__)\n"
        "print(grammar_path())\n"
        "p = freezepolicy.parse('freeze * except fc; lr 0 for layer1..3')\n"
        "print(len(p.statements), callable(main))\n"
        "b = freezepolicy.load('builtin:bert_last2')\n"
        "i = freezepolicy.parse('include \"builtin:no_decay_bias_norm\"')\n"
        "print(b.source)\n"
        "print(len(b.statements), [str(s) for s in i.statements])\n"
    )
    done = _run([sys.executable, "-c", script], cwd=tmp_path, env=_outside_env(installed))
    package_file, grammar, result, builtin, statements = done.stdout.splitlines()
    # The built-in policies are read from the installed package, not from the checkout.
    shipped = installed / "freezepolicy" / "policies" / "bert_last2.freeze"
    assert Path(builtin).resolve() == shipped.resolve()
    assert statements == "2 ['decay 0 for ndim<2']"
    assert Path(package_file).resolve().is_relative_to(installed.resolve())
    packaged = installed / "freezepolicy" / "lang" / "freeze.lark"
    assert Path(grammar).resolve() == packaged.resolve()
    assert Path(grammar).read_bytes() == GRAMMAR.read_bytes()
    assert not Path(grammar).resolve().is_relative_to(ROOT)
    assert result == "2 True"


def test_installed_console_script_runs(installed: Path, tmp_path) -> None:
    script = installed / "bin" / "freezepolicy"
    assert script.is_file()
    (tmp_path / "p.freeze").write_text("freeze  *  except fc\nfrezee x\n", encoding="utf-8")
    done = subprocess.run(
        [str(script), "lint", "p.freeze"],
        cwd=tmp_path,
        env=_outside_env(installed),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("p.freeze:2:1: unknown statement `frezee`")
    assert "Traceback" not in done.stderr


def _requirements(wheel: Path) -> dict[str | None, set[str]]:
    """The wheel's Requires-Dist, by extra (None: the base install), as bare project names."""
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(metadata).decode().splitlines()
    out: dict[str | None, set[str]] = {}
    for line in lines:
        if not line.startswith("Requires-Dist: "):
            continue
        requirement, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        extra = marker.split("extra ==")[1].strip().strip("'\"") if "extra ==" in marker else None
        name = requirement.strip()
        for cut in "<>=!~[ (":
            name = name.split(cut)[0]
        out.setdefault(extra, set()).add(name.lower())
    return out


def test_wheel_declares_the_integrations_as_extras(wheel: Path) -> None:
    requirements = _requirements(wheel)
    # `pip install freezepolicy` stays torch + lark; each integration is an extra.
    assert requirements[None] == {"lark", "torch"}
    assert requirements["lightning"] == {"lightning"}
    assert requirements["accelerate"] == {"accelerate"}
    assert {"lightning", "accelerate"} <= requirements["test"]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    for module in ("integrations/lightning", "runtime/wrappers", "runtime/coverage"):
        assert f"freezepolicy/{module}.py" in names


def test_import_and_apply_load_no_optional_framework(installed: Path, tmp_path) -> None:
    """The frameworks are installed here, and still nothing but their own integration module
    imports them: not the package, not apply_policy, not the unwrapping of their wrappers."""
    script = (
        "import sys, torch, freezepolicy\n"
        "model = torch.nn.ModuleDict({'a': torch.nn.Linear(2, 2), 'b': torch.nn.Linear(2, 1)})\n"
        "policy = freezepolicy.parse('freeze a; lr 0.5x for b at epoch 1')\n"
        "opt = torch.optim.SGD(freezepolicy.param_groups(model, policy, lr=0.1))\n"
        "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)\n"
        "fs = freezepolicy.FreezeScheduler(model, policy, opt, scheduler=sched)\n"
        "assert fs.start_epoch(1).trainable == ('b.weight', 'b.bias')\n"
        "import freezepolicy.runtime.wrappers, freezepolicy.runtime.coverage\n"
        "heavy = ('lightning', 'pytorch_lightning', 'accelerate', 'transformers', 'peft')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = _run([sys.executable, "-c", script], cwd=tmp_path, env=_outside_env(installed))
    assert done.stdout.strip() == "[]"
