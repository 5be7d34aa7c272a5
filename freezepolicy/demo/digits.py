"""The digits demo: scikit-learn's 1,797 handwritten 8x8 digits and a 3-layer MLP (`fc1`, `fc2`,
`out`), two experiments (digits_runs.py), then the tables and the figure.

1. Two-phase training (policies/mlp_two_phase.freeze: only `out` trains for the first half of the
   epochs, then everything) against the same MLP, with the same initial weights and the same batch
   order, trained with no freezing.
2. Transfer: pretrain the MLP on digits 0-4, then learn digits 5-9 with a new `out` on the frozen
   pretrained `fc1`, `fc2` (policies/mlp_head_only.freeze), against the same new head on a fresh
   MLP's random frozen features (the very weights the pretraining started from).

Run from a checkout: `python -m freezepolicy.demo.digits` (the policies are the files in
policies/). Losses and accuracies are the same on every run on the same machine (fixed seeds, one
thread); the seconds are measured wall-clock time and vary. docs/demo.md shows a run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from freezepolicy import load

from .digits_runs import (
    HEAD_ONLY,
    POLICY_DIR,
    TWO_PHASE,
    Log,
    Run,
    Settings,
    load_tasks,
    transfer_experiment,
    two_phase_experiment,
)
from .report import format_table

DEFAULT_OUT = Path("out") / "demo_digits.png"


def results_table(runs: Sequence[Run]) -> str:
    """The final table: one row per run."""
    header = ("run", "policy", "task", "epochs", "train acc", "test acc", "s/epoch")
    rows = [
        (
            r.name,
            r.policy,
            r.task.name,
            str(len(r.epochs)),
            f"{r.train_acc:.3f}",
            f"{r.test_acc:.3f}",
            f"{r.seconds_per_epoch:.3f}",
        )
        for r in runs
    ]
    return format_table(header, rows, left=3)  # run, policy, task: text; the rest numbers


def phases_table(runs: Sequence[Run]) -> str:
    """The trainable-parameter summary of each phase of each run, with its seconds per epoch."""
    lines = []
    width = max(len(r.name) for r in runs)
    for r in runs:
        for i, p in enumerate(r.phases):
            total = (p.trainable_elements + p.frozen_elements) or 1
            seconds = [e.seconds for e in r.epochs[p.first : p.last + 1]]
            lines.append(
                f"{r.name if i == 0 else '':<{width}}  epochs {f'{p.first}-{p.last}':<5}  "
                f"trainable {p.trainable_tensors} tensors {p.trainable_elements:>6,} elements "
                f"({100 * p.trainable_elements / total:5.1f}%)   "
                f"frozen {p.frozen_tensors} tensors {p.frozen_elements:>6,} elements   "
                f"{sum(seconds) / max(len(seconds), 1):.3f} s/epoch"
            )
    return "\n".join(lines)


def plot(classic: Sequence[Run], transfer: Sequence[Run], path: Path) -> Path:
    """Train (dashed) and test (solid) accuracy per epoch, the unfreeze point marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    colours = ["tab:blue", "tab:orange"]
    panels = (
        (left, classic, "Digits 0-9: two-phase vs no freezing"),
        (
            right,
            [r for r in transfer if r.name != "pretrain"],
            "Digits 5-9: a new head on frozen features",
        ),
    )
    for ax, runs, title in panels:
        for colour, run in zip(colours, runs, strict=False):  # at most two runs a panel
            xs = range(len(run.epochs) + 1)  # epochs completed; 0 = before training
            label = f"{run.name} ({run.policy})" if run.policy != "(none)" else run.name
            ax.plot(
                xs,
                [run.start[0]] + [e.train_acc for e in run.epochs],
                "--",
                color=colour,
                label=f"{label}, train",
            )
            ax.plot(
                xs,
                [run.start[1]] + [e.test_acc for e in run.epochs],
                "-",
                marker="o",
                markersize=3,
                color=colour,
                label=f"{label}, test",
            )
            for before, after in itertools.pairwise(run.phases):
                # The policy changes the trainable set at the start of epoch `after.first`,
                # which is after `after.first` completed epochs: the x of that point.
                ax.axvline(after.first, color="grey", linestyle=":")
                ax.axvspan(before.first, after.first, color="grey", alpha=0.08)
                ax.annotate(
                    f"{run.name}, from epoch {after.first}:\n"
                    f"{before.trainable_elements:,} -> {after.trainable_elements:,} "
                    "trainable elements",
                    (after.first, 0.4),  # clear of the curves (above) and the legend (below)
                    xytext=(6, 0),
                    textcoords="offset points",
                    fontsize=8,
                    color="dimgrey",
                )
        ax.set_title(title)
        ax.set_xlabel("epochs completed")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    left.set_ylabel("accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(
    settings: Settings, out: Path, policy_dir: Path = POLICY_DIR, log: Log = print
) -> list[Run]:
    """Both experiments, then the tables and the figure (written to `out`); returns the runs."""
    two_phase_policy = load(policy_dir / TWO_PHASE)
    head_policy = load(policy_dir / HEAD_ONLY)
    tasks = load_tasks(settings.seed)
    log(
        f"Two-phase training on {tasks['all'].name} ({len(tasks['all'].train_y)} train, "
        f"{len(tasks['all'].test_y)} test images), policy {TWO_PHASE}:"
    )
    log(_indent(two_phase_policy.text))
    classic = two_phase_experiment(tasks, two_phase_policy, settings, log)
    log(
        f"\nTransfer: pretrain on {tasks['0-4'].name}, then a new head for {tasks['5-9'].name}, "
        f"policy {HEAD_ONLY}:"
    )
    log(_indent(head_policy.text))
    transfer = transfer_experiment(tasks, head_policy, settings, log)
    runs = [*classic, *transfer]
    summary = (
        f"Results (accuracy after the last epoch; chance is 0.1 for 10 classes, 0.2 for 5):\n\n"
        f"{results_table(runs)}\n\n"
        f"Trainable parameters by phase (epochs count from 0):\n\n{phases_table(runs)}"
    )
    log("\n" + summary)
    figure = plot(classic, transfer, out)
    log(f"\nFigure: {figure}")
    return runs


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.strip().splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m freezepolicy.demo.digits", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="figure path (out/demo_digits.png)"
    )
    args = parser.parse_args(argv)
    if not (POLICY_DIR / TWO_PHASE).is_file():
        print(f"demo: {POLICY_DIR / TWO_PHASE} not found: run it from a checkout", file=sys.stderr)
        return 2
    settings = Settings()
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(line, flush=True)  # progress shows as it happens, also through a pipe

    run_demo(settings, args.out, log=log)
    log(f"Total: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
