"""The `freezepolicy` command: reads arguments, calls the library, formats, picks an exit code.

Exit codes: 0 clean, 1 problems found (lint) or files not canonical (`fmt --check`), 2 usage or
file errors. Nothing here prints a Python traceback for bad input; set FREEZEPOLICY_DEBUG=1 to
see one for an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PolicyError

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: usage + message, exit 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_argparser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="freezepolicy",
        description="Check, format and inspect freezepolicy files.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    lint = sub.add_parser("lint", help="check policy files")
    lint.add_argument("files", nargs="+", metavar="FILE", help="policy files")
    lint.add_argument(
        "--names",
        metavar="FILE",
        help="file with one parameter name per line: also check what the policy selects",
    )
    lint.add_argument("--format", choices=("text", "json"), default="text")

    fmt = sub.add_parser("fmt", help="print or rewrite policy files in canonical form")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="policy files")
    mode = fmt.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is not canonical"
    )
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_argparser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"freezepolicy {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "lint":
            return _lint(args)
        return _fmt(args)
    except UsageError as exc:
        print(f"freezepolicy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`freezepolicy lint ... | head`): stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PROBLEMS
    except Exception as exc:  # never a traceback for the user; one line that says what broke
        if os.environ.get("FREEZEPOLICY_DEBUG"):
            raise
        print(
            f"freezepolicy: internal error: {type(exc).__name__}: {exc} "
            "(set FREEZEPOLICY_DEBUG=1 for details, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


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
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    if not names:
        raise UsageError(f"names file {path} lists no parameter names")
    return names


def _lint(args: argparse.Namespace) -> int:
    from .lint import lint_file

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


def _fmt(args: argparse.Namespace) -> int:
    from .api import load

    status = EXIT_OK
    for path in args.files:
        try:
            policy = load(path)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            status = EXIT_USAGE if exc.code in ("FP001", "FP002", "FP003") else max(status, 1)
            continue
        canonical = policy.format()
        original = Path(path).read_bytes().decode("utf-8-sig")
        if args.check:
            if canonical != original:
                print(f"{path}: not in canonical form (run `freezepolicy fmt -w {path}`)")
                status = max(status, EXIT_PROBLEMS)
        elif args.write:
            if canonical != original:
                Path(path).write_text(canonical, encoding="utf-8", newline="\n")
                print(f"formatted {path}", file=sys.stderr)
        else:
            sys.stdout.write(canonical)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
