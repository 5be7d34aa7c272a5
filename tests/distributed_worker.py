"""One rank of the 2-process gloo job that tests/test_distributed.py starts on loopback.

Run as `python tests/distributed_worker.py --rank R --world 2 --store FILE --out DIR SCENARIO...`.
The ranks meet through a file store (no port to pick, so no port race) and talk over the loopback
interface. Each scenario trains a small model with different data on each rank and saves, from
rank 0, every parameter as held by every rank at every step boundary (all-gathered), so the test
can check that the ranks agree bit for bit and that exactly the expected parameters moved.

On any error the rank writes the traceback to DIR/SCENARIO.error.rank<R> and exits at once with
status 1, so its peer fails fast on a closed connection instead of waiting for a collective.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import freezepolicy as fp
from freezepolicy.runtime import ddp as fpddp

#: The schedule every training scenario uses (the test holds the same table, written by hand).
POLICY = """\
freeze *
unfreeze head
unfreeze block at step 2
freeze block.0.weight at step 4   # part of a sharded block, refrozen
unfreeze stem.weight at step 4
freeze block at step 6            # the rest of the block refrozen
"""
STEPS = 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 12)
        self.block = nn.Sequential(nn.Linear(12, 12), nn.LayerNorm(12))
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))))


def make_net() -> Net:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    return Net()


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different data on each rank: what makes unsynchronized gradients diverge."""
    g = torch.Generator().manual_seed(1000 + 97 * rank + step)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def gather(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """name -> [rank 0's copy, rank 1's copy, ...] of every parameter (full tensors)."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        full = full.detach().clone()
        copies = [torch.empty_like(full) for _ in range(dist.get_world_size())]
        dist.all_gather(copies, full)
        out[name] = copies
    return out


def trainable(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def apply(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> fp.ApplyReport:
    return fp.apply_policy(model, fp.parse(POLICY, "dist.freeze"), opt, step=step)


def step_once(model: nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = batch(rank, step)
    opt.zero_grad(set_to_none=True)
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()


class Recorder:
    """DDP communication hook that averages like the default one and records, per step, which
    parameters were in the buckets it reduced (by storage, so wrappers cannot confuse names)."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {p.data_ptr(): n for n, p in model.named_parameters()}
        self.step = -1
        self.reduced: dict[int, set[str]] = {}

    @staticmethod
    def hook(state, bucket):  # unannotated: DDP rejects the string annotations of this module
        seen = state.reduced.setdefault(state.step, set())
        seen.update(state.names[p.data_ptr()] for p in bucket.parameters())
        buf = bucket.buffer().div_(dist.get_world_size())
        fut = dist.all_reduce(buf, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])


# --- scenarios -----------------------------------------------------------------------------------


def raw_ddp(rank: int) -> dict[str, Any]:
    """No freezepolicy: unfreeze a layer after wrapping, as users do by hand. The bug."""
    net = make_net()
    for p in [*net.stem.parameters(), *net.block.parameters()]:
        p.requires_grad_(False)
    model = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for p in net.block.parameters():
        p.requires_grad_(True)
    for step in range(2):
        step_once(model, opt, rank, step)
    return {"final": gather(net)}


def _train_ddp(rank: int, ddp_kwargs: dict, *, hook: bool, inner: bool, builtin: bool) -> dict:
    net = make_net()
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    model = DDP(net, **ddp_kwargs)
    recorder = Recorder(net) if hook else None
    if recorder is not None:
        model.register_comm_hook(recorder, Recorder.hook)
    if builtin:
        model._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    target = net if inner else model  # inner: the wrapper is found without being passed
    history, flags = [], []
    for step in range(STEPS):
        apply(target, opt, step)
        flags.append(trainable(net))
        history.append(gather(net))
        if recorder is not None:
            recorder.step = step
        step_once(model, opt, rank, step)
    history.append(gather(net))
    out = {
        "initial": initial,
        "history": history,
        "trainable": flags,
        "rebuilds": fpddp.reducer_rebuilds(model),
        "comm_hook": model._get_ddp_logging_data().get("comm_hook"),
    }
    if recorder is not None:
        out["reduced"] = {s: sorted(names) for s, names in recorder.reduced.items()}
    else:
        # The pre-hook freezepolicy added must not stop the wrapper from being saved whole.
        buffer = io.BytesIO()
        torch.save(model, buffer)
        out["saved_bytes"] = buffer.tell()
    return out


