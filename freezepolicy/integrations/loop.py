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

It holds a position on the timeline (epoch, step) and, for a policy with metric-driven
statements (`unfreeze layer3 when val_loss stops decreasing for 2 evaluations`), what it was
shown of the metrics (`observe`) and the moments the groups of such statements took effect
(`fired`); every call is `apply_policy` at that position with those moments, so the model's state
is the stateless one of `apply_policy(..., epoch=, step=, fired=)`. Calls where nothing changes
take the apply fast path (a few microseconds).

```python
for epoch in range(epochs):
    fs.start_epoch(epoch)
    ...                                  # train, fs.step() after each optimizer step
    fs.observe({"val_loss": evaluate(model)})   # takes effect at the next call
fs.finish()                              # warns about metrics never observed
```
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

from ..lang.conditions import Fired, MetricWatch
from ..lang.errors import Diagnostic
from ..lang.policy import Policy
from ..runtime.apply import apply_policy
from ..runtime.arguments import (
    as_schedulers,
    check_count,
    check_flag,
    check_model,
    check_optimizer,
    check_steps_per_epoch,
    resolve_moment,
)
from ..runtime.binding import as_policy
from ..runtime.report import ApplyReport
from ..runtime.warn import warn, warn_never_observed
from ..runtime.wrappers import unwrap_optimizer, unwrap_schedulers


