"""The Hugging Face Trainer integration, tested with a real `Trainer` on a tiny BERT, on CPU.

The model is built from a config (random weights, nothing downloaded) and trained on generated
sequences whose label is which half of the vocabulary their tokens come from, so the loss falls
within a few dozen steps. 256 examples in batches of 64 make 4 optimizer steps per epoch.
Every training run that several tests look at runs once, in a module-scoped fixture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from model_factories import tiny_bert_config
from transformers import (
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import freezepolicy as fp
from freezepolicy.integrations.hf import FreezePolicyCallback, attach, steps_per_epoch

EXAMPLES, LENGTH, BATCH = 256, 8, 64
STEPS_PER_EPOCH = EXAMPLES // BATCH  # 4
LR, WD = 5e-3, 0.01


# Tiny models train faster on one thread than on two contending for a busy machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_bert_config(max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


class HalfVocab(torch.utils.data.Dataset):
    """Label 1: the tokens come from the upper half of the vocabulary; label 0: the lower half."""

    def __init__(self, n: int = EXAMPLES, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        self.ids = torch.randint(3, 50, (n, LENGTH), generator=g) + 47 * self.labels[:, None]
        self.ids[:, 0] = 2  # a [CLS]-like first token

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def training_args(out: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = dict(
        output_dir=str(out),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=BATCH,
        num_train_epochs=4,
        learning_rate=LR,
        weight_decay=WD,
        logging_steps=STEPS_PER_EPOCH,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@dataclass
class Moment:
    epoch: int
    step: int
    params: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]


@dataclass
class Recorder(TrainerCallback):
    """Records what the model and optimizer look like at Trainer events. Added after the policy
    callback, so it sees the state the policy set at the same event."""

    epochs: list[Moment] = field(default_factory=list)
    steps: list[Moment] = field(default_factory=list)
    #: global step -> [(lr, weight_decay, names)] per group, as the optimizer step uses them.
    groups: dict[int, list[tuple[float, float, list[str]]]] = field(default_factory=dict)
    epoch: int = 0

    def _moment(self, state: Any, model: torch.nn.Module) -> Moment:
        return Moment(
            self.epoch,
            state.global_step,
            snapshot(model),
            {n: p.requires_grad for n, p in model.named_parameters()},
        )

    def on_train_begin(self, args, state, control, **kw):
        self.epoch = state.global_step // STEPS_PER_EPOCH

    def on_epoch_begin(self, args, state, control, model=None, **kw):
        self.epochs.append(self._moment(state, model))

    def on_epoch_end(self, args, state, control, **kw):
        self.epoch += 1

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        names = {id(p): n for n, p in model.named_parameters()}
        self.groups[state.global_step] = [
            (float(g["lr"]), float(g["weight_decay"]), [names[id(p)] for p in g["params"]])
            for g in optimizer.param_groups
        ]

    def on_step_end(self, args, state, control, model=None, **kw):
        self.steps.append(self._moment(state, model))


@dataclass
class Run:
    trainer: Trainer
    callback: FreezePolicyCallback
    recorder: Recorder
    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    out: Path


def train(
    out: Path,
    policy: str,
    *,
    use_attach: bool = False,
    resume: Path | None = None,
    model: torch.nn.Module | None = None,
    **overrides: Any,
) -> Run:
    model = tiny_bert() if model is None else model
    initial = snapshot(model)
    recorder = Recorder()
    policy_obj = fp.parse(policy, source=f"<{out.name}>")
    if use_attach:
        trainer = Trainer(
            model=model, args=training_args(out, **overrides), train_dataset=HalfVocab()
        )
        callback = attach(trainer, policy_obj)
        trainer.add_callback(recorder)
    else:
        callback = FreezePolicyCallback(policy_obj)
        trainer = Trainer(
            model=model,
            args=training_args(out, **overrides),
            train_dataset=HalfVocab(),
            callbacks=[callback, recorder],
        )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return Run(trainer, callback, recorder, initial, snapshot(model), out)


def expected_trainable(policy: str, names: list[str], epoch: int, step: int) -> dict[str, bool]:
    """requires_grad the policy gives each name (untouched: trainable, as the model had it)."""
    decisions = fp.parse(policy).resolve(
        names, epoch=epoch, step=step, steps_per_epoch=STEPS_PER_EPOCH
    )
    return {n: d.trainable is not False for n, d in decisions.items()}


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> list[str]:
    return [n for n in names if not torch.equal(a[n], b[n])]


def losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# --- by epoch ------------------------------------------------------------------------------------

EPOCH_POLICY = """\
freeze bert.pooler
freeze bert.encoder.layer.0
unfreeze bert.encoder.layer.0 at epoch 2
"""


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    # Callback only; checkpoints at every epoch end, resumed from in a later test.
    out = tmp_path_factory.mktemp("hf") / "epoch"
    return train(out, EPOCH_POLICY, save_strategy="epoch")


def test_frozen_stay_bit_identical_and_unfrozen_train_from_their_epoch(epoch_run: Run) -> None:
    run = epoch_run
    names = list(run.initial)
    pooler = [n for n in names if n.startswith("bert.pooler.")]
    layer0 = [n for n in names if n.startswith("bert.encoder.layer.0.")]
    others = [n for n in names if n not in pooler and n not in layer0]
    assert len(pooler) == 2 and len(layer0) == 16

    # Frozen throughout: bit for bit the initial values, no gradient, no optimizer state.
    assert changed(run.initial, run.final, pooler) == []
    params = dict(run.trainer.model.named_parameters())
    optimizer = run.trainer.optimizer
    for n in pooler:
        assert params[n].grad is None and params[n] not in optimizer.state

    # Unfrozen at epoch 2: unchanged through epochs 0 and 1, then every tensor trains.
    at = {m.epoch: m for m in run.recorder.epochs}
    assert [m.epoch for m in run.recorder.epochs] == [0, 1, 2, 3]
    assert at[2].step == 2 * STEPS_PER_EPOCH
    assert changed(run.initial, at[2].params, layer0) == []
    assert changed(at[2].params, run.final, layer0) == layer0
    assert all(params[n] in optimizer.state for n in layer0)
    # Trainable from the start: already moved by the end of epoch 0.
    assert changed(run.initial, at[1].params, others) == others

    # Every tensor is in the Trainer's optimizer, in its weight-decay / no-decay split.
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in params.values())

    # The loss falls (first logged epoch against the last).
    first, *_, last = losses(run.trainer)
    assert last < first - 0.05, losses(run.trainer)


def test_requires_grad_at_every_epoch_boundary_matches_resolve(epoch_run: Run) -> None:
    names = list(epoch_run.initial)
    for moment in epoch_run.recorder.epochs:
        want = expected_trainable(EPOCH_POLICY, names, moment.epoch, moment.step)
        assert moment.requires_grad == want, moment.epoch
    # One report per phase: the start, and epoch 2.
    assert [(r.epoch, r.step) for r in epoch_run.callback.history] == [(0, 0), (2, 8)]
    assert epoch_run.callback.history[-1].frozen == (
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
    )


def test_freeze_only_policy_resumes_with_the_callback_alone(epoch_run: Run, tmp_path: Path) -> None:
    # No lr/decay statement: the policy keeps the Trainer's two groups, so a Trainer that builds
    # its optimizer as usual loads the checkpoint. Resumed from the end of epoch 1, before the
    # unfreeze at epoch 2.
    checkpoint = epoch_run.out / "checkpoint-8"
    assert len(epoch_run.trainer.optimizer.param_groups) == 2
    resumed = train(tmp_path / "resumed", EPOCH_POLICY, resume=checkpoint, save_strategy="no")
    assert [m.epoch for m in resumed.recorder.epochs] == [2, 3]
    assert changed(epoch_run.final, resumed.final, list(resumed.final)) == []


# --- by step, both clocks ----------------------------------------------------------------------

STEP_POLICY = """\
freeze *
unfreeze classifier
unfreeze bert.encoder.layer.1 at step 6
unfreeze bert.encoder.layer.0 at epoch 2
freeze bert.encoder.layer.1.output at epoch 2
"""


def test_unfreeze_at_a_step_and_at_an_epoch_in_one_run(tmp_path: Path) -> None:
    run = train(tmp_path / "step", STEP_POLICY, max_steps=10)
    names = list(run.initial)
    layer1 = [n for n in names if n.startswith("bert.encoder.layer.1.")]
    layer0 = [n for n in names if n.startswith("bert.encoder.layer.0.")]
    frozen = [n for n in names if n.startswith(("bert.embeddings.", "bert.pooler."))]
    by_step = {m.step: m for m in run.recorder.steps}
    assert sorted(by_step) == list(range(1, 11))
    for step, moment in by_step.items():
        epoch = (step - 1) // STEPS_PER_EPOCH  # on_step_end of the epoch's steps
        want = expected_trainable(STEP_POLICY, names, epoch, step)
        assert moment.requires_grad == want, step
    # `at step 6`: trainable after 6 optimizer steps, so updated by step 7 and not before.
    assert changed(run.initial, by_step[6].params, layer1) == []
    assert changed(by_step[6].params, by_step[7].params, layer1) == layer1
    # `at epoch 2` = step 8 here: updated by step 9 and not before.
    assert changed(run.initial, by_step[8].params, layer0) == []
    assert changed(by_step[8].params, by_step[9].params, layer0) == layer0
    # Unfrozen at step 6 and frozen again at epoch 2: the two clocks are one timeline (without
    # steps per epoch the epoch statement would be ordered first and lose). No update after.
    output = [n for n in layer1 if n.startswith("bert.encoder.layer.1.output.")]
    assert len(output) == 4 and not any(by_step[9].requires_grad[n] for n in output)
    assert changed(by_step[6].params, by_step[8].params, output) == output
    assert changed(by_step[8].params, run.final, output) == []
    assert changed(run.initial, run.final, frozen) == []
    assert changed(run.initial, by_step[1].params, ["classifier.weight"]) == ["classifier.weight"]


# --- learning rates and weight decay ------------------------------------------------------------

RATE_POLICY = """\
lr 0.1x for classifier
lr 0.5x for bert.encoder.layer.1 at epoch 1
decay 0 for bert.pooler
freeze bert.embeddings
unfreeze bert.embeddings at epoch 1 warmup 1 epoch
"""


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """transformers' linear schedule, written out: the factor the scheduler applies at `step`."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


