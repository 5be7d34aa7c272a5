"""What keeping DDP ranks in sync costs: `python tests/distributed_bench.py` (not a test).

Starts 2 gloo ranks on loopback (CPU) and times, on a small MLP and on torchvision's resnet18:
the check before an apply that changes the trainable set (including the one all-reduce that
confirms the ranks agree), the reducer rebuild, the first training step after a rebuild against a
steady step, an apply at a moment where nothing changes, the forward pre-hook when no rebuild is
pending, and the heap scan that finds a DDP when apply_policy is given the inner module.
docs/distributed.md quotes its output.
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import freezepolicy as fp
from freezepolicy.runtime import ddp as fpddp
from freezepolicy.runtime import distributed as fpdist


def ms(samples: list[float]) -> str:
    return f"{1000 * statistics.median(samples):8.3f} ms"


def mlp() -> tuple[nn.Module, str, tuple[int, ...]]:
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.Linear(256, 10))
    return net, "freeze *\nunfreeze 3\nunfreeze 2 at step 1", (32, 64)


def resnet() -> tuple[nn.Module, str, tuple[int, ...]]:
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=10)
    return net, "freeze *\nunfreeze fc\nunfreeze layer4 at step 1", (8, 3, 32, 32)


def step(model: nn.Module, opt: torch.optim.Optimizer, shape: tuple[int, ...]) -> float:
    x = torch.randn(*shape)
    t = time.perf_counter()
    opt.zero_grad()
    model(x).float().pow(2).mean().backward()
    opt.step()
    return time.perf_counter() - t


def bench(rank: int, name: str, build) -> None:
    torch.manual_seed(0)
    net, text, shape = build()
    policy = fp.parse(text, name)
    model = DDP(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    fp.apply_policy(model, policy, opt, step=0)
    for _ in range(3):
        step(model, opt, shape)
    steady = [step(model, opt, shape) for _ in range(5)]  # the head-only set of moment 0

    # One policy event, timed piece by piece: check (agreement all-reduce included), the flag
    # changes, scheduling, then the rebuild at the next forward, then that first step.
    names, params = zip(*net.named_parameters(), strict=True)
    checks, changes, rebuilds, extra, applies = [], [], [], [], []
    for i in range(6):
        moment = 1 if i % 2 == 0 else 0
        decisions = policy.resolve(list(names), epoch=0, step=moment)
        targets = [decisions[n].trainable is not False for n in names]
        dist.barrier()
        t = time.perf_counter()
        fpdist.check_apply(model, params, targets)
        checks.append(time.perf_counter() - t)
        dist.barrier()
        t = time.perf_counter()
        fp.apply_policy(model, policy, opt, step=moment)  # schedules the rebuild
        changes.append(time.perf_counter() - t)
        t = time.perf_counter()
        fpddp.rebuild_if_pending(model, ())
        rebuilds.append(time.perf_counter() - t)
        # The new reducer allocates its buckets at the first backward and learns their order
        # then; DDP re-buckets at the second forward. Steps 3-5 are the steady state of the new
        # trainable set, which is what the first two are compared with.
        times = [step(model, opt, shape) for _ in range(5)]
        extra.append(times[0] + times[1] - 2 * statistics.median(times[2:]))
        dist.barrier()
        t = time.perf_counter()
        fp.apply_policy(model, policy, opt, step=moment)  # nothing changes: early return
        applies.append(time.perf_counter() - t)

    # The usual manual workaround, for comparison: wrap the module in a new DDP after a change.
    rewraps = []
    for _ in range(3):
        dist.barrier()
        t = time.perf_counter()
        DDP(net)
        rewraps.append(time.perf_counter() - t)

    hook = fpddp.RebuildHook()
    t = time.perf_counter()
    for _ in range(10_000):
        hook(model, ())
    per_forward = (time.perf_counter() - t) / 10_000

    fpddp._OUTER.clear()
    t = time.perf_counter()
    found = fpddp._scan_for_ddp(net)
    scan = time.perf_counter() - t
    assert found is model
    if rank == 0:
        n = sum(p.numel() for p in params)
        print(f"{name}: {n:,} parameters in {len(params)} tensors")
        print(f"  steady training step          {ms(steady)}")
        print(f"  check before a change         {ms(checks)}  (all-reduce of 2 int64 included)")
        print(f"  apply that changes the set    {ms(changes)}  (check included)")
        print(f"  reducer rebuild               {ms(rebuilds)}")
        print(f"  2 steps after it, extra time  {ms(extra)}  (vs. steady steps, same set)")
        print(f"  apply, nothing changes        {ms(applies)}")
        print(f"  (a new DDP around the module  {ms(rewraps)}, for comparison)")
        print(f"  pre-hook, nothing pending     {1e6 * per_forward:8.3f} us per forward")
        print(f"  heap scan (inner module)      {1000 * scan:8.3f} ms")


def worker(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    bench(rank, "mlp", mlp)
    bench(rank, "resnet18", resnet)
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    if len(sys.argv) == 3:
        worker(int(sys.argv[1]), sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen([sys.executable, __file__, str(r), store], env=env) for r in (0, 1)
        ]
        try:
            for p in procs:
                p.wait(timeout=600)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()


if __name__ == "__main__":
    main()
