"""Resuming from a checkpoint gives exactly the run that never stopped.

The subprocess tests train tests/resume_worker.py three ways: once uninterrupted, and (for each
case) once until it is killed with SIGKILL in the middle of an epoch after writing a checkpoint,
then again in a new process resumed from that checkpoint. The resumed run must end with
bit-for-bit the parameters, optimizer state and scheduler state of the uninterrupted one, and
have the same trainable set, parameter groups and learning rates at every epoch start and after
every optimizer step from the resume point on. The cases resume after the unfreeze of `fc1`, and
before it, into the phase where `fc1` is still frozen.

The uninterrupted run is the worker script in a fresh interpreter; the killed and resumed runs are
started by one run server (`resume_worker.py --serve`) as processes of their own forked after its
single torch import, which is most of the time a run takes. Every process is killed in a
`finally`, so a failing test leaves nothing running.

The in-process tests load checkpoints into a freshly built model, optimizer and schedulers (the
optimizer's groups made at epoch 0): one taken after every step of the same policy, and of
randomly generated policies (freezes, unfreezes, rates, decays, `then ... every`, warm-ups).
Loading never fails on group counts, gives the uninterrupted run's state at that moment, and
training on from an epoch's checkpoint ends bit for bit where the uninterrupted run ends.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import freezepolicy as fp

HERE = Path(__file__).parent
WORKER_PATH = HERE / "resume_worker.py"
# Loaded from its path, so the test does not depend on how pytest puts tests/ on sys.path.
_spec = importlib.util.spec_from_file_location("resume_worker", WORKER_PATH)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = worker  # dataclasses look their module up there
_spec.loader.exec_module(worker)

SPE = worker.STEPS_PER_EPOCH
DEADLINE = 240.0  # seconds for all runs together; they take a few seconds
#: case -> (epoch whose checkpoint is resumed from, global step the killed run is held at).
#: The held step lies inside the next epoch, so the killed run had trained past its checkpoint.
CASES = {
    # In the middle of fc1's warm-up (steps 16-31, fc1 unfrozen at epoch 2); after the resume
    # come the rest of the warm-up, the rate change at epoch 4, the re-freeze at step 44 and the
    # second unfreeze at epoch 7.
    "after_unfreeze": (2, 3 * SPE + 3),
    # fc1 still frozen (until epoch 2): the resumed run performs the unfreeze itself.
    "frozen_phase": (0, 1 * SPE + 3),
}
#: The same for worker.METRIC_POLICY: a checkpoint in the middle of the first plateau (one
#: evaluation not better), and one with fc1's group pending (its plateau complete, to take effect
#: at the next epoch start).
METRIC_CASES = {"metric_counting": (5, 6 * SPE + 3), "metric_pending": (3, 4 * SPE + 3)}
GROUPS = [["fc1.weight", "fc1.bias"], ["fc2.weight", "fc2.bias"], ["out.weight", "out.bias"]]
ALL = sorted(n for group in GROUPS for n in group)


# --- running the worker ------------------------------------------------------------------------

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@dataclass
class Job:
    """One training run of the worker as a process: its arguments and the directory it writes to."""

    name: str
    dir: Path
    argv: list[str]
    pid: int | None = None

    @classmethod
    def make(cls, name: str, root: Path, policy: Path, *extra: str) -> Job:
        path = root / name
        path.mkdir()
        return cls(name, path, ["--policy", str(policy), "--dir", str(path), *extra])

    @property
    def log_path(self) -> Path:
        return self.dir / "log.txt"

    def fail(self, what: str) -> NoReturn:
        log = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
        pytest.fail(f"run {self.name}: {what}\n{log}")


class Server:
    """`resume_worker.py --serve`: runs started as forked processes of one torch import.

    Every run is its own process (SIGKILL goes to its pid), but torch is imported once instead
    of once per run, which is most of the time a run takes.
    """

    def __init__(self, root: Path) -> None:
        self.log_path = root / "server.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER_PATH), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,
                env=ENV,
                cwd=HERE.parent,
            )
        #: Pids of runs started and not yet reaped by the server: still ours to kill.
        self.live: set[int] = set()
        self._pending = b""

    def _ask(self, line: str, deadline: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{line}\n".encode())
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._fail(f"no answer to {line!r} before the deadline")
            chunk = os.read(fd, 4096)
            if not chunk:
                self._fail(f"ended without answering {line!r}")
            self._pending += chunk
        reply, _, self._pending = self._pending.partition(b"\n")
        return reply.decode()

    def _fail(self, what: str) -> NoReturn:
        log = self.log_path.read_text(errors="replace")[-4000:]
        pytest.fail(f"run server: {what} (exit code {self.proc.poll()})\n{log}")

    def start(self, run: Job, deadline: float) -> None:
        job = json.dumps({"argv": run.argv, "log": str(run.log_path)})
        run.pid = int(self._ask(f"run {job}", deadline))
        self.live.add(run.pid)

    def wait(self, run: Job, deadline: float) -> int:
        """The run's exit status once it ends (negative: killed by that signal)."""
        code = int(self._ask(f"wait {run.pid}", deadline))
        self.live.discard(run.pid)
        return code

    def close(self) -> None:
        # Runs first, while the server has not reaped them, so their pids cannot have been
        # reused by another process. (They would also die with the server, on Linux.)
        for pid in self.live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.live.clear()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def _wait_for_file(run: Job, path: Path, deadline: float) -> None:
    exit_path = Path(f"{run.log_path}.exit")
    while not path.exists():
        if exit_path.exists():
            run.fail(f"ended (exit code {exit_path.read_text().strip()}) before writing {path}")
        if time.monotonic() > deadline:
            run.fail(f"wrote no {path.name} before the deadline")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the uninterrupted run, and each case's killed and resumed runs; load their results.

    The uninterrupted run is the worker script in a fresh interpreter of its own; the others go
    through one run server, which starts each as a process of its own.
    """
    root = tmp_path_factory.mktemp("resume")
    policy = root / "policy.freeze"
    policy.write_text(worker.POLICY)
    metric_policy = root / "metric.freeze"
    metric_policy.write_text(worker.METRIC_POLICY)
    policy_of = {
        **{case: policy for case in CASES},
        **{case: metric_policy for case in METRIC_CASES},
    }
    deadline = time.monotonic() + DEADLINE
    out: dict[str, Any] = {}
    reference = Job.make("uninterrupted", root, policy)
    with open(reference.log_path, "w") as log:
        ref_proc = subprocess.Popen(
            [sys.executable, str(WORKER_PATH), *reference.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=HERE.parent,
        )
    server = Server(root)
    try:
        killed = {
            case: Job.make(f"{case}-killed", root, policy_of[case], "--hold-at-step", str(hold))
            for case, (_, hold) in {**CASES, **METRIC_CASES}.items()
        }
        for run in killed.values():
            server.start(run, deadline)
        # The metric policy's uninterrupted run goes through the server too (a fork: lean).
        metric_reference = Job.make("metric-uninterrupted", root, metric_policy)
        server.start(metric_reference, deadline)
        resumed: dict[str, Job] = {}
        for case, run in killed.items():
            # The run writes `held` after its checkpoint and after training on past it.
            _wait_for_file(run, run.dir / "held", deadline)
            assert run.pid is not None
            os.kill(run.pid, signal.SIGKILL)
            ckpt = run.dir / "checkpoint.pt"
            out[case] = {
                "returncode": server.wait(run, deadline),
                "held": torch.load(run.dir / "held", weights_only=True),
                "checkpoint": torch.load(ckpt, weights_only=True),
                "killed_final_exists": (run.dir / "final.pt").exists(),
            }
            # --init-seed 1: the new model starts from other weights, so whatever the resumed
            # run ends with came through the checkpoint.
            resumed[case] = Job.make(
                f"{case}-resumed", root, policy_of[case], "--resume", str(ckpt), "--init-seed", "1"
            )
            server.start(resumed[case], deadline)
        for case, run in resumed.items():
            code = server.wait(run, deadline)
            if code != 0:
                run.fail(f"exit code {code}")
            out[case]["final"] = torch.load(run.dir / "final.pt", weights_only=True)
        code = server.wait(metric_reference, deadline)
        if code != 0:
            metric_reference.fail(f"exit code {code}")
        out["metric_reference"] = torch.load(metric_reference.dir / "final.pt", weights_only=True)
        try:
            ref_proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            reference.fail("still running at the deadline")
        if ref_proc.returncode != 0:
            reference.fail(f"exit code {ref_proc.returncode}")
        out["reference"] = torch.load(reference.dir / "final.pt", weights_only=True)
    finally:
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.wait(timeout=30)
        server.close()
    return out


# --- what the policy does, worked out by hand from worker.POLICY ---------------------------------


def expected_trainable(epoch: int, step: int) -> list[str]:
    """fc1 trains from epoch 2 until step 44, and again from epoch 7 (step 56 on one clock)."""
    fc1 = epoch >= 7 or (epoch >= 2 and step < 44)
    return ALL if fc1 else [n for n in ALL if not n.startswith("fc1.")]


def expected_lrs(epoch: int, step: int) -> list[float]:
    """Policy rate of each group (fc1, fc2, out) times the LambdaLR factor after `step` steps.

    fc1's warm-up starts at step 16 and lasts 16 steps, counting the step about to be taken:
    the step numbered `step` (0-based) runs at (step - 16 + 1) / 16 of the rate, until 1.
    """
    base = worker.BASE_LR
    warmup = min(1.0, (step - 16 + 1) / 16)
    rates = [
        base if epoch < 2 else 0.1 * base * warmup,  # frozen fc1 keeps the base rate until then
        0.1 * base if epoch < 4 else 0.5 * base,
        base,
    ]
    return [r * worker.lr_factor(step) for r in rates]


def _key(record: dict[str, Any]) -> tuple[str, int, int]:
    return (record["label"], record["epoch"], record["step"])


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal, with tensors compared bit for bit (and by dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {a.keys()} != {b.keys()}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --- the subprocess tests ------------------------------------------------------------------------


def test_uninterrupted_run_goes_through_every_phase(runs: dict[str, Any]) -> None:
    records = runs["reference"]["records"]
    assert len(records) == worker.EPOCHS * (1 + SPE)
    for r in records:
        where = f"{r['label']} epoch {r['epoch']} step {r['step']}"
        assert r["trainable"] == expected_trainable(r["epoch"], r["step"]), where
        assert r["groups"] == GROUPS, where
        for got, want in zip(r["lrs"], expected_lrs(r["epoch"], r["step"]), strict=True):
            assert math.isclose(got, want, rel_tol=1e-12), f"{where}: lr {got} != {want}"
        assert r["weight_decays"] == [worker.WEIGHT_DECAY] * 3, where
    # Each phase of the policy shows up: without fc1, with it, without it again, with it again.
    fc1 = [("fc1.weight" in r["trainable"]) for r in records]
    changes = [i for i in range(1, len(fc1)) if fc1[i] != fc1[i - 1]]
    assert len(changes) == 3, changes


def test_uninterrupted_metric_run_unfreezes_at_each_plateau(runs: dict[str, Any]) -> None:
    records = runs["metric_reference"]["records"]
    assert len(records) == worker.EPOCHS * (1 + SPE)
    for r in records:
        # A plateau observed after an epoch takes effect at the next start_epoch: the record of
        # the epoch's last step (already at the next epoch's moment) is still before it.
        fc2, fc1 = (
            r["epoch"] >= e and (r["label"] == "start" or r["step"] > e * SPE) for e in (4, 7)
        )
        want = [
            n
            for n in ALL
            if n.startswith("out.")
            or (fc2 and n.startswith("fc2."))
            or (fc1 and n.startswith("fc1."))
        ]
        assert r["trainable"] == want, _key(r)
        # fc1 and out share the base rate at every moment: one group, fc2 (0.1x) the other.
        assert r["groups"] == [GROUPS[0] + GROUPS[2], GROUPS[1]], _key(r)
        base = worker.BASE_LR * worker.lr_factor(r["step"])
        assert r["lrs"] == pytest.approx([base, 0.1 * base], rel=1e-12), _key(r)
    state = runs["metric_reference"]["freeze"]["metrics"]
    assert state["fired"] == [[2, [[4, 4 * SPE], [7, 7 * SPE]]]]


@pytest.mark.parametrize("case", {**CASES, **METRIC_CASES})
def test_killed_run_stopped_after_its_checkpoint(runs: dict[str, Any], case: str) -> None:
    epoch, hold = {**CASES, **METRIC_CASES}[case]
    result = runs[case]
    assert result["returncode"] == -signal.SIGKILL
    assert not result["killed_final_exists"]
    ckpt = result["checkpoint"]
    assert ckpt["epoch"] == epoch
    # After the epoch's last step the FreezeScheduler is at the start of the next epoch.
    assert ckpt["freeze"]["epoch"] == epoch + 1 and ckpt["freeze"]["step"] == (epoch + 1) * SPE
    # The killed run had trained past the checkpoint: that work is lost and must be redone.
    assert result["held"]["step"] == hold > (epoch + 1) * SPE


@pytest.mark.parametrize("case", {**CASES, **METRIC_CASES})
def test_resumed_run_equals_the_uninterrupted_run(runs: dict[str, Any], case: str) -> None:
    epoch, _ = {**CASES, **METRIC_CASES}[case]
    ref = runs["metric_reference" if case in METRIC_CASES else "reference"]
    got = runs[case]["final"]
    assert got["start_epoch"] == epoch + 1
    # Bit for bit: every parameter, every optimizer moment, every scheduler value.
    assert ref["params"].keys() == got["params"].keys()
    for name in ref["params"]:
        assert torch.equal(ref["params"][name], got["params"][name]), name
    assert_same(ref["optimizer"], got["optimizer"], "optimizer")
    assert_same(ref["lr_scheduler"], got["lr_scheduler"], "lr_scheduler")
    assert ref["freeze"] == got["freeze"]

    by_moment = {_key(r): r for r in ref["records"]}
    restored, *after = got["records"]
    # Right after loading: what the uninterrupted run had after the checkpoint epoch's last step
    # (where its FreezeScheduler moved on to the start of the next epoch).
    assert restored["label"] == "restored"
    last = ("step", epoch + 1, (epoch + 1) * SPE)
    assert {**restored, "label": "step"} == by_moment[last]
    # From there on, every record equals the uninterrupted run's at the same moment.
    following = [_key(r) for r in ref["records"]]
    assert [_key(r) for r in after] == following[following.index(last) + 1 :]
    for r in after:
        assert r == by_moment[_key(r)], _key(r)
    # The resumed part really crossed policy changes (the comparison above is not vacuous).
    assert len({tuple(r["trainable"]) for r in after}) > 1
    assert len({tuple(r["lrs"]) for r in after}) > 1


# --- in-process: checkpoints from every phase ----------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors run much faster on one thread (no hand-offs between threads on busy cores);
    the setting is process-wide, so it is put back for the other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _roundtrip(obj: Any) -> Any:
    """Through torch.save / torch.load, as a checkpoint file would be."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _state_names(run: Any) -> list[str]:
    return sorted(run.names[id(p)] for p in run.optimizer.state)