def test_multipliers_compose_with_the_trainers_schedule(tmp_path: Path) -> None:
    total, warmup = 8, 2
    # Checkpointing on (never reached): the split groups need attach to resume; it says so.
    with pytest.warns(fp.PolicyWarning, match=r"freezepolicy\.integrations\.hf\.attach") as seen:
        run = train(
            tmp_path / "rates",
            RATE_POLICY,
            max_steps=total,
            warmup_steps=warmup,
            lr_scheduler_type="linear",
            save_strategy="steps",
            save_steps=1000,
        )
    assert [w.message.code for w in seen if "attach" in str(w.message)] == ["FP214"]

    def group_of(groups: list[tuple[float, float, list[str]]], name: str) -> tuple[float, float]:
        (found,) = [(lr, wd) for lr, wd, names in groups if name in names]
        return found

    assert sorted(run.recorder.groups) == list(range(total))
    for step, groups in run.recorder.groups.items():
        base, base_wd = group_of(groups, "bert.encoder.layer.0.attention.self.query.weight")
        assert base == pytest.approx(LR * warmup_linear(step, warmup, total), rel=1e-12, abs=0)
        assert base_wd == WD
        head = group_of(groups, "classifier.weight")
        assert head[0] == pytest.approx(0.1 * base, rel=1e-12, abs=0) and head[1] == WD
        # The Trainer's no-decay rule still holds inside the policy's groups.
        head_bias = group_of(groups, "classifier.bias")
        assert head_bias[0] == pytest.approx(0.1 * base, rel=1e-12, abs=0) and head_bias[1] == 0.0
        norm = group_of(groups, "bert.encoder.layer.0.output.LayerNorm.weight")
        assert norm == (base, 0.0)
        # Changed at epoch 1 (step 4): from the base rate to half of it, on the same schedule.
        layer1 = group_of(groups, "bert.encoder.layer.1.intermediate.dense.weight")
        factor = 0.5 if step >= STEPS_PER_EPOCH else 1.0
        assert layer1[0] == pytest.approx(factor * base, rel=1e-12, abs=0)
        # `decay 0` supersedes the Trainer's weight decay for the pooler's weight.
        assert group_of(groups, "bert.pooler.dense.weight") == (base, 0.0)
        # Every group: the rate Policy.resolve gives at this moment (a warm-up ramping at every
        # step of epoch 1 included) times the Trainer's schedule.
        decisions = fp.parse(RATE_POLICY).resolve(
            list(run.initial),
            epoch=step // STEPS_PER_EPOCH,
            step=step,
            steps_per_epoch=STEPS_PER_EPOCH,
        )
        for lr, _wd, names in groups:
            for name in names:
                rate = decisions[name].lr
                nominal = LR if rate is None else rate.of(LR)
                want = nominal * warmup_linear(step, warmup, total)
                assert lr == pytest.approx(want, rel=1e-12, abs=0), (step, name)
    embeddings = group_of(run.recorder.groups[5], "bert.embeddings.word_embeddings.weight")
    assert embeddings[0] == pytest.approx(0.5 * LR * warmup_linear(5, warmup, total), rel=1e-12)
    # Each group is one policy group inside one of the Trainer's two groups.
    for _lr, wd, names in run.recorder.groups[0]:
        decays = {"bias" in n or "LayerNorm" in n or n.startswith("bert.pooler.") for n in names}
        assert len(decays) == 1 and (wd == 0.0) == decays.pop()


