"""The review demo's results: the table it prints, `out/demo.json` and the figure `out/demo.png`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .training import RunHistory


@dataclass(frozen=True)
class RunResult:
    """One run of the demo: what was trained, how, and what came of it."""

    run: str
    policy: str  # the policy file's name
    init: str  # "pretrained" or "random"
    test_acc: float
    history: RunHistory
    #: Trained through `freezepolicy.cache_frozen` (its epochs carry the cache's statistics).
    cached: bool = False

    @property
    def val_acc(self) -> float:
        return self.history.epochs[-1].val_acc

    @property
    def s_per_epoch(self) -> float:
        return self.history.seconds_per_epoch

    @property
    def cpu_s_per_epoch(self) -> float:
        return self.history.cpu_seconds_per_epoch

    @property
    def trainable_params(self) -> int:
        """Trainable elements at the end of the run (the last phase of a gradual schedule)."""
        return self.history.epochs[-1].trainable_params

    def trainable_label(self) -> str:
        """`770`, or `770 -> 22,566,146` for a run whose trainable set grew."""
        counts = [n for _, n in self.history.phases] or [self.trainable_params]
        if counts[0] == counts[-1]:
            return f"{counts[0]:,}"
        return f"{counts[0]:,} -> {counts[-1]:,}"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "policy": self.policy,
            "init": self.init,
            "test_acc": self.test_acc,
            "s_per_epoch": self.s_per_epoch,
            "trainable_params": self.trainable_params,
            "val_acc": self.val_acc,
            "cpu_s_per_epoch": self.cpu_s_per_epoch,
            "trainable_params_from_step": [list(p) for p in self.history.phases],
            "cached": self.cached,
            "epochs": [
                {
                    "epoch": e.epoch,
                    "loss": e.loss,
                    "val_acc": e.val_acc,
                    "seconds": e.seconds,
                    "cpu_seconds": e.cpu_seconds,
                    "trainable_params": e.trainable_params,
                    **({} if e.cache is None else {"cache": e.cache}),
                }
                for e in self.history.epochs
            ],
        }


def results_table(results: Sequence[RunResult]) -> str:
    """One row per run; text columns left-aligned, numbers right-aligned."""
    header = (
        "run",
        "policy",
        "init",
        "test acc",
        "val acc",
        "s/epoch",
        "CPU s/epoch",
        "trainable params",
    )
    rows = [
        (
            r.run,
            r.policy,
            r.init,
            f"{r.test_acc:.3f}",
            f"{r.val_acc:.3f}",
            f"{r.s_per_epoch:.1f}",
            f"{r.cpu_s_per_epoch:.1f}",
            r.trainable_label(),
        )
        for r in results
    ]
    return format_table(header, rows, left=3)


def uncached_twin(run: RunResult, results: Sequence[RunResult]) -> RunResult | None:
    """The uncached run of the same policy and init as the cached `run`, if there is one."""
    return next(
        (r for r in results if not r.cached and (r.policy, r.init) == (run.policy, run.init)),
        None,
    )


def cache_table(cached: Sequence[RunResult], results: Sequence[RunResult]) -> str:
    """One row per cached run, beside the uncached run of the same policy: CPU seconds of an
    uncached epoch, of the cached run's first epoch (filling the cache, the graph capture
    included) and of its later epochs (frozen part from the cache), and their ratio."""
    header = (
        "run",
        "policy",
        "uncached",
        "1st epoch (fill)",
        "later epochs",
        "later / uncached",
        "cache hits",
        "test acc",
    )
    rows = []
    for r in cached:
        twin = uncached_twin(r, results)
        first, *later = r.history.epochs
        later_cpu = sum(e.cpu_seconds for e in later) / len(later) if later else float("nan")
        hits = sum(int((e.cache or {}).get("hits", 0)) for e in later)
        seen = hits + sum(int((e.cache or {}).get("misses", 0)) for e in later)
        rows.append(
            (
                r.run,
                r.policy,
                "-" if twin is None else f"{twin.cpu_s_per_epoch:.1f} s",
                f"{first.cpu_seconds:.1f} s",
                f"{later_cpu:.1f} s" if later_cpu >= 1 else f"{later_cpu:.2f} s",
                "-" if twin is None else _ratio(later_cpu / twin.cpu_s_per_epoch),
                f"{hits / seen:.0%}" if seen else "-",
                f"{r.test_acc:.3f} ({len(r.history.epochs)} epochs)",
            )
        )
    return format_table(header, rows, left=2)


def _ratio(ratio: float) -> str:
    """`0.56x`; a small ratio with one significant digit more than two decimals would show."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> str:
    """A plain-text table: the first `left` columns left-aligned (text), the others
    right-aligned (numbers), a rule under the header."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def write_atomically(path: Path, data: bytes) -> Path:
    """Write `path` whole or not at all: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(
    results: Sequence[RunResult], settings: dict[str, Any], baseline: float, path: Path
) -> Path:
    document = {
        "settings": settings,
        "majority_class_test_acc": baseline,  # always answering the test set's commoner label
        "runs": [r.to_json() for r in results],
    }
    return write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


#: Bar colours by init: the pretrained runs in one colour, the random-weights control in grey.
COLOURS = {"pretrained": "tab:blue", "random": "tab:grey"}


