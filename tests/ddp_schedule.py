"""The 2-process schedule that the Lightning DDP run (tests/lightning_worker.py) and the accelerate
run (tests/accelerate_worker.py) train, and the checks their tests make on what each rank saw.

A small regressor (stem -> body (Linear, LayerNorm) -> head) on 64 samples, batches of 8, on 2
ranks: 4 steps per epoch on each, 3 epochs. The policy unfreezes `body` at an epoch start,
refreezes half of it after a step in the middle of an epoch and changes the head's rate at an
epoch start; `stem` never trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

POLICY = """\
freeze *
unfreeze head
unfreeze body at epoch 1
freeze body.0 at step 6
lr 0.1x for head at epoch 2
"""
EPOCHS = 3
SAMPLES, BATCH = 64, 8
STEPS_PER_EPOCH = SAMPLES // BATCH // 2  # per rank
BASE_LR = 0.05
WEIGHT_DECAY = 0.01

HEAD = {"head.weight", "head.bias"}
BODY_1 = {"body.1.weight", "body.1.bias"}
BODY = {"body.0.weight", "body.0.bias"} | BODY_1


def expected_trainable(step: int) -> set[str]:
    """Worked out by hand from POLICY: what trains in the step numbered `step` (0-based)."""
    if step < STEPS_PER_EPOCH:  # epoch 0
        return HEAD
    if step < 6:  # epoch 1, until `freeze body.0 at step 6`
        return HEAD | BODY
    return HEAD | BODY_1


def expected_rates(step: int) -> list[float]:
    """The policy's rate of each optimizer group, (stem and body, head), at `step`."""
    head = BASE_LR * (0.1 if step >= 2 * STEPS_PER_EPOCH else 1.0)
    return [BASE_LR, head]


def add_layers(module: nn.Module) -> None:
    """Give `module` the regressor's layers; initialise with torch.manual_seed(0) first so every
    rank starts from the same weights."""
    module.stem = nn.Linear(6, 12)
    module.body = nn.Sequential(nn.Linear(12, 12), nn.LayerNorm(12))
    module.head = nn.Linear(12, 3)


def regress(module: Any, x: torch.Tensor) -> torch.Tensor:
    return module.head(module.body(torch.relu(module.stem(x))))


def make_data() -> TensorDataset:
    """The whole data set; each rank trains on its half (a different half per rank)."""
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(SAMPLES, 6, generator=g), torch.randn(SAMPLES, 3, generator=g))


def record(model: nn.Module, optimizer: Any, step: int, **extra: Any) -> dict[str, Any]:
    """What a rank holds before the step numbered `step` (and after the last one)."""
    return {
        "step": step,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "lrs": [float(g["lr"]) for g in optimizer.param_groups],
        **extra,
    }


def check_ranks(ranks: Sequence[Sequence[dict[str, Any]]]) -> None:
    """The ranks hold bit for bit the same parameters before every step; in each step exactly
    the parameters the policy trains then move (frozen ones stay bit for bit); the schedule's
    phases all happened."""
    steps = EPOCHS * STEPS_PER_EPOCH
    first, *others = ranks
    assert [r["step"] for r in first] == list(range(steps + 1))
    for other in others:
        assert len(other) == len(first)
        for a, b in zip(first, other, strict=True):
            assert a["step"] == b["step"]
            for name, value in a["params"].items():
                assert torch.equal(value, b["params"][name]), f"step {a['step']}: {name} differs"
    for before, after in zip(first, first[1:], strict=False):
        step = before["step"]
        assert set(before["trainable"]) == expected_trainable(step), step
        moved = {n for n, p in before["params"].items() if not torch.equal(p, after["params"][n])}
        assert moved == expected_trainable(step), f"step {step}: moved {sorted(moved)}"
    assert {frozenset(expected_trainable(s)) for s in range(steps)} == {
        frozenset(HEAD),
        frozenset(HEAD | BODY),
        frozenset(HEAD | BODY_1),
    }


def check_rates(
    records: Sequence[dict[str, Any]], factor: Callable[[dict[str, Any]], float]
) -> None:
    """Every group's learning rate is the policy's rate times the scheduler's factor."""
    for r in records:
        want = [rate * factor(r) for rate in expected_rates(r["step"])]
        assert len(r["lrs"]) == len(want), r["lrs"]
        for got, w in zip(r["lrs"], want, strict=True):
            assert math.isclose(got, w, rel_tol=1e-12), f"step {r['step']}: {r['lrs']} != {want}"
