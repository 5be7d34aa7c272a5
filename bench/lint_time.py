"""Lint is instant: whole-process times of the installed `freezepolicy` command.

- `freezepolicy lint policies/*.freeze` (syntax only, no torch) against `python -c "import
  torch"`, interleaved: the ratio of median wall times, target at most 0.2.
- `freezepolicy lint --model transformers:llama-70b bench/policies/llama_top.freeze`: the
  80-layer Llama-style model built on the meta device, whole process, target under 3 s.

Each process is measured alone (`os.wait4` gives the child's own CPU time and peak RSS). A
breakdown of the Llama run (`python -m bench.lint_time --breakdown`, in a fresh process) says
where its time goes: importing torch, importing transformers and the Llama classes, building,
inspecting and checking.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .common import ROOT, interleaved_processes, run_process

LLAMA_SPEC = "transformers:llama-70b"
LLAMA_POLICY = "bench/policies/llama_top.freeze"


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
    llama, llama_last = interleaved_processes(
        {"lint_llama": [fp, "lint", "--model", LLAMA_SPEC, LLAMA_POLICY]}, repeats=llama_repeats
    )
    llama_proc = llama_last["lint_llama"]
    breakdown = run_process([sys.executable, "-m", "bench.lint_time", "--breakdown"])
    return {
        "policies": policies,
        "samples": {k: v.to_dict() for k, v in {**syntax, **llama}.items()},
        "ratio_wall": syntax["lint"].median_wall / syntax["import_torch"].median_wall,
        "ratio_cpu": syntax["lint"].median_cpu / syntax["import_torch"].median_cpu,
        "llama": {
            "command": f"freezepolicy lint --model {LLAMA_SPEC} {LLAMA_POLICY}",
            "exit_code": llama_proc.returncode,
            "output": llama_proc.stdout.strip(),
            "median_wall_s": llama["lint_llama"].median_wall,
            "median_cpu_s": llama["lint_llama"].median_cpu,
            "breakdown": json.loads(breakdown.stdout.strip().splitlines()[-1]),
        },
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
    from freezepolicy.models import build_model

    model = build_model(LLAMA_SPEC)
    lap("build on the meta device")
    from freezepolicy.lint import ModelNames, lint_file_models
    from freezepolicy.modelinfo import inspect_model

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