def _final(run: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.model.named_parameters()}


def _check_resumes(
    policy: fp.Policy,
    *,
    data: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    steps_per_epoch: int | None,
    every_step: bool,
) -> int:
    """Train once, checkpointing at every epoch end (and step); load each checkpoint into a fresh
    run and compare with the uninterrupted one. Returns the number of checkpoints checked."""
    ref = worker.build(policy, 0, steps_per_epoch)
    records: list[dict[str, Any]] = []
    step_ckpts: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = []
    epoch_ckpts: list[tuple[int, dict[str, Any]]] = []

    def after_step(run: Any) -> None:
        if every_step:
            ckpt = _roundtrip(worker.checkpoint(run, run.freeze.epoch))
            step_ckpts.append((ckpt, worker.snapshot(run, "x"), _state_names(run)))

    def after_epoch(run: Any, epoch: int) -> None:
        epoch_ckpts.append((epoch, _roundtrip(worker.checkpoint(run, epoch))))

    worker.train(ref, data, range(epochs), records, after_step=after_step, after_epoch=after_epoch)
    final = _final(ref)
    by_moment = {_key(r): r for r in records}

    # At every step: loading into a run built at epoch 0 fits and gives the same state.
    for ckpt, snap, state_names in step_ckpts:
        fresh = worker.build(policy, 1, steps_per_epoch)
        worker.restore(fresh, ckpt)
        assert worker.snapshot(fresh, "x") == snap
        assert _state_names(fresh) == state_names

    # At every epoch end: the resumed run continues exactly as the uninterrupted one.
    for epoch, ckpt in epoch_ckpts[:-1]:
        fresh = worker.build(policy, 1, steps_per_epoch)
        start = worker.restore(fresh, ckpt)
        more: list[dict[str, Any]] = []
        worker.train(fresh, data, range(start, epochs), more)
        for r in more:
            assert r == by_moment[_key(r)], (epoch, _key(r))
        got = _final(fresh)
        for name, value in final.items():
            assert torch.equal(value, got[name]), (epoch, name)
    return len(step_ckpts) + len(epoch_ckpts)


