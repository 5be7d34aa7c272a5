"""Training and evaluation for the review demo, with the library used as a user would:
`param_groups` builds the optimizer from the policy, and a `FreezeScheduler` applies the policy
at each epoch start and after each optimizer step. Every run goes through `train`; the seconds per
epoch are measured in one place, `train_epoch`, around the training steps alone (evaluation is
timed apart), so runs of any kind are timed alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from freezepolicy import CachedModule, FreezeScheduler, Policy, param_groups

from .minilm import Encoded

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainSettings:
    """How each run trains. Defaults are the demo's; the tests use the same with less data."""

    seed: int = 0
    epochs: int = 1
    #: 16 rather than 32: the same seconds per epoch with the fused AdamW, twice the steps, and
    #: higher validation accuracy (docs/demo.md has the comparison).
    batch_size: int = 16
    #: AdamW's base rate: the encoder's. The new head's rate (3e-3) is in each policy, as
    #: `lr 3e-3 for head`. Both are the rates of the issue's feasibility run, not tuned here.
    lr: float = 1e-4
    weight_decay: float = 0.01
    #: 32: on one thread, batches of 128 took 25% more CPU time for the same snippets (their
    #: activations outgrow the CPU's caches).
    eval_batch_size: int = 32
    #: A progress line this many times per epoch (besides the line at its end).
    progress_lines: int = 4
    #: Batches are drawn from pools of this many batches' snippets sorted by length (see
    #: `length_grouped_batches`); 1 would give plain random batches.
    pool_batches: int = 8


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    loss: float  # mean training loss over the epoch
    val_acc: float
    seconds: float  # wall-clock time of the training steps only
    #: CPU time of the same steps, all threads: the work done, which other jobs on the same
    #: cores barely change, while they can stretch `seconds` several times.
    cpu_seconds: float
    trainable_params: int  # at the end of the epoch
    #: For a model wrapped in `freezepolicy.cache_frozen`: what the cache did in this epoch
    #: (samples whose frozen part came from the cache, samples computed and stored, seconds
    #: spent computing and capturing the graph); None for a plain model.
    cache: dict[str, float] | None = None


@dataclass
class RunHistory:
    """What `train` measured: one entry per epoch, and the trainable set's changes as
    (optimizer step, trainable elements), the first at step 0, from the scheduler's history."""

    epochs: list[EpochResult] = field(default_factory=list)
    phases: list[tuple[int, int]] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return sum(e.seconds for e in self.epochs) / len(self.epochs)

    @property
    def cpu_seconds_per_epoch(self) -> float:
        return sum(e.cpu_seconds for e in self.epochs) / len(self.epochs)


