"""Apply and resolve scale linearly: a 20-statement policy on models with 1k, 10k and 100k
parameter tensors.

The models are built like a mixture-of-experts language model (`model.layers.N.self_attn.q_proj`,
`model.layers.N.mlp.experts.M.w1.weight`, RMSNorm layers, an embedding and an LM head) with 64
experts per layer and 5, 50 or 500 layers, from tiny Linear layers on the meta device: names,
module classes and tensor count are those of a large model, with no memory behind them. The
policy (`POLICY` below) has name and type selectors, `except`, numeric ranges, `**`, epoch and
step times, a warm-up and a `then ... every` schedule.

Measured, each as the median of several runs with garbage collected before each:

- first apply: `apply_policy` on a model it has not seen (inspecting the model, matching every
  selector, resolving every moment of the timeline, tied and name checks, setting requires_grad);
  the first run is on a freshly built model, the later ones on the same model after
  freezepolicy's caches for it were dropped and requires_grad restored (`forget`);
- apply at a new moment: the next epoch, where the set of active statements changes;
- apply at the same moment: what a per-step `FreezeScheduler.step()` costs (the fast path);
- resolve: `Policy.resolve(names, module_types=...)`, the pure function, from scratch.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

import freezepolicy
from freezepolicy.runtime import apply as fp_apply
from freezepolicy.runtime import binding as fp_binding
from freezepolicy.runtime.modelinfo import inspect_model, parameter_ids, unwrap

from .common import Samples, timed

#: A realistic 20-statement policy for the mixture-of-experts model below.
POLICY = """\
freeze *
unfreeze lm_head, model.norm
unfreeze model.layers.0..3 except type:*Norm
lr 0.1x for model.layers.*.self_attn
decay 0 for bias, type:*Norm
unfreeze model.layers.*.mlp.experts.0..7 at epoch 1
freeze model.layers.*.mlp.gate at epoch 2
lr 1e-4 for model.layers.**.w1 except model.layers.0 at epoch 3
unfreeze model.layers.4..9.self_attn.{q,k}_proj at step 100
stats freeze for type:*Norm
lr 0 for model.embed_tokens
unfreeze model.layers.1*.mlp.experts.*.w[23] at epoch 4 warmup 2 epochs
freeze model.layers.*.mlp.experts.6[0-3] at epoch 5
decay 0.01 for model.layers.*.mlp.experts.*.w1
unfreeze ^model.layers.2*.input_layernorm
lr 0.5x for ^lm_head at epoch 6
freeze model.layers.*.self_attn.o_proj except model.layers.0..1 at epoch 7
unfreeze model.layers.3*.mlp then model.layers.4*.mlp at epoch 8 every 2 epochs
decay 0 for model.layers.*.post_attention_layernorm
unfreeze * at epoch 20
"""

EXPERTS = 64


class RMSNorm(nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Expert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(4, 4, bias=False)
        self.w2 = nn.Linear(4, 4, bias=False)
        self.w3 = nn.Linear(4, 4, bias=False)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.k_proj = nn.Linear(4, 4)
        self.v_proj = nn.Linear(4, 4)
        self.o_proj = nn.Linear(4, 4)


class MoE(nn.Module):
    def __init__(self, experts: int) -> None:
        super().__init__()
        self.gate = nn.Linear(4, experts, bias=False)
        self.experts = nn.ModuleList(Expert() for _ in range(experts))


class DecoderLayer(nn.Module):
    def __init__(self, experts: int) -> None:
        super().__init__()
        self.self_attn = Attention()
        self.mlp = MoE(experts)
        self.input_layernorm = RMSNorm()
        self.post_attention_layernorm = RMSNorm()


class Decoder(nn.Module):
    def __init__(self, layers: int, experts: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(32, 4)
        self.layers = nn.ModuleList(DecoderLayer(experts) for _ in range(layers))
        self.norm = RMSNorm()


class MoEForCausalLM(nn.Module):
    def __init__(self, layers: int, experts: int = EXPERTS) -> None:
        super().__init__()
        self.model = Decoder(layers, experts)
        self.lm_head = nn.Linear(4, 32, bias=False)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip weight initialisation (only names and shapes matter): builds 100k tensors fast."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = lambda self: None  # type: ignore[method-assign]
    nn.Embedding.reset_parameters = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved  # type: ignore[method-assign]


def build(layers: int, experts: int = EXPERTS) -> nn.Module:
    """A mixture-of-experts model on the meta device: 7 + 3 * experts tensors per layer."""
    with _no_init(), torch.device("meta"):
        return MoEForCausalLM(layers, experts)


def forget(model: nn.Module) -> None:
    """Drop what freezepolicy keeps about `model` and restore requires_grad, so the next apply
    is a first apply again (as on a freshly built model, without building it again)."""
    snap = fp_binding._MODELS.pop(unwrap(model), None)
    if snap is not None:
        for p in model.parameters():
            p.requires_grad_(snap.original(p))


def layers_for(tensors: int, experts: int = EXPERTS) -> int:
    """Layers for about `tensors` parameter tensors."""
    return max(1, round((tensors - 3) / (7 + 3 * experts)))


def run(
    *, sizes: tuple[int, ...] = (1_000, 10_000, 100_000), repeats: int = 5, experts: int = EXPERTS
) -> dict[str, Any]:
    # POLICY is written for the full run's sizes: 5 layers of 64 experts and up (1k tensors;
    # tests/test_bench.py::test_scaling_policy_selects_at_every_size checks that it applies there
    # without a warning, and larger models only add layers). The warm-up model (2 layers of 4
    # experts) and --quick's models (3 and 16 layers of 4 experts) are small on purpose, to be
    # fast, so some of its selectors (`model.layers.4..9.self_attn...`, `experts.6[0-3]`, ...)
    # match nothing on them. That FP201 is expected: the benchmark ignores it rather than print it
    # to whoever runs it; any other PolicyWarning still shows. The full run's sizes emit no
    # warning at all, so nothing measured changes.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(?s).*\[FP201\]", freezepolicy.PolicyWarning)
        return _run(sizes, repeats, experts)


def _run(sizes: tuple[int, ...], repeats: int, experts: int) -> dict[str, Any]:
    policy = freezepolicy.parse(POLICY, "bench/scaling.py:POLICY")
    statements = len(policy.statements)
    # Warm-up on a small model: imports, regex caches, code paths.
    small = build(2, 4)
    fp_apply.apply_policy(small, policy)
    policy.resolve([n for n, _ in small.named_parameters()], epoch=3)
    del small

    rows = []
    for size in sizes:
        model = build(layers_for(size, experts), experts)
        rows.append(_measure(model, policy, repeats))
        rows[-1].update({"layers": layers_for(size, experts), "experts": experts})
        if size == sizes[-1]:
            rows[-1]["breakdown"] = _breakdown(model, policy, repeats)
        del model
        gc.collect()
    return {"statements": statements, "rows": rows}


def _breakdown(model: nn.Module, policy: freezepolicy.Policy, repeats: int) -> dict[str, float]:
    """Median CPU seconds of the stages of a first apply, each run on its own."""
    forget(model)
    root = unwrap(model)
    info = inspect_model(root)
    snap = fp_binding.ModelSnapshot(
        info.fingerprint, info.names, info.params, info.tied, info.module_types, []
    )
    stages = {
        "walk the modules (parameter_ids, the floor of any look at the model)": lambda: (
            parameter_ids(root)
        ),
        "inspect_model (names, module classes, tied tensors)": lambda: inspect_model(root),
        "match the selectors (bind, signatures)": lambda: (
            policy.bind(info.names, info.module_types).signatures
        ),
        "the rest of the binding (classes, timeline, groups, checks)": lambda: fp_binding.Binding(
            policy, snap, None
        ),
    }
    out = {}
    for label, fn in stages.items():
        samples = Samples()
        for _ in range(repeats):
            gc.collect()
            samples.cpu.append(timed(fn)[1])
        out[label] = samples.median_cpu
    # The binding includes matching; report what it adds.
    binding = "the rest of the binding (classes, timeline, groups, checks)"
    out[binding] -= out["match the selectors (bind, signatures)"]
    return out


def _measure(model: nn.Module, policy: freezepolicy.Policy, repeats: int) -> dict[str, Any]:
    tensors = sum(1 for _ in model.parameters())
    info = inspect_model(model)
    names, module_types = info.names, info.module_types
    samples = {k: Samples() for k in ("first", "moment", "same", "resolve")}

    def record(key: str, fn: Any) -> tuple[float, float]:
        gc.collect()
        wall, cpu = timed(fn)
        samples[key].wall.append(wall)
        samples[key].cpu.append(cpu)
        return wall, cpu

    fresh = None
    for r in range(repeats):
        if r:
            forget(model)
        first = record("first", lambda: fp_apply.apply_policy(model, policy, epoch=0))
        fresh = fresh or first
        # A new moment every time: epochs 1, 2, ... change the active statements.
        epoch = 1 + r % 8
        record("moment", lambda: fp_apply.apply_policy(model, policy, epoch=epoch))  # noqa: B023
        record("same", lambda: fp_apply.apply_policy(model, policy, epoch=epoch))  # noqa: B023
        record(
            "resolve", lambda: policy.resolve(names, epoch=3, step=200, module_types=module_types)
        )
    report = fp_apply.apply_policy(model, policy, epoch=0)
    assert fresh is not None
    return {
        "tensors": tensors,
        "trainable_at_epoch_0": len(report.trainable),
        "first_apply": samples["first"].to_dict(),
        "first_apply_fresh_model": {"wall_s": fresh[0], "cpu_s": fresh[1]},
        "apply_new_moment": samples["moment"].to_dict(),
        "apply_same_moment": samples["same"].to_dict(),
        "resolve": samples["resolve"].to_dict(),
    }


def per_tensor_growth(rows: list[dict[str, Any]], key: str, clock: str = "cpu") -> float:
    """Time per tensor at the largest size over time per tensor at the second largest: 1.0 when
    the time is linear in the tensor count, 10 if it were quadratic over a 10x step."""
    a, b = rows[-2], rows[-1]
    per_a = a[key][f"median_{clock}_s"] / a["tensors"]
    per_b = b[key][f"median_{clock}_s"] / b["tensors"]
    return per_b / per_a