def test_checkpoint_from_every_step_of_the_policy_loads_into_a_fresh_run(one_thread: None) -> None:
    checked = _check_resumes(
        fp.parse(worker.POLICY),
        data=worker.make_data(),
        epochs=worker.EPOCHS,
        steps_per_epoch=SPE,
        every_step=True,
    )
    assert checked == worker.EPOCHS * SPE + worker.EPOCHS


# Random policies over the worker's MLP: any mix of freezes, unfreezes, rate and decay changes
# (including `lr 0`, multipliers and absolute values) at epoch or step times, gradual unfreezing
# (`then ... every`) and warm-ups.
SELECTORS = ["fc1", "fc2", "out", "*", "*.bias", "fc1.weight", "out.weight", "* except out"]
ACTIONS = [
    "freeze {}",
    "unfreeze {}",
    "lr 0.1x for {}",
    "lr 0.5x for {}",
    "lr 0 for {}",
    "lr 0.003 for {}",
    "decay 0 for {}",
    "decay 2x for {}",
]
#: (time, every, warm-up) on one clock each, so none needs steps_per_epoch to be known.
TIMES = [
    ("", " every 2 steps", " warmup 3 steps"),
    (" at epoch 1", " every epoch", " warmup 2 epochs"),
    (" at epoch 2", " every 1 epoch", " warmup 1 epoch"),
    (" at step 3", " every 4 steps", " warmup 6 steps"),
    (" at step 9", " every 2 steps", " warmup 1 step"),
]


