"""Train a small MLP under a freezing policy, checkpointing every epoch, for tests/test_resume.py.

Run as `python tests/resume_worker.py --policy FILE --dir DIR [--resume CKPT] [--init-seed N]
[--hold-at-step N]`. It trains `MLP` (fc1, fc2, out) on generated data with AdamW built from
`freezepolicy.param_groups`, a per-step LambdaLR and a `FreezeScheduler`, and:

- after every epoch writes DIR/checkpoint.pt (atomically: a temporary file, then `os.replace`)
  holding the model, optimizer, LR scheduler and FreezeScheduler state dicts and the epoch;
- with `--resume CKPT` builds everything afresh (initialised from `--init-seed`, so nothing but
  the checkpoint can carry the trained state over), loads the checkpoint and trains on;
- with `--hold-at-step N` stops after global optimizer step N, writes DIR/held and waits there
  to be killed: the test kills it mid-epoch, after a checkpoint, with work done past it;
- at the end writes DIR/final.pt: the final parameters, optimizer and scheduler state dicts, and
  a record of (trainable names, group layout, group learning rates and weight decays) at every
  epoch start and after every optimizer step.

`python tests/resume_worker.py --serve` starts a run server instead: see `serve`.

The functions are also imported by the test to run the same loop in-process. Everything is
deterministic on CPU: one thread, fixed data, a data order drawn from a generator seeded by
(SEED, epoch) so an epoch sees the same batches whether or not the run was resumed before it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

import freezepolicy as fp

SEED = 0
EPOCHS = 8
SAMPLES = 256
BATCH = 32
STEPS_PER_EPOCH = SAMPLES // BATCH  # 8
FEATURES, HIDDEN, CLASSES = 16, 32, 4
BASE_LR = 0.01
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 4
#: Longest a held worker waits to be killed before giving up (so it never lingers).
HOLD_LIMIT = 120.0
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>: a signal for this process when its parent dies

#: The policy of the test: fc1 frozen at the start, then unfrozen at a tenth of the rate with a
#: warm-up over epochs 2-3 (steps 16-31), a rate change for fc2, a re-freeze of fc1 in the middle
#: of epoch 5 (step 44 = 5 * 8 + 4) and a second unfreeze at epoch 7 (step 56, later on the one
#: clock `steps_per_epoch` gives).
POLICY = """\
# epochs 0-1: fc2 and out train; fc2 at a tenth of the base rate
freeze fc1
lr 0.1x for fc2
# epoch 2: fc1 joins at a tenth of the base rate, ramped up from 0 over two epochs
unfreeze fc1 at epoch 2 warmup 2 epochs
lr 0.1x for fc1 at epoch 2
# epoch 4: fc2 speeds up
lr 0.5x for fc2 at epoch 4
# step 44, in the middle of epoch 5: fc1 stops again, until epoch 7
freeze fc1 at step 44
unfreeze fc1 at epoch 7
"""


#: A metric-driven policy: fc2, then fc1, unfreeze when the validation loss stops decreasing
#: for 2 evaluations. With METRIC_SCRIPT, fc2 joins at epoch 4 (the plateau of epochs 2-3) and
#: fc1 at epoch 7 (the plateau of epochs 5-6, counted afresh from epoch 4's best).
METRIC_POLICY = """\
freeze fc1, fc2
lr 0.1x for fc2
unfreeze fc2 then fc1 when val_loss stops decreasing for 2 evaluations
"""
#: The validation loss observed after each epoch: scripted, so the plateaus fall where the test
#: needs them (a checkpoint in the middle of a plateau, and one with a transition pending).
METRIC_SCRIPT = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.9, 0.7]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def make_data(samples: int = SAMPLES, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a fixed random teacher network: learnable, and the same every run."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, CLASSES, generator=g)
    return x, (x @ teacher).argmax(dim=1)


def lr_factor(step: int, total: int = EPOCHS * STEPS_PER_EPOCH) -> float:
    """Linear warm-up over WARMUP_STEPS steps, then a cosine decay to 10% (a per-step LambdaLR)."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return warm * (0.55 + 0.45 * math.cos(math.pi * min(step, total) / total))