def ddp(rank: int) -> dict:
    return _train_ddp(rank, {}, hook=False, inner=False, builtin=False)


def ddp_hook(rank: int) -> dict:
    return _train_ddp(rank, {}, hook=True, inner=False, builtin=False)


def ddp_unused(rank: int) -> dict:
    return _train_ddp(rank, {"find_unused_parameters": True}, hook=True, inner=False, builtin=False)


def ddp_static(rank: int) -> dict:
    return _train_ddp(rank, {"static_graph": True}, hook=True, inner=False, builtin=False)


def ddp_view(rank: int) -> dict:
    return _train_ddp(
        rank, {"gradient_as_bucket_view": True}, hook=False, inner=False, builtin=False
    )


def ddp_inner(rank: int) -> dict:
    return _train_ddp(rank, {}, hook=True, inner=True, builtin=False)


def ddp_builtin(rank: int) -> dict:
    return _train_ddp(rank, {}, hook=False, inner=False, builtin=True)


def ddp_rewrap(rank: int) -> dict:
    """The inner module passed while several DDPs wrap it, through the schedule.

    A first DDP trains steps 0-1 and stays alive (accelerate keeps every wrapper it prepared);
    before step 2 the module is wrapped again, as a second `trainer.train()` does and as the
    FP206 workaround says, and the new wrapper trains from then on. A third wrapper is dropped
    in a reference cycle, so only a garbage collection frees it, and the ranks collect at
    different moments (rank 0 at once, rank 1 not before the apply): the ranks' heaps differ
    the way their garbage-collection histories make them differ in any run.
    """
    net = make_net()
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    first = DDP(net)
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    wrappers = [first]
    model = first
    history, flags = [], []
    gc.disable()  # only the collections below, so the ranks' heaps differ as described
    try:
        for step in range(STEPS):
            if step == 2:
                model = DDP(net)
                wrappers.append(model)
                dropped = DDP(net)
                dropped.cycle = [dropped]  # unreachable once dropped, yet alive until collected
                del dropped
                if rank == 0:
                    gc.collect()
            apply(net, opt, step)
            flags.append(trainable(net))
            history.append(gather(net))
            step_once(model, opt, rank, step)
        history.append(gather(net))
    finally:
        gc.enable()
    return {
        "initial": initial,
        "history": history,
        "trainable": flags,
        "rebuilds": fpddp.reducer_rebuilds(model),
        "first_rebuilds": fpddp.reducer_rebuilds(first),
    }


def ddp_midstep(rank: int) -> dict:
    """apply_policy between a forward pass and its backward (a misuse): never a desync."""
    net = make_net()
    model = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    apply(model, opt, 0)
    step_once(model, opt, rank, 0)
    x, y = batch(rank, 1)
    loss = (model(x) - y).pow(2).mean()
    apply(model, opt, 2)  # unfreezes the block while the forward's graph waits for backward
    loss.backward()
    opt.step()
    for step in (2, 3):
        step_once(model, opt, rank, step)
    return {"final": gather(net), "trainable": trainable(net)}


def ddp_disagree(rank: int) -> dict:
    """Ranks that apply different moments: FP206 on every rank, and nothing changed."""
    net = make_net()
    model = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    apply(model, opt, 0)
    step_once(model, opt, rank, 0)
    before = trainable(net)
    try:
        apply(model, opt, 2 if rank == 0 else 4)
        outcome = "no error"
    except fp.PolicyResolveError as e:
        outcome = f"{e.code}: {e.message}"
    after = trainable(net)
    apply(model, opt, 2)  # agreeing again: training goes on in sync
    step_once(model, opt, rank, 2)
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, (outcome, before, after))
    return {"outcomes": outcomes, "final": gather(net), "trainable": trainable(net)}


