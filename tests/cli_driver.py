"""Run many `freezepolicy` command lines in one real subprocess.

Each command line that builds a model imports torch, several seconds on a busy machine; a
subprocess that calls the command's `main()` once per command line pays that once. The child
captures what each run prints and its exit code, and reports an exception that escapes `main()`
(which the real command would show as a traceback) as `"escaped"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CHILD = """
import contextlib, io, json, sys, traceback
from freezepolicy.cli.main import main

results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors end this way
            code = exc.code
        except BaseException:
            code = "escaped"
            err.write(traceback.format_exc())
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, sys.stdout)
"""


def run_many(
    argvs: Sequence[Sequence[str]], cwd: Path, timeout: float = 300
) -> list[dict[str, Any]]:
    """For each argv (without the program name): {"code", "stdout", "stderr"}."""
    env = dict(os.environ)
    env.pop("FREEZEPOLICY_DEBUG", None)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps([list(a) for a in argvs]),
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == len(argvs)
    return results
