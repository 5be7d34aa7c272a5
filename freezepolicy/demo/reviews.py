"""The main demo (`make demo`): transfer learning with a pretrained model on real data, offline.

A pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) learns to tell fresh from rotten Rotten
Tomatoes review snippets, with a new linear head on its mean-pooled token vectors. Each run is
one policy file of policies/ applied with the public API (`param_groups`, `FreezeScheduler`):
full fine-tuning, the head alone, the last two blocks and the head, gradual unfreezing, and, as
the control, the same architecture from random weights trained in full. Every run sees the same
snippets in the same order and starts its head from the same weights.

It prints a line per epoch (and progress lines within one), then a table, and writes
`out/demo.json` and `out/demo.png`. docs/demo.md shows a run and what the numbers mean.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from freezepolicy import Policy, cache_frozen, load

from . import POLICY_DIR
from .minilm import Encoded, Init, build_classifier, encode, tokenizer
from .report import RunResult, cache_table, plot, results_table, write_json
from .reviews_data import (
    LABELS,
    DemoDataError,
    Snippet,
    SplitError,
    corpus_path,
    model_dir,
    read_snippets,
    split_by_movie,
)
from .training import Log, TrainSettings, accuracy, train


@dataclass(frozen=True)
class RunSpec:
    """One run of the demo, as data: a new kind of run is a new entry of `RUNS`."""

    name: str
    policy: str  # a file in policies/
    init: Init = "pretrained"
    #: Train the model wrapped in `freezepolicy.cache_frozen` (its frozen part computed once
    #: per snippet), for `epochs` epochs instead of the demo's.
    cached: bool = False
    epochs: int | None = None


#: The runs, in the order of the table and the figure.
RUNS: tuple[RunSpec, ...] = (
    RunSpec("full fine-tuning", "minilm_full.freeze"),
    RunSpec("last 2 blocks + head", "minilm_last2.freeze"),
    RunSpec("head only", "minilm_head_only.freeze"),
    RunSpec("gradual unfreezing", "minilm_gradual.freeze"),
    RunSpec("random init (control)", "minilm_full.freeze", init="random"),
)

#: The runs whose frozen part does not change, again with `cache_frozen`, for two epochs: the
#: first fills the cache, the second runs only what trains (docs/caching.md). Each is shown
#: beside the uncached run of the same policy.
CACHED_RUNS: tuple[RunSpec, ...] = (
    RunSpec("last 2 blocks + head, cached", "minilm_last2.freeze", cached=True, epochs=2),
    RunSpec("head only, cached", "minilm_head_only.freeze", cached=True, epochs=2),
)


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the numbers. The sizes are what fits the five runs into three
    minutes on two busy CPU cores; nothing was chosen by looking at test accuracy."""

    train_snippets: int = 640  # 40 steps of 16: the step clock of minilm_gradual.freeze
    val_snippets: int = 160
    test_snippets: int = 480
    #: Tokens per snippet, [CLS] and [SEP] included; longer snippets are cut (about 30% are).
    max_tokens: int = 32
    #: torch threads. One: on 2 cores that other jobs also use, two threads wait for each other
    #: and an epoch takes longer than with one (1.3-1.7x in our measurements, docs/demo.md).
    threads: int = 1
    train: TrainSettings = field(default_factory=TrainSettings)


def majority_class(snippets: Sequence[Snippet]) -> tuple[str, float]:
    """The most frequent label and its share: the accuracy of always answering it."""
    fresh = sum(s.label for s in snippets) / len(snippets)
    return (LABELS[1], fresh) if fresh >= 0.5 else (LABELS[0], 1 - fresh)