class FreezeScheduler:
    """Applies `policy` to `model` (and `optimizer`) at epoch starts and after optimizer steps.

    Like a learning-rate scheduler, call `step()` after each `optimizer.step()`; also call
    `start_epoch(epoch)` at the start of each epoch. `steps_per_epoch` (usually `len(loader)`)
    places `at epoch` and `at step` statements on one clock and lets warm-ups count in steps;
    with it, `step()` alone also moves to the next epoch after `steps_per_epoch` steps, and
    `start_epoch` checks that the epoch agrees with the steps taken.
    `scheduler` is the learning-rate scheduler (or a list of them) driving `optimizer`, when it
    keeps base rates of its own (LambdaLR and the Hugging Face schedules), so policy rate
    changes reach it. The policy is applied once at construction, at (`epoch`, `step`) (a
    missing one derived from the other with `steps_per_epoch`, else 0).

    The position changes only when its apply succeeds: a call that raises leaves the scheduler
    (and the model and optimizer) as they were.
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
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        where = "FreezeScheduler"
        # The torch objects inside framework wrappers (accelerate's, Lightning's): wrappers.py.
        optimizer, scheduler = unwrap_optimizer(optimizer), unwrap_schedulers(scheduler)
        self.model = check_model(model, where)
        self.optimizer = check_optimizer(optimizer, where)
        as_schedulers(scheduler, self.optimizer, where)
        self.scheduler = scheduler
        self.steps_per_epoch = check_steps_per_epoch(steps_per_epoch, where)
        self.strict = check_flag(strict, "strict", where)
        start = resolve_moment(epoch, step, self.steps_per_epoch, where)
        self.policy = as_policy(policy)
        self.epoch, self.global_step = start
        # The policy over no names: it tells which statements are in force and how far warm-ups
        # have come at a moment, which is all that decides whether a step changes anything.
        self._timeline = self.policy.bind(())
        self._state: tuple | None = None
        #: The metric-driven statements: observations, and when their groups took effect.
        self.watch = MetricWatch(self.policy.statements)
        #: One report per phase, oldest first: the first apply, then each apply that changed
        #: which parameters train (rate changes, such as a warm-up's, are not new phases).
        self.history: list[ApplyReport] = []
        self.report = self._apply(*start)

    def start_epoch(self, epoch: int) -> ApplyReport:
        """Call at the start of each epoch (0-based) with its number.

        With `steps_per_epoch`, epoch `e` must agree with the optimizer steps taken so far
        (`e * steps_per_epoch` up to `(e + 1) * steps_per_epoch`), else ValueError.
        """
        where = "FreezeScheduler.start_epoch"
        epoch = check_count(epoch, "epoch", where)
        return self._apply(*resolve_moment(epoch, self.global_step, self.steps_per_epoch, where))

    def step(self) -> ApplyReport:
        """Call after each `optimizer.step()`: counts the step and applies the policy there.

        With `steps_per_epoch`, the step that completes an epoch also moves to the next epoch,
        so `at epoch` statements take effect in a loop that never calls `start_epoch`.

        Between events of the policy (and outside warm-ups) nothing can change, so the apply,
        and its check that the model's parameters are the same objects (a walk over them, 0.1 s
        for a model with 100k tensors), is skipped: the step costs microseconds whatever the
        model's size; the report returned is then the one of the last apply. `start_epoch` always
        applies in full.
        """
        step = self.global_step + 1
        epoch = self.epoch
        if self.steps_per_epoch is not None:
            epoch = max(epoch, step // self.steps_per_epoch)
        if not self.watch.pending and self._state_at(epoch, step, self.watch.fired) == self._state:
            self.epoch, self.global_step = epoch, step
            return self.report
        return self._apply(epoch, step)

    @property
    def fired(self) -> dict[int, list[tuple[int, int]]]:
        """The moments (epoch, step) the groups of each metric-driven statement took effect, by
        the statement's index in `policy.statements` (what `apply_policy(fired=)` takes)."""
        return {i: list(moments) for i, moments in self.watch.fired}

    def observe(self, metrics: Mapping[str, Any]) -> None:
        """Take one observation of the metrics (a mapping of name to number: `{"val_loss":
        0.31}`; numpy and one-element torch values are fine), typically after each evaluation.

        Each `when METRIC stops decreasing/increasing for N evaluations` statement counts the
        observations of its metric that are not better than the best since it started (or
        since its last group took effect); at N in a row its next group takes effect, at the
        next `start_epoch()` or `step()`. Metrics no statement watches are ignored; a watched
        one that is not a number is a TypeError (and nothing is counted)."""
        self.watch.observe(metrics, "FreezeScheduler.observe")

    def finish(self) -> list[Diagnostic]:
        """Call once training is over: a PolicyWarning (FP231) for each metric-driven statement
        whose metric no `observe()` held (a misspelled or never-logged metric would otherwise
        leave its groups frozen in silence). Returns the diagnostics warned about."""
        return warn_never_observed(self.policy, self.watch)

    def _state_at(self, epoch: int, step: int, fired: Fired) -> tuple:
        return self._timeline.state_key(epoch, step, self.steps_per_epoch, fired)

    def _apply(
        self, epoch: int, step: int, *, restart: bool = False, take_pending: bool = True
    ) -> ApplyReport:
        # Groups whose plateau was observed since the last call take effect now.
        fired = self.watch.upcoming(epoch, step) if take_pending else self.watch.fired
        state = self._state_at(epoch, step, fired)
        report = apply_policy(
            self.model,
            self.policy,
            self.optimizer,
            epoch=epoch,
            step=step,
            steps_per_epoch=self.steps_per_epoch,
            strict=self.strict,
            scheduler=self.scheduler,
            fired=dict(fired),
        )
        # Only now, after the apply succeeded, does the position move.
        self.epoch, self.global_step = epoch, step
        if take_pending:
            self.watch.commit(fired)
        if restart:
            self.history = []
        if not self.history or report.trainable != self.history[-1].trainable:
            self.history.append(report)
        self.report = report
        self._state = state
        return report

    def state_dict(self) -> dict[str, Any]:
        """The position on the timeline, to save in a checkpoint beside the model and optimizer,
        with a digest of the policy's canonical text to notice a policy edited in between."""
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.global_step,
            "policy": self.policy.source,
            "policy_sha256": _digest(self.policy),
        }
        if self.watch.state:  # metric-driven statements: observations and moments fired
            state["metrics"] = self.watch.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> ApplyReport:
        """Move to a saved position and apply the policy there (after loading the model and
        optimizer state dicts): the model then has exactly the state of an uninterrupted run.

        The state is checked first: `epoch` and `step` must be whole numbers >= 0 that agree
        with `steps_per_epoch`; a bad state (or a failing apply) raises and leaves the scheduler
        where it was. `history` starts again with the report at the loaded position. A policy
        whose statements changed since the checkpoint is applied as it is now, with a
        PolicyWarning (FP215): the run can no longer match the one that was interrupted (and the
        optimizer's groups may not either).
        """
        where = "FreezeScheduler.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{where}: state must be a dict, not {type(state).__name__}")
        missing = [key for key in ("epoch", "step") if key not in state]
        if missing:
            raise ValueError(
                f"{where}: not a FreezeScheduler state (from FreezeScheduler.state_dict()): "
                f"no {' or '.join(repr(k) for k in missing)}"
            )
        moment = resolve_moment(
            check_count(state["epoch"], "the state's epoch", where),
            check_count(state["step"], "the state's step", where),
            self.steps_per_epoch,
            where,
        )
        saved = state.get("policy_sha256")
        changed = saved is not None and saved != _digest(self.policy)
        watch = MetricWatch(self.policy.statements)
        if self.watch.state and not changed:
            # Checked before anything changes; a policy edited since cannot take it.
            watch.load_state_dict(state.get("metrics") or {"conditions": []}, where)
        if changed:
            warn(
                Diagnostic(
                    "FP215",
                    f"the policy changed since this checkpoint was saved (from "
                    f"{state.get('policy')}); resuming with the policy as it is now",
                    self.policy.source,
                    severity="warning",
                )
            )
        before, self.watch = self.watch, watch
        try:
            # Groups pending in the checkpoint take effect at the next call, as they would have.
            return self._apply(*moment, restart=True, take_pending=False)
        except BaseException:
            self.watch = before
            raise

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
