"""`make demo`: freezepolicy on real data, scikit-learn's 1,797 handwritten 8x8 digits.

Two experiments with a 3-layer MLP (`fc1`, `fc2`, `out`), every run through the one `train`
function below, which uses the library as a user would: `param_groups` builds the optimizer and a
`FreezeScheduler` applies the policy at each epoch start and after each optimizer step.

1. Two-phase training (policies/mlp_two_phase.freeze: only `out` trains for the first half of the
   epochs, then everything) against the same MLP, with the same initial weights and the same batch
   order, trained with no freezing.
2. Transfer: pretrain the MLP on digits 0-4, then learn digits 5-9 with a new `out` on the frozen
   pretrained `fc1`, `fc2` (policies/mlp_head_only.freeze), against the same new head on a fresh
   MLP's random frozen features (the very weights the pretraining started from).

Run from a checkout: `python -m freezepolicy.demo` (the policies are the files in policies/).
Losses and accuracies are the same on every run on the same machine (fixed seeds, one thread);
the seconds are measured wall-clock time and vary. docs/demo.md shows a run and reads it.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .api import load
from .optim import param_groups
from .policy import Policy
from .schedule import FreezeScheduler

#: The policies/ folder of the checkout this module lives in.
POLICY_DIR = Path(__file__).resolve().parent.parent / "policies"
TWO_PHASE = "mlp_two_phase.freeze"
HEAD_ONLY = "mlp_head_only.freeze"
DEFAULT_OUT = Path("out") / "demo.png"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers. The defaults are the demo; tests use fewer epochs."""

    seed: int = 0
    hidden: int = 64
    batch_size: int = 32
    #: Adam's rate for every run, picked on the no-freezing baseline alone (the smallest of 1e-3,
    #: 3e-3, 1e-2 with which it fits its training set in its 10 epochs), never on the comparisons.
    lr: float = 1e-2
    #: Epochs of the transfer runs (pretraining, and each head); the two-phase experiment runs
    #: twice the unfreeze epoch of its policy, so that "the first half" is frozen.
    pretrain_epochs: int = 10
    head_epochs: int = 10
    #: One thread: for a model this small more threads only add overhead (ten times the time with
    #: two on a busy 2-core machine), and the numbers stay reproducible.
    threads: int = 1


# --- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A classification task: a train and a test split, labels 0 .. classes-1."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int


def load_tasks(seed: int = 0) -> dict[str, Task]:
    """The digits, split 75/25 (stratified), as three tasks: `all` (0-9), `0-4` and `5-9`.

    `5-9` keeps the same train/test images as `all` and relabels 5..9 as 0..4 for a 5-way head.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed, stratify=y.numpy()
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)

    def subset(name: str, low: int, high: int) -> Task:
        tr = train_idx[(y[train_idx] >= low) & (y[train_idx] <= high)]
        te = test_idx[(y[test_idx] >= low) & (y[test_idx] <= high)]
        return Task(name, x[tr], y[tr] - low, x[te], y[te] - low, high - low + 1)

    return {
        "all": subset("digits 0-9", 0, 9),
        "0-4": subset("digits 0-4", 0, 4),
        "5-9": subset("digits 5-9", 5, 9),
    }


# --- model ---------------------------------------------------------------------------------------


class MLP(nn.Module):
    """8x8 image (64 values) -> fc1 -> ReLU -> fc2 -> ReLU -> out."""

    def __init__(self, inputs: int = 64, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def mlp() -> MLP:
    """The demo's model, for `freezepolicy lint --model freezepolicy.demo:mlp POLICY`."""
    return MLP()


def build_mlp(seed: int, classes: int, hidden: int = 64) -> MLP:
    """The same initial weights for the same seed, without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(hidden=hidden, classes=classes)


def new_head(model: MLP, classes: int, seed: int) -> MLP:
    """Replace `out` with a freshly initialised layer for `classes` classes (same seed, same
    weights: both transfer runs start their head from the same point)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.out = nn.Linear(model.out.in_features, classes)
    return model


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Epoch:
    """One epoch: training loss, accuracies after it, and the seconds its training took."""

    epoch: int
    loss: float
    train_acc: float
    test_acc: float
    seconds: float


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one trainable set."""

    first: int
    last: int
    trainable_tensors: int
    trainable_elements: int
    frozen_tensors: int
    frozen_elements: int


@dataclass
class Run:
    """One training run: what was trained, how, and what came of it."""

    name: str
    policy: str  # the policy file name, or "(none)"
    task: Task
    model: nn.Module = field(repr=False)
    #: Accuracies before the first epoch (train, test): where each curve starts.
    start: tuple[float, float]
    epochs: list[Epoch] = field(default_factory=list)
    #: One per stretch of epochs with one trainable set (a policy change starts a new one).
    phases: list[Phase] = field(default_factory=list)

    @property
    def test_acc(self) -> float:
        return self.epochs[-1].test_acc

    @property
    def train_acc(self) -> float:
        return self.epochs[-1].train_acc

    @property
    def seconds_per_epoch(self) -> float:
        return sum(e.seconds for e in self.epochs) / len(self.epochs)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def phases_from_history(fs: FreezeScheduler, epochs: int) -> list[Phase]:
    """One `Phase` per entry of the scheduler's history (the applies that changed something)."""
    reports = fs.history
    phases = []
    for i, report in enumerate(reports):
        last = reports[i + 1].epoch - 1 if i + 1 < len(reports) else epochs - 1
        phases.append(
            Phase(
                report.epoch,
                last,
                len(report.trainable),
                report.trainable_elements,
                len(report.frozen),
                report.frozen_elements,
            )
        )
    return phases