# --- resume -------------------------------------------------------------------------------------

RESUME_POLICY = """\
freeze bert.embeddings
freeze bert.encoder.layer.0
unfreeze bert.encoder.layer.0 at epoch 2
lr 0.1x for classifier
lr 0.5x for bert.encoder.layer.1 at step 6
"""


def optimizer_layout(trainer: Trainer) -> list[dict[str, Any]]:
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    out = []
    for g in trainer.optimizer.param_groups:
        out.append(
            {
                "names": [names[id(p)] for p in g["params"]],
                "trainable": [p.requires_grad for p in g["params"]],
                "with_state": [p in trainer.optimizer.state for p in g["params"]],
                **{k: v for k, v in g.items() if k not in ("params", "param_names")},
            }
        )
    return out


@pytest.fixture(scope="module")
def resume_full(tmp_path_factory: pytest.TempPathFactory) -> Run:
    # With attach; a checkpoint every 6 steps.
    out = tmp_path_factory.mktemp("hf") / "full"
    return train(out, RESUME_POLICY, use_attach=True, save_strategy="steps", save_steps=6)


def test_resume_mid_run_matches_an_uninterrupted_run(resume_full: Run, tmp_path: Path) -> None:
    full = resume_full
    # Saved mid-epoch 1, right after the `at step 6` rate change, before the epoch-2 unfreeze.
    checkpoint = full.out / "checkpoint-6"
    assert checkpoint.is_dir()
    # A Trainer building its optimizer as usual cannot load these groups; attach can.
    layout = optimizer_layout(full.trainer)
    assert len(layout) > 2
    resumed = train(tmp_path / "resumed", RESUME_POLICY, use_attach=True, resume=checkpoint)

    assert optimizer_layout(resumed.trainer) == layout
    assert resumed.trainer.lr_scheduler.base_lrs == full.trainer.lr_scheduler.base_lrs
    assert resumed.callback.report.trainable == full.callback.report.trainable
    # Bit for bit: the Trainer restores data order and RNG state, freezepolicy the rest.
    assert changed(full.final, resumed.final, list(full.final)) == []
    # And the run did train what the policy says, from where it says.
    layer0 = [n for n in full.final if n.startswith("bert.encoder.layer.0.")]
    assert changed(full.initial, full.final, layer0) == layer0
    assert changed(full.initial, full.final, ["bert.embeddings.word_embeddings.weight"]) == []


