"""The one exception hierarchy of freezepolicy.

Every problem is a `Diagnostic` that carries its own source location and text, so an error can be
formatted long after the parser that found it is gone (no parser keeps "the last text" around).
A `PolicyError` holds one or more diagnostics: the first gives the error its `path`, `line`,
`column` and `code`; `str()` shows all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Stable codes, one per kind of problem. docs/errors.md lists them; never renumber.
CODES: dict[str, str] = {
    # Problems with the file itself.
    "FP001": "file-not-found",
    "FP002": "not-text",
    "FP003": "invalid-utf8",
    "FP004": "not-a-regular-file",
    "FP005": "file-too-large",
    "FP006": "cannot-write",
    # Syntax.
    "FP101": "unknown-keyword",
    "FP102": "missing-selector",
    "FP103": "unexpected-token",
    "FP104": "missing-number",
    "FP105": "bad-time",
    "FP106": "bad-value",
    "FP107": "negative-value",
    "FP108": "keyword-as-selector",
    "FP109": "too-many-errors",
    "FP110": "run-on-words",
    "FP111": "invisible-character",
    "FP112": "value-rounds-to-zero",
    "FP113": "word-too-long",
    # Selector patterns.
    "FP121": "unclosed-bracket",
    "FP122": "reversed-range",
    "FP123": "bad-range",
    "FP124": "empty-part",
    "FP125": "bad-wildcard",
    "FP126": "bad-class",
    "FP127": "bad-alternatives",
    "FP128": "selector-too-long",
    "FP129": "bad-type-selector",
    # Schedules.
    "FP130": "then-needs-every",
    "FP131": "every-needs-then",
    "FP132": "warmup-not-allowed",
    "FP133": "mixed-clocks",
    # Indices counted from the end, layer decay, shapes, conditions and includes (issue 13).
    "FP140": "index-from-end-not-a-whole-part",
    "FP141": "index-from-end-zero",
    "FP142": "bad-layer-decay",
    "FP143": "bad-shape-selector",
    "FP144": "when-with-at-or-every",
    "FP146": "include-not-found",
    "FP147": "include-cycle",
    "FP148": "too-many-includes",
    "FP149": "include-without-path",
    # Checks that need parameter names or a model.
    "FP201": "selects-nothing",
    "FP202": "never-effective",
    "FP203": "type-selector-needs-model",
    "FP204": "unfreeze-blocked-by-lr-0",
    "FP205": "tied-parameter-conflict",
    "FP206": "distributed-unsafe",
    "FP207": "warmup-needs-steps-per-epoch",
    # Applying to a model, an optimizer and a training loop (docs/applying.md).
    "FP210": "cannot-set-requires-grad",
    "FP211": "not-in-optimizer",
    "FP212": "optimizer-without-weight-decay",
    "FP213": "scheduler-not-passed",
    "FP214": "trainer-groups-split",
    "FP215": "policy-changed-since-checkpoint",
    # Shapes and metric-driven statements (issue 13).
    "FP230": "shape-selector-needs-model",
    "FP231": "metric-never-observed",
    "FP232": "conditional-event",
}


#: Longest piece of a source line shown under a message; longer lines show a window around
#: the caret, with `...` where they were cut.
MAX_SHOWN_COLUMNS = 120


@dataclass(frozen=True)
class Diagnostic:
    """One problem at one place in a policy source."""

    code: str
    message: str
    path: str = "<string>"
    line: int | None = None
    column: int | None = None
    end_column: int | None = None
    source_line: str | None = field(default=None, repr=False)
    severity: str = "error"

    @property
    def name(self) -> str:
        return CODES.get(self.code, "unknown")

    def format(self) -> str:
        """`path:line:col: message [code]`, then the source line and a caret under the column."""
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        kind = "" if self.severity == "error" else f"{self.severity}: "
        head = f"{where}: {kind}{self.message} [{self.code}]"
        if self.source_line is None or self.line is None:
            return head
        shown = self.source_line.rstrip("\r\n")
        col = max(1, min(self.column or 1, len(shown) + 1))
        width = 1
        if self.end_column is not None and self.end_column > col:
            width = min(self.end_column, len(shown) + 1) - col
        # A very long line (a minified or binary file) is cut to a window around the caret.
        lo, hi = 0, len(shown)
        if len(shown) > MAX_SHOWN_COLUMNS:
            lo = max(0, col - 1 - MAX_SHOWN_COLUMNS // 2)
            hi = min(len(shown), lo + MAX_SHOWN_COLUMNS)
            lo = max(0, hi - MAX_SHOWN_COLUMNS)
            width = min(width, hi - (col - 1)) if col - 1 < hi else 1
        before = "..." if lo > 0 else ""
        after = "..." if hi < len(shown) else ""
        # Keep tabs in the caret line so the caret lines up under tab-indented source.
        pad = " " * len(before) + "".join("\t" if ch == "\t" else " " for ch in shown[lo : col - 1])
        text = before + shown[lo:hi] + after
        return f"{head}\n    {text}\n    {pad}^{'~' * max(0, width - 1)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_column": self.end_column,
            "code": self.code,
            "name": self.name,
            "severity": self.severity,
            "message": self.message,
        }


class PolicyError(Exception):
    """Base of every error freezepolicy raises about a policy, its source or its use."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        if not diagnostics:
            raise ValueError("PolicyError needs at least one diagnostic")
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__(str(self))

    @property
    def first(self) -> Diagnostic:
        return self.diagnostics[0]

    @property
    def code(self) -> str:
        return self.first.code

    @property
    def path(self) -> str:
        return self.first.path

    @property
    def line(self) -> int | None:
        return self.first.line

    @property
    def column(self) -> int | None:
        return self.first.column

    @property
    def message(self) -> str:
        return self.first.message

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    def __reduce__(self):  # keep errors picklable (multiprocessing, DDP workers)
        return (type(self), (self.diagnostics,))


class PolicySourceError(PolicyError):
    """The policy file cannot be read as text: missing, binary, or not UTF-8."""


class PolicySyntaxError(PolicyError):
    """The policy text is malformed: bad statement, selector, number or time."""


class PolicyResolveError(PolicyError):
    """The policy is well formed but does not fit the names or model it is applied to."""


class PolicyWarning(UserWarning):
    """A problem that is not an error, emitted with `warnings.warn`: a selector that selects
    nothing (FP201), a statement that never takes effect (FP202, FP204), a trainable parameter
    the optimizer does not hold (FP211), ...

    `diagnostic` is the located problem (its `code` says which), so a program can filter:
    `warnings.filterwarnings("error", category=freezepolicy.PolicyWarning)` turns them all into
    errors. `str()` is the formatted diagnostic.
    """

    def __init__(self, diagnostic: Diagnostic) -> None:
        self.diagnostic = diagnostic
        super().__init__(diagnostic.format())

    @property
    def code(self) -> str:
        return self.diagnostic.code

    def __reduce__(self):  # picklable like PolicyError
        return (type(self), (self.diagnostic,))
