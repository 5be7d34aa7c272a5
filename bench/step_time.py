"""Zero overhead on the training step: a policy applied by freezepolicy against the same freeze
written by hand.

For each workload, two models start from the same weights:

- `freezepolicy`: the optimizer is built with `freezepolicy.param_groups`, the policy is applied
  by a `FreezeScheduler`, and every step ends with `fs.step()`, as a user's loop would.
- `hand`: `requires_grad` is set by a loop over `named_parameters()`, the optimizer gets the
  trainable parameters, and batch-norm layers whose parameters are all frozen are put in eval
  mode after `model.train()` (what freezepolicy does too: without it the two would not compute
  the same step).

Before timing, one step of each from the same weights and batch must give the same trainable
set, the same loss and bit-for-bit the same updated parameters: the variants do the same work.
Step time is forward + backward + optimizer step (+ `fs.step()`), interleaved A B B A ...

Peak memory is measured for each variant in a fresh process (`python -m bench.step_time
--memory WORKLOAD VARIANT`): the peak of live torch tensor bytes over one profiled step
(torch.profiler's memory timeline, which sees every allocation of torch's CPU allocator), and
the process's peak RSS (`getrusage`), which also sees the allocator's and Python's own memory.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import freezepolicy

from .common import ROOT, interleaved, paired_ratio, peak_rss_bytes, run_process

LR = 1e-3
WEIGHT_DECAY = 0.01


@dataclass
class Workload:
    """A model, a batch, a loss, the policy, and the same freeze as a hand-written rule."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[], tuple[Any, ...]]
    loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor]
    policy: str
    trainable: Callable[[str], bool]  # the hand-written rule: parameter name -> trainable
    about: str


def _resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


def _resnet_batch(batch: int = 16, size: int = 128) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 3, size, size, generator=g),
        torch.randint(0, 1000, (batch,), generator=g),
    )


def _classify(model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def bert_config(layers: int = 12, hidden: int = 256, **extra: Any) -> Any:
    """The benchmarks' BERT: `layers` blocks of width `hidden`, 4 heads (random weights)."""
    from transformers import BertConfig

    return BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        **extra,
    )


def _bert(layers: int = 12, hidden: int = 256) -> nn.Module:
    from transformers import BertModel

    torch.manual_seed(0)
    return BertModel(bert_config(layers, hidden))


def _bert_batch(batch: int = 8, seq: int = 128) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 30522, (batch, seq), generator=g),)


