"""Tiny models and a twin-training helper for the tests of `cache_frozen` (tests/test_cache*.py).

Every exactness test trains two copies of one model side by side from the same weights, on the
same batches with the same seeds: the model itself (the reference, uncached) and the same model
wrapped by `cache_frozen`, and compares losses, outputs and final parameters and buffers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import freezepolicy


class Block(nn.Module):
    """A ResNet basic block: conv-bn-relu-conv-bn, `out += identity` in place, a ReLU module
    called twice (as torchvision's BasicBlock does), and a downsample when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            if cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """stem -> layer1 -> layer2 -> pool -> fc, with BatchNorm and skip connections."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = Block(8, 8)
        self.layer2 = Block(8, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DropoutMLP(nn.Module):
    """fc1 -> relu -> drop -> fc2 -> relu -> head_drop -> head: dropout inside the frozen part
    (`drop`) and on the head's input (`head_drop`)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(12, 12)
        self.head_drop = nn.Dropout(p)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(self.drop(torch.relu(self.fc1(x)))))
        return self.head(self.head_drop(h))


class NoisyMLP(nn.Module):
    """A frozen part that adds noise of its own (not dropout): never cacheable after it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = h + 0.1 * torch.randn_like(h)
        return self.head(torch.relu(self.fc2(h)))


def tiny_bert(layers: int = 3) -> nn.Module:
    from model_factories import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        tiny_bert_config(num_hidden_layers=layers, num_labels=2, max_position_embeddings=32)
    )


def images(n: int, seed: int = 1, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)


def tokens(n: int, seed: int = 1, length: int = 12) -> dict[str, torch.Tensor]:
    """Token batches with padding: each sample's mask ends with zeros of its own length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i, pad in enumerate(torch.randint(0, length // 2, (n,), generator=g).tolist()):
        if pad:
            mask[i, -pad:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,))}


@dataclass
class Run:
    """What one side of a twin run saw."""

    losses: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)


def eval_frozen_modules(model: nn.Module) -> None:
    """The hand-written counterpart of `frozen_dropout="eval"`: modules whose parameters are all
    frozen run in eval mode (no dropout there), the rest as the model is."""
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()


def twins(model: nn.Module, **cache: Any) -> tuple[nn.Module, freezepolicy.CachedModule]:
    """(the model, a cached copy of it): same weights, buffers and modes."""
    other = copy.deepcopy(model)
    return model, freezepolicy.cache_frozen(other, **cache)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    loss_of: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]],
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)  # the same random draws (dropout of the live part) on both sides
    loss, out = loss_of(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach(), out.detach()


def classify(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    out = model(x)
    return nn.functional.cross_entropy(out, y), out


def bert_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**batch)
    return out.loss, out.logits


def train_twins(
    ref: nn.Module,
    cached: nn.Module,
    epochs: Iterable[Sequence[Any]],
    loss_of: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]] = classify,
    *,
    before_epoch: Callable[[int], None] | None = None,
    lr: float = 1e-2,
) -> tuple[Run, Run]:
    """Train both with Adam over the same parameters' twins (an optimizer over all parameters,
    as `param_groups` builds it: frozen ones simply have no gradient)."""
    opt_ref = torch.optim.Adam(ref.parameters(), lr=lr)
    opt_cached = torch.optim.Adam(cached.parameters(), lr=lr)
    a, b = Run(), Run()
    seed = 0
    for e, batches in enumerate(epochs):
        if before_epoch is not None:
            before_epoch(e)
        for batch in batches:
            seed += 1
            for run, model, opt in ((a, ref, opt_ref), (b, cached, opt_cached)):
                loss, out = train_step(model, opt, batch, loss_of, seed)
                run.losses.append(loss)
                run.outputs.append(out)
    return a, b


def assert_same_state(a: nn.Module, b: nn.Module, exact: bool = True) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=RTOL, atol=ATOL, msg=k)


def assert_same_runs(a: Run, b: Run, exact: bool = True) -> None:
    assert len(a.losses) == len(b.losses)
    for x, y in zip(a.losses + a.outputs, b.losses + b.outputs, strict=True):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL)


#: When a sample's frozen value was computed in a batch of another size than the one it is used
#: in, float32 kernels that choose their algorithm by batch size may round differently (the
#: probe measured 1.4e-6 on resnet18): values agree to a few ulps, not bit for bit.
RTOL, ATOL = 1e-5, 1e-6


def policy_apply(model: nn.Module, text: str, epoch: int = 0) -> None:
    freezepolicy.apply_policy(model, freezepolicy.parse(text), epoch=epoch)
