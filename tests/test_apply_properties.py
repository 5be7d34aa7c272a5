"""Properties of apply_policy over generated policies on real architectures.

- On a torchvision ResNet (BasicBlock, one block per stage: resnet18's layout at a size that trains
  fast), after apply and several optimizer steps in train mode, every frozen parameter and every
  held normalization layer's statistics are bit-for-bit unchanged, every parameter with a non-zero
  gradient moved, and requires_grad is what the policy resolves to.
- Applying twice equals applying once; the optimizer's groups partition the parameters exactly.
- On a tied-embedding transformers model, apply either succeeds with one decision per tensor or
  raises FP205 exactly when the policy splits a tied tensor, leaving everything unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch import nn

torchvision = pytest.importorskip("torchvision")

from model_factories import tiny_bert_config  # noqa: E402

import freezepolicy as fp  # noqa: E402
from freezepolicy.runtime import norm  # noqa: E402
from freezepolicy.runtime.rates import MARKER  # noqa: E402

RESNET_SELECTORS = [
    "*",
    "conv1",
    "bn1",
    "fc",
    "layer1",
    "layer2..3",
    "layer4",
    "layer{1,4}.0.bn2",
    "downsample",
    "bias",
    "weight",
    "^layer3.0.conv*",
    "**.bn1.weight",
    "type:BatchNorm2d",
    "type:BasicBlock",
    "type:Conv2d",
    # Counted from the end, per parent; by tensor shape (issue 13).
    "layer4.-1",
    "-1.bn1",
    "ndim<2",
    "ndim>=4",
]
# Around the two tied pairs of BertForMaskedLM: word_embeddings.weight = cls.predictions.decoder
# .weight (an Embedding and a Linear) and cls.predictions.bias = cls.predictions.decoder.bias.
BERT_SELECTORS = [
    "*",
    "bert",
    "word_embeddings",
    "cls",
    "cls.predictions.decoder",
    "cls.predictions.bias",
    "decoder.bias",
    "encoder.layer.1",
    "bias",
    "type:Embedding",
    "type:Linear",
]
ACTIONS = [
    "freeze",
    "unfreeze",
    "lr 0 for",
    "lr 0.1x for",
    "lr 3e-3 for",
    "decay 0 for",
    "decay 0.5x for",
    "stats update for",
    "stats freeze for",
]
WHEN = ["", "", " at epoch 1", " at epoch 2", " at step 3"]
WHEN += [" when val_loss stops decreasing for 1 evaluation", " warmup 2 steps"]
#: A layer decay: the action's words around the selectors (the stack is ResNet's stages).
LAYER_DECAY = "lr decay 0.5 per layer from"


def _statement(action: str, include: list[str], exclude: list[str], when: str) -> str:
    if when.startswith(" warmup") and action not in ("unfreeze", "lr 0.1x for", LAYER_DECAY):
        when = ""
    if action == LAYER_DECAY:
        head = f"{action} {include[0]} down layer{{1..4}}"
        head += f" to {include[1]}" if len(include) > 1 else ""
    else:
        head = f"{action} {', '.join(include)}"
    return head + (f" except {', '.join(exclude)}" if exclude else "") + when


def statements(selectors: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        _statement,
        st.sampled_from(ACTIONS + ([LAYER_DECAY] if "ndim<2" in selectors else [])),
        st.lists(st.sampled_from(selectors), min_size=1, max_size=2, unique=True),
        st.lists(st.sampled_from(selectors), max_size=1),
        st.sampled_from(WHEN),
    )


def policies(selectors: list[str]) -> st.SearchStrategy[str]:
    return st.lists(statements(selectors), min_size=1, max_size=5).map("\n".join)


MOMENTS = st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 4]))
#: With whether the `when` statements' first group has taken effect.
RESNET_MOMENTS = st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 4]), st.booleans())


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4)


X = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 3])


def state_of(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "held": [norm.is_held(m) for m in model.modules()],
        "hooks": [len(m._forward_pre_hooks) for m in model.modules()],
        "groups": [
            (
                [id(p) for p in g["params"]],
                {k: v for k, v in g.items() if k != "params"},
            )
            for g in opt.param_groups
        ],
        "state": sorted(id(p) for p in opt.state),
    }


# Generated policies legitimately select nothing or override themselves (FP201, FP202, ...):
# the warnings are an incidental outcome here, asserted in test_policy_warnings.py.
@pytest.mark.filterwarnings("ignore::freezepolicy.PolicyWarning")
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=policies(RESNET_SELECTORS),
    moment=RESNET_MOMENTS,
    optimizer=st.sampled_from(["adamw-groups", "sgd-groups", "adamw-user"]),
)
def test_frozen_stays_bit_for_bit_and_trainable_moves(resnet, text, moment, optimizer):
    model = copy.deepcopy(resnet)
    policy = fp.parse(text)
    epoch, step, plateau = moment
    # The `when` statements' groups took effect at the start (or none has).
    fired = {i: [(0, 0)] for i, s in enumerate(policy.statements) if s.condition and plateau}
    if optimizer == "adamw-user":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    else:
        groups = fp.param_groups(model, policy, lr=1e-2, weight_decay=0.1)
        opt = (
            torch.optim.AdamW(groups)
            if optimizer == "adamw-groups"
            else torch.optim.SGD(groups, momentum=0.9)
        )

    def train(steps: int) -> None:
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X), Y)
            if loss.requires_grad:
                loss.backward()
            opt.step()

    fp.apply_policy(model, policy, opt)  # the start of training: state at (0, 0) ...
    train(1)  # ... so tensors trainable then carry optimizer state into the later moment
    report = fp.apply_policy(model, policy, opt, epoch=epoch, step=step, fired=fired)

    # requires_grad is what the policy resolves to; untouched tensors stay trainable (as built).
    decisions = policy.resolve(
        [n for n, _ in model.named_parameters()],
        epoch=epoch,
        step=step,
        module_types=_module_types(model),
        shapes={n: tuple(p.shape) for n, p in model.named_parameters()},
        fired=fired,
    )
    for name, p in model.named_parameters():
        d = decisions[name]
        assert p.requires_grad is (True if d.trainable is None else d.trainable), name

    # Applying again changes nothing.
    once = state_of(model, opt)
    again = fp.apply_policy(model, policy, opt, epoch=epoch, step=step, fired=fired)
    assert not again.changed
    assert state_of(model, opt) == once

    # Groups partition the parameters exactly.
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters())
    assert all(MARKER in g for g in opt.param_groups)

    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    before = {n: p.detach().clone() for n, p in params.items()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    held = set(report.held_norm)
    event(f"frozen: {'none' if not report.frozen else 'all' if not report.trainable else 'some'}")
    event(f"normalization layers held: {'some' if held else 'none'}")
    train(2)

    for name, p in params.items():
        if not p.requires_grad:
            assert torch.equal(before[name], p), f"frozen {name} moved"
            assert p.grad is None and p not in opt.state
        else:
            assert p.grad is not None, name
            if optimizer != "sgd-groups" and bool(p.grad.ne(0).any()):
                # Adam's step is about lr in size whatever the gradient's: it must show.
                assert not torch.equal(before[name], p), f"trainable {name} did not move"
    for name, module in modules.items():
        if not norm.has_running_stats(module):
            continue
        moved = module.num_batches_tracked.item() != buffers[f"{name}.num_batches_tracked"].item()
        if name in held:
            assert not moved and not module.training
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                assert torch.equal(getattr(module, b), buffers[f"{name}.{b}"]), (name, b)
        else:
            assert moved, f"{name} is not held but its statistics did not update"


def _module_types(model: nn.Module) -> dict[str, set[str]]:
    """Independent of freezepolicy.runtime.modelinfo: class names (with bases) of every
    enclosing module."""
    classes = {
        path: {c.__name__ for c in type(m).__mro__ if c is not object}
        for path, m in model.named_modules()
    }
    out: dict[str, set[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        out[name] = set().union(
            *(classes.get(".".join(parts[:i]), set()) for i in range(len(parts)))
        )
    return out


# --- tied tensors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm():
    transformers = pytest.importorskip("transformers")
    config = tiny_bert_config(max_position_embeddings=32)
    return transformers.BertForMaskedLM(config)


def _splits_a_tied_tensor(policy: fp.Policy, model: nn.Module) -> bool:
    """Independent reference: at some moment, two names of one tensor get different values for
    one setting (a name no statement decides has no opinion)."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    by_tensor: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(p), []).append(n)
    tied = [g for g in by_tensor.values() if len(g) > 1]
    types = _module_types_all(model)
    # `when` statements take effect at moments no one knows: any of them, all at one moment
    # (of the moments below) that is no later than the moment looked at.
    conditional = [i for i, s in enumerate(policy.statements) if s.condition is not None]
    moments = [(e, s) for e in (0, 1, 2) for s in (0, 3)]
    scenarios: list[tuple[int, int, dict]] = [(e, s, {}) for e, s in moments]
    for chosen in range(1, 2 ** len(conditional)):
        subset = [i for b, i in enumerate(conditional) if chosen >> b & 1]
        for f in moments:
            for e, s in moments:
                if f[0] <= e and f[1] <= s:
                    scenarios.append((e, s, {i: [f] for i in subset}))
    for epoch, step, fired in scenarios:
        decisions = policy.resolve(names, epoch=epoch, step=step, module_types=types, fired=fired)
        for group in tied:
            for setting in ("trainable", "lr", "weight_decay", "stats"):
                values = {getattr(decisions[n], setting) for n in group} - {None}
                if len(values) > 1:
                    return True
    return False


