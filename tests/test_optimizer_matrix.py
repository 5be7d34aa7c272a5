"""Every optimizer of `torch.optim`, in every variant that runs on CPU (`foreach`, `fused`),
through the README's two-phase recipe: `param_groups` + `FreezeScheduler`, across a freeze, an
unfreeze and a re-freeze. Frozen tensors must stay bit-for-bit unchanged while frozen and hold
no optimizer state; trainable ones must train; nothing may crash.

The optimizers are found by looking at `torch.optim` itself, so one added by a later torch is
tested (and fails here until it is given a model it can train).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import freezepolicy as fp

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: out trains from the start; everything from epoch 1; fc2 is frozen again at epoch 2. fc2 is not
#: the first tensor: LBFGS keeps its history under its first tensor.
POLICY = fp.parse(
    "freeze *\nunfreeze out\nunfreeze * at epoch 1\nfreeze fc2 at epoch 2\n", "two_phase.freeze"
)
EPOCHS, STEPS = 4, 2
#: Which of fc1, fc2, out train in each epoch.
TRAINS = [{"out"}, {"fc1", "fc2", "out"}, {"fc1", "out"}, {"fc1", "out"}]


class MLP(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5, bias=bias)
        self.fc2 = nn.Linear(5, 5, bias=bias)
        self.out = nn.Linear(5, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class Embeddings(nn.Module):
    """Sparse gradients only, for SparseAdam."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Embedding(8, 4, sparse=True)
        self.fc2 = nn.Embedding(8, 4, sparse=True)
        self.out = nn.Embedding(8, 4, sparse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x) * torch.tanh(self.fc2(x)) + self.out(x)


X = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
IDS = torch.tensor([0, 3, 5, 6])

#: Per optimizer class: the model it can train, its input, and settings that give it state.
MODELS: dict[str, tuple[Callable[[], nn.Module], torch.Tensor, dict[str, Any]]] = {
    "SGD": (MLP, X, {"momentum": 0.9}),
    "Muon": (lambda: MLP(bias=False), X, {}),  # 2-D parameters only
    "SparseAdam": (Embeddings, IDS, {}),
}


def optimizer_classes() -> list[type[torch.optim.Optimizer]]:
    found = []
    for name in torch.optim.__all__:
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            if cls is not torch.optim.Optimizer:
                found.append(cls)
    return found


def variants() -> list[Any]:
    out = []
    for cls in optimizer_classes():
        accepts = inspect.signature(cls.__init__).parameters
        options: list[dict[str, Any]] = [{}]
        if "foreach" in accepts:
            options = [{"foreach": False}, {"foreach": True}]
        if "fused" in accepts:
            options.append({"fused": True})
        for option in options:
            label = "-".join([cls.__name__, *(k for k, v in option.items() if v)])
            out.append(pytest.param(cls, option, id=label))
    return out


def test_the_table_knows_every_torch_optimizer() -> None:
    names = {cls.__name__ for cls in optimizer_classes()}
    # The ones the recipe below treats specially must still exist (a rename would hide them).
    assert {"SGD", "LBFGS", "Muon", "SparseAdam", "Adagrad", "AdamW"} <= names
    assert len(names) >= 15, names


def run_recipe(cls: type[torch.optim.Optimizer], option: dict[str, Any]) -> list[str]:
    """The README recipe; returns the problems seen (none when all is well)."""
    make, inputs, settings = MODELS.get(cls.__name__, (MLP, X, {}))
    torch.manual_seed(0)
    model = make()
    groups = fp.param_groups(model, POLICY, lr=0.05, steps_per_epoch=STEPS)
    opt = cls(groups, **settings, **option)
    fs = fp.FreezeScheduler(model, POLICY, opt, steps_per_epoch=STEPS)
    params = dict(model.named_parameters())
    problems: list[str] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(inputs).square().mean()
        loss.backward()
        return loss

    for epoch in range(EPOCHS):
        fs.start_epoch(epoch)
        start = {n: p.detach().clone() for n, p in params.items()}
        for _ in range(STEPS):
            before = {n: p.detach().clone() for n, p in params.items()}
            closure()
            opt.step(closure)
            for n, p in params.items():
                if n.split(".")[0] in TRAINS[epoch]:
                    continue
                if not torch.equal(before[n], p):
                    problems.append(f"epoch {epoch}: frozen {n} moved")
                if p.requires_grad:
                    problems.append(f"epoch {epoch}: frozen {n} requires grad")
                # LBFGS keeps one state, the history of its whole list, under its first tensor.
                if cls is not torch.optim.LBFGS and opt.state.get(p):
                    problems.append(f"epoch {epoch}: frozen {n} holds optimizer state")
            fs.step()
        for n, p in params.items():
            if n.split(".")[0] in TRAINS[epoch] and torch.equal(start[n], p):
                problems.append(f"epoch {epoch}: trainable {n} did not move")
        if any(not torch.isfinite(p).all() for p in params.values()):
            problems.append(f"epoch {epoch}: not finite")
    return problems


@pytest.mark.parametrize(("cls", "option"), variants())
def test_two_phase_recipe_with_every_optimizer(
    cls: type[torch.optim.Optimizer], option: dict[str, Any]
) -> None:
    assert run_recipe(cls, option) == []


def test_fused_sgd_trains_an_unfrozen_tensor_as_the_other_implementations_do() -> None:
    """The zero momentum buffer a tensor gets when it is unfrozen into a fused SGD group whose
    other tensors have trained is torch's own first step (buffer = gradient, dampening 0)."""
    finals = []
    for option in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        torch.manual_seed(0)
        model = MLP()
        opt = torch.optim.SGD(
            fp.param_groups(model, POLICY, lr=0.05), momentum=0.9, nesterov=True, **option
        )
        fs = fp.FreezeScheduler(model, POLICY, opt, steps_per_epoch=STEPS)
        for epoch in range(EPOCHS):
            fs.start_epoch(epoch)
            for _ in range(STEPS):
                opt.zero_grad()
                model(X).square().mean().backward()
                opt.step()
                fs.step()
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    for other in finals[1:]:
        torch.testing.assert_close(other, finals[0], rtol=1e-5, atol=1e-6)


def test_lbfgs_keeps_a_refrozen_tensor_exactly_where_it_was() -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.LBFGS(fp.param_groups(model, POLICY, lr=0.5), history_size=5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(X).square().mean()
        loss.backward()
        return loss

    for epoch in (1, 2):  # everything trains, then fc2 is frozen again
        fp.apply_policy(model, POLICY, opt, epoch=epoch)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(3):
            opt.step(closure)
    assert opt.state[model.fc1.weight]["n_iter"] > 0  # the history built up again
    assert torch.equal(model.fc2.weight, before["fc2.weight"])
    assert not torch.equal(model.fc1.weight, before["fc1.weight"])


def test_lbfgs_refuses_a_policy_that_splits_its_one_group_before_any_change() -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5)
    layout = [list(g["params"]) for g in opt.param_groups]
    with pytest.raises(ValueError, match="LBFGS has a single parameter group"):
        fp.apply_policy(model, fp.parse("freeze fc1\nlr 0.1x for out"), opt)
    assert [list(g["params"]) for g in opt.param_groups] == layout
    assert all(p.requires_grad for p in model.parameters())
    # One group for all (a freeze-only policy) is fine.
    fp.apply_policy(model, fp.parse("freeze fc1"), opt)
    assert not model.fc1.weight.requires_grad and len(opt.param_groups) == 1