def test_a_checkpoint_of_a_callback_only_run_resumes_with_attach(
    resume_full: Run, tmp_path: Path
) -> None:
    # The callback alone splits the Trainer's groups at on_train_begin, attach at creation: the
    # same groups, so the runs are the same and either's checkpoint resumes with attach.
    # It says so when it checkpoints: this run's checkpoints resume only with attach.
    with pytest.warns(
        fp.PolicyWarning,
        match=r"split the Trainer's optimizer .* resume only with "
        r"freezepolicy\.integrations\.hf\.attach\(trainer, policy\) .*\[FP214\]",
    ):
        alone = train(tmp_path / "alone", RESUME_POLICY, save_strategy="steps", save_steps=6)
    assert optimizer_layout(alone.trainer) == optimizer_layout(resume_full.trainer)
    assert changed(resume_full.final, alone.final, list(alone.final)) == []
    checkpoint = alone.out / "checkpoint-6"
    resumed = train(tmp_path / "resumed", RESUME_POLICY, use_attach=True, resume=checkpoint)
    assert changed(resume_full.final, resumed.final, list(alone.final)) == []


def test_a_parameter_frozen_before_training_is_trained_only_with_attach(tmp_path: Path) -> None:
    policy = "unfreeze * at epoch 1"
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    with pytest.raises(ValueError, match="attach"):
        train(tmp_path / "callback", policy, model=model, max_steps=1)

    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    run = train(tmp_path / "attach", policy, use_attach=True, model=model, max_steps=6)
    embeddings = [n for n in run.initial if n.startswith("bert.embeddings.")]
    by_step = {m.step: m for m in run.recorder.steps}
    assert changed(run.initial, by_step[4].params, embeddings) == []
    assert all(not by_step[4].requires_grad[n] for n in embeddings)  # untouched: as it was
    assert changed(by_step[4].params, run.final, embeddings) == embeddings


