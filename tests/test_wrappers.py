"""Optimizers and schedulers inside wrappers reach the policy (freezepolicy/runtime/wrappers.py).

With accelerate's real `AcceleratedOptimizer` and `AcceleratedScheduler` (from
`Accelerator.prepare`, in this one process): a policy's rate change lands on the torch optimizer
and survives the torch scheduler's next steps, whether apply_policy gets the wrapping scheduler,
the torch scheduler inside it, or a list; a split of the optimizer's groups is followed through
the wrapper; `FreezeScheduler` takes the wrappers as a training loop holds them. A scheduler
created over the wrapper (as the Hugging Face Trainer creates its own) still counts as attached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.scheduler import AcceleratedScheduler
from accelerate.state import AcceleratorState, GradientState
from torch import nn

import freezepolicy as fp
from freezepolicy.runtime.wrappers import unwrap_optimizer, unwrap_scheduler, unwrap_schedulers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE_LR = 0.1
#: `a` at half the rate from epoch 1 on.
POLICY = fp.parse("lr 0.5x for a at epoch 1\n", "wrappers.freeze")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def decay(step: int) -> float:
    return 0.9**step


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    """A fresh Accelerator (one process, CPU), and accelerate's process-wide state cleared after
    it, as accelerate's own tests do, so no other test inherits it."""
    yield Accelerator()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def train_steps(model: nn.Module, optimizer: Any, scheduler: Any, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]


def assert_lrs(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g, w, rel_tol=1e-12), (got, want)


def prepared(accelerator: Accelerator, *, policy_groups: bool) -> SimpleNamespace:
    """Net, an SGD (in the policy's groups, or one plain group) and a LambdaLR, through
    `accelerator.prepare`: the wrapped ones, and the torch ones inside (`inner_*`)."""
    torch.manual_seed(0)
    model = Net()
    params = fp.param_groups(model, POLICY, lr=BASE_LR) if policy_groups else model.parameters()
    inner_opt = torch.optim.SGD(params, lr=BASE_LR)
    inner_sched = torch.optim.lr_scheduler.LambdaLR(inner_opt, decay)
    model, optimizer, scheduler = accelerator.prepare(model, inner_opt, inner_sched)
    assert isinstance(optimizer, AcceleratedOptimizer)
    assert isinstance(scheduler, AcceleratedScheduler)
    return SimpleNamespace(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        inner_opt=inner_opt,
        inner_sched=inner_sched,
    )


@pytest.mark.parametrize("passed", ["wrapper", "inner", "list"])
def test_rate_change_reaches_the_optimizer_through_accelerate(
    accelerator: Accelerator, passed: str
) -> None:
    run = prepared(accelerator, policy_groups=True)
    given = {"wrapper": run.scheduler, "inner": run.inner_sched, "list": [run.scheduler]}[passed]
    train_steps(run.model, run.optimizer, run.scheduler, 2)

    fp.apply_policy(run.model, POLICY, run.optimizer, epoch=1, scheduler=given)
    # On the torch optimizer at once, and on the base rates its scheduler keeps, so the rate
    # survives every later scheduler step.
    assert_lrs(lrs(run.inner_opt), [0.5 * BASE_LR * decay(2), BASE_LR * decay(2)])
    assert_lrs(run.inner_sched.base_lrs, [0.5 * BASE_LR, BASE_LR])
    train_steps(run.model, run.optimizer, run.scheduler, 3)
    assert_lrs(lrs(run.inner_opt), [0.5 * BASE_LR * decay(5), BASE_LR * decay(5)])


def test_split_is_followed_through_the_wrappers(accelerator: Accelerator) -> None:
    """A plain optimizer (one group) that the policy splits, with its scheduler already made."""
    run = prepared(accelerator, policy_groups=False)
    train_steps(run.model, run.optimizer, run.scheduler, 1)

    fp.apply_policy(run.model, POLICY, run.optimizer, epoch=1, scheduler=run.scheduler)
    assert len(run.inner_opt.param_groups) == 2
    assert_lrs(run.inner_sched.base_lrs, [0.5 * BASE_LR, BASE_LR])
    train_steps(run.model, run.optimizer, run.scheduler, 2)
    assert_lrs(lrs(run.inner_opt), [0.5 * BASE_LR * decay(3), BASE_LR * decay(3)])


def test_freeze_scheduler_takes_the_wrappers(accelerator: Accelerator) -> None:
    run = prepared(accelerator, policy_groups=True)
    freeze = fp.FreezeScheduler(
        run.model, POLICY, run.optimizer, scheduler=run.scheduler, steps_per_epoch=2
    )
    for epoch in range(3):
        freeze.start_epoch(epoch)
        for _ in range(2):
            train_steps(run.model, run.optimizer, run.scheduler, 1)
            freeze.step()
    assert_lrs(lrs(run.inner_opt), [0.5 * BASE_LR * decay(6), BASE_LR * decay(6)])


def test_scheduler_made_over_the_wrapper_counts_as_attached(accelerator: Accelerator) -> None:
    """As the Hugging Face Trainer does: the torch scheduler is created over the wrapper, so it
    marks the wrapper's `step`. Passed, it is followed; not passed, the split is refused, as for
    an optimizer without a wrapper."""
    torch.manual_seed(0)
    model = Net()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=BASE_LR))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    with pytest.raises(ValueError, match="scheduler is already attached"):
        fp.apply_policy(model, POLICY, optimizer, epoch=1)
    assert len(optimizer.param_groups) == 1  # refused before any change
    fp.apply_policy(model, POLICY, optimizer, epoch=1, scheduler=sched)
    assert_lrs(sched.base_lrs, [0.5 * BASE_LR, BASE_LR])


def test_unwrap_finds_the_torch_objects_and_leaves_others_alone() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=BASE_LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    # Any wrapper holding `.optimizer` / `.scheduler`, nested.
    outer = SimpleNamespace(optimizer=SimpleNamespace(optimizer=opt))
    assert unwrap_optimizer(outer) is opt
    assert unwrap_scheduler(SimpleNamespace(scheduler=SimpleNamespace(scheduler=sched))) is sched
    assert unwrap_schedulers((SimpleNamespace(scheduler=sched), sched)) == [sched, sched]
    # Torch objects, None and wrong values are returned as they are (for apply_policy's checks):
    # a scheduler passed as the optimizer is not turned into its optimizer.
    for value in (opt, sched, None, "adam"):
        assert unwrap_optimizer(value) is value
    for value in (sched, None, "cosine"):
        assert unwrap_scheduler(value) is value
    # A wrapper holding itself does not loop.
    loop = SimpleNamespace()
    loop.scheduler = loop
    assert unwrap_scheduler(loop) is loop
