"""`lr 0` is a real freeze: a policy with `lr 0` on everything but the head, against the same
setting done the naive way (every gradient computed, optimizer groups with learning rate 0),
with a hand-written freeze (requires_grad loop) for reference.

All three train only the head. The naive way still computes and stores every gradient, keeps
batch-norm layers updating their statistics, and gives Adam state to every tensor; the policy
(`bench/policies/resnet_lr0.freeze`) must skip all of it. Reported: step-time ratios against the
naive way, and the optimizer-state bytes held for the lr-0 tensors. The policy and the hand
freeze must compute bit-for-bit the same step (checked before timing).
"""

from __future__ import annotations

import copy
from typing import Any

from . import step_time
from .common import ROOT, interleaved, paired_ratio
from .step_time import (
    by_hand,
    check_same_step,
    naive_lr_zero,
    optimizer_state_bytes,
    with_policy,
    workloads,
)

POLICY_LABEL = "bench/policies/resnet_lr0.freeze"
POLICY = str(ROOT / POLICY_LABEL)


def run(*, quick: bool = False, repeats: int = 8, warmup: int = 2) -> dict[str, Any]:
    work = workloads(quick)["resnet18"]
    base = work.build()
    batch = work.batch()
    policy = with_policy(work, copy.deepcopy(base), batch, POLICY)
    hand = by_hand(work, copy.deepcopy(base), batch)
    naive = naive_lr_zero(work, copy.deepcopy(base), batch)
    del base
    same = check_same_step(policy, hand)
    naive.step()
    samples = interleaved(
        {"policy": policy.step, "naive": naive.step, "hand": hand.step},
        repeats=repeats,
        warmup=warmup,
    )

    def lr_zero_params(model: Any) -> list[Any]:
        return [p for n, p in model.named_parameters() if not work.trainable(n)]

    state = {
        name: {
            "lr0_tensors": optimizer_state_bytes(v.optimizer, lr_zero_params(v.model)),
            "all": optimizer_state_bytes(v.optimizer, list(v.model.parameters())),
        }
        for name, v in (("policy", policy), ("naive", naive), ("hand", hand))
    }
    measure = step_time.memory_in_subprocess_with
    memory = {
        "policy": measure(work.name, "freezepolicy", POLICY, quick=quick),
        "naive": measure(work.name, "naive", None, quick=quick),
        "hand": measure(work.name, "hand", None, quick=quick),
    }
    return {
        "about": work.about.replace("policies/resnet_head_only.freeze", POLICY_LABEL),
        "check": same,
        "samples": {k: v.to_dict() for k, v in samples.items()},
        "ratio_policy_wall": paired_ratio(samples["policy"], samples["naive"]),
        "ratio_hand_wall": paired_ratio(samples["hand"], samples["naive"]),
        "ratio_policy_cpu": paired_ratio(samples["policy"], samples["naive"], "cpu"),
        "ratio_hand_cpu": paired_ratio(samples["hand"], samples["naive"], "cpu"),
        "ratio_policy_to_hand_wall": paired_ratio(samples["policy"], samples["hand"]),
        "optimizer_state_bytes": state,
        "memory": memory,
    }
