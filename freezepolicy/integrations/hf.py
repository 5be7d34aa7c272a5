"""A policy in `transformers.Trainer`: a callback, and `attach` for runs that resume.

```python
trainer = Trainer(model=model, args=args, train_dataset=train,
                  callbacks=[FreezePolicyCallback("my.freeze")])
trainer.train()
```

or, for a run that may be resumed from a checkpoint (one line instead of the `callbacks=` entry):

```python
trainer = Trainer(model=model, args=args, train_dataset=train)
freezepolicy.integrations.hf.attach(trainer, "my.freeze")
trainer.train(resume_from_checkpoint=...)
```

The callback is a thin adapter over `apply_policy`: it applies the policy at `on_train_begin`, at
every `on_epoch_begin` and at every `on_step_end` (after the optimizer and scheduler have
stepped), at the moment given by the Trainer's own counters, to the optimizer and learning-rate
scheduler the Trainer created. Applies where nothing changes take the apply fast path.

Why `attach` exists: the Trainer loads a checkpoint's optimizer state before any callback runs,
into an optimizer it built itself (two groups: weight decay / no weight decay). A policy with
`lr` or `decay` statements splits those groups, so a checkpoint holds more groups than a freshly
built Trainer optimizer, and `load_state_dict` refuses it. `attach` makes the Trainer build its
optimizer with the policy's groups from the start, so checkpoints always load. docs/trainer.md
has the details.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..lang.conditions import MetricWatch
from ..lang.errors import Diagnostic
from ..lang.policy import Policy
from ..runtime.apply import apply_policy
from ..runtime.arguments import check_flag
from ..runtime.binding import as_policy, binding_for
from ..runtime.coverage import ever_trainable, require_covered
from ..runtime.report import ApplyReport
from ..runtime.schedulers import can_split_scheduler
from ..runtime.warn import warn, warn_never_observed

logger = logging.getLogger(__name__)

__all__ = ["FreezePolicyCallback", "attach", "steps_per_epoch"]

#: Where the callback keeps the state of metric-driven statements in the Trainer's state.
STATE_KEY = "freezepolicy"


def steps_per_epoch(train_dataloader: Any, args: TrainingArguments) -> int | None:
    """Optimizer steps per epoch, counted as the Trainer counts them (its
    `num_update_steps_per_epoch`): batches per epoch over gradient accumulation steps, rounded
    up. None when the dataloader has no length (an IterableDataset)."""
    try:
        batches = len(train_dataloader)
    except TypeError:
        return None
    accumulation = max(int(args.gradient_accumulation_steps), 1)
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


class FreezePolicyCallback(TrainerCallback):
    """Applies a freeze policy during `Trainer.train()`, by epoch and by step.

    - `on_train_begin`: sets the state of the current moment (epoch 0, step 0, or the moment a
      resumed checkpoint was saved at), shaping the Trainer's optimizer into the policy's groups
      (each of its weight-decay / no-decay groups split by policy group) and the Trainer's
      scheduler with it.
    - `on_epoch_begin`: applies at the new epoch (`at epoch N` statements).
    - `on_step_end`: applies after each optimizer step (`at step N` statements take effect once
      N optimizer steps have been taken since the start of training, before the next one).

    `steps_per_epoch` comes from the training dataloader and gradient accumulation, so statements
    on both clocks are ordered on one timeline. `strict=True` makes a selector that selects
    nothing an error. `report` is the last ApplyReport; `history` holds one per phase of the
    current `train()` call: the first apply, then each apply that changed which tensors train
    (each is also logged at INFO on the logger `freezepolicy.integrations.hf`). Problems that are
    not errors (a selector that selects nothing, ...) are `PolicyWarning`s, as with
    `apply_policy`, each once per policy and model.

    Metric-driven statements (`unfreeze layer3 when eval_loss stops decreasing for 2
    evaluations`) are fed from `on_evaluate`: every evaluation is one observation. The Trainer
    reports evaluation metrics with its `eval_` prefix (`eval_loss`, `eval_accuracy`); each is
    observed under that name and under the `val_` spelling Lightning users log (`val_loss`), so
    a policy written for either works. A group takes effect at the next step or epoch. Where the
    groups stand rides in every checkpoint (the Trainer's `trainer_state.json`, under
    `stateful_callbacks["freezepolicy"]`), so a resumed run goes on as the uninterrupted one;
    at the end of training a metric never observed is a PolicyWarning (FP231).
    """

    def __init__(self, policy: Policy | str | os.PathLike[str], strict: bool = False) -> None:
        # Loaded here, so a bad policy file fails when the Trainer is set up, not mid-run.
        self.strict = check_flag(strict, "strict", "FreezePolicyCallback")
        self.policy = as_policy(policy)
        #: Optimizer steps per epoch of the current run (None: the dataloader has no length).
        self.steps_per_epoch: int | None = None
        #: The Trainer's epoch (0-based) as of the last event.
        self.epoch = 0
        self.report: ApplyReport | None = None
        self.history: list[ApplyReport] = []
        # Set by `attach`: steps per epoch of the dataloader the Trainer made for this run.
        self._loader_steps: int | None = None
        self._attached = False
        #: The metric-driven statements: observations, and when their groups took effect.
        self.watch = MetricWatch(self.policy.statements)

    # --- Trainer events ----------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        model, optimizer = _model(kwargs), kwargs.get("optimizer")
        self.steps_per_epoch = steps_per_epoch(kwargs.get("train_dataloader"), args)
        # The Trainer's epoch after a resume is global_step // num_update_steps_per_epoch, which
        # is max_steps when the dataloader has no length.
        per_epoch = self.steps_per_epoch or state.max_steps
        self.epoch = state.global_step // per_epoch if per_epoch else 0
        self.history = []
        self.watch = MetricWatch(self.policy.statements)
        saved = _callback_states(state).get(STATE_KEY)
        if self.watch.state and state.global_step > 0 and saved is not None:
            # Resuming: the observations and transitions of the interrupted run.
            self.watch.load_state_dict(saved, "FreezePolicyCallback (resumed checkpoint)")
        if optimizer is not None:
            self._check_optimizer(model, optimizer)
        groups_before = None if optimizer is None else len(optimizer.param_groups)
        try:
            # A group pending in a resumed checkpoint takes effect where it did in the run that
            # saved it: at the next step or epoch start, not here.
            self._apply(args, state, take_pending=False, **kwargs)
        except ValueError as error:
            scheduler = kwargs.get("lr_scheduler")
            if self._attached or scheduler is None or can_split_scheduler(scheduler):
                raise
            # The policy splits the groups, and the Trainer's scheduler cannot follow a split.
            raise ValueError(
                f"{error}. With the Trainer: use freezepolicy.integrations.hf.attach(trainer, "
                "policy), which splits the groups before the Trainer creates its "
                f"{type(scheduler).__name__}"
            ) from error
        if (
            optimizer is not None
            and not self._attached
            and len(optimizer.param_groups) != groups_before
            and args.save_strategy != "no"
        ):
            warn(
                Diagnostic(
                    "FP214",
                    f"the policy split the Trainer's optimizer into {len(optimizer.param_groups)} "
                    f"parameter groups; a Trainer builds {groups_before} when it resumes, so "
                    "checkpoints of this run resume only with "
                    "freezepolicy.integrations.hf.attach(trainer, policy) before trainer.train()",
                    self.policy.source,
                    severity="warning",
                )
            )

    def on_epoch_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # A resumed run starts again in the middle of the epoch it was saved in, with an
        # on_epoch_begin the uninterrupted run did not have: a group pending since an
        # evaluation there takes effect at the next step, as it did then.
        per_epoch = self.steps_per_epoch
        inside = per_epoch is not None and state.global_step % per_epoch != 0
        self._apply(args, state, take_pending=not inside, **kwargs)

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # Counted here rather than derived from global_step: an epoch the Trainer ends early
        # (control.should_epoch_stop) is still one epoch of its loop.
        self.epoch += 1

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._apply(args, state, **kwargs)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self.watch.state or not metrics:
            return
        observed = dict(metrics)
        for name, value in metrics.items():
            if name.startswith("eval_") and "val_" + name[5:] not in observed:
                observed["val_" + name[5:]] = value
        self.watch.observe(observed, "FreezePolicyCallback.on_evaluate")
        # Saved with the next checkpoint (the Trainer saves right after evaluating).
        _callback_states(state)[STATE_KEY] = self.watch.state_dict()

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        warn_never_observed(self.policy, self.watch)

    # --- helpers -------------------------------------------------------------------------------

    def _apply(
        self,
        args: TrainingArguments,
        state: TrainerState,
        take_pending: bool = True,
        **kwargs: Any,
    ) -> ApplyReport:
        model, optimizer = _model(kwargs), kwargs.get("optimizer")
        if take_pending:
            fired = self.watch.upcoming(self.epoch, state.global_step)
        else:
            fired = self.watch.fired
        report = apply_policy(
            model,
            self.policy,
            optimizer,
            epoch=self.epoch,
            step=state.global_step,
            steps_per_epoch=self.steps_per_epoch,
            strict=self.strict,
            scheduler=_scheduler_for(kwargs.get("lr_scheduler"), optimizer),
            fired=dict(fired),
        )
        if take_pending and self.watch.pending:
            self.watch.commit(fired)
            _callback_states(state)[STATE_KEY] = self.watch.state_dict()
        # A new phase is a change of which tensors train; rate changes (a warm-up moves at every
        # step) are not, and would flood the log. Warnings are apply_policy's PolicyWarnings.
        if not self.history or report.trainable != self.history[-1].trainable:
            self.history.append(report)
            if state.is_world_process_zero:
                logger.info("%s", report)
        self.report = report
        return report

    def _check_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Refuse, at the start, a policy that trains tensors the optimizer does not hold.

        The Trainer leaves out every tensor with requires_grad=False when it builds its optimizer,
        so a tensor frozen before `trainer.train()` and unfrozen by the policy later would never
        be updated. apply_policy only warns about this at the moment it happens (another
        optimizer may own such tensors); in a Trainer there is no other optimizer.
        """
        require_covered(
            model,
            self.policy,
            optimizer,
            self.steps_per_epoch,
            optimizer_is="the Trainer's optimizer",
            advice="; they had requires_grad=False when it was built. Use "
            "freezepolicy.integrations.hf.attach(trainer, policy) so the Trainer builds its "
            "optimizer with them, or build the optimizer with freezepolicy.param_groups and pass "
            "it as Trainer(optimizers=...)",
        )

    def __repr__(self) -> str:
        return f"FreezePolicyCallback(policy={self.policy.source!r}, strict={self.strict})"


