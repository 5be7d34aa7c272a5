"""The three commands, `lint`, `fmt` and `show`: each reads its parsed arguments, calls the
library, prints, and returns an exit code. main.py parses arguments and catches what escapes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..lang.errors import Diagnostic, PolicyError

if TYPE_CHECKING:
    from ..lang.checks import ModelNames
    from .layout import ModelLayout

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    """A bad argument or an unreadable auxiliary file: exit 2 with a one-line message."""


#: Largest names file read (64 MiB: a million names of 64 characters).
MAX_NAMES_BYTES = 64 * 1024 * 1024


def read_names(path: str) -> list[str]:
    """A names file: one parameter name per line; blank lines and `#` comments are skipped.

    Read as a policy file is: a regular file only (a FIFO is never waited on), at most
    `MAX_NAMES_BYTES`; the errors keep the codes of docs/errors.md."""
    from ..lang.source import read_file_bytes

    try:
        raw = read_file_bytes(path, what="names file", limit=MAX_NAMES_BYTES)
    except PolicyError as exc:
        reason = exc.message.removeprefix("cannot read names file: ")
        if reason == "no such names file":
            reason = "No such file or directory"  # as the error of open() says it
        raise UsageError(f"cannot read names file {path}: {reason} [{exc.code}]") from None
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


def _print_diagnostics_json(diagnostics: Sequence[Diagnostic], files: int) -> None:
    """The JSON report of `lint --format json` (and of `show --format json` on an error)."""
    diags = [d.to_dict() for d in diagnostics]
    summary = {
        "files": files,
        "errors": sum(1 for d in diags if d["severity"] == "error"),
        "warnings": sum(1 for d in diags if d["severity"] == "warning"),
        "notes": sum(1 for d in diags if d["severity"] == "note"),
    }
    print(json.dumps({"version": 1, "diagnostics": diags, "summary": summary}, indent=2))


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
        _print_diagnostics_json([d for r in reports for d in r.diagnostics], len(reports))
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
    from ..lang.api import parse
    from ..lang.lint import FILE_ERROR_CODES
    from ..lang.source import read_policy_file
    from .files import WriteError, write_atomically

    _tolerate_unencodable_output()
    status = EXIT_OK
    for path in args.files:
        try:
            # Read once: the bytes parsed are the bytes compared (and never a second read of
            # a file that changed, or of a FIFO).
            data = read_policy_file(path)
            # Its own text only: an include stays an include line, and the file it names is
            # neither read nor formatted.
            policy = parse(data, path, includes=False)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_USAGE if exc.code in FILE_ERROR_CODES else max(status, 1)
            continue
        canonical = policy.format().encode("utf-8")
        # Compare bytes: canonical form is UTF-8 with LF line ends and no byte-order mark, so
        # a CRLF file or one with a BOM is rewritten by -w and reported by --check.
        unchanged = data == canonical
        if args.check:
            if not unchanged:
                print(f"{path}: not in canonical form (run `freezepolicy fmt -w {path}`)")
                status = max(status, EXIT_PROBLEMS)
        elif args.write:
            if not unchanged:
                try:
                    write_atomically(path, canonical)
                except WriteError as exc:
                    reason = f"cannot write the file, left unchanged: {exc}"
                    problem = Diagnostic("FP006", reason, path)
                    print(problem.format(), file=sys.stderr)
                    status = EXIT_USAGE
                    continue
                print(f"formatted {path}", file=sys.stderr)
        else:
            _write_policy_text(canonical.decode("utf-8"))
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
    return ModelNames(spec, layout.names, layout.module_types, layout.tied, layout.shapes)


def run_show(args: argparse.Namespace) -> int:
    from ..lang.api import load
    from ..lang.checks import ModelNames, check_model, check_policy
    from ..lang.lint import FILE_ERROR_CODES
    from ..lang.rules import STEPS_PER_EPOCH_HINT
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
    as_json = args.format == "json"
    try:
        policy = load(args.policy)
    except PolicyError as exc:
        _report_error(exc.diagnostics, as_json)
        return EXIT_USAGE if exc.code in FILE_ERROR_CODES else EXIT_PROBLEMS
    layout = _layout(args.model, use_cache=not args.no_cache)
    problems = check_policy(policy) + check_model(
        policy,
        ModelNames(args.model, layout.names, layout.module_types, layout.tied, layout.shapes),
    )
    if spe is not None:  # given: the note that asks for it has nothing to say
        problems = [d for d in problems if d.code != "FP207"]
    try:
        # The whole report is made before any of it is printed: the schedule resolves the
        # policy at every event, and that can fail as well as the moment shown.
        view = PolicyView(policy, layout, steps_per_epoch=spe, model_label=args.model)
        moment = view.moment(epoch, step)
        if as_json:
            report = to_json(view, moment, depth=args.depth, problems=problems)
            output = json.dumps(report, indent=2) + "\n"
        else:
            output = format_text(
                view,
                moment,
                depth=args.depth,
                expand_all=args.all,
                ascii=not _can_print("├─└│"),
                problems=problems,
            )
    except PolicyError as exc:
        # A warm-up that mixes epochs and steps cannot be shown without the steps per epoch
        # (FP207): the missing piece is an argument of this command.
        diagnostics = [
            replace(d, message=d.message.replace(STEPS_PER_EPOCH_HINT, "pass --steps-per-epoch N"))
            for d in exc.diagnostics
        ]
        _report_error(diagnostics, as_json)
        return EXIT_USAGE
    sys.stdout.write(output)
    return EXIT_OK


def _report_error(diagnostics: Sequence[Diagnostic], as_json: bool) -> None:
    """A policy that cannot be shown: its diagnostics on stderr, or as JSON on stdout."""
    if as_json:
        _print_diagnostics_json(diagnostics, 1)
    else:
        print("\n".join(d.format() for d in diagnostics), file=sys.stderr)


def _can_print(text: str) -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True
