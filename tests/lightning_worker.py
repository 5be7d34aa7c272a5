"""Lightning runs under FreezePolicyCallback, for tests/test_lightning.py.

Run as `python tests/lightning_worker.py --out DIR`. Importing torch and Lightning costs most of
the time a run takes, so this driver imports them once and starts every run as a process of its
own, forked from it (as DataLoader workers are):

- `straight`: trains resume_worker's MLP under resume_worker's POLICY for EPOCHS epochs, with a
  plain AdamW over all parameters (which the callback splits into the policy's groups), a per-step
  LambdaLR and a checkpoint at every epoch end;
- for each case of CASES, `<case>-killed`: the same run, which stops after a global step inside
  an epoch (past its last checkpoint) and waits; the driver kills it with SIGKILL, and starts
  `<case>-resumed`: a fresh model, initialised from another seed, `trainer.fit(ckpt_path=)` on the
  killed run's last checkpoint, in a new process;
- `ddp`: ddp_schedule's 2-process run, under DDP on CPU (gloo; `strategy="ddp_fork"`, Lightning's
  DDP strategy with its processes forked), each rank saving what it held before every step;
- `refused`: misuses the callback refuses before training (see `refused`).

Every run writes DIR/<run>/result.pt (or, for a killed one, DIR/<run>/held) and its output to
DIR/<run>/log.txt; the driver writes DIR/driver.json: each run's exit status. Runs die with the
driver (Linux), so a test that kills the driver leaves nothing running.

Everything is deterministic on CPU: one thread, fixed data, and a data order drawn per epoch from
a generator seeded by (SEED, epoch), so an epoch sees the same batches whether or not the run was
resumed before it (the same order as resume_worker's loop).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ddp_schedule as sched  # tests/ is this script's directory, so it is on sys.path
import lightning.pytorch as pl
import resume_worker as rw
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import freezepolicy as fp
from freezepolicy.integrations.lightning import FreezePolicyCallback

EPOCHS = rw.EPOCHS  # 8 epochs of 8 steps: every phase of rw.POLICY
#: case -> (epoch whose end-of-epoch checkpoint is resumed, global step the killed run stops at).
CASES = {
    # in the middle of fc1's warm-up, after its unfreeze at epoch 2 split nothing new
    "after_unfreeze": (2, 3 * rw.STEPS_PER_EPOCH + 3),
    # fc1 still frozen: the resumed run performs the unfreeze itself
    "frozen_phase": (0, 1 * rw.STEPS_PER_EPOCH + 3),
}
HOLD_LIMIT = 120.0  # longest a held run waits to be killed
DEADLINE = 200.0  # for every run together
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux), so no run outlives the test."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class EpochOrder(Sampler[int]):
    """A new order each epoch, drawn from (SEED, epoch): Lightning calls `set_epoch` before every
    epoch, also in a resumed run, so the order does not depend on what ran before."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(1000 * rw.SEED + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