def delayed_refused(rank: int) -> dict:
    """DDP gives the parameters in delay_all_reduce_named_params a gradient at every forward,
    frozen or not, so a policy that freezes one is refused (FP206) and changes nothing."""
    net = make_net()
    model = DDP(
        net,
        delay_all_reduce_named_params=[("head.weight", net.head.weight)],
        param_to_hook_all_reduce=net.head.bias,
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    apply(model, opt, 0)  # head.weight stays trainable: accepted
    step_once(model, opt, rank, 0)
    before = trainable(net)
    try:
        fp.apply_policy(model, fp.parse("freeze head", "freeze_head.freeze"), opt)
        outcome = "no error"
    except fp.PolicyResolveError as e:
        outcome = f"{e.code}: {e.message}"
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, (outcome, before, trainable(net)))
    # No parameter comparison: on CPU/gloo DDP's delayed all-reduce is not waited for before
    # the optimizer step, so the delayed parameter differs across ranks even without
    # freezepolicy (torch's behaviour, seen with plain DDP).
    return {"outcomes": outcomes}


def _fsdp2_net() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    net = make_net()
    fully_shard(net.block)
    fully_shard(net)
    return net


def _reduce_scatter_recorder(log: dict, clock: list[int], key: str) -> object:
    """An FSDP2 reduce-scatter that records how many gradient elements each module sends."""
    from torch.distributed.fsdp._fully_shard._fsdp_api import ReduceScatter

    class Recording(ReduceScatter):
        def allocate(self, size, *, dtype, device):
            return torch.empty(*size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            per_step = log.setdefault(clock[0], {})
            per_step[key] = per_step.get(key, 0) + input_tensor.numel()
            return dist.reduce_scatter_single(
                output=output_tensor, input=input_tensor, group=group, op=op, async_op=async_op
            )

    return Recording()


def fsdp2(rank: int) -> dict:
    net = _fsdp2_net()
    initial = {n: p.full_tensor().detach().clone() for n, p in net.named_parameters()}
    sent: dict[int, dict[str, int]] = {}
    clock = [-1]
    for key, module in (("root", net), ("block", net.block)):
        module.set_custom_reduce_scatter(_reduce_scatter_recorder(sent, clock, key))
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    history, flags = [], []
    for step in range(STEPS):
        apply(net, opt, step)
        flags.append(trainable(net))
        history.append(gather(net))
        clock[0] = step
        step_once(net, opt, rank, step)
    history.append(gather(net))
    return {"initial": initial, "history": history, "trainable": flags, "sent": sent}


def _no_fsdp_state() -> None:
    raise AttributeError("FSDP2 internals as a future torch might have them")


def fsdp2_unsharded(rank: int) -> dict:
    """An apply while FSDP2 holds unsharded parameters: FP206, nothing changed, also when
    freezepolicy cannot look into FSDP2's internals; after reshard() the same apply works."""
    net = _fsdp2_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    apply(net, opt, 0)
    step_once(net, opt, rank, 0)
    net.set_reshard_after_backward(False)  # gradient-accumulation style: stay unsharded
    x, y = batch(rank, 1)
    (net(x) - y).pow(2).mean().backward()
    before = trainable(net)
    try:
        apply(net, opt, 2)
        outcome = "no error"
    except fp.PolicyResolveError as e:
        outcome = f"{e.code}: {e.message}"
    after = trainable(net)
    for m in (net, net.block):
        m._get_fsdp_state = _no_fsdp_state  # the fallback: judge by what is registered
    try:
        apply(net, opt, 2)
        blind = "no error"
    except fp.PolicyResolveError as e:
        blind = f"{e.code}: {e.message}"
    finally:
        for m in (net, net.block):
            del m._get_fsdp_state
    blind_after = trainable(net)
    net.reshard()
    net.set_reshard_after_backward(True)
    opt.step()
    apply(net, opt, 2)
    step_once(net, opt, rank, 2)
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, (outcome, before, after))
    blinds: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(blinds, (blind, before, blind_after))
    return {
        "outcomes": outcomes,
        "blind": blinds,
        "final": gather(net),
        "trainable": trainable(net),
    }


