"""The accelerate recipe (docs/accelerate.md) under `accelerate launch` with 2 CPU processes.

tests/accelerate_worker.py is the recipe: `accelerator.prepare` of model, optimizer (built with
`freezepolicy.param_groups`), loader and LambdaLR, then the loop helper `FreezeScheduler` over the
prepared, wrapped optimizer and scheduler. The test launches it as a user would, with the real
`accelerate launch` command (torchrun underneath, gloo on loopback), and checks each rank's
records against ddp_schedule's hand-worked schedule: the ranks stay bit for bit identical, exactly
the tensors the policy trains move in each step, and every group's learning rate is the policy's
rate times the scheduler's factor, so the policy's rate change reached the torch optimizer through
accelerate's wrappers and survived the scheduler's later steps.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).parent
WORKER = HERE / "accelerate_worker.py"
DEADLINE = 240  # seconds; the launch takes about 15 s on 2 busy cores
_spec = importlib.util.spec_from_file_location("ddp_schedule", HERE / "ddp_schedule.py")
assert _spec is not None and _spec.loader is not None
schedule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(schedule)

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("accelerate")
    launcher = Path(sys.executable).parent / "accelerate"
    command = [
        str(launcher),
        "launch",
        "--multi_gpu",  # accelerate's torchrun launcher; on CPU (below) it starts gloo processes
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_port=0",  # a free port, chosen by torchrun: no port race
        str(WORKER),
        "--out",
        str(out),
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(
            command, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=DEADLINE
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"accelerate launch still running after {DEADLINE} s:\n{e.stderr}")
    if done.returncode != 0:
        pytest.fail(f"accelerate launch exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_cpu_processes_run_the_recipe_with_the_wrappers(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert rank["world_size"] == 2
        assert rank["distributed_type"] == "DistributedType.MULTI_CPU"
        assert rank["steps_per_epoch"] == schedule.STEPS_PER_EPOCH
        # FreezeScheduler was given what accelerator.prepare returned.
        assert rank["optimizer_type"] == "AcceleratedOptimizer"
        assert rank["scheduler_type"] == "AcceleratedScheduler"


def test_ranks_stay_identical_and_frozen_tensors_do_not_move(ranks: list[dict[str, Any]]) -> None:
    schedule.check_ranks([rank["records"] for rank in ranks])


def test_policy_rates_reach_the_optimizer_through_the_wrappers(
    ranks: list[dict[str, Any]],
) -> None:
    def factor(record: dict[str, Any]) -> float:
        return 0.95 ** record["scheduler"]

    for rank in ranks:
        records = rank["records"]
        schedule.check_rates(records, factor)
        # The head's rate changed at epoch 2 and the scheduler stepped on after it.
        changed = 2 * schedule.STEPS_PER_EPOCH
        assert [r["step"] for r in records if r["step"] > changed]
        assert records[-1]["lrs"][1] == pytest.approx(
            0.1 * schedule.BASE_LR * factor(records[-1]), rel=1e-12
        )


# --- in this process: resuming the recipe with accelerator.save_state ----------------------------

RESUME_POLICY = "freeze a\nunfreeze a at epoch 1\nlr 0.5x for b at epoch 2\n"
RESUME_EPOCHS = 4


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _recipe(init_seed: int) -> dict[str, Any]:
    """The recipe in one process, with the FreezeScheduler registered for checkpointing."""
    from accelerate import Accelerator

    import freezepolicy as fp

    accelerator = Accelerator()
    policy = fp.parse(RESUME_POLICY, "resume.freeze")
    torch.manual_seed(init_seed)
    model = Small()
    optimizer = torch.optim.AdamW(fp.param_groups(model, policy, lr=0.01, weight_decay=0.01))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 2, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    freeze = fp.FreezeScheduler(
        model, policy, optimizer, scheduler=scheduler, steps_per_epoch=len(loader)
    )
    accelerator.register_for_checkpointing(freeze)
    return locals()


def _train(run: dict[str, Any], epochs: range, save: Path | None = None) -> None:
    accelerator, model, optimizer = run["accelerator"], run["model"], run["optimizer"]
    for epoch in epochs:
        run["freeze"].start_epoch(epoch)
        for x, y in run["loader"]:
            accelerator.backward((model(x) - y).pow(2).mean())
            optimizer.step()
            run["scheduler"].step()
            optimizer.zero_grad()
            run["freeze"].step()
        if save is not None and epoch == 1:
            accelerator.save_state(save)


@pytest.fixture
def fresh_accelerate_state() -> Any:
    """accelerate keeps process-wide state; cleared after each run, as its own tests do."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    yield reset
    reset()


def test_recipe_resumes_from_accelerator_save_state(
    tmp_path: Path, fresh_accelerate_state: Any
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = _recipe(0)
        _train(straight, range(RESUME_EPOCHS), save=tmp_path / "epoch-1")
        fresh_accelerate_state()
        resumed = _recipe(1)  # other initial weights: what it ends with came from the checkpoint
        resumed["accelerator"].load_state(tmp_path / "epoch-1")
        # Saved after epoch 1's last step: the start of epoch 2 (docs/applying.md).
        assert (resumed["freeze"].epoch, resumed["freeze"].global_step) == (2, 8)
        _train(resumed, range(2, RESUME_EPOCHS))
    finally:
        torch.set_num_threads(threads)
    for (name, p), (_, q) in zip(
        straight["model"].named_parameters(), resumed["model"].named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    # The rate change at epoch 2 reached the optimizer and outlived 16 scheduler steps.
    steps = RESUME_EPOCHS * 4
    for run in (straight, resumed):
        lrs = [float(g["lr"]) for g in run["optimizer"].param_groups]
        assert lrs == pytest.approx([0.01 * 0.9**steps, 0.5 * 0.01 * 0.9**steps], rel=1e-12)