@st.composite
def statements(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(ACTIONS))
    at, every, warmup = draw(st.sampled_from(TIMES))
    if draw(st.booleans()):
        text = action.format(draw(st.sampled_from(SELECTORS))) + at
    else:  # gradual: groups one after another
        groups = draw(
            st.lists(st.sampled_from(["fc1", "fc2", "out", "fc1.bias"]), min_size=2, max_size=3)
        )
        text = action.format(" then ".join(groups)) + at + every
    if action.startswith(("unfreeze", "lr")) and "lr 0 " not in action and draw(st.booleans()):
        text += warmup
    return text


# Random policies legitimately warn (FP202 `freeze fc1` twice, ...); resuming is what is checked.
@pytest.mark.filterwarnings("ignore::freezepolicy.PolicyWarning")
@pytest.mark.usefixtures("one_thread")
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(statements(), min_size=1, max_size=6),
    steps_per_epoch_known=st.booleans(),
)
def test_any_policy_loads_at_any_step_and_resumes_at_any_epoch(
    lines: list[str], steps_per_epoch_known: bool
) -> None:
    data = worker.make_data(samples=4 * worker.BATCH)  # 4 steps per epoch
    _check_resumes(
        fp.parse("\n".join(lines)),
        data=data,
        epochs=4,
        steps_per_epoch=4 if steps_per_epoch_known else None,
        every_step=True,
    )