class _LossNet(Net):
    """Net with the Trainer's calling convention: keyword inputs, a dict with the loss."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return {"loss": (out - labels).pow(2).mean(), "logits": out}


def hf_trainer(rank: int) -> dict:
    """transformers.Trainer with FreezePolicyCallback, distributed over the two ranks.

    The Trainer wraps the model in DDP itself and hands callbacks the inner module, so this runs
    the path where freezepolicy finds the DDP around the module. Its distributed sampler gives
    each rank different samples of one dataset.
    """
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments

    from freezepolicy.integrations.hf import FreezePolicyCallback

    # What torchrun would set. The process group is already up, so the Trainer (through
    # accelerate) only reads these and never opens the address.
    world = str(dist.get_world_size())
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=world,
        LOCAL_WORLD_SIZE=world,
        MASTER_ADDR="127.0.0.1",
    )
    torch.manual_seed(0)
    net = _LossNet()
    initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    g = torch.Generator().manual_seed(7)
    data = [
        {"x": torch.randn(6, generator=g), "labels": torch.randn(3, generator=g)} for _ in range(64)
    ]
    history: list[dict] = []
    flags: list[list[str]] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            flags.append(trainable(model))
            history.append(gather(model))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            history.append(gather(model))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            use_cpu=True,
            ddp_backend="gloo",
            per_device_train_batch_size=4,
            max_steps=STEPS,
            learning_rate=0.05,
            weight_decay=0.1,
            lr_scheduler_type="constant",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        callbacks = [FreezePolicyCallback(fp.parse(POLICY, "dist.freeze")), Record()]
        trainer = Trainer(model=net, args=args, train_dataset=data, callbacks=callbacks)
        trainer.train()
        wrapper = type(trainer.model_wrapped).__name__
    return {
        "initial": initial,
        "history": history,
        "trainable": flags,
        "wrapper": wrapper,
        "rebuilds": fpddp.reducer_rebuilds(trainer.model_wrapped),
    }


SCENARIOS: dict[str, Callable[[int], dict]] = {
    f.__name__: f
    for f in (
        raw_ddp,
        ddp,
        ddp_hook,
        ddp_unused,
        ddp_static,
        ddp_view,
        ddp_inner,
        ddp_builtin,
        ddp_rewrap,
        ddp_midstep,
        ddp_disagree,
        fsdp2,
        fsdp2_unsharded,
        delayed_refused,
        hf_trainer,
    )
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("scenarios", nargs="+")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)  # two ranks share two cores
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.abspath(args.store)}",
        rank=args.rank,
        world_size=args.world,
        timeout=datetime.timedelta(seconds=120),  # a hang is cut by the test's deadline first
    )
    import time

    t0 = time.perf_counter()
    print(f"ready {t0:.3f}", flush=True)
    for name in args.scenarios:
        print(f"{name} start {time.perf_counter() - t0:.3f}", flush=True)
        try:
            result = SCENARIOS[name](args.rank)
        except BaseException:
            (out / f"{name}.error.rank{args.rank}").write_text(traceback.format_exc())
            sys.stdout.flush()
            os._exit(1)  # the peer sees the connection close instead of waiting out a timeout
        if args.rank == 0:
            torch.save(result, out / f"{name}.pt")
        dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    # Skip interpreter teardown: with torch._dynamo loaded (DDP imports it) it takes seconds.
    os._exit(0)


if __name__ == "__main__":
    main()