def _callback_states(state: TrainerState) -> dict[str, Any]:
    """The Trainer state's `stateful_callbacks` (a dict once the state exists, whatever its
    annotation says), which every checkpoint's trainer_state.json holds."""
    saved: Any = state.stateful_callbacks
    if not isinstance(saved, dict):
        saved = {}
        state.stateful_callbacks = saved
    return saved


def _model(kwargs: dict[str, Any]) -> nn.Module:
    model = kwargs.get("model")
    if not isinstance(model, nn.Module):  # every Trainer passes it; a hand-driven call might not
        raise ValueError("FreezePolicyCallback needs the Trainer's model (model=...)")
    return model


def _scheduler_for(scheduler: Any, optimizer: Any) -> Any:
    """The Trainer's scheduler when it drives this optimizer (LambdaLR for every Hugging Face
    warm-up schedule), so that it follows the policy's rate changes and group splits."""
    if optimizer is None or scheduler is None:
        return None
    if getattr(scheduler, "optimizer", None) is not optimizer:
        return None
    return scheduler


@contextlib.contextmanager
def _trainable_for_creation(
    model: nn.Module, policy: Policy, per_epoch: int | None
) -> Iterator[None]:
    """Make every tensor the policy trains at some moment trainable while the Trainer builds its
    optimizer (it takes only tensors with requires_grad=True), then put requires_grad back."""
    snap, binding = binding_for(model, policy, per_epoch)
    raised = [
        binding.params[i]
        for i in ever_trainable(snap, binding)
        if not binding.params[i].requires_grad
    ]
    for p in raised:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in raised:
            p.requires_grad_(False)


