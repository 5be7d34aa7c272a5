"""The model layout cache (`freezepolicy.cli.layout_cache`): a hit is the layout a fresh build
gives, a warm `lint --model` / `show --model` imports no torch and prints the same bytes, and
anything wrong with the cache (bad file, other key, unwritable directory) only costs a rebuild."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from freezepolicy.cli import layout_cache, main
from freezepolicy.cli.layout_cache import model_layout

pytest.importorskip("torchvision")

ROOT = Path(__file__).parent.parent
RESNET = "torchvision:resnet18"
POLICY = str(ROOT / "policies" / "resnet_head_only.freeze")
# Warnings on stdout (a missing name, an unknown type), so the outputs compared have content.
NOISY = "freeze *\nunfreeze fc, nosuch\nstats freeze for type:BatchNorm2d\nunfreeze type:Conv9d\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, enabled cache directory for one test."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("FREEZEPOLICY_CACHE_DIR", str(directory))
    monkeypatch.delenv("FREEZEPOLICY_NO_CACHE", raising=False)
    return directory


def cached(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.json")) if directory.exists() else []


def no_build(spec: str):
    raise AssertionError(f"built {spec} although its layout is cached")


def fresh(spec: str):
    from freezepolicy.cli.layout import layout_from_model
    from freezepolicy.cli.models import build_model

    return layout_from_model(build_model(spec))


@pytest.mark.parametrize("spec", [RESNET, "transformers:gpt2", "transformers:bert-base-uncased"])
def test_a_hit_is_the_layout_of_a_fresh_build(cache, monkeypatch, spec) -> None:
    if spec.startswith("transformers:"):
        pytest.importorskip("transformers")
    cold = model_layout(spec)
    [file] = cached(cache)
    assert file.parent == cache / "layouts"
    key = json.loads(file.read_text(encoding="ascii"))["key"]
    assert key["spec"] == spec and "torch" in key["versions"]  # readable, for debugging
    monkeypatch.setattr(layout_cache, "_build", no_build)
    warm = model_layout(spec)
    assert warm == cold == fresh(spec)
    assert list(warm.module_classes) == list(cold.module_classes)  # model order kept
    assert model_layout(f"  {spec} ") == cold  # the same spec, the same file
    assert cached(cache) == [file]


WARM_RUN = textwrap.dedent(
    """
    import sys
    from freezepolicy.cli import main

    code = main(sys.argv[1:])
    heavy = sorted({"torch", "torchvision", "transformers"} & set(sys.modules))
    print("IMPORTED:", ",".join(heavy) or "-", file=sys.stderr)
    sys.exit(code)
    """
)


def run_cli(*args: str, cache: Path, cwd: Path) -> tuple[int, str, str]:
    """`main(args)` in a fresh interpreter: exit code, stdout, and the heavy libraries imported."""
    env = dict(os.environ, FREEZEPOLICY_CACHE_DIR=str(cache), PYTHONIOENCODING="utf-8")
    env.pop("FREEZEPOLICY_NO_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", WARM_RUN, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    imported = done.stderr.rsplit("IMPORTED: ", 1)[1].strip()
    return done.returncode, done.stdout, imported


def test_warm_cli_imports_no_torch_and_prints_the_same(cache, tmp_path) -> None:
    (tmp_path / "noisy.freeze").write_text(NOISY, encoding="utf-8")
    lint = ("lint", "--model", RESNET, POLICY, "noisy.freeze")
    show = ("show", POLICY, "--model", RESNET)
    cold = run_cli(*lint, cache=cache, cwd=tmp_path)
    assert cold[0] == 1 and "FP201" in cold[1] and "torch" in cold[2]
    assert run_cli(*lint, cache=cache, cwd=tmp_path) == (*cold[:2], "-")
    assert run_cli(*lint, "--format", "json", cache=cache, cwd=tmp_path)[2] == "-"
    uncached = run_cli(*show, "--no-cache", cache=cache, cwd=tmp_path)
    assert uncached[0] == 0 and "fc" in uncached[1] and "torch" in uncached[2]
    assert run_cli(*show, cache=cache, cwd=tmp_path) == (*uncached[:2], "-")
    assert len(cached(cache)) == 1


def cli_output(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


TEXT_DAMAGE = {
    "empty": lambda text: "",
    "truncated": lambda text: text[: len(text) // 2],
    "not-json": lambda text: "not json",
    "not-ascii": lambda text: "\xff" + text,
}
#: (where, new value) in the file's JSON data; each leaves it valid JSON but not a valid layout.
DATA_DAMAGE = {
    "not-object": ((), []),
    "layout-not-object": (("layout",), []),
    "names-not-list": (("layout", "names"), "conv1.weight"),
    "name-not-str": (("layout", "names", 0), 1),
    "repeated-name": (("layout", "names", 1), "conv1.weight"),
    "short-types": (("layout", "types"), [0]),
    "index": (("layout", "types", 0), 10**6),
    "negative-dim": (("layout", "shapes", 0, 0), -1),
    "bool-dim": (("layout", "shapes", 0, 0), True),
    "class-not-str": (("layout", "type_sets", 0, 0), None),
    "tied-unknown": (("layout", "tied"), [["conv1.weight", "nosuch"]]),
    "module-pair": (("layout", "modules", 0), ["x"]),
    "other-spec": (("key", "spec"), "torchvision:resnet50"),
    "other-version": (("key", "versions", "torch"), "0.0"),
    "no-key": (("key",), None),
}


def damage_data(text: str, where: tuple, value: object) -> str:
    data = json.loads(text)
    if not where:
        return json.dumps(value)
    target = data
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize("kind", [*TEXT_DAMAGE, *DATA_DAMAGE])
def test_a_damaged_file_is_a_miss_and_is_rebuilt(cache, capsys, kind) -> None:
    args = ("lint", "--model", RESNET, POLICY)
    before = cli_output(capsys, *args)
    [file] = cached(cache)
    good = file.read_text(encoding="ascii")
    if kind in TEXT_DAMAGE:
        damaged = TEXT_DAMAGE[kind](good)
    else:
        damaged = damage_data(good, *DATA_DAMAGE[kind])
    assert damaged != good
    file.write_bytes(damaged.encode("latin-1"))
    assert layout_cache._load(file, layout_cache.key_fields(RESNET) or {}) is None
    assert cli_output(capsys, *args) == before
    assert file.read_text(encoding="ascii") == good  # overwritten, with the same content


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_where_the_file_should_be_is_a_miss_and_never_waited_on(cache) -> None:
    """Reading the cache file with `read_bytes` waited for a writer forever."""
    key = layout_cache.key_fields(RESNET)
    assert key is not None
    file = layout_cache.cache_file(key)
    assert file is not None
    file.parent.mkdir(parents=True)
    os.mkfifo(file)
    assert layout_cache._load(file, key) is None  # at once: opened without blocking
    assert model_layout(RESNET) == fresh(RESNET)
    assert file.is_file()  # the build replaced it with a real cache file


def test_another_version_is_a_miss(cache, monkeypatch) -> None:
    model_layout(RESNET)
    real = layout_cache.installed_version
    monkeypatch.setattr(
        layout_cache, "installed_version", lambda name: "0.0" if name == "torch" else real(name)
    )
    model_layout(RESNET)
    assert len(cached(cache)) == 2


def test_an_unknown_version_caches_nothing(cache, monkeypatch) -> None:
    from importlib.metadata import PackageNotFoundError

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(layout_cache, "installed_version", missing)
    assert model_layout(RESNET) == fresh(RESNET)
    assert cached(cache) == []


def test_an_unwritable_cache_dir_is_skipped(tmp_path, monkeypatch, capsys) -> None:
    # A file where the directory should be: fails to write even for root, unlike chmod.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("FREEZEPOLICY_CACHE_DIR", str(blocker))
    monkeypatch.delenv("FREEZEPOLICY_NO_CACHE", raising=False)
    with_cache = cli_output(capsys, "lint", "--model", RESNET, POLICY)
    assert with_cache == cli_output(capsys, "lint", "--model", RESNET, POLICY, "--no-cache")
    assert capsys.readouterr().err == ""
    assert model_layout(RESNET) == fresh(RESNET)


def test_no_cache_flag_and_env_write_nothing(cache, monkeypatch, capsys) -> None:
    cli_output(capsys, "lint", "--model", RESNET, POLICY, "--no-cache")
    cli_output(capsys, "show", POLICY, "--model", RESNET, "--no-cache")
    assert cached(cache) == []
    monkeypatch.setenv("FREEZEPOLICY_NO_CACHE", "1")
    cli_output(capsys, "lint", "--model", RESNET, POLICY)
    cli_output(capsys, "show", POLICY, "--model", RESNET)
    assert cached(cache) == []


def test_no_cache_ignores_a_cached_layout(cache, monkeypatch) -> None:
    model_layout(RESNET)
    built = object()
    monkeypatch.setattr(layout_cache, "_build", lambda spec: built)
    assert model_layout(RESNET, use_cache=False) is built
    monkeypatch.setenv("FREEZEPOLICY_NO_CACHE", "1")
    assert model_layout(RESNET) is built


def test_user_factories_and_bad_specs_are_never_cached(cache, capsys) -> None:
    from freezepolicy.cli.models import ModelSpecError

    assert model_layout("freezepolicy.demo.digits_runs:mlp").names[0] == "fc1.weight"
    with pytest.raises(ModelSpecError, match="resnet18"):
        model_layout("torchvision:resnet81")
    capsys.readouterr()
    assert main(["lint", "--model", "torchvision:resnet81", POLICY]) == 2  # a usage error
    assert "did you mean `resnet18`" in capsys.readouterr().err
    assert cached(cache) == []


def test_cache_location(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("FREEZEPOLICY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert layout_cache.cache_dir() == tmp_path / "freezepolicy"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert layout_cache.cache_dir() == tmp_path / "home" / ".cache" / "freezepolicy"


def test_a_config_file_is_cached_by_its_content(cache, monkeypatch, tmp_path) -> None:
    pytest.importorskip("transformers")
    text = json.dumps(
        {
            "model_type": "bert",
            "architectures": ["BertForSequenceClassification"],
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 50,
        }
    )
    first = tmp_path / "a" / "config.json"
    first.parent.mkdir()
    first.write_text(text, encoding="utf-8")
    cold = model_layout(str(first))
    [file] = cached(cache)
    key = json.loads(file.read_text(encoding="ascii"))["key"]
    assert key["config_sha256"] and key["versions"].keys() == {"torch", "transformers"}
    assert cold == fresh(str(first)) and "classifier.weight" in cold.names
    monkeypatch.setattr(layout_cache, "_build", no_build)
    # The same content elsewhere, named by its directory: the same layout, from the cache.
    copy = tmp_path / "b" / "config.json"
    copy.parent.mkdir()
    copy.write_text(text, encoding="utf-8")
    assert model_layout(str(copy.parent)) == cold
    monkeypatch.undo()
    monkeypatch.setenv("FREEZEPOLICY_CACHE_DIR", str(cache))
    # Another class, or an edited file: other keys, fresh builds.
    assert "cls.predictions.bias" in model_layout(f"{first}:BertForMaskedLM").names
    first.write_text(text.replace('"num_hidden_layers": 2', '"num_hidden_layers": 3'))
    assert "bert.encoder.layer.2.output.dense.weight" in model_layout(str(first)).names
    assert len(cached(cache)) == 3
