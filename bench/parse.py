"""Parsing scales linearly: parse and compile policies of 10 to 10,000 statements.

The policies are generated (`generate`) from realistic statements: every kind of statement,
lists of selectors, `except`, `then ... every`, warm-ups, numeric ranges, character classes,
alternatives, `**`, anchored and type selectors, epoch and step times. Layer and expert numbers
vary, so the selectors differ as they would in a long hand-written file.

The benchmark runs in a process of its own that never imports torch, as `freezepolicy lint`
does: a process that has imported torch and transformers holds millions of objects more, which
Python's garbage collector walks while the parser allocates (10,000 statements then take about
a quarter longer).

Each run starts cold: the compiled-pattern caches of freezepolicy and of `re` are emptied first,
so a run pays for every pattern it compiles, as a fresh `freezepolicy lint` process does. Two
things are timed: `freezepolicy.parse(text)` (syntax, checks of every selector and number, and
the compiled policy; what `freezepolicy lint` does without a model), and that plus binding the
policy to resnet18's 62 parameter names and resolving them once (where the matchers of every
selector are built), so no compilation is left out.
"""

from __future__ import annotations

import gc
import random
import re
from typing import Any

import freezepolicy
from freezepolicy.lang import glob, matcher, patterns

from .common import ROOT, Samples, timed

RESNET18_NAMES = (ROOT / "tests/resnet18_names.txt").read_text().split()


def generate(statements: int, seed: int = 0) -> str:
    """`statements` realistic statements, one per line, with a comment every 25 lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(statements):
        layer = rng.randrange(96)
        expert = rng.randrange(64)
        kind = i % 8
        if kind == 0:
            line = (
                f"freeze model.layers.{layer}.mlp.experts.{expert}, "
                f"model.layers.{layer}.self_attn except bias"
            )
        elif kind == 1:
            line = (
                f"unfreeze model.layers.{layer}..{layer + 3}.mlp.experts.*.w[12] "
                f"at epoch {rng.randrange(1, 30)}"
            )
        elif kind == 2:
            value = rng.choice(["1e-4", "0.1x", "3e-5", "0", "2x"])
            line = (
                f"lr {value} for ^model.layers.{layer}.self_attn.{{q,k,v}}_proj "
                f"except type:*Norm at step {rng.randrange(1, 50_000)}"
            )
        elif kind == 3:
            line = f"decay 0 for bias, type:*Norm, model.layers.{layer}.**.norm"
        elif kind == 4:
            line = f"stats freeze for encoder.layer.{layer % 12}, layer{rng.randrange(1, 5)}.*.bn?"
        elif kind == 5:
            line = (
                f"unfreeze blocks.{layer} then blocks.{layer + 1} then blocks.{layer + 2} "
                f"at epoch {rng.randrange(1, 10)} every 2 epochs warmup 1 epochs"
            )
        elif kind == 6:
            line = f"freeze layer{rng.randrange(1, 5)}.{rng.randrange(3)}.conv[12] except *.bias"
        else:
            steps = rng.randrange(1, 999)
            line = f"lr 0.5x for head.fc{rng.randrange(4)}, classifier warmup {steps} steps"
        if i % 25 == 0:
            lines.append(f"# section {i // 25}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def clear_caches() -> None:
    """Forget every compiled pattern, as in a new process."""
    patterns.parse_name_pattern.cache_clear()
    patterns.parse_type_pattern.cache_clear()
    matcher.compile_name_pattern.cache_clear()
    glob.clear_caches()
    re.purge()


def run(*, sizes: tuple[int, ...] = (10, 100, 1_000, 10_000), repeats: int = 5) -> dict[str, Any]:
    freezepolicy.parse(generate(20, seed=1))  # warm-up: imports, the LALR parser
    rows = []
    for size in sizes:
        text = generate(size, seed=size)
        parse, bind = Samples(), Samples()
        for _ in range(repeats):
            clear_caches()
            gc.collect()
            wall, cpu = timed(lambda: freezepolicy.parse(text))  # noqa: B023
            parse.wall.append(wall)
            parse.cpu.append(cpu)
            clear_caches()
            gc.collect()
            wall, cpu = timed(
                lambda: freezepolicy.parse(text).resolve(RESNET18_NAMES, epoch=3)  # noqa: B023
            )
            bind.wall.append(wall)
            bind.cpu.append(cpu)
        rows.append(
            {
                "statements": size,
                "bytes": len(text.encode()),
                "parse": parse.to_dict(),
                "parse_and_resolve": bind.to_dict(),
            }
        )
    return {"rows": rows}


if __name__ == "__main__":
    import json
    import sys

    quick = sys.argv[1:] == ["--quick"]
    print(json.dumps(run(sizes=(10, 40), repeats=2) if quick else run()))