class Classifier(pl.LightningModule):
    """resume_worker's MLP (fc1, fc2, out) as a LightningModule: plain AdamW over all parameters,
    and a LambdaLR stepped after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(rw.FEATURES, rw.HIDDEN)
        self.fc2 = nn.Linear(rw.HIDDEN, rw.HIDDEN)
        self.out = nn.Linear(rw.HIDDEN, rw.CLASSES)
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=rw.BASE_LR, weight_decay=rw.WEIGHT_DECAY
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rw.lr_factor)
        step_scheduler = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": step_scheduler}


class Recorder(pl.Callback):
    """What must match between runs, before every optimizer step (after the policy's apply) and
    at the end: the moment, trainable set, group layout, rates and decays."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def snapshot(self, trainer: pl.Trainer, module: pl.LightningModule, label: str) -> None:
        names = {id(p): n for n, p in module.named_parameters()}
        groups = trainer.optimizers[0].param_groups
        self.records.append(
            {
                "label": label,
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "trainable": sorted(n for n, p in module.named_parameters() if p.requires_grad),
                "groups": [[names[id(p)] for p in g["params"]] for g in groups],
                "lrs": [float(g["lr"]) for g in groups],
                "weight_decays": [float(g["weight_decay"]) for g in groups],
            }
        )

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.snapshot(trainer, module, "step")

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.snapshot(trainer, module, "end")


class Hold(pl.Callback):
    """Stops the run after global step `step`, writes `path` and waits there to be killed."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        torch.save({"step": trainer.global_step}, self.path)
        time.sleep(HOLD_LIMIT)
        print("held past HOLD_LIMIT without being killed", file=sys.stderr)
        os._exit(3)


def trainer_for(run_dir: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        default_root_dir=run_dir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def classifier_loader() -> DataLoader:
    x, y = rw.make_data()
    return DataLoader(TensorDataset(x, y), batch_size=rw.BATCH, sampler=EpochOrder(len(x)))


def train_classifier(
    run_dir: Path, *, init_seed: int, hold: int | None = None, resume: Path | None = None
) -> None:
    torch.manual_seed(init_seed)
    model = Classifier()
    recorder = Recorder()
    freeze = FreezePolicyCallback(fp.parse(rw.POLICY, "resume.freeze"))
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=run_dir, save_last=True, save_on_train_epoch_end=True
    )
    callbacks: list[pl.Callback] = [freeze, recorder, checkpoints]
    if hold is not None:
        callbacks.append(Hold(hold, run_dir / "held"))
    trainer = trainer_for(run_dir, callbacks, max_epochs=EPOCHS)
    trainer.fit(model, classifier_loader(), ckpt_path=resume)
    optimizer = trainer.optimizers[0]
    result = {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "freeze": freeze.state_dict(),
        "records": recorder.records,
        "history": [(r.epoch, r.step, r.trainable) for r in freeze.history],
    }
    torch.save(result, run_dir / "result.pt")


# --- DDP -------------------------------------------------------------------------------------


class Regressor(pl.LightningModule):
    """ddp_schedule's regressor, with AdamW over `freezepolicy.param_groups`."""

    def __init__(self) -> None:
        super().__init__()
        sched.add_layers(self)
        self.policy = fp.parse(sched.POLICY, "ddp.freeze")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sched.regress(self, x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return (self(x) - y).pow(2).mean()

    def configure_optimizers(self) -> Any:
        groups = fp.param_groups(
            self, self.policy, lr=sched.BASE_LR, weight_decay=sched.WEIGHT_DECAY
        )
        return torch.optim.AdamW(groups)


class RankRecorder(pl.Callback):
    """ddp_schedule's record of this rank before every step and at the end, saved to
    DIR/rank<R>.pt."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.records: list[dict[str, Any]] = []

    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        die_with_parent()  # each rank is a process forked by Lightning

    def record(self, trainer: Any, module: Any) -> None:
        optimizer = trainer.optimizers[0]
        self.records.append(sched.record(module, optimizer, trainer.global_step))

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        self.record(trainer, module)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.record(trainer, module)
        result = {
            "records": self.records,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "steps_per_epoch": self.freeze(trainer).steps_per_epoch,
        }
        torch.save(result, self.run_dir / f"rank{trainer.global_rank}.pt")

    @staticmethod
    def freeze(trainer: Any) -> FreezePolicyCallback:
        (callback,) = [c for c in trainer.callbacks if isinstance(c, FreezePolicyCallback)]
        return callback


def train_ddp(run_dir: Path) -> None:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Regressor()
    trainer = trainer_for(
        run_dir,
        [FreezePolicyCallback(model.policy), RankRecorder(run_dir)],
        strategy="ddp_fork",
        devices=2,
        max_epochs=sched.EPOCHS,
        enable_checkpointing=False,
    )
    # Lightning gives each rank its half of the data (a DistributedSampler, unshuffled here).
    trainer.fit(model, DataLoader(sched.make_data(), batch_size=sched.BATCH))
    torch.save({"done": True}, run_dir / "result.pt")


#: A metric-driven policy for the Classifier; `val_acc` is never logged (a warning at the end).
METRIC_POLICY = """\
freeze *
unfreeze out
unfreeze fc2 then fc1 when val_loss stops decreasing for 1 evaluation
lr 0.5x for out when val_acc stops increasing for 1 evaluation
"""
#: The validation loss each epoch logs: plateaus after epochs 2 and 4 (the best restarts after
#: the first transition), so fc2 joins at epoch 3 and fc1 at epoch 5.
METRIC_SCRIPT = [1.0, 0.8, 0.9, 0.7, 0.75, 0.6]


class Scripted(Classifier):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", torch.tensor(METRIC_SCRIPT[self.current_epoch]))


class EpochTrainable(pl.Callback):
    def __init__(self) -> None:
        self.trainable: list[list[str]] = []

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.trainable.append(
                sorted({n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad})
            )


def train_metric(run_dir: Path) -> None:
    torch.manual_seed(rw.SEED)
    freeze = FreezePolicyCallback(fp.parse(METRIC_POLICY, "metric.freeze"))
    seen = EpochTrainable()
    trainer = trainer_for(
        run_dir,
        [freeze, seen],
        max_epochs=len(METRIC_SCRIPT),
        limit_train_batches=2,
        limit_val_batches=1,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Scripted(), classifier_loader(), classifier_loader())
    assert freeze.freeze_scheduler is not None
    result = {
        "trainable": seen.trainable,
        "fired": freeze.freeze_scheduler.fired,
        "groups": len(trainer.optimizers[0].param_groups),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, fp.PolicyWarning)],
    }
    torch.save(result, run_dir / "result.pt")


def refused(run_dir: Path) -> None:
    """Misuses refused before the first training step, each with its message (or "trained" if
    it was not refused):

    - `missing`: configure_optimizers over the tensors that train at the start only
      (BaseFinetuning's habit), under a policy that unfreezes fc1 later;
    - `two_optimizers`: configure_optimizers returning two optimizers (manual optimization);
    - `two_callbacks`: two FreezePolicyCallbacks on one Trainer (two policies on one model would
      undo each other): Lightning refuses two callbacks with one checkpoint state key.
    """
    policy = fp.parse(rw.POLICY, "resume.freeze")

    class FrozenFirst(Classifier):
        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad])

    class TwoOptimizers(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            raise AssertionError("trained")

        def configure_optimizers(self) -> Any:
            first = torch.optim.SGD(self.fc1.parameters(), lr=0.1)
            return first, torch.optim.SGD([*self.fc2.parameters(), *self.out.parameters()], lr=0.1)

    frozen_first = FrozenFirst()
    frozen_first.fc1.requires_grad_(False)
    cases = {
        "missing": (frozen_first, [FreezePolicyCallback(policy)]),
        "two_optimizers": (TwoOptimizers(), [FreezePolicyCallback(policy)]),
        "two_callbacks": (Classifier(), [FreezePolicyCallback(policy) for _ in range(2)]),
    }
    errors: dict[str, str] = {}
    for case, (model, callbacks) in cases.items():
        try:
            trainer = trainer_for(run_dir / case, callbacks, max_steps=1)
            trainer.fit(model, classifier_loader())
            errors[case] = "trained"
        except (ValueError, RuntimeError, AssertionError) as error:
            errors[case] = f"{type(error).__name__}: {error}"
    torch.save(errors, run_dir / "result.pt")


# --- the driver ------------------------------------------------------------------------------


def start(out: Path, name: str, run: Callable[[Path], None]) -> int:
    """Fork a process for `run(DIR/name)`, its output to DIR/name/log.txt; returns its pid."""
    run_dir = out / name
    run_dir.mkdir()
    sys.stdout.flush()
    sys.stderr.flush()
    driver = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        die_with_parent()
        if os.getppid() != driver:  # the driver died before prctl took hold
            os._exit(1)
        fd = os.open(run_dir / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        torch.set_num_threads(1)
        run(run_dir)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not the driver's exit handlers or buffers


def wait(pid: int) -> int:
    """The exit status of a run (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def wait_for_file(pid: int, path: Path, deadline: float) -> bool:
    while not path.exists():
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    out: Path = args.out
    die_with_parent()
    deadline = time.monotonic() + DEADLINE
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # loads torch._dynamo before any fork
    status: dict[str, int | None] = {}

    def classifier(**kwargs: Any) -> Callable[[Path], None]:
        return lambda run_dir: train_classifier(run_dir, **kwargs)

    straight = start(out, "straight", classifier(init_seed=rw.SEED))
    killed = {
        case: start(out, f"{case}-killed", classifier(init_seed=rw.SEED, hold=hold))
        for case, (_, hold) in CASES.items()
    }
    resumed: dict[str, int] = {}
    for case, pid in killed.items():
        name = f"{case}-killed"
        # The run writes `held` after its checkpoint and after training on past it.
        if wait_for_file(pid, out / name / "held", deadline):
            os.kill(pid, signal.SIGKILL)
        status[name] = wait(pid)
        # init_seed 1: the new model starts from other weights, so whatever the resumed run
        # ends with came through the checkpoint.
        resume = out / name / "last.ckpt"
        resumed[case] = start(out, f"{case}-resumed", classifier(init_seed=1, resume=resume))
    status["straight"] = wait(straight)
    others = {
        "ddp": start(out, "ddp", train_ddp),
        "refused": start(out, "refused", refused),
        "metric": start(out, "metric", train_metric),
    }
    for case, pid in resumed.items():
        status[f"{case}-resumed"] = wait(pid)
    for name, pid in others.items():
        status[name] = wait(pid)
    (out / "driver.json").write_text(json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main())