def test_a_scheduler_that_cannot_follow_a_split_needs_attach(tmp_path: Path) -> None:
    # transformers' GreedyLR keeps per-group lists of its own; it steps on evaluation metrics.
    settings = dict(max_steps=2, lr_scheduler_type="greedy", eval_strategy="steps", eval_steps=1)
    policy = fp.parse("lr 0.1x for classifier")
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(tmp_path / "callback", **settings),
        train_dataset=HalfVocab(),
        eval_dataset=HalfVocab(32, seed=1),
        callbacks=[FreezePolicyCallback(policy)],
    )
    with pytest.raises(ValueError, match=r"\(GreedyLR\) cannot follow a split.*hf\.attach"):
        trainer.train()
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(tmp_path / "attach", **settings),
        train_dataset=HalfVocab(),
        eval_dataset=HalfVocab(32, seed=1),
    )
    attach(trainer, policy)
    trainer.train()
    groups = trainer.optimizer.param_groups
    head = [g for g in groups if any(p is trainer.model.classifier.weight for p in g["params"])]
    base = [
        g for g in groups if any(p is trainer.model.bert.pooler.dense.weight for p in g["params"])
    ]
    assert head[0]["lr"] == pytest.approx(0.1 * base[0]["lr"], rel=1e-12)


def test_strict_policy_errors_before_training(tmp_path: Path) -> None:
    model = tiny_bert()
    before = snapshot(model)
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path / "strict", max_steps=1),
        train_dataset=HalfVocab(),
        callbacks=[FreezePolicyCallback(fp.parse("freeze *\nunfreeze decoder"), strict=True)],
    )
    with pytest.raises(fp.PolicyResolveError) as info:
        trainer.train()
    assert info.value.code == "FP201" and info.value.line == 2
    assert changed(before, snapshot(model), list(before)) == []