def run_demo(
    settings: DemoSettings,
    out_dir: Path,
    runs: Sequence[RunSpec] = RUNS,
    policy_dir: Path = POLICY_DIR,
    log: Log = print,
    cached_runs: Sequence[RunSpec] = CACHED_RUNS,
) -> list[RunResult]:
    """Every run of `runs` and `cached_runs`, then the tables, `out_dir/demo.json` and
    `out_dir/demo.png`."""
    every = [*runs, *cached_runs]
    policies = {spec.policy: load(policy_dir / spec.policy) for spec in every}  # all read first
    folder = model_dir()
    log(f"Reading the review snippets in {corpus_path()}")
    snippets = read_snippets()
    seed = settings.train.seed
    sizes = (settings.train_snippets, settings.val_snippets, settings.test_snippets)
    splits = split_by_movie(snippets, sizes, seed)
    majority, baseline = majority_class(splits.test)
    log(
        f"  {len(snippets):,} distinct snippets; {sizes[0]:,} for training, {sizes[1]:,} for "
        f"validation, {sizes[2]:,} for testing, no movie in two of them "
        f"({baseline:.1%} of the test snippets are {majority})"
    )
    log(f"Tokenizing (at most {settings.max_tokens} tokens) with the tokenizer in {folder}")
    tok = tokenizer(folder)
    train_data, val_data, test_data = (
        encode(tok, part, settings.max_tokens) for part in (splits.train, splits.val, splits.test)
    )

    data = (train_data, val_data, test_data)
    results = [run_one(spec, policies[spec.policy], data, settings, log) for spec in runs]
    cached = [run_one(spec, policies[spec.policy], data, settings, log) for spec in cached_runs]
    epochs = f"{settings.train.epochs} epoch{'s' if settings.train.epochs > 1 else ''}"
    log(
        f"\nResults ({epochs} of {sizes[0]:,} snippets; test on {sizes[2]:,} snippets of other "
        f"movies, where always answering {majority!r} scores {baseline:.3f}):\n\n"
        f"{results_table(results)}"
    )
    if cached:
        log(
            "\nThe same policies with the frozen part cached (freezepolicy.cache_frozen): CPU "
            "seconds per epoch, the first epoch filling the cache, the next taking the frozen "
            f"part from it:\n\n{cache_table(cached, results)}"
        )
    json_path = write_json([*results, *cached], asdict(settings), baseline, out_dir / "demo.json")
    title = (
        f"MiniLM fine-tuned on Rotten Tomatoes snippets: {sizes[0]:,} for training ({epochs}, "
        f"batches of {settings.train.batch_size}), {sizes[2]:,} of other movies for testing"
    )
    figure = plot(results, (majority, baseline), title, out_dir / "demo.png", cached)
    log(f"\nWrote {json_path} and {figure}")
    return results


def run_one(
    spec: RunSpec,
    policy: Policy,
    data: tuple[Encoded, Encoded, Encoded],
    settings: DemoSettings,
    log: Log,
) -> RunResult:
    """One run: a fresh model (wrapped in `cache_frozen` for a cached run), trained under its
    policy (timed per epoch inside `train`), then tested once."""
    train_data, val_data, test_data = data
    wrapped = " with cache_frozen" if spec.cached else ""
    log(f"\n{spec.name}: policy {spec.policy}, {spec.init} weights{wrapped}")
    statements = [line for line in policy.text.splitlines() if line.strip()[:1] not in ("", "#")]
    log("    " + "\n    ".join(statements))  # the policy without its comments
    model = build_classifier(spec.init, settings.train.seed)
    trained: torch.nn.Module = cache_frozen(model) if spec.cached else model
    train_settings = settings.train
    if spec.epochs is not None:
        train_settings = replace(train_settings, epochs=spec.epochs)
    history = train(spec.name, trained, policy, train_data, val_data, train_settings, log)
    started = time.perf_counter()
    test_acc = accuracy(model, test_data, settings.train.eval_batch_size)
    log(f"  {spec.name:<22} test acc {test_acc:.3f}  ({time.perf_counter() - started:.1f} s)")
    return RunResult(spec.name, spec.policy, spec.init, test_acc, history, spec.cached)


def positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m freezepolicy.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path("out"), help="where demo.json and demo.png go (out)"
    )
    defaults = DemoSettings()
    for split in ("train", "val", "test"):
        parser.add_argument(
            f"--{split}-snippets",
            type=positive,
            default=getattr(defaults, f"{split}_snippets"),
            metavar="N",
            help=f"{split} split size (%(default)s)",
        )
    args = parser.parse_args(argv)
    settings = DemoSettings(args.train_snippets, args.val_snippets, args.test_snippets)
    missing = [s.policy for s in (*RUNS, *CACHED_RUNS) if not (POLICY_DIR / s.policy).is_file()]
    if missing:
        print(f"demo: {POLICY_DIR / missing[0]} not found: run it from a checkout", file=sys.stderr)
        return 2
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)  # progress shows as it happens, also through a pipe

    try:
        run_demo(settings, args.out_dir, log=log)
    except (DemoDataError, SplitError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    log(f"Total: {time.perf_counter() - started:.1f} s after start-up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