@dataclass
class Run:
    model: MLP
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    freeze: Any  # freezepolicy.FreezeScheduler
    names: dict[int, str]


def build(
    policy: fp.Policy | str | os.PathLike[str],
    init_seed: int = SEED,
    steps_per_epoch: int | None = STEPS_PER_EPOCH,
) -> Run:
    """Model, optimizer, LR scheduler and FreezeScheduler, exactly as at the start of a run.

    A resumed run builds the same objects the same way (the optimizer's groups at epoch 0) and
    then loads the checkpoint into them.
    """
    torch.manual_seed(init_seed)
    model = MLP()
    groups = fp.param_groups(
        model, policy, lr=BASE_LR, weight_decay=WEIGHT_DECAY, steps_per_epoch=steps_per_epoch
    )
    optimizer = torch.optim.AdamW(groups)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # LambdaLR keeps base rates of its own: passed, it follows the policy's rate changes.
    freeze = fp.FreezeScheduler(
        model, policy, optimizer, steps_per_epoch=steps_per_epoch, scheduler=lr_scheduler
    )
    names = {id(p): n for n, p in model.named_parameters()}
    return Run(model, optimizer, lr_scheduler, freeze, names)


def checkpoint(run: Run, epoch: int) -> dict[str, Any]:
    """Everything a resume needs, saved at the end of `epoch`."""
    return {
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "freeze": run.freeze.state_dict(),
    }


def restore(run: Run, ckpt: dict[str, Any]) -> int:
    """Load a checkpoint into a freshly built run; returns the epoch to continue with.

    Order: model, optimizer, LR scheduler, FreezeScheduler last, so the policy is applied at the
    saved moment to the restored model and optimizer.
    """
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    run.freeze.load_state_dict(ckpt["freeze"])
    return int(ckpt["epoch"]) + 1


def snapshot(run: Run, label: str) -> dict[str, Any]:
    """What must match an uninterrupted run at this moment: trainable set, groups, rates."""
    return {
        "label": label,
        "epoch": run.freeze.epoch,
        "step": run.freeze.global_step,
        "trainable": sorted(n for n, p in run.model.named_parameters() if p.requires_grad),
        "groups": [[run.names[id(p)] for p in g["params"]] for g in run.optimizer.param_groups],
        "lrs": [float(g["lr"]) for g in run.optimizer.param_groups],
        "weight_decays": [float(g["weight_decay"]) for g in run.optimizer.param_groups],
    }


