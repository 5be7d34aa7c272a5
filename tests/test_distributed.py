"""Policies under DistributedDataParallel and FSDP2, in real 2-process gloo jobs on loopback.

One pair of worker processes (tests/distributed_worker.py) runs every scenario once for the whole
module; starting torch in two processes costs seconds, the scenarios themselves milliseconds. The
scenarios: DDP under several settings (also a module wrapped in a second DDP mid-schedule), FSDP2
with part of a sharded block frozen, the Hugging Face Trainer with FreezePolicyCallback, misuses
that must raise FP206, and raw DDP without freezepolicy.
Each scenario trains a small model for 8 steps with different data on each rank under one
schedule (an unfreeze, a refreeze of part of a block, another unfreeze, a refreeze of the rest)
and hands back every parameter as every rank held it at every step boundary. The tests check:

- the ranks hold bit-for-bit the same parameters at every boundary;
- in each step exactly the parameters the schedule makes trainable move, and every other one
  stays bit-for-bit equal (so never-trained ones equal their initial values, refrozen ones the
  values they had when refrozen);
- the gradients communicated in each step are exactly those of the trainable parameters (under
  DDP, the parameters in the buckets a communication hook saw; under FSDP2, the number of
  elements each sharded module reduce-scattered): frozen ones cost no gradient communication;
- without freezepolicy, unfreezing a layer after wrapping in DDP makes the ranks differ.

The workers are killed if they run past a deadline, so a hung collective fails the test instead
of hanging the suite.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import freezepolicy as fp
from freezepolicy.lang.errors import CODES
from freezepolicy.runtime import distributed as fpdist

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
DEADLINE = 240  # seconds for the whole job; it takes about 10 s on 2 busy cores

HEAD = {"head.weight", "head.bias"}
BLOCK = {"block.0.weight", "block.0.bias", "block.1.weight", "block.1.bias"}
ALL = HEAD | BLOCK | {"stem.weight", "stem.bias"}
#: What trains in each step under the worker's POLICY, worked out by hand from its text:
#: `unfreeze head`; `unfreeze block at step 2`; at step 4 `freeze block.0.weight` and `unfreeze
#: stem.weight`; `freeze block at step 6`. `stem.bias` never trains.
EXPECTED = [
    HEAD,
    HEAD,
    HEAD | BLOCK,
    HEAD | BLOCK,
    HEAD | BLOCK - {"block.0.weight"} | {"stem.weight"},
    HEAD | BLOCK - {"block.0.weight"} | {"stem.weight"},
    HEAD | {"stem.weight"},
    HEAD | {"stem.weight"},
]
#: Parameter shapes of the worker's Net: stem Linear(6, 12), block Linear(12, 12) + LayerNorm(12),
#: head Linear(12, 3).
SHAPES = {
    "stem.weight": (12, 6),
    "stem.bias": (12,),
    "block.0.weight": (12, 12),
    "block.0.bias": (12,),
    "block.1.weight": (12,),
    "block.1.bias": (12,),
    "head.weight": (3, 12),
    "head.bias": (3,),
}
#: Steps at which the trainable set changes, plus the first apply (DDP may have been built for
#: any set, so freezepolicy rebuilds its reducer once on first sight).
REBUILD_STEPS = [0, 2, 4, 6]

DDP_SCENARIOS = [
    "ddp",  # defaults
    "ddp_hook",  # a Python communication hook that records the buckets it reduces
    "ddp_unused",  # find_unused_parameters=True
    "ddp_static",  # static_graph=True
    "ddp_view",  # gradient_as_bucket_view=True
    "ddp_inner",  # apply_policy gets the inner module; the DDP around it is found
    "ddp_builtin",  # a built-in (C++) communication hook
]
FSDP2_SCENARIOS = ["fsdp2", "fsdp2_unsharded"]


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


def _transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


class Job:
    """The finished 2-process job: its results directory and what each rank printed."""

    def __init__(self, out: Path, logs: list[str], codes: list[int | None]) -> None:
        self.out, self.logs, self.codes = out, logs, codes

    def result(self, scenario: str) -> dict:
        path = self.out / f"{scenario}.pt"
        if not path.exists():
            # A failed scenario ends the job, so the traceback may belong to an earlier one.
            errors = "\n".join(
                f"--- {p.name} ---\n{p.read_text()}" for p in sorted(self.out.glob("*.error.*"))
            )
            pytest.fail(
                f"scenario {scenario} left no result (exit codes {self.codes})\n{errors}\n"
                + "\n".join(f"--- rank {r} ---\n{log[-3000:]}" for r, log in enumerate(self.logs))
            )
        return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("distributed")
    # The basic cases first: a failing scenario ends the job and leaves later ones no result.
    scenarios = ["raw_ddp", *DDP_SCENARIOS, "ddp_rewrap", "ddp_midstep", "ddp_disagree"]
    scenarios.append("delayed_refused")
    if _fsdp2_available():
        scenarios += FSDP2_SCENARIOS
    if _transformers_available():
        scenarios.append("hf_trainer")  # last: it imports transformers, the slowest part
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs, logs = [], []
    for rank in range(2):
        log = open(out / f"rank{rank}.log", "w+")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "--rank", str(rank), "--world", "2"]
                + ["--store", str(out / "store"), "--out", str(out), *scenarios],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=HERE.parent,
            )
        )
    deadline = time.monotonic() + DEADLINE
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:  # past the deadline, or its peer died: never leave it behind
                proc.kill()
                proc.wait(timeout=30)
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    return Job(out, texts, [p.returncode for p in procs])


def _padded_numel(shape: tuple[int, ...], world: int) -> int:
    rows = -(-shape[0] // world) * world
    rest = 1
    for d in shape[1:]:
        rest *= d
    return rows * rest


def _check_schedule(result: dict) -> None:
    """Ranks identical at every boundary; exactly the expected parameters move in each step."""
    history = result["history"]
    assert len(history) == len(EXPECTED) + 1
    assert set(history[0]) == ALL
    for boundary, snapshot in enumerate(history):
        for name, copies in snapshot.items():
            assert len(copies) == 2
            assert torch.equal(copies[0], copies[1]), f"ranks differ on {name} at step {boundary}"
    for name in ALL:  # applying a policy never changes a value
        assert torch.equal(history[0][name][0], result["initial"][name]), name
    for step, expected in enumerate(EXPECTED):
        assert set(result["trainable"][step]) == expected, f"requires_grad at step {step}"
        moved = {n for n in ALL if not torch.equal(history[step][n][0], history[step + 1][n][0])}
        assert moved == expected, f"step {step}: moved {sorted(moved)}"
    # The parameter no statement ever unfreezes ends bit-for-bit where it started.
    assert torch.equal(history[-1]["stem.bias"][0], result["initial"]["stem.bias"])


@needs_gloo
def test_raw_ddp_unfreeze_after_wrapping_desynchronizes(job: Job) -> None:
    """The bug of the issue, reproduced without freezepolicy: DDP keeps reducing only the
    parameters that were trainable when it was built, so an unfrozen layer drifts apart."""
    final = job.result("raw_ddp")["final"]
    for name in BLOCK:  # unfrozen after wrapping: each rank applied its own gradient
        assert not torch.equal(final[name][0], final[name][1]), name
    for name in HEAD:  # trainable at wrapping: synchronized
        assert torch.equal(final[name][0], final[name][1]), name


@needs_gloo
@pytest.mark.parametrize("scenario", DDP_SCENARIOS)
def test_ddp_keeps_ranks_identical_through_freezes_and_unfreezes(job: Job, scenario: str) -> None:
    result = job.result(scenario)
    _check_schedule(result)
    assert result["rebuilds"] == len(REBUILD_STEPS)
    if "reduced" in result:
        # What the communication hook saw: every trainable parameter, no frozen one.
        for step, expected in enumerate(EXPECTED):
            assert set(result["reduced"][step]) == expected, f"communicated at step {step}"
    if scenario == "ddp_builtin":
        assert result["comm_hook"] == "BuiltinCommHookType.ALLREDUCE"  # re-registered
    if "reduced" not in result:
        assert result["saved_bytes"] > 0  # torch.save of the whole DDP, hook and all


@needs_gloo
def test_ddp_inner_module_wrapped_again_keeps_ranks_identical(job: Job) -> None:
    """The inner module is passed and wrapped in a second DDP mid-schedule while the first one
    stays alive, and a dropped third one lingers on one rank only: the wrapper that trains is
    followed through every change. (Before: the DDP found first was remembered, so the new one
    was never rebuilt and the unfrozen block drifted apart; a heap scan that took the first DDP
    it met could also take a different one on each rank.)"""
    result = job.result("ddp_rewrap")
    _check_schedule(result)
    assert result["rebuilds"] == len(REBUILD_STEPS) - 1  # the new wrapper, from step 2 on
    assert result["first_rebuilds"] == 1  # at step 0; never trains again, so never rebuilt


@needs_gloo
def test_ddp_apply_between_forward_and_backward_stays_in_sync(job: Job) -> None:
    """The old reducer finishes the step whose forward ran before the apply; the new one takes
    over at the next forward."""
    result = job.result("ddp_midstep")
    for name, copies in result["final"].items():
        assert torch.equal(copies[0], copies[1]), name
    assert set(result["trainable"]) == HEAD | BLOCK


@needs_gloo
def test_ddp_ranks_that_disagree_get_fp206_and_nothing_changes(job: Job) -> None:
    result = job.result("ddp_disagree")
    for outcome, before, after in result["outcomes"]:
        assert outcome.startswith("FP206: ") and "different sets of parameters" in outcome
        assert set(before) == set(after) == HEAD
    for name, copies in result["final"].items():
        assert torch.equal(copies[0], copies[1]), name
    assert set(result["trainable"]) == HEAD | BLOCK


@needs_gloo
def test_ddp_delayed_all_reduce_parameter_cannot_be_frozen(job: Job) -> None:
    """DDP hands parameters in delay_all_reduce_named_params a gradient at every forward, frozen
    or not: freezing one is refused with FP206 and nothing changes."""
    result = job.result("delayed_refused")
    for outcome, before, after in result["outcomes"]:
        assert outcome.startswith("FP206: ") and "delay_all_reduce_named_params" in outcome
        assert "`head.weight`" in outcome
        assert set(before) == set(after) == HEAD


@needs_gloo
@pytest.mark.skipif(not _fsdp2_available(), reason="torch has no FSDP2 (fully_shard)")
def test_fsdp2_keeps_ranks_identical_including_a_partly_frozen_sharded_block(job: Job) -> None:
    result = job.result("fsdp2")
    _check_schedule(result)
    # Gradient elements each fully_shard-ed module reduce-scattered per step: exactly those of
    # its trainable parameters, each padded to a multiple of the 2 ranks along dim 0.
    for step, expected in enumerate(EXPECTED):
        sent: dict[str, int] = {}
        for name in expected:
            module = "block" if name.startswith("block.") else "root"
            sent[module] = sent.get(module, 0) + _padded_numel(SHAPES[name], world=2)
        assert result["sent"][step] == sent, f"reduce-scattered at step {step}"


@needs_gloo
@pytest.mark.skipif(not _fsdp2_available(), reason="torch has no FSDP2 (fully_shard)")
def test_fsdp2_apply_while_unsharded_gets_fp206_and_nothing_changes(job: Job) -> None:
    result = job.result("fsdp2_unsharded")
    for outcome, before, after in result["outcomes"]:
        assert outcome.startswith("FP206: ") and "unsharded" in outcome and "reshard()" in outcome
        assert set(before) == set(after) == HEAD
    # The same when FSDP2's internals cannot be read: plain tensors where DTensors belong.
    for outcome, before, after in result["blind"]:
        assert outcome.startswith("FP206: ") and "unsharded" in outcome
        assert set(before) == set(after) == HEAD
    for name, copies in result["final"].items():
        assert torch.equal(copies[0], copies[1]), name
    assert set(result["trainable"]) == HEAD | BLOCK


@needs_gloo
@pytest.mark.skipif(not _transformers_available(), reason="transformers is not installed")
def test_hf_trainer_callback_keeps_ranks_identical(job: Job) -> None:
    """transformers.Trainer wraps the model in DDP itself and gives callbacks the inner module;
    FreezePolicyCallback applies the same schedule (by the Trainer's global step), and the DDP
    around the module is found and follows it."""
    result = job.result("hf_trainer")
    assert result["wrapper"] == "DistributedDataParallel"
    _check_schedule(result)
    assert result["rebuilds"] == len(REBUILD_STEPS)


# --- in-process checks (no process group) --------------------------------------------------------


def test_without_a_process_group_nothing_happens() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is up in this process")
    model = torch.nn.Linear(2, 2)
    params = list(model.parameters())
    assert fpdist.check_apply(model, params, [False, True]) is None
    assert fpdist.sync_after_apply(model) == 0
    report = fp.apply_policy(model, fp.parse("freeze weight"))
    assert report.frozen == ("weight",)


def test_digest_tells_masks_apart() -> None:
    masks = [(), (True,), (False,), (True, False), (False, True), (False, False), (True, True)]
    digests = [fpdist._digest(m) for m in masks]
    assert len(set(digests)) == len(masks)
    assert all(0 <= d < 2**56 for d in digests)  # room to negate in an int64
    assert fpdist._digest((True, False)) == fpdist._digest([True, False])


def test_ddp_agreement_does_not_depend_on_the_order_wrappers_are_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heap scan meets the DDPs around a module in an order that differs between ranks, so
    the agreement's collectives (which groups, in which order, with which digests) must be the
    same for every order of the same wrappers, or ranks pair different all-reduces."""
    calls: list[tuple[str, int]] = []

    def record(h: int, group: SimpleNamespace, device: torch.device) -> bool:
        calls.append((group.group_name, h))
        return True

    monkeypatch.setattr(fpdist, "_ranks_agree_on", record)
    g0, g1 = SimpleNamespace(group_name="0"), SimpleNamespace(group_name="1")
    cpu = torch.device("cpu")
    ddps = [SimpleNamespace(process_group=g, device=cpu) for g in (g1, g0, g1)]
    masks = [(True, False), (True,), (False, True)]
    seen = set()
    for order in itertools.permutations(range(3)):
        calls.clear()
        assert fpdist._ddps_agree([(ddps[i], masks[i]) for i in order])
        seen.add(tuple(calls))
    assert len(seen) == 1
    (sequence,) = seen
    assert [name for name, _ in sequence] == ["0", "1"]  # one all-reduce per group, by name
    assert sequence[0][1] == fpdist._digest((True,))  # a lone DDP: the digest of its mask
    # Group "1" holds two masks; other masks give another digest.
    calls.clear()
    fpdist._ddps_agree([(ddps[0], (True, False)), (ddps[2], (True, True))])
    assert calls[0][1] != sequence[1][1]


def test_fp206_is_a_documented_code() -> None:
    assert CODES[fpdist.CODE] == "distributed-unsafe"
    errors_md = (HERE.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    assert "| FP206 | distributed-unsafe |" in errors_md
    guide = (HERE.parent / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert "FP206" in guide
