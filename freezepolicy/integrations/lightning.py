"""A policy in Lightning 2.x (`lightning.pytorch`): a callback.

```python
from freezepolicy.integrations.lightning import FreezePolicyCallback

trainer = Trainer(max_epochs=10, callbacks=[FreezePolicyCallback("finetune.freeze")])
trainer.fit(model, datamodule=data)                  # or ckpt_path="last" to resume
```

The callback is a thin adapter over the loop helper `FreezeScheduler` (integrations/loop.py),
driven by the Trainer's own counters (`trainer.current_epoch`, `trainer.global_step`, which is the
number of optimizer steps taken), applied to the LightningModule, the optimizer its
`configure_optimizers` returned and the learning-rate schedulers Lightning holds for it:

- `on_train_start`: the first apply, at the moment training starts (epoch 0, step 0, or the
  moment a resumed checkpoint was saved at, once Lightning has restored its loops). The
  optimizer's groups are split into the policy's groups here when needed, and torch's schedulers
  follow the split.
- `on_train_epoch_start`: at the new epoch (`at epoch N` statements).
- `on_train_batch_end`: after every optimizer step, past Lightning's own scheduler step (`at step
  N` statements, warm-ups); batches that only accumulate gradients change nothing.

Resuming (`trainer.fit(..., ckpt_path=...)`): the callback's state (the position on the policy's
timeline, the steps per epoch it was bound with and a digest of the policy) rides in the
checkpoint. Lightning loads the checkpoint's optimizer state right after `on_fit_start`, before
the loops know where they are; so at `on_fit_start` of a resumed run the callback applies the
policy at the saved position, which gives the optimizer the checkpoint's group layout, and
`load_state_dict` fits. docs/lightning.md has the details and the Lightning code this replaces.
"""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from ..lang.policy import Policy
from ..runtime.binding import as_policy
from ..runtime.coverage import require_covered
from ..runtime.report import ApplyReport
from .loop import FreezeScheduler

__all__ = ["FreezePolicyCallback", "steps_per_epoch"]


def steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per epoch as Lightning takes them: training batches per epoch (after
    `limit_train_batches`; per process under DDP) over `accumulate_grad_batches`, rounded up,
    since Lightning also steps on an epoch's last batch. None when the training dataloader has
    no length. Known from `on_train_start` on."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) or batches < 1:  # float("inf"): an iterable dataset
        return None
    accumulation = max(int(trainer.accumulate_grad_batches), 1)
    return max(math.ceil(batches / accumulation), 1)