def train(
    run: Run,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: range,
    records: list[dict[str, Any]],
    *,
    after_step: Callable[[Run], None] | None = None,
    after_epoch: Callable[[Run, int], None] | None = None,
) -> None:
    """The training loop: the two FreezeScheduler lines of an ordinary loop, plus records."""
    x, y = data
    batches = len(x) // BATCH
    loss_fn = nn.CrossEntropyLoss()
    for epoch in epochs:
        run.freeze.start_epoch(epoch)
        records.append(snapshot(run, "start"))
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 * SEED + epoch))
        for b in range(batches):
            idx = order[b * BATCH : (b + 1) * BATCH]
            loss = loss_fn(run.model(x[idx]), y[idx])
            if loss.requires_grad:  # a policy may freeze everything for a while
                loss.backward()
            run.optimizer.step()
            run.optimizer.zero_grad()
            run.lr_scheduler.step()
            run.freeze.step()
            records.append(snapshot(run, "step"))
            if after_step is not None:
                after_step(run)
        # An evaluation: observed before the checkpoint, so the checkpoint holds it; what it
        # decides takes effect at the next start_epoch. (A policy without `when` ignores it.)
        run.freeze.observe({"val_loss": METRIC_SCRIPT[epoch]})
        if after_epoch is not None:
            after_epoch(run, epoch)


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename it over `path`: a reader (or a resume after a kill at
    any instant) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--policy", required=True, type=Path)
    parser.add_argument("--dir", required=True, type=Path, help="checkpoints and results")
    parser.add_argument("--resume", type=Path, help="checkpoint to resume from")
    parser.add_argument("--init-seed", type=int, default=SEED)
    parser.add_argument("--hold-at-step", type=int, help="wait to be killed after this step")
    args = parser.parse_args(argv)

    # One thread makes every CPU kernel here run in a fixed order. (Not
    # torch.use_deterministic_algorithms: it imports torch._inductor, seconds per process, and
    # changes nothing for these CPU ops; the test checks bit-for-bit equality anyway.)
    torch.set_num_threads(1)
    run = build(args.policy, args.init_seed)
    records: list[dict[str, Any]] = []
    start = 0
    if args.resume is not None:
        # weights_only: a checkpoint is plain data (tensors, numbers, strings), markers included.
        start = restore(run, torch.load(args.resume, weights_only=True))
        records.append(snapshot(run, "restored"))

    def hold(run: Run) -> None:
        if run.freeze.global_step != args.hold_at_step:
            return
        save_atomic({"step": run.freeze.global_step}, args.dir / "held")
        deadline = time.monotonic() + HOLD_LIMIT
        while time.monotonic() < deadline:
            time.sleep(0.05)
        print("held past HOLD_LIMIT without being killed", file=sys.stderr)
        sys.exit(3)

    def save(run: Run, epoch: int) -> None:
        save_atomic(checkpoint(run, epoch), args.dir / "checkpoint.pt")

    train(run, make_data(), range(start, EPOCHS), records, after_step=hold, after_epoch=save)
    final = {
        "params": {n: p.detach().clone() for n, p in run.model.named_parameters()},
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "freeze": run.freeze.state_dict(),
        "records": records,
        "start_epoch": start,
    }
    save_atomic(final, args.dir / "final.pt")
    return 0


def serve() -> int:
    """Import torch once, then start each run as a forked child process.

    Importing torch, and the torch._dynamo that torch.optim loads, costs about 3 s of CPU per
    process; a run itself a few tenths. The test starts its killed and resumed runs through one
    server, so each is still a process of its own, killed with SIGKILL by its pid, and a resumed
    run is a new process holding nothing of the run it resumes (the server itself never trains).
    Forking a process that has imported torch is what DataLoader workers do on Linux.

    One line each way on stdin / stdout: `run {"argv": [...], "log": PATH}` starts `main(argv)`
    with its output to PATH (and its exit code to PATH.exit when it ends) and answers its pid;
    `wait PID` answers its exit status as subprocess reports one (negative: killed by that
    signal). The server ends at the end of its input, and its children die with it (Linux), so
    a test that dies leaves nothing running.
    """
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # loads torch._dynamo before any fork
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "run":
            job = json.loads(rest)
            sys.stdout.flush()
            sys.stderr.flush()
            server = os.getpid()
            pid = os.fork()
            if pid == 0:
                _child(job["argv"], job["log"], server)
            reply = str(pid)
        elif command == "wait":
            _, status = os.waitpid(int(rest), 0)
            reply = str(os.waitstatus_to_exitcode(status))
        else:
            reply = f"error: unknown command {command!r}"
        print(reply, flush=True)
    return 0


def _child(argv: list[str], log: str, server: int) -> NoReturn:
    """A forked run: output to `log`, no stdin, killed when the server dies; never returns."""
    code = 1
    try:
        if sys.platform == "linux":
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
            if os.getppid() != server:  # the server died before prctl took hold
                os._exit(1)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:  # so a waiting test sees at once that the run ended (a killed run writes nothing)
            Path(f"{log}.exit").write_text(f"{code}\n")
        finally:
            os._exit(code)  # not the server's exit handlers, buffers or stdin


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
