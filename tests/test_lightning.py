"""FreezePolicyCallback in real Lightning 2.x runs (freezepolicy/integrations/lightning.py).

tests/lightning_worker.py imports Lightning once and forks every run as a process of its own:

- an uninterrupted run of resume_worker's policy (fc1 frozen, unfrozen at epoch 2 with a warm-up,
  a rate change, a refreeze in the middle of epoch 5, a second unfreeze), with a plain AdamW over
  all parameters that the callback splits into the policy's groups and a per-step LambdaLR that
  must follow; it must do what test_resume's hand-worked schedule says;
- for each case, a run killed with SIGKILL in the middle of an epoch, past its last end-of-epoch
  checkpoint, and a new process (a model initialised from another seed) resumed from that
  checkpoint with `trainer.fit(ckpt_path=...)`: it must end bit for bit where the uninterrupted
  run ends (parameters, optimizer state, scheduler state) and match it at every step on the way;
- a 2-process DDP run on CPU (gloo) through an unfreeze, a refreeze and a rate change: the ranks
  stay bit for bit identical and only what the policy trains moves;
- misuses (an optimizer that leaves out a tensor the policy trains later, two optimizers, two
  callbacks): refused before training.

The driver process is killed if it runs past a deadline; every run dies with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

HERE = Path(__file__).parent
DEADLINE = 300  # seconds for every run together; they take about 20 s on 2 busy cores


def _load(name: str) -> ModuleType:
    # From its path, so the test does not depend on how pytest puts tests/ on sys.path.
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


schedule = _load("ddp_schedule")
#: The hand-worked schedule of resume_worker.POLICY, and bit-for-bit comparison.
resume_test = _load("test_resume")
rw = resume_test.worker
SPE = rw.STEPS_PER_EPOCH
#: As in tests/lightning_worker.py: case -> (epoch of the checkpoint resumed, step held at).
CASES = {"after_unfreeze": (2, 3 * SPE + 3), "frozen_phase": (0, 1 * SPE + 3)}
STATE_KEY = "FreezePolicyCallback"  # the callback's key in a Lightning checkpoint

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lightning")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(out / "driver.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "lightning_worker.py"), "--out", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HERE.parent,
        )
        try:
            code = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()  # its runs die with it
            proc.wait()
            code = None
    if code != 0:
        pytest.fail(f"driver exit code {code}:\n{(out / 'driver.log').read_text()[-4000:]}")
    return out


def status(runs: Path, name: str) -> int:
    return json.loads((runs / "driver.json").read_text())[name]


def result(runs: Path, name: str) -> dict[str, Any]:
    path = runs / name / "result.pt"
    if status(runs, name) != 0 or not path.exists():
        log = (runs / name / "log.txt").read_text(errors="replace")[-4000:]
        pytest.fail(f"run {name}: exit status {status(runs, name)}\n{log}")
    return torch.load(path, weights_only=True)


def _key(record: dict[str, Any]) -> tuple[str, int, int]:
    return (record["label"], record["epoch"], record["step"])


def test_uninterrupted_run_follows_the_policy(runs: Path) -> None:
    straight = result(runs, "straight")
    records = straight["records"]
    # Before each of the 64 steps, and at the end (epoch 8, after the last epoch).
    assert [_key(r) for r in records] == [
        *(("step", s // SPE, s) for s in range(rw.EPOCHS * SPE)),
        ("end", rw.EPOCHS, rw.EPOCHS * SPE),
    ]
    for r in records:
        where = f"{r['label']} epoch {r['epoch']} step {r['step']}"
        assert r["trainable"] == resume_test.expected_trainable(r["epoch"], r["step"]), where
        # The plain AdamW (one group) was split into the policy's groups, and its LambdaLR,
        # made before the split, follows every rate change and the warm-up.
        assert r["groups"] == resume_test.GROUPS, where
        want = resume_test.expected_lrs(r["epoch"], r["step"])
        assert r["lrs"] == pytest.approx(want, rel=1e-12), where
        assert r["weight_decays"] == [rw.WEIGHT_DECAY] * 3, where
    # One phase each: without fc1, with it (epoch 2), without it (step 44), with it (epoch 7).
    assert [(epoch, step) for epoch, step, _ in straight["history"]] == [
        (0, 0),
        (2, 16),
        (5, 44),
        (7, 56),
    ]


@pytest.mark.parametrize("case", CASES)
def test_killed_run_stopped_after_its_checkpoint(runs: Path, case: str) -> None:
    epoch, hold = CASES[case]
    name = f"{case}-killed"
    assert status(runs, name) == -signal.SIGKILL
    assert not (runs / name / "result.pt").exists()
    # It had trained past its last checkpoint: that work is lost and must be redone.
    assert torch.load(runs / name / "held", weights_only=True) == {"step": hold}
    ckpt = torch.load(runs / name / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == epoch and ckpt["global_step"] == (epoch + 1) * SPE
    # The callback's state rides in the checkpoint: after the epoch's last optimizer step the
    # loop helper stands at the start of the next epoch (docs/applying.md, "Epoch and step").
    state = ckpt["callbacks"][STATE_KEY]
    assert state["epoch"] == epoch + 1 and state["step"] == (epoch + 1) * SPE
    assert state["steps_per_epoch"] == SPE
    assert state["policy"] == "resume.freeze" and len(state["policy_sha256"]) == 64
    # The optimizer state it holds is laid out in the policy's three groups.
    assert len(ckpt["optimizer_states"][0]["param_groups"]) == 3


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_equals_the_uninterrupted_run(runs: Path, case: str) -> None:
    epoch, _ = CASES[case]
    ref = result(runs, "straight")
    got = result(runs, f"{case}-resumed")
    # Bit for bit: every parameter, every optimizer moment, every scheduler value.
    assert ref["params"].keys() == got["params"].keys()
    for name in ref["params"]:
        assert torch.equal(ref["params"][name], got["params"][name]), name
    resume_test.assert_same(ref["optimizer"], got["optimizer"], "optimizer")
    resume_test.assert_same(ref["lr_scheduler"], got["lr_scheduler"], "lr_scheduler")
    assert ref["freeze"] == got["freeze"]
    # From the epoch after the checkpoint on, every record equals the uninterrupted run's.
    after = got["records"]
    assert [_key(r) for r in after] == [_key(r) for r in ref["records"] if r["epoch"] > epoch]
    by_moment = {_key(r): r for r in ref["records"]}
    for r in after:
        assert r == by_moment[_key(r)], _key(r)
    # The resumed part crossed policy changes (the comparison above is not vacuous).
    assert len({tuple(r["trainable"]) for r in after}) > 1
    assert len({tuple(r["lrs"]) for r in after}) > 1


@needs_gloo
def test_ddp_ranks_stay_identical_through_unfreeze_and_refreeze(runs: Path) -> None:
    assert result(runs, "ddp") == {"done": True}
    ranks = [torch.load(runs / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["strategy"] == "DDPStrategy"
        assert rank["steps_per_epoch"] == schedule.STEPS_PER_EPOCH
        schedule.check_rates(rank["records"], lambda record: 1.0)
    schedule.check_ranks([rank["records"] for rank in ranks])


def test_metric_driven_unfreeze(runs: Path) -> None:
    got = result(runs, "metric")
    # val_loss 1.0, 0.8, 0.9 (plateau: fc2 from epoch 3), 0.7, 0.75 (plateau: fc1 from epoch 5).
    assert got["trainable"] == [["out"]] * 3 + [["fc2", "out"]] * 2 + [["fc1", "fc2", "out"]]
    spe = 2  # limit_train_batches
    assert got["fired"] == {2: [(3, 3 * spe), (5, 5 * spe)]}
    # The groups were laid out at the start for every transition: fc1 and fc2 (the base rate at
    # every moment), and out, whose rate halves if val_acc's condition ever fires. (With the
    # conditional moments left out of the timeline, all three would share one group.)
    assert got["groups"] == 2
    (warning,) = got["warnings"]
    assert warning.startswith("metric.freeze:4:22: warning: `val_acc` was never observed")
    assert "[FP231]" in warning


def test_misuses_are_refused_before_training(runs: Path) -> None:
    errors = result(runs, "refused")
    # An optimizer without fc1, which the policy unfreezes at epoch 2.
    missing = errors["missing"]
    assert missing.startswith("ValueError: resume.freeze: the policy trains 2 parameter(s) ")
    assert "(fc1.weight, fc1.bias)" in missing and "freezepolicy.param_groups" in missing
    assert errors["two_optimizers"] == (
        "ValueError: resume.freeze: FreezePolicyCallback applies a policy to one optimizer, "
        "but configure_optimizers returned 2"
    )
    # Lightning's own refusal, when the Trainer is created: both would save under one key.
    assert errors["two_callbacks"].startswith(
        "RuntimeError: Found more than one stateful callback of type `FreezePolicyCallback`"
    )
