"""Run every benchmark: `make bench`, or `python -m bench.run [--quick] [--only NAME ...]`.

Prints the table of targets, writes every measurement to bench/results.json, and regenerates
docs/performance.md (keeping its hand-written discussion) with the plot of the scaling results
in docs/images/bench_scaling.png. `--quick` runs tiny sizes (for the smoke test); its results
are not written to the docs unless paths are given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import ROOT, loadavg, machine_info, run_process

BENCHMARKS = ("step_time", "lr_zero", "scaling", "parse", "lint_time", "cache")
RESULTS = ROOT / "bench/results.json"
DOCS = ROOT / "docs/performance.md"
IMAGE = ROOT / "docs/images/bench_scaling.png"


def run_all(
    *, only: tuple[str, ...] = BENCHMARKS, quick: bool = False, threads: int = 1
) -> dict[str, Any]:
    """Run the benchmarks named in `only`; every result, with how it was measured."""
    import torch

    torch.set_num_threads(threads)
    # Interop threads are set once per process, before any parallel work.
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process (the smoke test runs twice)
        pass
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            "torch_threads": torch.get_num_threads(),
            "quick": quick,
            "benchmarks": list(only),
        },
        "timings_s": {},
    }
    for name in only:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = _run_one(name, quick)
        results["timings_s"][name] = time.perf_counter() - t0
    results["machine"]["loadavg_after"] = loadavg()
    results["timings_s"]["total"] = time.perf_counter() - started
    return results


def _run_one(name: str, quick: bool) -> Any:
    if name == "step_time":
        from . import step_time

        return step_time.run(quick=quick, repeats=2 if quick else 10, warmup=1 if quick else 2)
    if name == "lr_zero":
        from . import lr_zero

        return lr_zero.run(quick=quick, repeats=2 if quick else 8, warmup=1 if quick else 2)
    if name == "scaling":
        from . import scaling

        if quick:
            return scaling.run(sizes=(60, 300), repeats=2, experts=4)
        return scaling.run()
    if name == "parse":
        # In a process of its own, without torch (see bench/parse.py).
        proc = run_process([sys.executable, "-m", "bench.parse", *(["--quick"] if quick else [])])
        if proc.returncode != 0:
            raise RuntimeError(f"bench.parse failed:\n{proc.stdout}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if name == "lint_time":
        from . import lint_time

        if quick:
            return lint_time.run(repeats=1, llama_repeats=1)
        return lint_time.run()
    if name == "cache":
        from . import cache

        return cache.run(quick=quick)
    raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, help=f"results file (default {RESULTS})")
    parser.add_argument("--docs", type=Path, help=f"performance page (default {DOCS})")
    parser.add_argument("--image", type=Path, help=f"scaling plot (default {IMAGE})")
    parser.add_argument("--no-docs", action="store_true", help="write no docs and no plot")
    args = parser.parse_args(argv)

    results = run_all(only=tuple(args.only), quick=args.quick, threads=args.threads)
    from . import report

    print(report.table_text(results))
    # A quick run must not overwrite the committed results unless asked to.
    json_path = args.json or (None if args.quick else RESULTS)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {json_path}", file=sys.stderr)
    docs = args.docs or (None if args.quick else DOCS)
    if docs is not None and not args.no_docs:
        image = args.image or IMAGE
        if "scaling" in results and "parse" in results:
            report.plot(results, image)
        report.write_docs(results, docs, image)
        print(f"docs: {docs}", file=sys.stderr)
    total = results["timings_s"]["total"]
    print(f"[bench] done in {total:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
