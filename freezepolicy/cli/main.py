"""The `freezepolicy` command: reads arguments, calls the library, formats, picks an exit code.

Exit codes: 0 clean, 1 problems found (lint) or files not canonical (`fmt --check`), 2 usage or
file errors. Nothing here prints a Python traceback for bad input; set FREEZEPOLICY_DEBUG=1 to
see one for an internal error.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from .commands import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    UsageError,
    run_fmt,
    run_lint,
    run_show,
)
from .exceptions import describe_exception


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
        "the layouts of torchvision: and transformers: specs and config files are kept in "
        "$FREEZEPOLICY_CACHE_DIR or ~/.cache/freezepolicy so that later runs skip torch",
    )


MODEL_SPEC_HELP = """\
model specs (built on the meta device: no weights, no download, no network):
  torchvision:NAME             any torchvision model, e.g. torchvision:resnet18
  transformers:MODEL_TYPE[/HEAD]
                               any architecture transformers knows, from its default
                               config: t5, deberta-v2, mistral, vit, whisper, ...;
                               HEAD is a task such as causal-lm, sequence-classification,
                               masked-lm (default: base, the bare model)
  transformers:NAME            a checkpoint's shape: bert-base-uncased, bert-base-uncased-cls,
                               bert-base-cased, bert-large-uncased, roberta-base,
                               distilbert-base-uncased, gpt2, llama-2-7b, llama-3-8b,
                               llama-3-70b (alias llama-70b)
  transformers:...:CLASS       a model class by name, e.g. transformers:gpt2:GPT2Model
  path/to/config.json[:CLASS]  the exact architecture of a checkpoint from its config file
                               (or a directory holding config.json)
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


#: Errors of writing to standard output (a closed descriptor, a full disk, a file-size limit):
#: the command could not say what it found, which is not a bug of freezepolicy.
_OUTPUT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EBADF", "ENOSPC", "EIO", "EFBIG", "EDQUOT")
    if hasattr(errno, name)
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_argparser()
    args = parser.parse_args(argv)
    if args.command is None and not args.version:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    command = args.command or "--version"
    # Standard output closed when the program started (`freezepolicy lint p.freeze >&-`): Python
    # then has no sys.stdout, and every report would vanish. Only `fmt -w` prints nothing there.
    if sys.stdout is None and not (command == "fmt" and args.write):
        _error(f"freezepolicy {command}: error: standard output is closed; nothing can be printed")
        return EXIT_USAGE
    try:
        if args.version:
            from ..version import __version__

            print(f"freezepolicy {__version__}")
            status = EXIT_OK
        elif command == "lint":
            status = run_lint(args)
        elif command == "show":
            status = run_show(args)
        else:
            status = run_fmt(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a write error must show here, not at exit as "ignored"
        return status
    except UsageError as exc:
        _error(f"freezepolicy {command}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`freezepolicy lint ... | head`): stop quietly, as cat does.
        _silence_stdout()
        return EXIT_PROBLEMS
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS or exc.filename is not None:
            return _internal_error(exc)
        _silence_stdout()
        _error(f"freezepolicy {command}: error: cannot write the output: {exc.strerror}")
        return EXIT_USAGE
    except Exception as exc:  # never a traceback for the user; one line that says what broke
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    if os.environ.get("FREEZEPOLICY_DEBUG"):
        raise exc
    _error(
        f"freezepolicy: internal error: {describe_exception(exc)} "
        "(set FREEZEPOLICY_DEBUG=1 for details, and please report it)"
    )
    return EXIT_INTERNAL


def _error(message: str) -> None:
    """One line on stderr, if there is a stderr to write to."""
    if sys.stderr is None:
        return
    try:
        print(message, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """Point the standard output at /dev/null, so the interpreter's last flush of what is still
    buffered cannot fail again (and print "Exception ignored") at exit."""
    if sys.stdout is None:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
