"""The three commands, `lint`, `fmt` and `show`: each reads its parsed arguments, calls the
library, prints, and returns an exit code. main.py parses arguments and catches what escapes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..lang.errors import PolicyError

if TYPE_CHECKING:
    from ..lang.checks import ModelNames
    from .layout import ModelLayout

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument or an unreadable auxiliary file: exit 2 with a one-line message."""


def read_names(path: str) -> list[str]:
    """A names file: one parameter name per line; blank lines and `#` comments are skipped."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read names file {path}: {exc.strerror}") from None
    if b"\x00" in raw:
        raise UsageError(f"names file {path} is not text (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"names file {path}:{line}: invalid UTF-8") from None
    names = []
    for raw_line in text.splitlines():
        name = raw_line.strip()
        if name and not name.startswith("#"):
            names.append(name)
    if not names:
        raise UsageError(f"names file {path} lists no parameter names")
    return names


def _tolerate_unencodable_output() -> None:
    """Show characters the terminal cannot encode as escapes instead of failing.

    A policy may quote any UTF-8 text, and stdout may be ASCII (PYTHONIOENCODING=ascii, a
    Windows console redirected to a file): a message must still print, as `caf\\xe9`.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _write_policy_text(text: str) -> None:
    """Policy text on stdout is UTF-8 whatever the locale, like the files `fmt -w` writes."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (tests that call main() with a StringIO)
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def run_lint(args: argparse.Namespace) -> int:
    from ..lang.lint import lint_file

    _tolerate_unencodable_output()

    if args.model:
        from ..lang.lint import lint_file_models

        models = [_model_names(spec, use_cache=not args.no_cache) for spec in args.model]
        reports = [lint_file_models(f, models) for f in args.files]
    else:
        names = read_names(args.names) if args.names else None
        reports = [lint_file(f, names=names) for f in args.files]
    if args.format == "json":
        diags = [d.to_dict() for r in reports for d in r.diagnostics]
        summary = {
            "files": len(reports),
            "errors": sum(1 for d in diags if d["severity"] == "error"),
            "warnings": sum(1 for d in diags if d["severity"] == "warning"),
            "notes": sum(1 for d in diags if d["severity"] == "note"),
        }
        print(json.dumps({"version": 1, "diagnostics": diags, "summary": summary}, indent=2))
    else:
        for r in reports:
            for d in r.diagnostics:
                print(d.format(), file=sys.stdout)
        problems = sum(len(r.problems) for r in reports)
        if problems:
            noun = "problem" if problems == 1 else "problems"
            print(f"{problems} {noun} in {len(reports)} file(s)", file=sys.stderr)
    if any(r.file_error for r in reports):
        return EXIT_USAGE
    return EXIT_PROBLEMS if any(r.problems for r in reports) else EXIT_OK


def run_fmt(args: argparse.Namespace) -> int:
    from ..lang.api import load

    _tolerate_unencodable_output()
    status = EXIT_OK
    for path in args.files:
        try:
            policy = load(path)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_USAGE if exc.code in ("FP001", "FP002", "FP003") else max(status, 1)
            continue
        canonical = policy.format()
        # Compare bytes: canonical form is UTF-8 with LF line ends and no byte-order mark, so
        # a CRLF file or one with a BOM is rewritten by -w and reported by --check.
        unchanged = Path(path).read_bytes() == canonical.encode("utf-8")
        if args.check:
            if not unchanged:
                print(f"{path}: not in canonical form (run `freezepolicy fmt -w {path}`)")
                status = max(status, EXIT_PROBLEMS)
        elif args.write:
            if not unchanged:
                Path(path).write_text(canonical, encoding="utf-8", newline="\n")
                print(f"formatted {path}", file=sys.stderr)
        else:
            _write_policy_text(canonical)
    return status


def _layout(spec: str, *, use_cache: bool) -> ModelLayout:
    """A model's layout from a spec: cached for built-in specs (see `freezepolicy.layout_cache`);
    torch is imported only to build a model, never for plain lint or fmt."""
    from .layout_cache import model_layout
    from .models import ModelSpecError  # torch-free: models imports torch only to build

    try:
        return model_layout(spec, use_cache=use_cache)
    except ModelSpecError as exc:
        raise UsageError(str(exc)) from None


def _model_names(spec: str, *, use_cache: bool) -> ModelNames:
    from ..lang.checks import ModelNames

    layout = _layout(spec, use_cache=use_cache)
    return ModelNames(spec, layout.names, layout.module_types, layout.tied)


def run_show(args: argparse.Namespace) -> int:
    from ..lang.api import load
    from ..lang.checks import ModelNames, check_model
    from .show_json import to_json
    from .show_text import format_text
    from .view import PolicyView

    spe = args.steps_per_epoch
    epoch, step = args.epoch, args.step
    if spe is not None:
        # One timeline: the epoch and the global step must agree.
        if epoch is not None and step is not None and step // spe != epoch:
            raise UsageError(
                f"--step {step} is in epoch {step // spe} at {spe} steps per epoch, not {epoch}"
            )
        if step is None:
            step = (epoch or 0) * spe
        if epoch is None:
            epoch = step // spe
    epoch, step = epoch or 0, step or 0
    try:
        policy = load(args.policy)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE if exc.code in ("FP001", "FP002", "FP003") else EXIT_PROBLEMS
    layout = _layout(args.model, use_cache=not args.no_cache)
    view = PolicyView(policy, layout, steps_per_epoch=spe, model_label=args.model)
    moment = view.moment(epoch, step)
    problems = check_model(
        policy, ModelNames(args.model, layout.names, layout.module_types, layout.tied)
    )
    if args.format == "json":
        report = to_json(view, moment, depth=args.depth, problems=problems)
        print(json.dumps(report, indent=2))
        return EXIT_OK
    ascii_only = not _can_print("├─└│")
    sys.stdout.write(
        format_text(
            view,
            moment,
            depth=args.depth,
            expand_all=args.all,
            ascii=ascii_only,
            problems=problems,
        )
    )
    return EXIT_OK


def _can_print(text: str) -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
