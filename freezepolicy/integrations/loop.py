"""`FreezeScheduler`: a policy in an ordinary training loop, in two lines.

```python
fs = FreezeScheduler(model, "policies/mlp_two_phase.freeze", optimizer, steps_per_epoch=len(loader))
for epoch in range(epochs):
    fs.start_epoch(epoch)               # line 1
    for x, y in loader:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        fs.step()                       # line 2: after every optimizer step
```

It holds only a position on the timeline (epoch, step); every call is `apply_policy` at that
position, so the model's state is the stateless one of `apply_policy(..., epoch=, step=)`. Calls
where nothing changes take the apply fast path (a few microseconds).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..lang.api import load
from ..lang.policy import Policy
from ..runtime.apply import apply_policy
from ..runtime.report import ApplyReport
from ..runtime.wrappers import unwrap_optimizer, unwrap_schedulers


class FreezeScheduler:
    """Applies `policy` to `model` (and `optimizer`) at epoch starts and after optimizer steps.

    Like a learning-rate scheduler, call `step()` after each `optimizer.step()`; also call
    `start_epoch(epoch)` at the start of each epoch. `steps_per_epoch` (usually `len(loader)`)
    places `at epoch` and `at step` statements on one clock and lets warm-ups count in steps.
    `scheduler` is the learning-rate scheduler (or a list of them) driving `optimizer`, when it
    keeps base rates of its own (LambdaLR and the Hugging Face schedules), so policy rate
    changes reach it. The policy is applied once at construction, at (`epoch`, `step`).
    """

    def __init__(
        self,
        model: nn.Module,
        policy: Policy | str | os.PathLike[str],
        optimizer: Optimizer | None = None,
        *,
        steps_per_epoch: int | None = None,
        scheduler: Any = None,
        strict: bool = False,
        epoch: int = 0,
        step: int = 0,
    ) -> None:
        # The torch objects inside framework wrappers (accelerate's, Lightning's): wrappers.py.
        optimizer, scheduler = unwrap_optimizer(optimizer), unwrap_schedulers(scheduler)
        self.model = model
        self.policy = policy if isinstance(policy, Policy) else load(policy)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.steps_per_epoch = steps_per_epoch
        self.strict = strict
        self.epoch = epoch
        self.global_step = step
        # The policy over no names: it tells which statements are in force and how far warm-ups
        # have come at a moment, which is all that decides whether a step changes anything.
        self._timeline = self.policy.bind(())
        self._state: tuple | None = None
        #: One report per phase, oldest first: the first apply, then each apply that changed
        #: which parameters train (rate changes, such as a warm-up's, are not new phases).
        self.history: list[ApplyReport] = []
        self.report = self._apply()

    def start_epoch(self, epoch: int) -> ApplyReport:
        """Call at the start of each epoch (0-based) with its number."""
        if epoch < 0:
            raise ValueError(f"epoch must be 0 or more, got {epoch}")
        self.epoch = epoch
        return self._apply()

    def step(self) -> ApplyReport:
        """Call after each `optimizer.step()`: counts the step and applies the policy there.

        Between events of the policy (and outside warm-ups) nothing can change, so the apply,
        and its check that the model's parameters are the same objects (a walk over them, 0.1 s
        for a model with 100k tensors), is skipped: the step costs microseconds whatever the
        model's size; the report returned is then the one of the last apply. `start_epoch` always
        applies in full.
        """
        self.global_step += 1
        if self._state_now() == self._state:
            return self.report
        return self._apply()

    def _state_now(self) -> tuple:
        return self._timeline.state_key(self.epoch, self.global_step, self.steps_per_epoch)

    def _apply(self) -> ApplyReport:
        state = self._state_now()
        report = apply_policy(
            self.model,
            self.policy,
            self.optimizer,
            epoch=self.epoch,
            step=self.global_step,
            steps_per_epoch=self.steps_per_epoch,
            strict=self.strict,
            scheduler=self.scheduler,
        )
        if not self.history or report.trainable != self.history[-1].trainable:
            self.history.append(report)
        self.report = report
        self._state = state
        return report

    def state_dict(self) -> dict[str, Any]:
        """The position on the timeline, to save in a checkpoint beside the model and optimizer,
        with a digest of the policy's canonical text to notice a policy edited in between."""
        return {
            "epoch": self.epoch,
            "step": self.global_step,
            "policy": self.policy.source,
            "policy_sha256": _digest(self.policy),
        }

    def load_state_dict(self, state: dict[str, Any]) -> ApplyReport:
        """Move to a saved position and apply the policy there (after loading the model and
        optimizer state dicts): the model then has exactly the state of an uninterrupted run.

        `history` starts again with the report at the loaded position. A policy whose statements
        changed since the checkpoint is applied as it is now, with a warning: the run can no
        longer match the one that was interrupted (and the optimizer's groups may not either).
        """
        saved = state.get("policy_sha256")
        if saved is not None and saved != _digest(self.policy):
            warnings.warn(
                f"the policy {self.policy.source} changed since this checkpoint was saved "
                f"(from {state.get('policy')}); resuming with the policy as it is now",
                stacklevel=2,
            )
        self.epoch = int(state["epoch"])
        self.global_step = int(state["step"])
        self.history = []
        return self._apply()

    def __repr__(self) -> str:
        return (
            f"FreezeScheduler(policy={self.policy.source!r}, epoch={self.epoch}, "
            f"step={self.global_step})"
        )


def _digest(policy: Policy) -> str:
    """Digest of the statements (canonical text without comments): layout and comments may
    change between runs, meaning may not."""
    text = "\n".join(str(st) for st in policy.statements)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
