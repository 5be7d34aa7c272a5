"""The digits demo's data, model and training: every run goes through the one `train` function,
which uses the library as a user would (`param_groups` builds the optimizer and a
`FreezeScheduler` applies the policy at each epoch start and after each optimizer step).
digits.py runs the two experiments and prints and plots them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from freezepolicy import FreezeScheduler, Policy, param_groups

from . import POLICY_DIR as POLICY_DIR  # the demos' one policies/ folder, re-exported

TWO_PHASE = "mlp_two_phase.freeze"
HEAD_ONLY = "mlp_head_only.freeze"

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
    """The demo's model, for `freezepolicy lint --model freezepolicy.demo.digits_runs:mlp`."""
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
