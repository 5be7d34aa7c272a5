"""The table of targets, the scaling plot, and docs/performance.md, from a results dict."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Everything after this line of docs/performance.md is written by hand and kept by each run.
DISCUSSION_MARKER = "<!-- bench: everything below is written by hand and kept by `make bench` -->"

#: Per-unit time may grow by this factor over a 10x larger input and still count as flat.
FLAT = 1.5

MiB = 2**20


@dataclass
class Row:
    benchmark: str
    what: str
    target: str
    measured: str
    status: str


def _status(wall_ok: bool, cpu_ok: bool) -> str:
    if wall_ok and cpu_ok:
        return "met"
    if wall_ok or cpu_ok:
        return "met on " + ("wall" if wall_ok else "CPU") + " time only"
    return "MISSED"


def _secs(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _growth(rows: list[dict[str, Any]], key: str, unit: str, clock: str) -> float:
    """Per-unit time at the largest size over the per-unit time at the one before it."""
    a, b = rows[-2], rows[-1]
    return (b[key][f"median_{clock}_s"] / b[unit]) / (a[key][f"median_{clock}_s"] / a[unit])


def targets(results: dict[str, Any]) -> list[Row]:
    """One row per target of issue 6, in the order of the issue."""
    rows: list[Row] = []
    for name, r in results.get("step_time", {}).items():
        ok_w, ok_c = r["ratio_wall"] <= 1.02, r["ratio_cpu"] <= 1.02
        rows.append(
            Row(
                "step time",
                f"{name}: freezepolicy / hand-written freeze",
                "<= 1.02",
                f"{r['ratio_wall']:.3f} (CPU {r['ratio_cpu']:.3f}); hand / hand "
                f"{r['control_ratio_wall']:.3f}; `fs.step()` {r['fs_step_s'] * 1e6:.0f} us",
                _status(ok_w, ok_c),
            )
        )
        m = r["memory"]
        a = m["freezepolicy"]["peak_tensor_bytes"]
        b = m["hand"]["peak_tensor_bytes"]
        rows.append(
            Row(
                "step time",
                f"{name}: peak tensor memory, freezepolicy vs hand",
                "equal",
                f"{a / MiB:.1f} MiB vs {b / MiB:.1f} MiB",
                "met" if a == b else "MISSED",
            )
        )
    lr0 = results.get("lr_zero")
    if lr0:
        ok_w, ok_c = lr0["ratio_policy_wall"] <= 0.35, lr0["ratio_policy_cpu"] <= 0.35
        rows.append(
            Row(
                "lr 0",
                "resnet18 step time: `lr 0` policy / naive lr-0 groups",
                "<= 0.35",
                f"{lr0['ratio_policy_wall']:.3f} (CPU {lr0['ratio_policy_cpu']:.3f}); "
                f"hand-written freeze {lr0['ratio_hand_wall']:.3f}",
                _status(ok_w, ok_c),
            )
        )
        state = lr0["optimizer_state_bytes"]
        rows.append(
            Row(
                "lr 0",
                "optimizer state of the lr-0 tensors",
                "0 bytes",
                f"{state['policy']['lr0_tensors']} bytes "
                f"(naive: {state['naive']['lr0_tensors'] / MiB:.1f} MiB)",
                "met" if state["policy"]["lr0_tensors"] == 0 else "MISSED",
            )
        )
    scaling = results.get("scaling")
    if scaling and len(scaling["rows"]) >= 2:
        big = scaling["rows"][-1]
        first = big["first_apply"]
        rows.append(
            Row(
                "scaling",
                f"first apply, {scaling['statements']} statements, {big['tensors']:,} tensors",
                "< 0.5 s",
                f"{_secs(first['median_wall_s'])} (CPU {_secs(first['median_cpu_s'])})",
                _status(first["median_wall_s"] < 0.5, first["median_cpu_s"] < 0.5),
            )
        )
        for key, label in (
            ("first_apply", "first apply"),
            ("apply_new_moment", "apply at a new moment"),
            ("resolve", "Policy.resolve"),
        ):
            g_w = _growth(scaling["rows"], key, "tensors", "wall")
            g_c = _growth(scaling["rows"], key, "tensors", "cpu")
            small = scaling["rows"][-2]["tensors"]
            rows.append(
                Row(
                    "scaling",
                    f"{label}: time per tensor at {big['tensors']:,} / at {small:,}",
                    f"flat (<= {FLAT})",
                    f"{g_w:.2f} (CPU {g_c:.2f})",
                    _status(g_w <= FLAT, g_c <= FLAT),
                )
            )
    parse = results.get("parse")
    if parse and len(parse["rows"]) >= 2:
        big = parse["rows"][-1]
        p = big["parse"]
        rows.append(
            Row(
                "parsing",
                f"parse and compile {big['statements']:,} statements",
                "< 1 s",
                f"{_secs(p['median_wall_s'])} (CPU {_secs(p['median_cpu_s'])})",
                _status(p["median_wall_s"] < 1, p["median_cpu_s"] < 1),
            )
        )
        g_w = _growth(parse["rows"], "parse", "statements", "wall")
        g_c = _growth(parse["rows"], "parse", "statements", "cpu")
        rows.append(
            Row(
                "parsing",
                f"time per statement at {big['statements']:,} / at "
                f"{parse['rows'][-2]['statements']:,}",
                f"flat (<= {FLAT})",
                f"{g_w:.2f} (CPU {g_c:.2f})",
                _status(g_w <= FLAT, g_c <= FLAT),
            )
        )
    lint = results.get("lint_time")
    if lint:
        rows.append(
            Row(
                "lint",
                "`freezepolicy lint policies/*.freeze` / `python -c 'import torch'`",
                "<= 0.2",
                f"{lint['ratio_wall']:.3f} (CPU {lint['ratio_cpu']:.3f}); lint "
                f"{_secs(lint['samples']['lint']['median_wall_s'])}",
                _status(lint["ratio_wall"] <= 0.2, lint["ratio_cpu"] <= 0.2),
            )
        )
        rows.extend(_llama_rows(lint["llama"]))
    rows.extend(_cache_rows(results.get("cache", {})))
    return rows


#: What each cache workload's target measures, for the table.
CACHE_MEASURES = {
    "after_first": "epochs after the first / uncached epoch",
    "whole_run": "whole run / uncached run",
}
CACHE_FILL = 1.10


def _cache_rows(cache: dict[str, Any]) -> list[Row]:
    rows = []
    for name, r in cache.items():
        m = r["measure"]
        w, c = r[f"{m}_ratio_wall"], r[f"{m}_ratio_cpu"]
        rows.append(
            Row(
                "cache",
                f"{name}: {CACHE_MEASURES[m]}, `cache_frozen` vs hand-written freeze",
                f"<= {r['target']:.2f}",
                f"{w:.3f} (CPU {c:.3f})",
                _status(w <= r["target"], c <= r["target"]),
            )
        )
    for name, r in cache.items():
        w, c = r["fill_ratio_wall"], r["fill_ratio_cpu"]
        rows.append(
            Row(
                "cache",
                f"{name}: first (filling) epoch / uncached epoch",
                f"<= {CACHE_FILL:.2f}",
                f"{w:.3f} (CPU {c:.3f}); capture {_secs(r['cache']['capture_s'])}",
                _status(w <= CACHE_FILL, c <= CACHE_FILL),
            )
        )
    for name, r in cache.items():
        e = r["exact"]
        how = (
            "bit for bit"
            if e["bitwise"]
            else (
                f"max difference: losses {e['max_loss_diff']:.1e}, state {e['max_state_diff']:.1e}"
            )
        )
        rows.append(
            Row(
                "cache",
                f"{name}: {e['steps']} per-step losses and final parameters, cached vs uncached",
                f"equal (rtol {e['rtol']:g}, atol {e['atol']:g})",
                "equal, " + how if e["within_tolerance"] else "DIFFERENT, " + how,
                "met" if e["within_tolerance"] else "MISSED",
            )
        )
    return rows


def _llama_rows(llama: dict[str, Any]) -> list[Row]:
    ok = llama["exit_code"] == 0 and llama["warm_same_as_cold"]
    problem = (
        "" if ok else f", exit code {llama['exit_code']}, same output: {llama['warm_same_as_cold']}"
    )
    cold, warm, floor = llama["cold"], llama["warm"], llama["floor"]
    what = "`freezepolicy lint --model transformers:llama-70b`, whole process"
    warm_row = Row(
        "lint",
        what + ", layout cached (every run after the first)",
        "< 3 s",
        f"{_secs(warm['median_wall_s'])} (CPU {_secs(warm['median_cpu_s'])})" + problem,
        _status(ok and warm["median_wall_s"] < 3, ok and warm["median_cpu_s"] < 3),
    )
    # A first run must build the model, so it cannot be faster than importing what builds it.
    cold_ok = [cold[f"median_{c}_s"] < 3 for c in ("wall", "cpu")]
    floor_over = all(floor[f"median_{c}_s"] >= 3 for c in ("wall", "cpu"))
    cold_row = Row(
        "lint",
        what + ", first run (nothing cached: builds the model)",
        "< 3 s",
        f"{_secs(cold['median_wall_s'])} (CPU {_secs(cold['median_cpu_s'])}); importing torch "
        f"and the Llama classes alone: {_secs(floor['median_wall_s'])} "
        f"(CPU {_secs(floor['median_cpu_s'])})" + problem,
        "not possible: the imports alone take longer"
        if ok and not any(cold_ok) and floor_over
        else _status(ok and cold_ok[0], ok and cold_ok[1]),
    )
    return [warm_row, cold_row]


def table_text(results: dict[str, Any]) -> str:
    rows = targets(results)
    header = ("benchmark", "what", "target", "measured (median)", "status")
    cells = [header] + [(r.benchmark, r.what, r.target, r.measured, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| benchmark | what | target | measured (median) | status |",
        "|---|---|---|---|---|",
    ]
    for r in targets(results):
        measured = r.measured.replace("|", "\\|")
        lines.append(f"| {r.benchmark} | {r.what} | {r.target} | {measured} | {r.status} |")
    return "\n".join(lines)


# --- plot -------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Scaling of apply / resolve with tensors and of parsing with statements (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling, parse = results["scaling"]["rows"], results["parse"]["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    series = (
        ("first_apply", "first apply"),
        ("apply_new_moment", "apply at a new moment"),
        ("apply_same_moment", "apply at the same moment"),
        ("resolve", "Policy.resolve"),
    )
    n = [r["tensors"] for r in scaling]
    for key, label in series:
        t = [r[key]["median_cpu_s"] for r in scaling]
        axes[0][0].plot(n, t, "o-", label=label)
        axes[1][0].plot(n, [1e6 * s / k for s, k in zip(t, n, strict=True)], "o-", label=label)
    ref = scaling[-1]["first_apply"]["median_cpu_s"]
    axes[0][0].plot(n, [ref * k / n[-1] for k in n], ":", color="grey", label="linear")
    axes[0][0].axhline(0.5, color="red", lw=0.8, ls="--", label="target 0.5 s (first apply)")
    axes[0][0].set(
        xscale="log",
        yscale="log",
        xlabel="parameter tensors",
        ylabel="CPU seconds (median)",
        title=f"Applying a {results['scaling']['statements']}-statement policy",
    )
    axes[1][0].set(
        xscale="log",
        yscale="log",
        xlabel="parameter tensors",
        ylabel="CPU microseconds per tensor",
        title="Time per tensor (flat = linear)",
    )
    s = [r["statements"] for r in parse]
    for key, label in (("parse", "parse + compile"), ("parse_and_resolve", "+ bind, resolve")):
        t = [r[key]["median_cpu_s"] for r in parse]
        axes[0][1].plot(s, t, "o-", label=label)
        axes[1][1].plot(s, [1e6 * x / k for x, k in zip(t, s, strict=True)], "o-", label=label)
    ref = parse[-1]["parse"]["median_cpu_s"]
    axes[0][1].plot(s, [ref * k / s[-1] for k in s], ":", color="grey", label="linear")
    axes[0][1].axhline(1.0, color="red", lw=0.8, ls="--", label="target 1 s")
    axes[0][1].set(
        xscale="log",
        yscale="log",
        xlabel="statements",
        ylabel="CPU seconds (median)",
        title="Parsing a policy",
    )
    axes[1][1].set(
        xscale="log",
        yscale="log",
        xlabel="statements",
        ylabel="CPU microseconds per statement",
        title="Time per statement (flat = linear)",
    )
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"freezepolicy scaling ({results['machine']['cpu']}, 1 process)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- docs/performance.md ----------------------------------------------------------------------


def _details(results: dict[str, Any]) -> list[str]:
    out: list[str] = []
    step = results.get("step_time")
    if step:
        out += [
            "### Step time and memory",
            "",
            "Ratios are medians of per-round ratios (each round times the variants next to each "
            "other). `hand_again` is a second, identical hand-written setup: its ratio to `hand` "
            "shows how much two identical setups differ on this machine.",
            "",
            "| workload | variant | step (wall) | step (CPU) | / hand (wall) | "
            "peak tensor bytes | peak RSS of its process | optimizer state |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in step.items():
            for v in ("freezepolicy", "hand", "hand_again"):
                s = r["samples"][v]
                ratio = {"freezepolicy": r["ratio_wall"], "hand": 1.0}.get(
                    v, r["control_ratio_wall"]
                )
                m = r["memory"].get(v)
                mem = (
                    f"{m['peak_tensor_bytes'] / MiB:.1f} MiB | {m['peak_rss_bytes'] / MiB:.0f} MiB"
                    if m
                    else "(as hand) | (as hand)"
                )
                state = r["optimizer_state_bytes"].get(v)
                state_text = f"{state / MiB:.2f} MiB" if state is not None else "(as hand)"
                out.append(
                    f"| {name} | {v} | {_secs(s['median_wall_s'])} | "
                    f"{_secs(s['median_cpu_s'])} | {ratio:.3f} | {mem} | {state_text} |"
                )
        out.append("")
        for name, r in step.items():
            out.append(
                f"- {name}: {r['about']}. `FreezeScheduler.step()` alone: "
                f"{r['fs_step_s'] * 1e6:.0f} us per call, {100 * r['fs_step_share']:.3f}% of "
                "the step."
            )
        out.append("")
    lr0 = results.get("lr_zero")
    if lr0:
        out += [
            "### `lr 0`",
            "",
            f"{lr0['about']}.",
            "",
            "| variant | step (wall) | step (CPU) | / naive (wall) | peak tensor bytes | "
            "optimizer state (lr-0 tensors) |",
            "|---|---|---|---|---|---|",
        ]
        ratios = {"policy": lr0["ratio_policy_wall"], "hand": lr0["ratio_hand_wall"], "naive": 1}
        for v in ("policy", "hand", "naive"):
            s = lr0["samples"][v]
            out.append(
                f"| {v} | {_secs(s['median_wall_s'])} | {_secs(s['median_cpu_s'])} | "
                f"{ratios[v]:.3f} | "
                f"{lr0['memory'][v]['peak_tensor_bytes'] / MiB:.1f} MiB | "
                f"{lr0['optimizer_state_bytes'][v]['lr0_tensors'] / MiB:.2f} MiB |"
            )
        out.append("")
    scaling = results.get("scaling")
    if scaling:
        out += [
            f"### Applying a {scaling['statements']}-statement policy",
            "",
            "Medians; CPU time, wall time in parentheses.",
            "",
            "| tensors | layers x experts | first apply | per tensor | first apply, fresh model "
            "| apply at a new moment | apply at the same moment | Policy.resolve |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in scaling["rows"]:
            f = r["first_apply"]
            fresh = r["first_apply_fresh_model"]
            cells = [
                f"{r['tensors']:,}",
                f"{r['layers']} x {r['experts']}",
                f"{_secs(f['median_cpu_s'])} ({_secs(f['median_wall_s'])})",
                f"{1e6 * f['median_cpu_s'] / r['tensors']:.1f} us",
                f"{_secs(fresh['cpu_s'])} ({_secs(fresh['wall_s'])})",
            ]
            for key in ("apply_new_moment", "apply_same_moment", "resolve"):
                cells.append(f"{_secs(r[key]['median_cpu_s'])} ({_secs(r[key]['median_wall_s'])})")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        big = scaling["rows"][-1]
        if "breakdown" in big:
            out += [
                f"Where a first apply at {big['tensors']:,} tensors spends its CPU time (each "
                "stage run on its own, medians):",
                "",
                "| stage | CPU |",
                "|---|---|",
            ]
            for stage, secs in big["breakdown"].items():
                out.append(f"| {stage} | {_secs(secs)} |")
            out.append("")
    parse = results.get("parse")
    if parse:
        out += [
            "### Parsing",
            "",
            "| statements | bytes | parse + compile (CPU) | (wall) | per statement | "
            "+ bind and resolve (CPU) |",
            "|---|---|---|---|---|---|",
        ]
        for r in parse["rows"]:
            p = r["parse"]
            out.append(
                f"| {r['statements']:,} | {r['bytes']:,} | {_secs(p['median_cpu_s'])} | "
                f"{_secs(p['median_wall_s'])} | "
                f"{1e6 * p['median_cpu_s'] / r['statements']:.0f} us | "
                f"{_secs(r['parse_and_resolve']['median_cpu_s'])} |"
            )
        out.append("")
    lint = results.get("lint_time")
    if lint:
        s = lint["samples"]
        out += [
            "### Lint",
            "",
            "| command | wall (median) | CPU (median) |",
            "|---|---|---|",
        ]
        llama = lint["llama"]
        labels = {
            "lint": "`freezepolicy lint " + " ".join(lint["policies"]) + "`",
            "import_torch": "`python -c 'import torch'`",
            "cold": f"`{llama['command']}`, first run (empty layout cache)",
            "warm": f"`{llama['command']}`, the run after it (layout cached)",
            "floor": f"`{llama['floor_command']}`",
        }
        for key, label in labels.items():
            m = s[key] if key in s else llama[key]
            out.append(f"| {label} | {_secs(m['median_wall_s'])} | {_secs(m['median_cpu_s'])} |")
        out += [
            "",
            "Where the CPU time of a first `lint --model transformers:llama-70b` goes (one fresh "
            "process, `python -m bench.lint_time --breakdown`):",
            "",
            "| stage | CPU |",
            "|---|---|",
        ]
        for stage, secs in lint["llama"]["breakdown"].items():
            out.append(f"| {stage} | {_secs(secs)} |")
        out.append("")
    out += _cache_details(results.get("cache", {}))
    return out


def _cache_details(cache: dict[str, Any]) -> list[str]:
    if not cache:
        return []
    out = [
        "### Caching the frozen part",
        "",
        "Each epoch of `cache_frozen` next to the same epoch of the hand-written freeze "
        "(bench/cache.py; docs/caching.md explains the cache). The first cached epoch includes "
        "capturing the model with torch.export and filling the cache.",
        "",
        "| workload | epoch | hand (wall) | cached (wall) | cached / hand (wall, CPU) | "
        "hits | misses | filling | capture | cache |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in cache.items():
        for i, e in enumerate(r["epochs"]):
            h, c = e["hand"], e["cached"]
            out.append(
                f"| {name} | {i} | {_secs(h['wall_s'])} | {_secs(c['wall_s'])} | "
                f"{c['wall_s'] / h['wall_s']:.3f}, {c['cpu_s'] / h['cpu_s']:.3f} | "
                f"{e['hits']} | {e['misses']} | {_secs(e['fill_s']) if e['fill_s'] else '-'} | "
                f"{_secs(e['capture_s']) if e['capture_s'] else '-'} | "
                f"{e['cache_bytes'] / MiB:.1f} MiB |"
            )
    out.append("")
    for name, r in cache.items():
        out.append(f"- {name}: {r['about']}.")
    out.append("")
    return out


def _method(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    settings = results["settings"]
    load = m.get("loadavg")
    after = m.get("loadavg_after")
    fmt = lambda la: "n/a" if not la else ", ".join(f"{x:.2f}" for x in la)  # noqa: E731
    memory = f"{m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else "n/a"
    timings = ", ".join(
        f"{k} {v:.0f} s" for k, v in results.get("timings_s", {}).items() if k != "total"
    )
    return [
        "## How it was measured",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m.get('cores_usable')} usable), "
        f"{memory} memory; {m['platform']}; Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}.",
        f"- Load average (1, 5, 15 min) before the run: {fmt(load)}; after: {fmt(after)}. The "
        "machine was shared with other jobs: wall times include the time they held the cores.",
        f"- torch threads: {settings['torch_threads']} (`torch.set_num_threads`, and the same "
        "for interop threads) in the benchmark process and in every process it starts. With "
        "one thread per process the measurements of a shared 2-core machine stay stable; with "
        "two, a step waits for whichever thread the other jobs delayed.",
        "- Compared variants run interleaved in one process (round r in order A B C, round "
        "r + 1 in order C B A), after a warm-up, with garbage collected before each timed run. "
        "Step-time ratios are the median over rounds of the ratio within each round, so drift "
        "of the machine cancels; other numbers are medians. Absolute times are shown as wall "
        "and CPU time (CPU time of this "
        "process, or of the child process for whole-process runs, from `os.wait4`). On a shared "
        "machine CPU time is the better estimate of what the work costs on an idle one.",
        "- Peak memory: each variant in a fresh process (`python -m bench.step_time --memory "
        "WORKLOAD VARIANT`), one warm-up step, then one step under `torch.profiler` with "
        "`profile_memory=True`: its memory timeline records every allocation and release by "
        "torch's CPU allocator, so the peak of live tensor bytes (tensors that existed before "
        "the step, such as weights and optimizer state, plus the peak of those made during it: "
        "activations, gradients, temporaries) is exact and repeatable. `tracemalloc` would not "
        "see these allocations. Limits: memory outside torch tensors (Python objects, the "
        "allocator's own overhead and fragmentation) is not counted; the process's peak RSS "
        "(VmHWM of /proc/self/status; `getrusage` would add the RSS of the parent it was forked "
        "from) is shown beside it for that, but it is dominated by importing torch and "
        "transformers (several hundred MiB) and by the allocator keeping freed pages, so it "
        "can only show gross differences.",
        "- Parsing is measured in a process of its own that never imports torch, as "
        "`freezepolicy lint` runs: in a process holding torch and transformers, Python's "
        "garbage collector has millions more objects to walk while the parser allocates. "
        "Each parse starts with freezepolicy's and `re`'s pattern caches emptied.",
        f"- Time per benchmark: {timings}; total {results['timings_s']['total']:.0f} s.",
        "- Everything measured is in `bench/results.json` (every sample, both clocks).",
        "",
    ]


def _default_discussion() -> str:
    return (
        "## Discussion\n\n"
        "(Write here what the numbers mean: which targets are met, which are not and why.)\n"
    )


def write_docs(results: dict[str, Any], path: Path, image: Path) -> None:
    """Regenerate the measured part of docs/performance.md, keeping the hand-written part."""
    discussion = _default_discussion()
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if DISCUSSION_MARKER in text:
            discussion = text.split(DISCUSSION_MARKER, 1)[1].lstrip("\n")
    quick = (
        " (a `--quick` run: tiny sizes, not the real benchmark)"
        if results["settings"]["quick"]
        else ""
    )
    image_link = os.path.relpath(image, path.parent).replace(os.sep, "/")
    parts = [
        "# Performance",
        "",
        "<!-- Generated by `make bench` (bench/run.py) down to the marker line below; edit the "
        "discussion after it. -->",
        "",
        "What freezepolicy costs: on the training step (nothing, against the same freeze written "
        "by hand), for `lr 0` (a real freeze), for applying a policy to very large models, for "
        "parsing long policies, and for `freezepolicy lint`; and what caching the frozen part "
        "of a model saves. `make bench` runs every benchmark "
        f"({results['timings_s']['total'] / 60:.1f} minutes on the machine below), prints this "
        "table, writes `bench/results.json`, and rewrites this page above the discussion"
        f"{quick}.",
        "",
        "## Targets",
        "",
        table_markdown(results),
        "",
        "Status: *met* when the median meets the target on both clocks (wall and CPU time).",
        "",
    ]
    if image.exists() and "scaling" in results and "parse" in results:
        parts += [
            "## Scaling",
            "",
            f"![Apply, resolve and parse times against model and policy size]({image_link})",
            "",
        ]
    parts += ["## Measurements", ""] + _details(results) + _method(results)
    parts += [DISCUSSION_MARKER, "", discussion.rstrip("\n"), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
