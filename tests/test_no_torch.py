"""The core works where torch cannot be imported: `import freezepolicy`, parse, load, resolve,
lint (syntax and --names), fmt, and `python -m freezepolicy lint`. Each check runs in a fresh
interpreter whose `sitecustomize` installs an import hook that refuses torch (and the libraries
built on it) and records every attempt, so "torch was never imported" is checked directly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).parent

BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("torch", "torchvision", "transformers")


    class _NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                sys.stderr.write(f"NO-TORCH: refused import of {name}\\n")
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None


    sys.meta_path.insert(0, _NoTorch())
    """
)


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no_torch_site")
    (site / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("FREEZEPOLICY_DEBUG", None)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def test_the_blocker_really_blocks_torch(no_torch_env, tmp_path) -> None:
    done = run(["-c", "import torch"], no_torch_env, tmp_path)
    assert done.returncode != 0
    assert "NO-TORCH: refused import of torch" in done.stderr
    assert "ModuleNotFoundError" in done.stderr


LIBRARY_SCRIPT = textwrap.dedent(
    """
    import sys
    import freezepolicy
    from freezepolicy.lang.lint import lint_file, lint_text

    names = [line.strip() for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
    policy = freezepolicy.parse(
        "freeze *\\nunfreeze layer4, fc\\nlr 0.1x for layer4\\ndecay 0 for bias\\n"
        "unfreeze layer3 at epoch 2\\nstats freeze for bn1\\n"
    )
    d0 = policy.resolve(names, epoch=0)
    d2 = policy.resolve(names, epoch=2)
    assert d0["fc.weight"].trainable is True
    assert d0["layer4.0.conv1.weight"].lr.of(1.0) == 0.1
    assert d0["conv1.weight"].trainable is False
    assert d0["layer3.0.conv1.weight"].trainable is False
    assert d2["layer3.0.conv1.weight"].trainable is True
    assert d0["fc.bias"].weight_decay.value == 0
    assert d0["layer3.0.conv1.weight"].line == 1 and d2["layer3.0.conv1.weight"].line == 5
    bound = policy.bind(names)
    assert bound.resolve(epoch=2) == d2

    loaded = freezepolicy.load(sys.argv[2])
    assert loaded.statements and loaded.format() == open(sys.argv[2], encoding="utf-8").read()

    try:
        freezepolicy.parse("frezee *")
    except freezepolicy.PolicySyntaxError as exc:
        assert exc.code == "FP101"
    else:
        raise AssertionError("no error")

    assert lint_text("freeze *").diagnostics == []
    report = lint_text("freeze layer9\\nfreeze type:BatchNorm2d\\n", names=names)
    assert [d.code for d in report.diagnostics] == ["FP201", "FP203"], report.diagnostics
    assert lint_file(sys.argv[2], names=names).problems == []

    heavy = ("torch", "torchvision", "transformers")
    imported = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    assert not imported, imported
    print("library ok")
    """
)


def test_library_works_without_torch(no_torch_env, tmp_path) -> None:
    done = run(
        [
            "-c",
            LIBRARY_SCRIPT,
            str(HERE / "resnet18_names.txt"),
            str(HERE / "canonical" / "gradual_unfreeze.freeze"),
        ],
        no_torch_env,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "library ok\n"
    assert "NO-TORCH" not in done.stderr  # not even an attempt to import torch


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["lint", "good.freeze"], 0, ""),
        (["lint", "bad.freeze"], 1, "bad.freeze:1:1: unknown statement `frezee`"),
        (["lint", "--format", "json", "bad.freeze"], 1, '"code": "FP101"'),
        (
            ["lint", "--names", "names.txt", "names.freeze"],
            1,
            "names.freeze:1:8: warning: selector `layer9` matches no parameter",
        ),
        (["lint", "--names", "names.txt", "good.freeze"], 0, ""),
        (["fmt", "--check", "good.freeze"], 0, ""),
        (["fmt", "good.freeze"], 0, "freeze * except fc\n"),
    ],
)
def test_cli_works_without_torch(no_torch_env, tmp_path, args, status, expected) -> None:
    (tmp_path / "good.freeze").write_text("freeze * except fc\n", encoding="utf-8")
    (tmp_path / "bad.freeze").write_text("frezee *\n", encoding="utf-8")
    (tmp_path / "names.freeze").write_text("freeze layer9\n", encoding="utf-8")
    (tmp_path / "names.txt").write_text(
        (HERE / "resnet18_names.txt").read_text(encoding="utf-8"), encoding="utf-8"
    )
    done = run(["-m", "freezepolicy", *args], no_torch_env, tmp_path)
    assert done.returncode == status, done.stderr
    assert expected in done.stdout
    assert "NO-TORCH" not in done.stderr
    assert "Traceback" not in done.stderr


def test_every_module_of_the_language_layer_imports_without_torch(no_torch_env, tmp_path) -> None:
    """The whole language layer (freezepolicy/lang), module by module, with torch blocked: the
    layering test (test_architecture.py) reads the imports; this runs them."""
    lang = HERE.parent / "freezepolicy" / "lang"
    modules = sorted(p.stem for p in lang.glob("*.py") if p.stem != "__init__")
    assert len(modules) > 10  # the layer is there, not an empty glob
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('freezepolicy.lang.' + name)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "assert not heavy, heavy\n"
        "print(len(sys.modules) > 0)\n"
    )
    done = run(["-c", script], no_torch_env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    assert "NO-TORCH" not in done.stderr