def plot(
    results: Sequence[RunResult],
    baseline: tuple[str, float],
    title: str,
    path: Path,
    cached: Sequence[RunResult] = (),
) -> Path:
    """Two bar charts side by side, one bar per run: test accuracy, and CPU seconds per epoch.
    `baseline` is the majority class of the test set and its share, drawn as a line. With
    `cached` runs, a third chart shows each beside its uncached run: the CPU seconds of an
    uncached epoch, of the cached run's first epoch and of its later ones.

    The time is CPU time: the demo trains on one thread, so it is the wall-clock time the epoch
    takes on a core of its own, while the wall-clock time measured on cores shared with other
    jobs varies with their load from one run to the next (both are in the table and the JSON).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    labels = [f"{r.run}\n{r.trainable_label()} trainable" for r in results]
    colours = [COLOURS.get(r.init, "tab:red") for r in results]
    ys = list(range(len(results)))[::-1]  # the first run on top
    height = 0.75 * len(results) + 1.8
    if cached:
        fig, axes = plt.subplots(
            1, 3, figsize=(17, height), width_ratios=(1.25, 1, 1), layout="constrained"
        )
        acc_ax, time_ax, cache_ax = axes
        time_ax.sharey(acc_ax)
        time_ax.tick_params(labelleft=False)
    else:
        fig, (acc_ax, time_ax) = plt.subplots(
            1, 2, figsize=(11, height), sharey=True, width_ratios=(1.25, 1)
        )

    accs = [r.test_acc for r in results]
    acc_ax.barh(ys, accs, color=colours, height=0.6)
    for y, acc in zip(ys, accs, strict=True):
        acc_ax.text(acc + 0.005, y, f"{acc:.1%}", va="center", fontsize=10)
    majority, share = baseline
    acc_ax.axvline(share, color="black", linestyle=":", linewidth=1)
    acc_ax.text(
        share,
        max(ys) + 0.55,
        f"always '{majority}': {share:.1%}",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    acc_ax.set_xlim(0.4, min(1.0, max(max(accs), share) + 0.12))
    acc_ax.set_xlabel("test accuracy (higher is better)")
    acc_ax.set_yticks(ys, labels, fontsize=9)

    seconds = [r.cpu_s_per_epoch for r in results]
    time_ax.barh(ys, seconds, color=colours, height=0.6)
    # Each time also as a fraction of the first run's (full fine-tuning in the demo).
    for i, (y, s) in enumerate(zip(ys, seconds, strict=True)):
        note = f"{s:.1f} s" if i == 0 else f"{s:.1f} s ({s / seconds[0]:.2f}x)"
        time_ax.text(s + max(seconds) * 0.01, y, note, va="center", fontsize=10)
    time_ax.set_xlim(0, max(seconds) * 1.35)
    time_ax.set_xlabel("CPU seconds per training epoch (lower is better)")

    for ax in (acc_ax, time_ax):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylim(min(ys) - 0.6, max(ys) + 0.9)
    handles = [
        matplotlib.patches.Patch(color=c, label=f"{init} weights") for init, c in COLOURS.items()
    ]
    acc_ax.legend(handles=handles, loc="lower right", fontsize=9)
    if cached:
        _plot_cache(cache_ax, cached, results)
    fig.suptitle(title, fontsize=11)
    if not cached:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return write_atomically(path, buffer.getvalue())


def _plot_cache(ax: Any, cached: Sequence[RunResult], results: Sequence[RunResult]) -> None:
    """Per cached run, three bars of CPU seconds: an uncached epoch of the same policy, the
    cached run's first epoch (filling the cache), and its later epochs (from the cache)."""
    kinds = (
        ("uncached epoch", "tab:blue"),
        ("cached: 1st epoch (fill)", "tab:orange"),
        ("cached: later epochs", "tab:green"),
    )
    labels = []
    top = len(cached) - 1
    for i, run in enumerate(cached):
        twin = uncached_twin(run, results)
        first, *later = run.history.epochs
        values = [
            twin.cpu_s_per_epoch if twin is not None else 0.0,
            first.cpu_seconds,
            sum(e.cpu_seconds for e in later) / len(later) if later else 0.0,
        ]
        y = top - i
        for k, ((label, colour), value) in enumerate(zip(kinds, values, strict=True)):
            yk = y + 0.25 - 0.25 * k
            ax.barh(yk, value, height=0.24, color=colour, label=label if i == 0 else None)
            note = f"{value:.1f} s" if value >= 1 else f"{value:.2f} s"
            if k == 2 and values[0]:
                note += f" ({_ratio(value / values[0])})"
            ax.text(value + 0.2, yk, note, va="center", fontsize=9)
        labels.append(run.run.replace(", cached", ""))
    ax.set_yticks(list(range(top, -1, -1)), labels, fontsize=9)
    ax.set_ylim(-0.7, top + 0.9)
    longest = max(
        (e.cpu_seconds for r in cached for e in r.history.epochs), default=1.0
    )
    ax.set_xlim(0, longest * 1.45)
    epochs = max(len(r.history.epochs) for r in cached)
    ax.set_xlabel(f"with cache_frozen, {epochs} epochs a run: CPU seconds per epoch")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=8)