def phase_of_model(model: nn.Module, epochs: int) -> list[Phase]:
    """The single phase of a run without a policy, read from requires_grad."""
    params = list(model.parameters())
    on = [p for p in params if p.requires_grad]
    off = [p for p in params if not p.requires_grad]
    elements = [sum(p.numel() for p in ps) for ps in (on, off)]
    return [Phase(0, epochs - 1, len(on), elements[0], len(off), elements[1])]


def train(
    name: str,
    model: nn.Module,
    task: Task,
    epochs: int,
    policy: Policy | None,
    settings: Settings,
    log: Log = print,
) -> Run:
    """Train `model` on `task` with Adam, under `policy` (None: everything trains).

    The batch order depends on `settings.seed` alone, so runs on the same task see the same
    batches in the same order.
    """
    n = len(task.train_y)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    fs: FreezeScheduler | None = None
    if policy is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    else:
        # Every tensor is in a group from the start, frozen ones too, so an unfreeze later
        # needs no optimizer surgery; the scheduler then only flips requires_grad.
        groups = param_groups(model, policy, lr=settings.lr, steps_per_epoch=steps_per_epoch)
        optimizer = torch.optim.Adam(groups)
        fs = FreezeScheduler(model, policy, optimizer, steps_per_epoch=steps_per_epoch)
    order = torch.Generator().manual_seed(settings.seed)
    run = Run(
        name,
        policy_label(policy),
        task,
        model,
        (accuracy(model, task.train_x, task.train_y), accuracy(model, task.test_x, task.test_y)),
    )
    for epoch in range(epochs):
        if fs is not None:
            fs.start_epoch(epoch)
        model.train()
        started = time.perf_counter()
        total = 0.0
        for batch in torch.randperm(n, generator=order).split(settings.batch_size):
            loss = F.cross_entropy(model(task.train_x[batch]), task.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if fs is not None:
                fs.step()
            total += loss.item() * len(batch)
        seconds = time.perf_counter() - started
        done = Epoch(
            epoch,
            total / n,
            accuracy(model, task.train_x, task.train_y),
            accuracy(model, task.test_x, task.test_y),
            seconds,
        )
        run.epochs.append(done)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(
            f"  {name:<28} epoch {epoch + 1:>2}/{epochs}  loss {done.loss:.3f}  "
            f"train {done.train_acc:.3f}  test {done.test_acc:.3f}  {seconds:.2f} s  "
            f"trainable {trainable:,} elements"
        )
    run.phases = phase_of_model(model, epochs) if fs is None else phases_from_history(fs, epochs)
    return run


def policy_label(policy: Policy | None) -> str:
    return "(none)" if policy is None else Path(policy.source).name


def unfreeze_epoch(policy: Policy) -> int:
    """The epoch of the policy's one timed change (mlp_two_phase.freeze: `at epoch 5`)."""
    events = policy.events()
    if len(events) != 1 or events[0][0] != "epoch":
        raise ValueError(f"{policy.source}: expected one `at epoch N` change, found {events}")
    return events[0][1]


# --- the two experiments -------------------------------------------------------------------------


def two_phase_experiment(
    tasks: dict[str, Task],
    policy: Policy,
    settings: Settings,
    log: Log = print,
    epochs: int | None = None,
) -> list[Run]:
    """No freezing vs the two-phase policy: same initial weights, same batches, same epochs
    (twice the policy's unfreeze epoch unless `epochs` is given)."""
    epochs = 2 * unfreeze_epoch(policy) if epochs is None else epochs
    task = tasks["all"]
    runs = []
    for name, pol in (("no freezing", None), ("two-phase", policy)):
        model = build_mlp(settings.seed, task.classes, settings.hidden)
        runs.append(train(name, model, task, epochs, pol, settings, log))
    return runs


def transfer_experiment(
    tasks: dict[str, Task], policy: Policy, settings: Settings, log: Log = print
) -> list[Run]:
    """Pretrain on digits 0-4; then a new head for 5-9 on the pretrained frozen features, and
    the same head on a fresh MLP's (the pretraining's starting weights) frozen features."""
    source, target = tasks["0-4"], tasks["5-9"]
    pretrained = build_mlp(settings.seed, source.classes, settings.hidden)
    pre = train("pretrain", pretrained, source, settings.pretrain_epochs, None, settings, log)
    fresh = build_mlp(settings.seed, source.classes, settings.hidden)
    runs = [pre]
    for name, model in (
        ("head on pretrained features", pretrained),
        ("head on random features", fresh),
    ):
        new_head(model, target.classes, settings.seed + 1)
        runs.append(train(name, model, target, settings.head_epochs, policy, settings, log))
    return runs


# --- output --------------------------------------------------------------------------------------


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
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    left = 3  # text columns left-aligned, numbers right-aligned

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


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


# --- main ----------------------------------------------------------------------------------------


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
        prog="python -m freezepolicy.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="figure path (out/demo.png)")
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