def _bert_loss(model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    out = model(input_ids=batch[0])
    return out.last_hidden_state.pow(2).mean() + out.pooler_output.pow(2).mean()


def _bert_last2(name: str) -> bool:
    return name.startswith(("encoder.layer.10.", "encoder.layer.11.", "pooler."))


def workloads(quick: bool = False) -> dict[str, Workload]:
    """The benchmark's workloads; `quick` shrinks them for the smoke test."""
    if quick:
        return {
            "resnet18": Workload(
                "resnet18",
                _resnet18,
                lambda: _resnet_batch(2, 32),
                _classify,
                str(ROOT / "policies/resnet_head_only.freeze"),
                lambda n: n.startswith("fc."),
                "resnet18, batch 2, 32x32 (quick), policies/resnet_head_only.freeze",
            ),
        }
    return {
        "resnet18": Workload(
            "resnet18",
            _resnet18,
            _resnet_batch,
            _classify,
            str(ROOT / "policies/resnet_head_only.freeze"),
            lambda n: n.startswith("fc."),
            "torchvision resnet18, batch 16, 128x128, policies/resnet_head_only.freeze",
        ),
        "bert12": Workload(
            "bert12",
            _bert,
            _bert_batch,
            _bert_loss,
            str(ROOT / "policies/bert_last2.freeze"),
            _bert_last2,
            "BertModel, 12 layers, hidden 256, batch 8, sequence 128, policies/bert_last2.freeze",
        ),
    }


# --- variants -------------------------------------------------------------------------------


@dataclass
class Variant:
    """A model set up one way, and its training step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], torch.Tensor]
    scheduler: freezepolicy.FreezeScheduler | None = None


def _make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    work: Workload,
    batch: tuple[Any, ...],
    after: Callable[[], object] | None = None,
) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        torch.manual_seed(2)  # the same dropout masks in every variant
        loss = work.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after is not None:
            after()
        return loss.detach()

    return step


def with_policy(
    work: Workload, model: nn.Module, batch: tuple[Any, ...], policy: str | None = None
) -> Variant:
    """freezepolicy: param_groups, a FreezeScheduler, and `fs.step()` after every step."""
    loaded = freezepolicy.load(policy or work.policy)
    optimizer = torch.optim.AdamW(
        freezepolicy.param_groups(model, loaded, lr=LR, weight_decay=WEIGHT_DECAY)
    )
    model.train()
    fs = freezepolicy.FreezeScheduler(model, loaded, optimizer, steps_per_epoch=1000)
    return Variant(model, optimizer, _make_step(model, optimizer, work, batch, fs.step), fs)


def by_hand(work: Workload, model: nn.Module, batch: tuple[Any, ...]) -> Variant:
    """The same freeze written by hand: a requires_grad loop, frozen batch norms in eval."""
    for name, p in model.named_parameters():
        p.requires_grad_(work.trainable(name))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY
    )
    model.train()
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if isinstance(m, _BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()
    return Variant(model, optimizer, _make_step(model, optimizer, work, batch))


def naive_lr_zero(work: Workload, model: nn.Module, batch: tuple[Any, ...]) -> Variant:
    """`lr 0` the naive way: every gradient computed, optimizer groups with learning rate 0."""
    head = [p for n, p in model.named_parameters() if work.trainable(n)]
    rest = [p for n, p in model.named_parameters() if not work.trainable(n)]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "lr": 0.0}, {"params": head, "lr": LR}], weight_decay=WEIGHT_DECAY
    )
    model.train()
    return Variant(model, optimizer, _make_step(model, optimizer, work, batch))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    """Bytes of the optimizer state tensors of `params`."""
    wanted = {id(p) for p in params}
    return sum(
        v.numel() * v.element_size()
        for p, state in optimizer.state.items()
        if id(p) in wanted
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def check_same_step(a: Variant, b: Variant) -> dict[str, Any]:
    """One step of each from the same weights: trainable sets, losses and updates must agree."""
    names_a = sorted(n for n, p in a.model.named_parameters() if p.requires_grad)
    names_b = sorted(n for n, p in b.model.named_parameters() if p.requires_grad)
    if names_a != names_b:
        raise AssertionError(f"trainable sets differ: {len(names_a)} vs {len(names_b)} tensors")
    loss_a, loss_b = a.step(), b.step()
    params_b = dict(b.model.named_parameters())
    differ = [n for n, p in a.model.named_parameters() if not torch.equal(p, params_b[n])]
    buffers_b = dict(b.model.named_buffers())
    differ += [n for n, t in a.model.named_buffers() if not torch.equal(t, buffers_b[n])]
    if differ or not torch.equal(loss_a, loss_b):
        raise AssertionError(f"the variants do not compute the same step: {differ[:5]}")
    return {"trainable_tensors": len(names_a), "identical_update": True}


# --- the benchmark --------------------------------------------------------------------------


def run(*, quick: bool = False, repeats: int = 12, warmup: int = 2) -> dict[str, Any]:
    """Step-time ratio (freezepolicy / hand) per workload, with peak memory of each variant.

    A second hand-written copy (`hand_again`) is timed with them: its ratio to `hand` is what
    two identical setups differ by on this machine, the noise floor of the comparison.
    """
    results: dict[str, Any] = {}
    for work in workloads(quick).values():
        base = work.build()
        batch = work.batch()
        fp = with_policy(work, copy.deepcopy(base), batch)
        hand = by_hand(work, copy.deepcopy(base), batch)
        again = by_hand(work, copy.deepcopy(base), batch)
        del base
        same = check_same_step(fp, hand)
        again.step()
        samples = interleaved(
            {"freezepolicy": fp.step, "hand": hand.step, "hand_again": again.step},
            repeats=repeats,
            warmup=warmup,
        )
        assert fp.scheduler is not None
        fs_step = _per_call(fp.scheduler.step, 200 if quick else 2000)
        frozen_fp = [p for n, p in fp.model.named_parameters() if not work.trainable(n)]
        frozen_hand = [p for n, p in hand.model.named_parameters() if not work.trainable(n)]
        memory = {
            name: memory_in_subprocess_with(work.name, name, None, quick=quick)
            for name in ("freezepolicy", "hand")
        }
        results[work.name] = {
            "about": work.about,
            "check": same,
            "samples": {k: v.to_dict() for k, v in samples.items()},
            "ratio_wall": paired_ratio(samples["freezepolicy"], samples["hand"]),
            "ratio_cpu": paired_ratio(samples["freezepolicy"], samples["hand"], "cpu"),
            "ratio_of_medians_wall": samples["freezepolicy"].median_wall
            / samples["hand"].median_wall,
            "control_ratio_wall": paired_ratio(samples["hand_again"], samples["hand"]),
            "control_ratio_cpu": paired_ratio(samples["hand_again"], samples["hand"], "cpu"),
            "fs_step_s": fs_step,
            "fs_step_share": fs_step / samples["hand"].median_wall,
            "optimizer_state_bytes": {
                "freezepolicy": optimizer_state_bytes(fp.optimizer, list(fp.model.parameters())),
                "hand": optimizer_state_bytes(hand.optimizer, list(hand.model.parameters())),
                "freezepolicy_frozen": optimizer_state_bytes(fp.optimizer, frozen_fp),
                "hand_frozen": optimizer_state_bytes(hand.optimizer, frozen_hand),
            },
            "memory": memory,
        }
    return results


def _per_call(fn: Callable[[], object], calls: int) -> float:
    """Median seconds per call of `fn` over 5 batches of `calls` calls."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def memory_in_subprocess_with(
    workload: str, variant: str, policy: str | None, *, quick: bool = False
) -> dict[str, Any]:
    """Peak memory of one variant (with `policy` for the freezepolicy variant), measured in a
    fresh process so variants cannot share peaks."""
    cmd = [sys.executable, "-m", "bench.step_time", "--memory", workload, variant]
    cmd += ["--threads", str(torch.get_num_threads())]
    if policy is not None:
        cmd += ["--policy", policy]
    if quick:
        cmd.append("--quick")
    proc = run_process(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{proc.stdout}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


VARIANTS: dict[str, Callable[[Workload, nn.Module, tuple[Any, ...]], Variant]] = {
    "freezepolicy": with_policy,
    "hand": by_hand,
    "naive": naive_lr_zero,
}


def measure_memory(work: Workload, variant: Variant, steps: int = 3) -> dict[str, Any]:
    """Peak torch tensor bytes over one profiled step (after a warm-up step) and peak RSS."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    variant.step()  # optimizer state exists from here on, as in any later step
    rss_before = peak_rss_bytes()
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        variant.step()
    timeline = prof._memory_profile().timeline
    existing = sum(size for t, action, _, size in timeline if action == Action.PREEXISTING)
    live = peak = 0
    for _, action, _, size in sorted(
        (e for e in timeline if e[1] != Action.PREEXISTING), key=lambda e: e[0]
    ):
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    for _ in range(steps - 2):
        variant.step()
    return {
        "tensor_bytes_before_step": existing,
        "peak_tensor_bytes_during_step": peak,
        "peak_tensor_bytes": existing + peak,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_bytes_at_start": rss_before,
    }


def memory_of(
    workload: str, variant: str, policy: str | None = None, *, quick: bool = False
) -> dict[str, Any]:
    """Set up one variant and measure its memory in this process (the child's work)."""
    work = workloads(quick)[workload]
    model, batch = work.build(), work.batch()
    if variant == "freezepolicy" and policy:
        setup = with_policy(work, model, batch, policy)
    else:
        setup = VARIANTS[variant](work, model, batch)
    return measure_memory(work, setup)


def _memory_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory", nargs=2, metavar=("WORKLOAD", "VARIANT"), required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--policy", help="policy file for the freezepolicy variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, variant_name = args.memory
    print(json.dumps(memory_of(name, variant_name, args.policy, quick=args.quick)))


if __name__ == "__main__":
    _memory_main(sys.argv[1:])
