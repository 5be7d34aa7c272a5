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
from typing import TYPE_CHECKING

from .errors import PolicyError

if TYPE_CHECKING:
    from .lint import ModelNames
    from .show import ModelLayout

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
    target = lint.add_mutually_exclusive_group()
    target.add_argument(
        "--names",
        metavar="FILE",
        help="file with one parameter name per line: also check what the policy selects",
    )
    target.add_argument(
        "--model",
        action="append",
        metavar="SPEC",
        help="a model spec (see below): also check names, module types and tied parameters; "
        "repeat to check a policy shared by several models",
    )
    lint.add_argument("--format", choices=("text", "json"), default="text")
    _add_no_cache(lint)
    lint.epilog = MODEL_SPEC_HELP
    lint.formatter_class = argparse.RawDescriptionHelpFormatter

    fmt = sub.add_parser("fmt", help="print or rewrite policy files in canonical form")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="policy files")
    mode = fmt.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is not canonical"
    )
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")

    show = sub.add_parser(
        "show",
        help="show what a policy does to a model",
        epilog=MODEL_SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("policy", metavar="POLICY", help="policy file")
    show.add_argument("--model", required=True, metavar="SPEC", help="model spec (see below)")
    show.add_argument("--epoch", type=_count_arg, metavar="N", help="0-based epoch (default 0)")
    show.add_argument("--step", type=_count_arg, metavar="N", help="0-based step (default 0)")
    show.add_argument(
        "--steps-per-epoch",
        type=_positive_arg,
        metavar="N",
        help="steps in an epoch: orders epoch and step events on one timeline",
    )
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.add_argument(
        "--depth", type=_count_arg, metavar="N", help="show at most N levels of modules"
    )
    show.add_argument(
        "--all",
        action="store_true",
        help="expand every module, also those whose parameters all share one decision",
    )
    _add_no_cache(show)
    return parser


def _add_no_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the model layout cache (as FREEZEPOLICY_NO_CACHE=1); "
        "the layouts of torchvision: and transformers: specs are kept in "
        "$FREEZEPOLICY_CACHE_DIR or ~/.cache/freezepolicy so that later runs skip torch",
    )


MODEL_SPEC_HELP = """\
model specs (built on the meta device: no weights, no download):
  torchvision:NAME             any torchvision model, e.g. torchvision:resnet18
  transformers:NAME[:CLASS]    bert-base-uncased, bert-base-uncased-cls, bert-base-cased,
                               bert-large-uncased, roberta-base, distilbert-base-uncased, gpt2,
                               llama-2-7b, llama-3-8b, llama-3-70b (alias llama-70b);
                               CLASS picks another head, e.g. :BertForMaskedLM
  package.module:factory       your own model: factory() is called with no arguments
                               (the current directory is searched first)
"""


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive_arg(text: str) -> int:
    value = _count_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected 1 or more, got 0")
    return value


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
        if args.command == "show":
            return _show(args)
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


def _lint(args: argparse.Namespace) -> int:
    from .lint import lint_file

    _tolerate_unencodable_output()

    if args.model:
        from .lint import lint_file_models

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


def _fmt(args: argparse.Namespace) -> int:
    from .api import load

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
    from .lint import ModelNames

    layout = _layout(spec, use_cache=use_cache)
    return ModelNames(spec, layout.names, layout.module_types, layout.tied)


def _show(args: argparse.Namespace) -> int:
    from .api import load
    from .lint import ModelNames, check_model
    from .show import PolicyView, format_text, to_json

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


if __name__ == "__main__":
    raise SystemExit(main())
