"""The accelerate recipe of docs/accelerate.md, one rank of it, for tests/test_accelerate.py.

Run under `accelerate launch` (the test starts `ACCELERATE_USE_CPU=1 accelerate launch
--multi_gpu --num_processes 2 ...`: two CPU processes on gloo) as
`tests/accelerate_worker.py --out DIR`. It trains ddp_schedule's regressor under its POLICY: the
optimizer built with `freezepolicy.param_groups` and a LambdaLR, model, optimizer, loader and
scheduler handed to `accelerator.prepare`, and the policy driven by `FreezeScheduler` with the
prepared (wrapped) optimizer and scheduler, exactly as the recipe does. Before every optimizer
step and at the end, each rank records its parameters, trainable set, group learning rates and
the torch scheduler's step count, and saves them to DIR/rank<R>.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ddp_schedule as sched  # tests/ is this script's directory, so it is on sys.path
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

import freezepolicy as fp


def decay(step: int) -> float:
    """The LambdaLR factor after `step` scheduler steps."""
    return 0.95**step


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sched.add_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sched.regress(self, x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    # --- the recipe (docs/accelerate.md) ---------------------------------------------------
    accelerator = Accelerator()
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Net()
    policy = fp.parse(sched.POLICY, "accelerate.freeze")
    groups = fp.param_groups(model, policy, lr=sched.BASE_LR, weight_decay=sched.WEIGHT_DECAY)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    loader = DataLoader(sched.make_data(), batch_size=sched.BATCH)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    freeze = fp.FreezeScheduler(
        model, policy, optimizer, scheduler=scheduler, steps_per_epoch=len(loader)
    )
    inner = accelerator.unwrap_model(model)
    records = []
    for epoch in range(sched.EPOCHS):
        freeze.start_epoch(epoch)
        for x, y in loader:
            # The torch scheduler's own count: accelerate steps it once per process per step.
            steps = scheduler.scheduler.last_epoch
            records.append(sched.record(inner, optimizer, freeze.global_step, scheduler=steps))
            loss = (model(x) - y).pow(2).mean()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            freeze.step()
    # --- end of the recipe ---------------------------------------------------------------------

    steps = scheduler.scheduler.last_epoch
    records.append(sched.record(inner, optimizer, freeze.global_step, scheduler=steps))
    result = {
        "records": records,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "steps_per_epoch": len(loader),
        "optimizer_type": type(optimizer).__name__,
        "scheduler_type": type(scheduler).__name__,
    }
    torch.save(result, args.out / f"rank{accelerator.process_index}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