def test_policy_problems_are_python_warnings_once_per_run(tmp_path: Path) -> None:
    # Applied at every event, told once, at the user's line (not inside transformers).
    with pytest.warns(fp.PolicyWarning) as record:
        train(tmp_path / "typo", "freeze bert.embeddings\nfreeze classifer\n", max_steps=3)
    (warning,) = [w for w in record if w.message.code == "FP201"]
    assert "did you mean `classifier`?" in str(warning.message)
    assert warning.filename == __file__


def test_accumulation_with_a_partial_last_step_keeps_epoch_and_step_in_agreement(
    tmp_path: Path,
) -> None:
    """4 batches an epoch in steps of 3: 2 optimizer steps (3 batches, then 1). Every apply the
    callback makes passes apply_policy's check that epoch and step agree."""
    policy = "freeze *\nunfreeze classifier\nunfreeze bert.encoder.layer.1 at epoch 1\n"
    run = train(tmp_path / "accumulate", policy, num_train_epochs=3, gradient_accumulation_steps=3)
    assert run.callback.steps_per_epoch == 2 and run.trainer.state.global_step == 6
    assert [(r.epoch, r.step) for r in run.callback.history] == [(0, 0), (1, 2)]
    assert (run.callback.report.epoch, run.callback.report.step) == (2, 6)


class StopEpochEarly(TrainerCallback):
    """Ends epoch 0 after its first step: the Trainer's epochs and steps part ways."""

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            control.should_epoch_stop = True


def test_an_epoch_ended_early_is_refused_rather_than_misplaced(tmp_path: Path) -> None:
    policy = fp.parse("freeze bert.embeddings\nunfreeze bert.embeddings at epoch 1\n")
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(tmp_path / "early", num_train_epochs=2),
        train_dataset=HalfVocab(),
        callbacks=[FreezePolicyCallback(policy), StopEpochEarly()],
    )
    with pytest.raises(ValueError, match="epoch 1 and step 1 disagree with steps_per_epoch=4"):
        trainer.train()


def test_attach_refuses_a_second_policy(tmp_path: Path) -> None:
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(tmp_path / "twice", max_steps=1),
        train_dataset=HalfVocab(),
        callbacks=[FreezePolicyCallback(fp.parse("freeze bert.embeddings"))],
    )
    with pytest.raises(ValueError, match="already has"):
        attach(trainer, fp.parse("freeze bert.pooler"))
    (existing,) = [
        c for c in trainer.callback_handler.callbacks if isinstance(c, FreezePolicyCallback)
    ]
    assert attach(trainer, existing) is existing
    with pytest.raises(ValueError, match="already called"):
        attach(trainer, existing)


@pytest.mark.parametrize("trainer", [None, "trainer", torch.nn.Linear(2, 2)])
def test_attach_says_it_needs_a_trainer(trainer: Any) -> None:
    """The arguments swapped, a model, or nothing: a TypeError naming what was given."""
    with pytest.raises(TypeError, match=r"takes a transformers Trainer first, got "):
        attach(trainer, fp.parse("freeze *"))


def test_steps_per_epoch_counts_as_the_trainer_does(tmp_path: Path) -> None:
    args = training_args(tmp_path, gradient_accumulation_steps=3)
    assert steps_per_epoch(range(10), args) == 4  # 3 + 3 + 3 + 1 batches
    assert steps_per_epoch(range(1), args) == 1
    assert steps_per_epoch(iter(range(5)), args) is None


