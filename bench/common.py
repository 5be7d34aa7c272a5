"""Timing helpers shared by the benchmarks: interleaved repeats, medians, machine facts.

Every benchmark compares variants measured side by side in one process (or one series of
processes), interleaved so that drift of a shared machine (other jobs starting and stopping,
thermal changes) hits every variant alike: round r runs the variants in order A B C, round
r + 1 in order C B A. Both wall time and CPU time are kept: on a machine shared with other jobs,
wall time includes the time other processes held the cores, while CPU time (of this process, or
of a child process) is what the work itself cost.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Samples:
    """Repeated measurements of one variant: wall and CPU seconds per run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def to_dict(self) -> dict[str, object]:
        return {
            "median_wall_s": self.median_wall,
            "median_cpu_s": self.median_cpu,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
        }


def paired_ratio(a: Samples, b: Samples, clock: str = "wall") -> float:
    """Median over rounds of a / b, each pair measured next to each other (see `interleaved`):
    drift slower than one round cancels in every pair."""
    xs, ys = (a.wall, b.wall) if clock == "wall" else (a.cpu, b.cpu)
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True))


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, cpu) seconds of one call. CPU time is this process's (all threads)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    collect: bool = True,
) -> dict[str, Samples]:
    """Run each variant `warmup` times untimed, then `repeats` timed rounds in alternating order.

    With `collect`, garbage is collected before each timed call (outside the timing), so one
    variant does not pay for the garbage of another.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out = {name: Samples() for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            if collect:
                gc.collect()
            wall, cpu = timed(variants[name])
            out[name].wall.append(wall)
            out[name].cpu.append(cpu)
    return out


@dataclass
class ProcessRun:
    """One child process: wall and CPU seconds (user + system), exit code, output.

    (No peak RSS: for a child, Linux's ru_maxrss includes the parent's RSS at the fork, so it
    says nothing about the child itself.)
    """

    wall: float
    cpu: float
    returncode: int
    stdout: str


def run_process(cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> ProcessRun:
    """Run `cmd` to completion, measuring the child alone (os.wait4 gives its own rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    proc.stdout.close()
    return ProcessRun(
        wall, usage.ru_utime + usage.ru_stime, proc.returncode, output.decode("utf-8", "replace")
    )


def interleaved_processes(
    commands: Mapping[str, Sequence[str]],
    *,
    repeats: int,
    warmup: int = 1,
    env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Samples], dict[str, ProcessRun]]:
    """`interleaved` for whole processes. Also returns the last run of each command."""
    last: dict[str, ProcessRun] = {}

    def runner(name: str) -> Callable[[], None]:
        def run() -> None:
            last[name] = run_process(commands[name], env=env)

        return run

    names = list(commands)
    for _ in range(warmup):  # fills the page cache: every timed run starts warm
        for name in names:
            runner(name)()
    out = {name: Samples() for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            runner(name)()
            out[name].wall.append(last[name].wall)
            out[name].cpu.append(last[name].cpu)
    return out, last


def loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """What the numbers were measured on, read from the environment."""
    import torch

    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a test dependency
        transformers_version = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        mem = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers_version,
        "loadavg": loadavg(),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    On Linux, VmHWM of /proc/self/status: the high-water mark of this program alone.
    `getrusage` would also count the RSS of the parent it was forked from.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