class FreezePolicyCallback(Callback):
    """Applies a freeze policy during `Trainer.fit`, by epoch and by optimizer step.

    Build the optimizer in `configure_optimizers` over every parameter the policy trains at some
    moment (frozen ones included: a frozen tensor has no gradient, so it gets no update and no
    optimizer state), ideally with `freezepolicy.param_groups(self, policy, lr=...)`; any other
    optimizer is split into the policy's groups at the start, and torch's own schedulers follow.
    An optimizer that lacks a tensor the policy trains is refused at the start.

    `strict=True` makes a selector that selects nothing an error. `report` is the last
    ApplyReport, `history` one report per phase (the first apply, then each one that changed which
    tensors train). One optimizer per LightningModule; manual optimization works too, with
    `at step N` counting `trainer.global_step`.
    """

    def __init__(self, policy: Policy | str | os.PathLike[str], *, strict: bool = False) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"FreezePolicyCallback: strict must be True or False, not {strict!r}")
        self.strict = strict
        # Loaded here, so a bad policy file fails when the Trainer is set up, not mid-run.
        self.policy = as_policy(policy)
        #: The loop helper doing the work (a FreezeScheduler), made when training starts: it
        #: needs the optimizer.
        self.freeze_scheduler: FreezeScheduler | None = None
        #: State from a checkpoint, until `on_fit_start` applies it.
        self._loaded: dict[str, Any] | None = None

    @property
    def report(self) -> ApplyReport | None:
        return None if self.freeze_scheduler is None else self.freeze_scheduler.report

    @property
    def history(self) -> list[ApplyReport]:
        return [] if self.freeze_scheduler is None else self.freeze_scheduler.history

    @property
    def steps_per_epoch(self) -> int | None:
        helper = self.freeze_scheduler
        return None if helper is None else helper.steps_per_epoch

    # --- Trainer events ----------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.freeze_scheduler = None
        state, self._loaded = self._loaded, None
        if state:
            # Resuming: the checkpoint's optimizer state is loaded right after this hook, into
            # groups that must be laid out as when it was saved. Applying at the saved position,
            # with the steps per epoch of then, makes them so (and its schedulers follow).
            self.freeze_scheduler = self._start(trainer, pl_module, state.get("steps_per_epoch"))
            self.freeze_scheduler.load_state_dict(state)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The training dataloader, and after a resume the loops' counters, are known from here.
        per_epoch = steps_per_epoch(trainer)
        helper = self.freeze_scheduler
        if helper is None or helper.steps_per_epoch != per_epoch:
            self.freeze_scheduler = self._start(trainer, pl_module, per_epoch)
        self._apply_at(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply_at(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        helper = self._running()
        # One step() per optimizer step: none while gradients accumulate, several when a
        # manual-optimization step ran more than one.
        while helper.global_step < trainer.global_step:
            helper.step()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.freeze_scheduler is not None:
            self.observe_metrics(trainer)

    def observe_metrics(self, trainer: pl.Trainer) -> None:
        """Feed the metrics of a validation run to the policy's metric-driven statements
        (`unfreeze layer3 when val_loss stops decreasing for 2 evaluations`): one observation
        of every number in `trainer.callback_metrics` (what `self.log` logged: `val_loss`,
        `val/acc`, ...). A group whose plateau this completes takes effect at the next epoch
        start or optimizer step.

        Every rank must make the same transitions at the same moment, or their models would
        train different tensors. The values are therefore taken from rank 0 and broadcast
        (`trainer.strategy.broadcast`, a no-op in one process): a metric logged without
        `sync_dist=True` still decides the same everywhere, from rank 0's numbers (log it with
        `sync_dist=True` to decide from the mean over all ranks). The observations and the
        moments of the transitions ride in every checkpoint with `state_dict`.
        """
        helper = self.freeze_scheduler
        if helper is None or not helper.watch.state:
            return
        values = {}
        for name, value in trainer.callback_metrics.items():
            try:
                values[name] = float(value)  # one-element tensors and numbers alike
            except (TypeError, ValueError, RuntimeError):
                continue  # a tensor of several elements is not one observation
        helper.observe(trainer.strategy.broadcast(values, src=0))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A watched metric that was never logged is a warning, not silence (FP231).
        if self.freeze_scheduler is not None:
            self.freeze_scheduler.finish()

    # --- checkpoint --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position on the policy's timeline and the steps per epoch it is bound with, saved
        in every Lightning checkpoint under this callback's state key."""
        helper = self.freeze_scheduler
        if helper is None:  # not started: what was loaded, if anything
            return dict(self._loaded or {})
        return {**helper.state_dict(), "steps_per_epoch": helper.steps_per_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called before the optimizer exists; applied at on_fit_start.
        self._loaded = dict(state_dict)

    # --- helpers -------------------------------------------------------------------------------

    def _start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, per_epoch: int | None
    ) -> FreezeScheduler:
        """The loop helper for this run, applied once at epoch 0, step 0, after checking that
        the optimizer can take the policy."""
        optimizers = trainer.optimizers
        if len(optimizers) > 1:
            raise ValueError(
                f"{self.policy.source}: FreezePolicyCallback applies a policy to one optimizer, "
                f"but configure_optimizers returned {len(optimizers)}"
            )
        optimizer = optimizers[0] if optimizers else None
        if optimizer is not None:
            require_covered(
                pl_module,
                self.policy,
                optimizer,
                per_epoch,
                optimizer_is="the optimizer from configure_optimizers",
                advice=". Build it over all parameters, frozen ones included, for instance with "
                "freezepolicy.param_groups(self, policy, lr=...), not only those with "
                "requires_grad",
            )
        # Every scheduler Lightning holds drives this optimizer (its only one); LambdaLR and the
        # like keep base rates of their own, which must follow the policy's rate changes.
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        return FreezeScheduler(
            pl_module,
            self.policy,
            optimizer,
            steps_per_epoch=per_epoch,
            scheduler=schedulers or None,
            strict=self.strict,
        )

    def _running(self) -> FreezeScheduler:
        if self.freeze_scheduler is None:
            raise RuntimeError("FreezePolicyCallback: training has not started (no on_train_start)")
        return self.freeze_scheduler

    def _apply_at(self, trainer: pl.Trainer) -> ApplyReport:
        """Apply at the Trainer's moment: its epoch, and its optimizer steps so far."""
        helper = self._running()
        helper.global_step = trainer.global_step
        return helper.start_epoch(trainer.current_epoch)

    def __repr__(self) -> str:
        return f"FreezePolicyCallback(policy={self.policy.source!r}, strict={self.strict})"