# --- schedulers following a split (plain torch) -----------------------------------------------


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_passed_scheduler_follows_a_split_of_its_groups() -> None:
    model = mlp()
    policy = fp.parse("lr 0.1x for 2\nfreeze 0.bias")
    decay = [model[0].weight, model[2].weight]
    no_decay = [model[0].bias, model[2].bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=0.01
    )

    def factor(t: int) -> float:
        return 1 / (1 + t)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, lambda t: 2 * factor(t)])
    # Not passed: the split is refused, nothing changes.
    with pytest.raises(ValueError, match="scheduler"):
        fp.apply_policy(model, policy, opt)
    assert len(opt.param_groups) == 2
    report = fp.apply_policy(model, policy, opt, scheduler=sched)
    assert len(opt.param_groups) == 4 and not report.warnings
    assert len(sched.base_lrs) == len(sched.lr_lambdas) == len(sched.get_last_lr()) == 4
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for t in range(4):
        for g in opt.param_groups:
            origin = 2 if any(p is model[0].bias or p is model[2].bias for p in g["params"]) else 1
            rate = (
                0.1 if any(p is model[2].weight or p is model[2].bias for p in g["params"]) else 1
            )
            assert g["lr"] == pytest.approx(0.01 * rate * origin * factor(t), rel=1e-12)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    state = sched.state_dict()  # still saves and loads with one entry per group
    sched.load_state_dict(state)


def test_a_scheduler_subclass_is_not_split() -> None:
    class Custom(torch.optim.lr_scheduler.LambdaLR):
        pass

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = Custom(opt, lambda t: 1.0)
    with pytest.raises(ValueError, match="scheduler"):
        fp.apply_policy(model, fp.parse("lr 0.1x for 2"), opt, scheduler=sched)
    assert len(opt.param_groups) == 1 and len(sched.base_lrs) == 1


# --- metric-driven transitions ---------------------------------------------------------------

METRIC_POLICY = """\
freeze *
unfreeze classifier
unfreeze encoder.layer.-1 then encoder.layer.-2 when val_score stops increasing for 1 evaluation
"""
#: The score each epoch's evaluation reports (as `eval_score`): a plateau at epoch 2's, so the
#: last block joins at epoch 3, and the one below it would at the next plateau (never).
SCORES = [0.5, 0.6, 0.55, 0.7]


class ScriptedScore(TrainerCallback):
    """Adds `eval_score` to each evaluation's metrics, by epoch (the callbacks after it see it)."""

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        metrics["eval_score"] = SCORES[round(state.epoch) - 1]


def train_with_metric(out: Path, resume: Path | None = None) -> tuple[Trainer, Recorder]:
    recorder = Recorder()
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(out, eval_strategy="epoch", save_strategy="epoch"),
        train_dataset=HalfVocab(),
        eval_dataset=HalfVocab(BATCH, seed=1),
        callbacks=[ScriptedScore()],
    )
    attach(trainer, fp.parse(METRIC_POLICY, "metric.freeze"))
    trainer.add_callback(recorder)
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer, recorder


def test_a_metric_plateau_unfreezes_the_next_group_and_resumes(tmp_path: Path) -> None:
    trainer, recorder = train_with_metric(tmp_path / "straight")
    last = [n for n in recorder.epochs[0].requires_grad if ".layer.1." in n]

    def trains(moment: Moment) -> set[str]:
        return {n for n, t in moment.requires_grad.items() if t}

    classifier = {"classifier.weight", "classifier.bias"}
    # `eval_score` observed as `val_score` too; the plateau after epoch 2 fires at epoch 3.
    assert [trains(m) for m in recorder.epochs] == [classifier] * 3 + [classifier | set(last)]
    callback = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, FreezePolicyCallback)
    )
    assert callback.watch.fired == ((2, ((3, 3 * STEPS_PER_EPOCH),)),)
    # Saved at the end of epoch 2, with the transition pending: a resumed run makes it too.
    checkpoint = tmp_path / "straight" / f"checkpoint-{3 * STEPS_PER_EPOCH}"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["freezepolicy"]["pending"] == [2]
    resumed, again = train_with_metric(tmp_path / "resumed", resume=checkpoint)
    assert [trains(m) for m in again.epochs] == [classifier | set(last)]
    assert changed(snapshot(trainer.model), snapshot(resumed.model), list(last)) == []