def trainable_elements(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.inference_mode()
def accuracy(model: nn.Module, data: Encoded, batch_size: int = 128) -> float:
    """Accuracy on `data`, in batches of similar length (sorted), so little goes to padding."""
    was_training = model.training
    model.eval()
    order = torch.argsort(data.attention_mask.sum(dim=1), stable=True)
    correct = 0
    for index in order.split(batch_size):
        ids, mask, labels = data.batch(index)
        correct += int((model(ids, mask).argmax(dim=1) == labels).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def plain_model(model: nn.Module) -> nn.Module:
    """The model itself, also when `model` is its `cache_frozen` wrapper: evaluation runs it
    directly (validation and test snippets are seen once each, so caching them gains nothing)."""
    return model.model if isinstance(model, CachedModule) else model


def length_grouped_batches(
    data: Encoded, batch_size: int, pool_batches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random batches of similar length, to spend little on padding (`Encoded.batch` cuts each
    batch to its longest snippet; the snippets average 24 tokens at a cap of 32, and 30% are cut
    at 32, so a random batch of 16 nearly always holds one of 32).

    A random permutation is cut into pools of `pool_batches` batches; each pool is sorted by
    length and cut into batches, and the order of all the batches is shuffled (the
    `group_by_length` of Hugging Face's Trainer works the same way).
    """
    lengths = data.attention_mask.sum(dim=1)
    order = torch.randperm(len(data), generator=generator)
    batches: list[torch.Tensor] = []
    for pool in order.split(batch_size * pool_batches):
        by_length = pool[torch.argsort(lengths[pool], stable=True)]
        batches.extend(by_length.split(batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


@dataclass
class Optimization:
    """The optimizer, its learning-rate schedule and the scheduler that applies the policy."""

    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    fs: FreezeScheduler


def make_optimizer(
    model: nn.Module, policy: Policy, settings: TrainSettings, steps_per_epoch: int
) -> Optimization:
    """AdamW over the policy's groups, a linear decay of every rate to 0 over the run, and the
    `FreezeScheduler` that applies the policy.

    Every tensor is in a group from the start, frozen ones too, so a later unfreeze needs no
    optimizer surgery. The fused AdamW is several times faster per step on a CPU than the default
    one (0.05 s against 0.25 s for MiniLM's 22.7M parameters, measured on 2 cores). The decay
    (the usual BERT fine-tuning schedule, without warm-up) makes the last steps small, so a run
    of a few dozen steps does not end on the jolt of whatever batch came last.
    """
    groups = param_groups(model, policy, lr=settings.lr, steps_per_epoch=steps_per_epoch)
    optimizer = torch.optim.AdamW(
        groups, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
    )
    total = steps_per_epoch * settings.epochs
    decay = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=0.0, total_iters=total
    )
    fs = FreezeScheduler(model, policy, optimizer, steps_per_epoch=steps_per_epoch, scheduler=decay)
    return Optimization(optimizer, decay, fs)


def epoch_batches(batches: list[torch.Tensor], epoch: int, seed: int) -> list[torch.Tensor]:
    """The order of the run's batches in `epoch`: as composed in the first epoch, shuffled in
    each later one. The batches themselves (which snippets, padded to which length) stay the same
    all run, as a bucketing loader's would, so a snippet reaches the model as the same tensor row
    every epoch (what lets `cache_frozen` find it again)."""
    if epoch == 0:
        return batches
    generator = torch.Generator().manual_seed(seed + epoch)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train_epoch(
    name: str,
    model: nn.Module,
    data: Encoded,
    batches: list[torch.Tensor],
    epoch: int,
    opt: Optimization,
    settings: TrainSettings,
    log: Log,
) -> tuple[float, float, float]:
    """One pass over `batches` (the epoch's order of them: the same for every run); returns
    (mean loss, wall-clock seconds, CPU seconds) of its training steps."""
    n = len(data)
    every = max(1, math.ceil(len(batches) / settings.progress_lines))
    fs = opt.fs
    seen = len(fs.history)

    def note_changes() -> None:
        """A line for each change of the trainable set (a new entry in the history)."""
        nonlocal seen
        for before, now in zip(fs.history[seen - 1 :], fs.history[seen:], strict=False):
            log(
                f"  {name:<22} step {now.step}: trainable {before.trainable_elements:,} -> "
                f"{now.trainable_elements:,} elements"
            )
        seen = len(fs.history)

    fs.start_epoch(epoch)
    note_changes()
    model.train()
    batches = epoch_batches(batches, epoch, settings.seed)
    total, seen_snippets = 0.0, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for i, index in enumerate(batches, start=1):
        ids, mask, labels = data.batch(index)
        loss = F.cross_entropy(model(ids, mask), labels)
        opt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.optimizer.step()
        opt.lr_schedule.step()
        fs.step()
        note_changes()
        total += loss.item() * len(index)
        seen_snippets += len(index)
        if i % every == 0 and i < len(batches):
            log(
                f"  {name:<22} step {i:>3}/{len(batches)}  loss {total / seen_snippets:.3f}"
                f"  {time.perf_counter() - started:5.1f} s"
            )
    return total / n, time.perf_counter() - started, time.process_time() - cpu_started


def train(
    name: str,
    model: nn.Module,
    policy: Policy,
    train_data: Encoded,
    val_data: Encoded,
    settings: TrainSettings,
    log: Log = print,
) -> RunHistory:
    """Train `model` under `policy` for `settings.epochs` epochs, with a line per epoch.

    `model` may be wrapped in `freezepolicy.cache_frozen`: the policy, the optimizer and the
    training steps then go through the wrapper (they share the model's parameters), and each
    epoch's line says what the cache did."""
    steps_per_epoch = math.ceil(len(train_data) / settings.batch_size)
    # Dropout draws from the global generator: seeded here, every run gets the same masks
    # whatever ran before it, and the demo prints the same accuracies every time.
    torch.manual_seed(settings.seed)
    opt = make_optimizer(model, policy, settings, steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    batches = length_grouped_batches(
        train_data, settings.batch_size, settings.pool_batches, generator
    )
    history = RunHistory()
    for epoch in range(settings.epochs):
        loss, seconds, cpu = train_epoch(
            name, model, train_data, batches, epoch, opt, settings, log
        )
        val_acc = accuracy(plain_model(model), val_data, settings.eval_batch_size)
        cache = None
        if isinstance(model, CachedModule):
            stats = model.stats()
            cache = {
                "hits": stats.hits,
                "misses": stats.misses,
                "fill_seconds": stats.fill_seconds,
                "capture_seconds": stats.capture_seconds,
                "bytes": stats.bytes,
            }
            model.reset_stats()
        done = EpochResult(epoch, loss, val_acc, seconds, cpu, trainable_elements(model), cache)
        history.epochs.append(done)
        cached = (
            ""
            if cache is None
            else f"  cache: {int(cache['hits']):,} hits, {int(cache['misses']):,} misses"
        )
        log(
            f"  {name:<22} epoch {epoch + 1}/{settings.epochs}  loss {loss:.3f}  "
            f"val acc {val_acc:.3f}  {seconds:.1f} s ({cpu:.1f} s CPU)  "
            f"trainable {done.trainable_params:,}{cached}"
        )
    history.phases = [(r.step, r.trainable_elements) for r in opt.fs.history]
    return history
