"""Lint is instant: whole-process times of the installed `freezepolicy` command.

- `freezepolicy lint policies/*.freeze` (syntax only, no torch) against `python -c "import
  torch"`, interleaved: the ratio of median wall times, target at most 0.2.
- `freezepolicy lint --model transformers:llama-70b bench/policies/llama_top.freeze`: the
  80-layer Llama-style model built on the meta device, whole process, target under 3 s. Measured
  twice per round: *cold*, with an empty model layout cache (the first run for this spec and
  these library versions: it builds the model, which needs torch and transformers), and *warm*,
  the run after it (the layout comes from the cache, see freezepolicy.cli.layout_cache). Next to
  them the *floor* of a cold run: a process that only imports torch and transformers' Llama
  classes, which a run that builds the model cannot avoid.

Each process is measured alone (`os.wait4` gives the child's own CPU time and peak RSS). A
breakdown of the Llama run (`python -m bench.lint_time --breakdown`, in a fresh process) says
where its time goes: importing torch, importing transformers and the Llama classes, building,
inspecting and checking.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import ROOT, Samples, interleaved_processes, run_process

LLAMA_SPEC = "transformers:llama-70b"
LLAMA_POLICY = "bench/policies/llama_top.freeze"
#: What a lint that builds the Llama model must import, and nothing else.
LLAMA_FLOOR = "import torch, transformers; transformers.LlamaForCausalLM"


def console_script() -> str:
    """The `freezepolicy` command installed next to this Python (the virtualenv's)."""
    path = Path(sys.executable).parent / "freezepolicy"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the package (make install)")
    return str(path)


def run(*, repeats: int = 7, llama_repeats: int = 3) -> dict[str, Any]:
    fp = console_script()
    policies = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "policies").glob("*.freeze"))
    syntax, last = interleaved_processes(
        {
            "lint": [fp, "lint", *policies],
            "import_torch": [sys.executable, "-c", "import torch"],
        },
        repeats=repeats,
    )
    for name, proc in last.items():
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stdout}")
    llama = _llama(fp, repeats=llama_repeats)
    breakdown = run_process([sys.executable, "-m", "bench.lint_time", "--breakdown"])
    llama["breakdown"] = json.loads(breakdown.stdout.strip().splitlines()[-1])
    return {
        "policies": policies,
        "samples": {k: v.to_dict() for k, v in syntax.items()},
        "ratio_wall": syntax["lint"].median_wall / syntax["import_torch"].median_wall,
        "ratio_cpu": syntax["lint"].median_cpu / syntax["import_torch"].median_cpu,
        "llama": llama,
    }


def _llama(fp: str, *, repeats: int) -> dict[str, Any]:
    """Cold, warm and floor runs of the Llama lint, interleaved (see the module docstring).

    Each round starts from its own empty cache directory: its cold run fills it, its warm run
    (right after) reads it. The floor runs first in even rounds and last in odd ones.
    """
    lint = [fp, "lint", "--model", LLAMA_SPEC, LLAMA_POLICY]
    floor = [sys.executable, "-c", LLAMA_FLOOR]
    samples = {key: Samples() for key in ("cold", "warm", "floor")}
    outputs: dict[str, tuple[int, str]] = {}
    with tempfile.TemporaryDirectory(prefix="freezepolicy-bench-") as tmp:
        run_process(floor)  # warm-up: the page cache holds torch and transformers
        for r in range(repeats):
            env = {**os.environ, "FREEZEPOLICY_CACHE_DIR": os.path.join(tmp, str(r))}
            env.pop("FREEZEPOLICY_NO_CACHE", None)
            steps = [("cold", lint, env), ("warm", lint, env)]
            steps = (
                [("floor", floor, None), *steps] if r % 2 == 0 else [*steps, ("floor", floor, None)]
            )
            for key, cmd, cmd_env in steps:
                proc = run_process(cmd, env=cmd_env)
                samples[key].wall.append(proc.wall)
                samples[key].cpu.append(proc.cpu)
                outputs[key] = (proc.returncode, proc.stdout.strip())
    if outputs["floor"][0] != 0:
        raise RuntimeError(f"{LLAMA_FLOOR!r} failed:\n{outputs['floor'][1]}")
    return {
        "command": f"freezepolicy lint --model {LLAMA_SPEC} {LLAMA_POLICY}",
        "floor_command": f"python -c {LLAMA_FLOOR!r}",
        "exit_code": outputs["cold"][0],
        "output": outputs["cold"][1],
        # The cache must not change what lint says.
        "warm_same_as_cold": outputs["warm"] == outputs["cold"],
        **{key: s.to_dict() for key, s in samples.items()},
    }


def _breakdown() -> dict[str, float]:
    """CPU seconds of each stage of `lint --model transformers:llama-70b`, in this process."""
    out: dict[str, float] = {}
    t = time.process_time()

    def lap(label: str) -> None:
        nonlocal t
        now = time.process_time()
        out[label] = now - t
        t = now

    import torch  # noqa: F401

    lap("import torch")
    import transformers

    lap("import transformers (top level)")
    transformers.LlamaConfig  # noqa: B018
    lap("import LlamaConfig")
    transformers.LlamaForCausalLM  # noqa: B018
    lap("import LlamaForCausalLM (transformers' modeling stack)")
    from freezepolicy.cli.models import build_model

    model = build_model(LLAMA_SPEC)
    lap("build on the meta device")
    from freezepolicy.lang.checks import ModelNames
    from freezepolicy.lang.lint import lint_file_models
    from freezepolicy.runtime.modelinfo import inspect_model

    info = inspect_model(model)
    lap("inspect_model")
    lint_file_models(
        ROOT / LLAMA_POLICY, [ModelNames(LLAMA_SPEC, info.names, info.module_types, info.tied)]
    )
    lap("parse and check the policy")
    out["total CPU of this process"] = time.process_time()
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--breakdown"]:
        print(json.dumps(_breakdown()))
    else:
        print(json.dumps(run(), indent=2))