def _module_types_all(model: nn.Module) -> dict[str, set[str]]:
    classes = {
        path: {c.__name__ for c in type(m).__mro__ if c is not object}
        for path, m in model.named_modules(remove_duplicate=False)
    }
    out: dict[str, set[str]] = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        parts = name.split(".")
        out[name] = set().union(
            *(classes.get(".".join(parts[:i]), set()) for i in range(len(parts)))
        )
    return out


# As above: generated policies may warn (FP201, FP202, ...), which is not what this checks.
@pytest.mark.filterwarnings("ignore::freezepolicy.PolicyWarning")
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=policies(BERT_SELECTORS), moment=MOMENTS)
@example(text="freeze word_embeddings\nunfreeze cls at epoch 2", moment=(0, 0))
@example(text="freeze *\nlr 0.1x for cls, bert", moment=(1, 4))
def test_tied_tensors_get_one_decision_or_an_error_that_changes_nothing(mlm, text, moment):
    model = mlm
    policy = fp.parse(text)
    epoch, step = moment
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.requires_grad_(True)  # as built; other examples ran on this model before
    before = (
        [p.requires_grad for p in model.parameters()],
        [len(g["params"]) for g in opt.param_groups],
    )
    if _splits_a_tied_tensor(policy, model):
        with pytest.raises(fp.PolicyResolveError) as info:
            fp.apply_policy(model, policy, opt, epoch=epoch, step=step)
        assert info.value.code == "FP205"
        event("splits a tied tensor: FP205")
        after = (
            [p.requires_grad for p in model.parameters()],
            [len(g["params"]) for g in opt.param_groups],
        )
        assert after == before
        with pytest.raises(fp.PolicyResolveError):
            fp.param_groups(model, policy, lr=0.1, weight_decay=0.1)
        return
    event("tied tensors decided consistently")
    report = fp.apply_policy(model, policy, opt, epoch=epoch, step=step)
    groups = fp.param_groups(model, policy, lr=0.1, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # tied tensors once
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(ids)
    assert len(report.trainable) + len(report.frozen) == len(list(model.parameters()))
    # A tied tensor follows whichever of its names the policy decided.
    decisions = policy.resolve(
        [n for n, _ in model.named_parameters(remove_duplicate=False)],
        epoch=epoch,
        step=step,
        module_types=_module_types_all(model),
    )
    for name, p in model.named_parameters(remove_duplicate=False):
        d = decisions[name]
        if d.trainable is not None:
            assert p.requires_grad is d.trainable, name