def attach(
    trainer: Any,
    policy: Policy | str | os.PathLike[str] | FreezePolicyCallback,
    *,
    strict: bool = False,
) -> FreezePolicyCallback:
    """Apply `policy` during `trainer.train()`, with checkpoints that always resume.

    Adds a FreezePolicyCallback to `trainer` (or uses the one passed, adding it if it is not
    there yet) and makes the Trainer build its optimizer with the policy's parameter groups:
    the optimizer is built as the Trainer always builds it (`args.optim`, its weight-decay /
    no-decay groups), over every tensor that is trainable or that the policy trains at some
    moment, and split by policy group at once, before the learning-rate scheduler and before a
    checkpoint's optimizer state is loaded. The number and order of groups is therefore the same
    in every run of the same model, policy and data, and `trainer.train(resume_from_checkpoint=)`
    loads the optimizer state of any checkpoint such a run saved.

    Call it after creating the Trainer and before `trainer.train()`. Returns the callback.
    """
    # A transformers Trainer, checked by what attach uses (duck typing: subclasses and
    # look-alikes such as trl's trainers work), before anything is built or changed.
    if not (hasattr(trainer, "callback_handler") and hasattr(trainer, "create_optimizer")):
        raise TypeError(
            "attach(trainer, policy) takes a transformers Trainer first, got"
            f" {type(trainer).__name__}"
        )
    if isinstance(policy, FreezePolicyCallback):
        callback = policy
    else:
        callback = FreezePolicyCallback(policy, strict=strict)
    present = [c for c in trainer.callback_handler.callbacks if isinstance(c, FreezePolicyCallback)]
    if any(c is not callback for c in present):
        raise ValueError(
            "this Trainer already has a FreezePolicyCallback: pass that callback to attach(), "
            "or leave it out of callbacks= (two policies on one model would undo each other)"
        )
    if getattr(trainer.create_optimizer, "_freezepolicy", None) is not None:
        raise ValueError("freezepolicy.integrations.hf.attach was already called on this Trainer")
    if not present:
        trainer.add_callback(callback)
    callback._attached = True

    build_optimizer = trainer.create_optimizer
    build_loader = trainer.get_train_dataloader

    def get_train_dataloader() -> Any:
        # The policy's groups can depend on steps per epoch (it orders `at epoch` against `at
        # step` statements), and the optimizer is built before any callback sees the dataloader.
        loader = build_loader()
        callback._loader_steps = steps_per_epoch(loader, trainer.args)
        return loader

    def create_optimizer(model: nn.Module | None = None) -> torch.optim.Optimizer:
        if trainer.optimizer is not None:  # the user's own (Trainer(optimizers=...)): as is
            return build_optimizer(model)
        target = trainer.model if model is None else model
        per_epoch = callback._loader_steps
        with _trainable_for_creation(target, callback.policy, per_epoch):
            optimizer = build_optimizer(model)
        # No scheduler exists yet, so the groups can be split freely; the callback sets the
        # state of the actual moment (after a resume's loading) at on_train_begin.
        apply_policy(
            target,
            callback.policy,
            optimizer,
            steps_per_epoch=per_epoch,
            strict=callback.strict,
        )
        return optimizer

    create_optimizer._freezepolicy = callback  # type: ignore[attr-defined]
    # Instance attributes: they shadow the Trainer's methods for this Trainer only, and the
    # Trainer calls both through `self.`, so a subclass's own versions are still what runs.
    trainer.get_train_dataloader = get_train_dataloader
    trainer.create_optimizer = create_optimizer
    return callback