def test_rate_changes_leave_earlier_scheduler_state_dicts_alone(one_thread: None) -> None:
    """A scheduler state dict taken at a checkpoint (held in memory, or written in the
    background) keeps that moment's values while the run goes on through policy rate changes,
    and so does the dict a run was resumed from. torch's LambdaLR shares its `base_lrs` list
    with both, so freezepolicy must replace that list, never scale it in place."""
    policy = fp.parse(worker.POLICY)
    data = worker.make_data()
    run = worker.build(policy)
    worker.train(run, data, range(2), [])
    taken = run.lr_scheduler.state_dict()
    loaded = _roundtrip(worker.checkpoint(run, 1))
    values = list(taken["base_lrs"])
    fresh = worker.build(policy, 1)
    worker.restore(fresh, loaded)
    for r in (run, fresh):
        worker.train(r, data, range(2, 5), [])  # fc1 to 0.1x at epoch 2, fc2 to 0.5x at 4
        assert r.lr_scheduler.base_lrs != values
    assert taken["base_lrs"] == values
    assert loaded["lr_scheduler"]["base_lrs"] == values
    assert fresh.lr_scheduler.base_lrs == run.lr_scheduler.base_lrs


def test_freeze_scheduler_built_after_loading_needs_the_saved_moment(one_thread: None) -> None:
    """The other order docs/resume.md allows: model, optimizer and LR scheduler loaded first,
    then the FreezeScheduler built at the saved (epoch, step), not at epoch 0 (whose apply
    would drop the restored optimizer state of tensors frozen at epoch 0)."""
    policy = fp.parse(worker.POLICY)
    data = worker.make_data()
    saved: dict[int, dict[str, Any]] = {}

    def keep(run: Any, epoch: int) -> None:
        saved[epoch] = _roundtrip(worker.checkpoint(run, epoch))

    ref = worker.build(policy)
    records: list[dict[str, Any]] = []
    worker.train(ref, data, range(worker.EPOCHS), records, after_epoch=keep)
    final = _final(ref)
    by_moment = {_key(r): r for r in records}
    for epoch in (1, 3, 5):  # fc1 frozen, trainable, re-frozen
        ckpt = saved[epoch]
        torch.manual_seed(1)
        model = worker.MLP()
        optimizer = torch.optim.AdamW(
            fp.param_groups(
                model,
                policy,
                lr=worker.BASE_LR,
                weight_decay=worker.WEIGHT_DECAY,
                steps_per_epoch=SPE,
            )
        )
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, worker.lr_factor)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        freeze = fp.FreezeScheduler(
            model,
            policy,
            optimizer,
            steps_per_epoch=SPE,
            scheduler=lr_scheduler,
            epoch=ckpt["freeze"]["epoch"],
            step=ckpt["freeze"]["step"],
        )
        names = {id(p): n for n, p in model.named_parameters()}
        run = worker.Run(model, optimizer, lr_scheduler, freeze, names)
        more: list[dict[str, Any]] = []
        worker.train(run, data, range(epoch + 1, worker.EPOCHS), more)
        for r in more:
            assert r == by_moment[_key(r)], (epoch, _key(r))
        got = _final(run)
        for name, value in final.items():
            assert torch.equal(value, got[name]), (epoch, name)
