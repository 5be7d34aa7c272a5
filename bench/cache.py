"""Frozen layers cost nothing after the first epoch (issue 15): `cache_frozen` against the same
freeze written by hand, without caching.

For each workload two copies of one model start from the same weights and train on the same
data, in the same order (a seeded shuffle per epoch), with the same seeds before every step (the
same dropout masks in the trainable part):

- `hand`: `requires_grad` set by a loop over `named_parameters()` at each epoch of the schedule,
  the modules whose parameters are all frozen in eval mode (held batch norms, no dropout in the
  frozen part), AdamW over the parameters.
- `cached`: the model wrapped by `freezepolicy.cache_frozen` (with `anticipate=` the policy for
  the schedule), the policy applied by a `FreezeScheduler` at each epoch start, the same AdamW.

Epochs of the two run interleaved (epoch e of one, then of the other, alternating who goes
first). Each side's first epoch includes everything it needs: the cached side's capture of the
model (torch.export) and filling the cache. Before timing, both models run one untimed forward
and backward of a batch outside the data set (the cached side through its own model, not the
wrapper, so nothing is captured or cached), so neither pays torch's first-call costs in its
timed epochs. Per-step losses and the final parameters and buffers are compared at the end.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import freezepolicy

from .common import ROOT
from .step_time import bert_config

LR = 1e-4
#: Losses and parameters must agree within this (see docs/caching.md: a sample's frozen value
#: reused in a batch of other samples may differ from a fresh one by float32 rounding, as
#: kernels can pick their algorithm by batch shape; measured differences are reported).
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class Workload:
    name: str
    about: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # sample indices -> model kwargs
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    samples: int
    batch: int
    epochs: int
    policy: str  # policy text
    trainable: Callable[[str, int], bool]  # the hand-written schedule: (name, epoch) -> trains
    target: float  # ratio target of the issue
    measure: str  # "after_first" (epochs after the first) or "whole_run"


def _resnet(quick: bool) -> Workload:
    import torchvision

    size, n, batch = (32, 16, 8) if quick else (128, 2304, 16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)

    def build() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None)

    return Workload(
        "resnet18_head",
        f"torchvision resnet18, {n} fixed images of {size}x{size}, batch {batch}, "
        "policies/resnet_head_only.freeze",
        build,
        lambda idx: {"x": x[idx], "y": y[idx]},
        lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"]),
        n,
        batch,
        2,
        (ROOT / "policies/resnet_head_only.freeze").read_text(),
        lambda name, epoch: name.startswith("fc."),
        0.15,
        "after_first",
    )


def _bert_parts(quick: bool, n: int) -> tuple[Callable[[], nn.Module], Callable, int, str]:
    from transformers import BertForSequenceClassification

    layers, hidden, seq = (3, 32, 16) if quick else (12, 256, 128)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 30522, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    for i, pad in enumerate(torch.randint(0, seq // 2, (n,), generator=g).tolist()):
        if pad:
            mask[i, -pad:] = 0  # padded sequences: the mask matters
    labels = torch.randint(0, 2, (n,), generator=g)

    def build() -> nn.Module:
        torch.manual_seed(0)
        # No dropout: a hand-written freeze then computes what the cached model computes
        # whether or not it puts the frozen blocks in eval mode (docs/caching.md, dropout).
        config = bert_config(
            layers, hidden, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        return BertForSequenceClassification(config)

    def inputs(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": ids[idx], "attention_mask": mask[idx], "labels": labels[idx]}

    about = (
        f"BertForSequenceClassification ({layers} layers, hidden {hidden}, dropout 0), {n} padded "
        f"sequences of {seq} tokens, batch 8"
    )
    return build, inputs, layers, about


def _bert_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def _bert_last2(quick: bool) -> Workload:
    n = 32 if quick else 1024
    build, inputs, layers, about = _bert_parts(quick, n)
    top = (f"bert.encoder.layer.{layers - 2}.", f"bert.encoder.layer.{layers - 1}.")
    return Workload(
        "bert12_last2",
        f"{about}, the last 2 blocks, pooler and classifier train (policies/bert_last2.freeze)",
        build,
        inputs,
        _bert_loss,
        n,
        8,
        2,
        f"freeze *\nunfreeze encoder.layer.{layers - 2}, encoder.layer.{layers - 1}, pooler, "
        "classifier\n",
        lambda name, epoch: name.startswith((*top, "bert.pooler.", "classifier.")),
        0.40,
        "after_first",
    )


def _bert_gradual(quick: bool) -> Workload:
    n = 32 if quick else 512
    build, inputs, layers, about = _bert_parts(quick, n)
    a, b = layers - 1, layers - 2

    def trainable(name: str, epoch: int) -> bool:
        return name.startswith(("bert.pooler.", "classifier.")) or (
            name.startswith(f"bert.encoder.layer.{a}.")
            and epoch >= 3
            or name.startswith(f"bert.encoder.layer.{b}.")
            and epoch >= 4
        )

    return Workload(
        "bert12_gradual",
        f"{about}, gradual unfreezing over 5 epochs: the head (pooler, classifier) for 3 "
        f"epochs, then block {a} at epoch 3 and block {b} at epoch 4",
        build,
        inputs,
        _bert_loss,
        n,
        8,
        5,
        f"freeze *\nunfreeze pooler, classifier\nunfreeze encoder.layer.{a} at epoch 3\n"
        f"unfreeze encoder.layer.{b} at epoch 4\n",
        trainable,
        0.40,
        "whole_run",
    )


def workloads(quick: bool = False) -> list[Workload]:
    return [_resnet(quick), _bert_last2(quick), _bert_gradual(quick)]


# --- the two sides --------------------------------------------------------------------------


def _hand_epoch_setup(work: Workload, model: nn.Module, epoch: int) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(work.trainable(name, epoch))
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()


def _order(work: Workload, epoch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + epoch)
    perm = torch.randperm(work.samples, generator=g)
    return list(perm.split(work.batch))


def _epoch(
    work: Workload, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, losses: list
) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step, idx in enumerate(_order(work, epoch)):
        torch.manual_seed(10_000 * epoch + step)  # the same dropout masks on both sides
        loss = work.loss(model, work.inputs(idx))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return time.perf_counter() - wall0, time.process_time() - cpu0


def _warm(work: Workload, model: nn.Module) -> None:
    """One forward and backward outside the data set and untimed (torch's first-call costs)."""
    batch = work.inputs(torch.arange(work.batch))
    batch = {k: v.flip(0) if k != "labels" else v for k, v in batch.items()}
    work.loss(model, batch).backward()
    model.zero_grad(set_to_none=True)


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(
        ((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True)), default=0.0
    )


def run_workload(work: Workload) -> dict[str, Any]:
    base = work.build()
    hand_model = copy.deepcopy(base)
    policy = freezepolicy.parse(work.policy)
    cached = freezepolicy.cache_frozen(copy.deepcopy(base), anticipate=policy)
    del base
    _hand_epoch_setup(work, hand_model, 0)
    fs = freezepolicy.FreezeScheduler(cached, policy)
    cached.train()
    hand_opt = torch.optim.AdamW(hand_model.parameters(), lr=LR)
    cached_opt = torch.optim.AdamW(cached.parameters(), lr=LR)
    _warm(work, hand_model)
    _warm(work, cached.model)
    hand_losses: list[torch.Tensor] = []
    cached_losses: list[torch.Tensor] = []
    epochs = []
    for e in range(work.epochs):
        _hand_epoch_setup(work, hand_model, e)
        fs.start_epoch(e)
        before = cached.stats()
        sides = [("hand", hand_model, hand_opt, hand_losses)]
        sides.append(("cached", cached, cached_opt, cached_losses))
        times = {}
        for name, model, opt, losses in sides if e % 2 == 0 else reversed(sides):
            times[name] = _epoch(work, model, opt, e, losses)
        after = cached.stats()
        epochs.append(
            {
                "hand": {"wall_s": times["hand"][0], "cpu_s": times["hand"][1]},
                "cached": {"wall_s": times["cached"][0], "cpu_s": times["cached"][1]},
                "hits": after.hits - before.hits,
                "misses": after.misses - before.misses,
                "fill_s": after.fill_seconds - before.fill_seconds,
                "capture_s": after.capture_seconds - before.capture_seconds,
                "cache_bytes": after.bytes,
            }
        )
    hand_state = hand_model.state_dict()
    cached_state = cached.state_dict()
    state_a = [hand_state[k] for k in hand_state]
    state_b = [cached_state[k] for k in hand_state]
    loss_diff = _max_diff(hand_losses, cached_losses)
    state_diff = _max_diff(state_a, state_b)
    within = all(
        torch.allclose(x.float(), y.float(), rtol=RTOL, atol=ATOL)
        for x, y in zip(hand_losses + state_a, cached_losses + state_b, strict=True)
    )
    bitwise = all(
        torch.equal(x, y)
        for x, y in zip(hand_losses + state_a, cached_losses + state_b, strict=True)
    )
    stats = cached.stats()
    return {
        "about": work.about,
        "samples": work.samples,
        "batch": work.batch,
        "target": work.target,
        "measure": work.measure,
        "epochs": epochs,
        **_ratios(epochs),
        "exact": {
            "steps": len(hand_losses),
            "max_loss_diff": loss_diff,
            "max_state_diff": state_diff,
            "within_tolerance": within,
            "bitwise": bitwise,
            "rtol": RTOL,
            "atol": ATOL,
        },
        "cache": {
            "bytes": stats.bytes,
            "entries": stats.entries,
            "captures": stats.captures,
            "capture_s": stats.capture_seconds,
            "hash": stats.hash,
            "reasons": list(stats.reasons),
        },
    }


def _ratios(epochs: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for clock in ("wall", "cpu"):
        key = f"{clock}_s"
        per = [e["cached"][key] / e["hand"][key] for e in epochs]
        out[f"fill_ratio_{clock}"] = per[0]
        out[f"after_first_ratio_{clock}"] = statistics.median(per[1:]) if len(per) > 1 else 0.0
        out[f"whole_run_ratio_{clock}"] = sum(e["cached"][key] for e in epochs) / sum(
            e["hand"][key] for e in epochs
        )
    return out


def run(*, quick: bool = False) -> dict[str, Any]:
    """Every workload: per-epoch times of both sides, ratios, exactness, cache contents."""
    return {work.name: run_workload(work) for work in workloads(quick)}


if __name__ == "__main__":  # pragma: no cover - for a run of this benchmark alone
    import json
    import sys

    torch.set_num_threads(1)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
