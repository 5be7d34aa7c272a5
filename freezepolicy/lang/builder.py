"""The LALR parser's callbacks: tokens -> AST nodes, checking numbers, times and selector
patterns as each statement is reduced. Problems travel inside the returned values (the builder
keeps no state, so the one cached parser serves every call); parser.py turns them into
diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

from lark import Token, Transformer

from .clauses import (
    Problem,
    Timing,
    check_timing,
    clock_of,
    is_shape_selector,
    keyword_as_selector,
    pattern_problem,
    shape_pattern,
    statement_span,
    timings,
    token_span,
    whole_number,
    written_as_zero,
)
from .nodes import (
    FOLLOW_KEYWORDS,
    Condition,
    Duration,
    Include,
    LayerDecay,
    NamePattern,
    Selection,
    Span,
    Statement,
    TypePattern,
    Value,
    When,
)
from .patterns import PatternError, parse_name_pattern, parse_type_pattern
from .syntax import clip


@dataclass(frozen=True)
class Built:
    """A statement and the problems found in it (the builder itself keeps no state)."""

    statement: Statement | Include
    problems: tuple[Problem, ...]


class AstBuilder(Transformer):
    """Lark callbacks -> AST nodes, run inline by the LALR parser (no parse tree is built).

    It is stateless, so the one cached parser serves every call: problems travel inside the
    returned nodes and are collected by `parse_text`.
    """

    def start(self, children: list) -> list[Built]:
        return children

    def freeze(self, children: list) -> Built:
        return self._statement(children)

    unfreeze = lr = decay = stats = freeze

    def _statement(self, children: list) -> Built:
        action: Token = children[0]
        problems: list[Problem] = []
        value = None
        mode = None
        timing: dict[str, Timing] = {}
        result: _SelectionResult | None = None
        for child in children[1:]:
            if isinstance(child, Token) and child.type == "NUMBER":  # of `lr` / `decay`
                value = self._value(child, str(action), problems)
            elif isinstance(child, Token):  # the `update` / `freeze` of `stats`
                mode = str(child)
            elif isinstance(child, Timing):
                timing[child.kind] = child
                problems.extend(child.problems)
            else:
                result = child
                problems.extend(child.problems)
        assert result is not None
        selection = result.selection
        when, condition, every, warmup = timings(timing)
        then = result.then_spans
        problems.extend(check_timing(str(action), then, when, condition, every, warmup))
        last = [selection.selectors[-1].span]
        span = statement_span(action, last, when, condition, every, warmup)
        st = Statement(
            str(action),  # type: ignore[arg-type]
            selection,
            value,
            when,
            span,
            mode,  # type: ignore[arg-type]
            every,
            warmup,
            condition=condition,
        )
        return Built(st, tuple(problems))

    def layer_decay(self, children: list) -> Built:
        action, _decay, number, *rest = children
        problems: list[Problem] = []
        factor = self._factor(number, problems)
        groups: dict[str, tuple] = {"FROM": (), "DOWN": (), "TO": ()}
        exclude: tuple = ()
        timing: dict[str, Timing] = {}
        spans: list[Span] = []
        i = 0
        while i < len(rest):
            child = rest[i]
            if isinstance(child, Token):  # FROM / DOWN / TO, then its selectors
                found, bad = rest[i + 1]
                groups[child.type] = found
                problems.extend(bad)
                spans.append(found[-1].span)
                i += 2
                continue
            if isinstance(child, Timing):
                timing[child.kind] = child
                problems.extend(child.problems)
            else:  # the `except` list
                exclude, bad = child
                problems.extend(bad)
                spans.append(exclude[-1].span)
            i += 1
        for sel in (*groups["DOWN"], *groups["TO"]):
            if isinstance(sel, NamePattern) and sel.text in ("down", "to"):
                problems.append(keyword_as_selector(sel.text, sel.span))
        for sel in groups["DOWN"]:
            if not isinstance(sel, NamePattern):
                s = sel.span
                kind = "module type" if isinstance(sel, TypePattern) else "shape"
                message = (
                    "`down` names the modules whose numbered children are the layers, as in"
                    f" `down blocks`; `{sel}` selects by {kind}, which has no numbers"
                )
                problems.append(Problem("FP142", message, s.line, s.column, s.end_column))
        layers = LayerDecay(factor, groups["FROM"], groups["DOWN"], groups["TO"])
        selection = Selection(layers.top + layers.stack + layers.bottom, exclude)
        when, condition, every, warmup = timings(timing)
        problems.extend(check_timing("lr", (), when, condition, every, warmup))
        span = statement_span(action, spans, when, condition, every, warmup)
        st = Statement(
            "lr",
            selection,
            None,
            when,
            span,
            None,
            every,
            warmup,
            layers=layers,
            condition=condition,
        )
        return Built(st, tuple(problems))

    def exclusion(self, children: list) -> tuple:
        return children[0]

    def include(self, children: list) -> Built:
        keyword, path = children
        text = str(path)[1:-1]
        end = token_span(path)
        span = Span(keyword.line or 0, keyword.column or 0, end.end_line, end.end_column)
        problems: tuple[Problem, ...] = ()
        if not text.strip():
            s = token_span(path)
            problems = (
                Problem(
                    "FP149",
                    'an include needs a path, as in `include "base.freeze"` or'
                    ' `include "builtin:bert_last2"`',
                    s.line,
                    s.column,
                    s.end_column,
                ),
            )
        return Built(Include(text, span), problems)

    @staticmethod
    def _factor(tok: Token, problems: list[Problem]) -> Value:
        """The factor of a layer decay: a number in (0, 1], written without `x`."""
        text = str(tok)
        span = token_span(tok)
        number = float(text.rstrip("x"))
        message = None
        if text.endswith("x"):
            message = (
                "a layer decay is a factor between layers, written without `x`:"
                f" `{clip(text[:-1])}`"
            )
        elif not 0 < number <= 1:
            message = (
                f"a layer decay is a factor above 0 and at most 1 (each layer down gets it once"
                f" more), got `{clip(text)}`"
            )
        if message is not None:
            problems.append(Problem("FP142", message, span.line, span.column, span.end_column))
        return Value(number, False, text, span)

    @staticmethod
    def _value(tok: Token, action: str, problems: list[Problem]) -> Value:
        text = str(tok)
        relative = text.endswith("x")
        what = "learning rate" if action == "lr" else "weight decay"
        number = float(text[:-1] if relative else text)
        span = token_span(tok)
        if number < 0:
            problems.append(
                Problem(
                    "FP107",
                    f"a {what} cannot be negative, got `{clip(text)}`",
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        elif number == float("inf"):
            problems.append(
                Problem(
                    "FP106",
                    f"{what} `{clip(text)}` is too large",
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        elif number == 0 and not written_as_zero(text):
            # `1e-400` is not 0 as written, but float() makes it 0, and a rate of 0 freezes.
            problems.append(
                Problem(
                    "FP112",
                    f"{what} `{clip(text)}` is too small to represent: it would round to 0,"
                    + (
                        " which freezes what it selects; write `0` to freeze"
                        if action == "lr"
                        else " which turns weight decay off; write `0` for none"
                    ),
                    span.line,
                    span.column,
                    span.end_column,
                )
            )
        return Value(number, relative, text, span)

    def selection(self, children: list) -> _SelectionResult:
        # children: group (THEN group)* [except-group]; `except` itself is not kept, so a group
        # not preceded by THEN after the first is the except list.
        include, problems = children[0]
        then: list[tuple] = []
        then_spans: list[Span] = []
        exclude: tuple = ()
        i = 1
        while i < len(children):
            child = children[i]
            if isinstance(child, Token):  # THEN
                then_spans.append(token_span(child))
                group, bad = children[i + 1]
                then.append(group)
                i += 2
            else:
                exclude, bad = child
                i += 1
            problems = problems + bad
        return _SelectionResult(
            Selection(include, exclude, tuple(then)), problems, tuple(then_spans)
        )

    def selectors(self, children: list) -> tuple[tuple, tuple[Problem, ...]]:
        selectors = tuple(sel for sel, _ in children)
        problems = tuple(p for _, bad in children for p in bad)
        return selectors, problems

    def selector(self, children: list):
        tok: Token = children[0]
        span = token_span(tok)
        text = str(tok)
        if tok.type == "PATTERN" and is_shape_selector(text):
            return shape_pattern(text, span)
        if tok.type == "TYPE_PATTERN":
            body = text[len("type:") :]
            try:
                parse_type_pattern(body)
            except PatternError as exc:
                return TypePattern(body, span), (pattern_problem(exc, span, len("type:")),)
            return TypePattern(body, span), ()
        anchored = text.startswith("^")
        body = text[1:] if anchored else text
        node = NamePattern(body, anchored, span)
        if body in FOLLOW_KEYWORDS:
            return node, (keyword_as_selector(body, span),)
        try:
            # Reading the pattern finds every error; compiling waits until it is matched.
            parse_name_pattern(body)
        except PatternError as exc:
            return node, (pattern_problem(exc, span, 1 if anchored else 0),)
        return node, ()

    def when(self, children: list) -> Timing:
        clock_tok, number = children
        clock = clock_of(clock_tok)
        at, problems = whole_number(number, clock, minimum=0)
        span = token_span(number)
        # The span runs from the clock word (the `at` before it is not kept by the parser).
        when_span = Span(clock_tok.line or 0, clock_tok.column or 0, span.end_line, span.end_column)
        return Timing("at", When(clock, at, when_span), problems)  # type: ignore[arg-type]

    def condition(self, children: list) -> Timing:
        metric, trend, number, unit = children
        patience, problems = whole_number(number, "the number of evaluations", minimum=1)
        span = Span(metric.line or 0, metric.column or 0, unit.end_line or 0, unit.end_column or 0)
        node = Condition(str(metric), str(trend), patience, span)  # type: ignore[arg-type]
        return Timing("when", node, problems)

    def every(self, children: list) -> Timing:
        return self._duration("every", children)

    def warmup(self, children: list) -> Timing:
        return self._duration("warmup", children)

    @staticmethod
    def _duration(kind: str, children: list) -> Timing:
        keyword, *rest = children
        clock_tok = rest[-1]
        clock = clock_of(clock_tok)
        if len(rest) == 2:  # `every 2 epochs`; `every epoch` has no number and means 1
            count, problems = whole_number(rest[0], f"the `{kind}` count", minimum=1)
        else:
            count, problems = 1, ()
        end = token_span(clock_tok)
        span = Span(keyword.line or 0, keyword.column or 0, end.end_line, end.end_column)
        return Timing(kind, Duration(count, clock, span), problems)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _SelectionResult:
    selection: Selection
    problems: tuple[Problem, ...]
    then_spans: tuple[Span, ...] = ()


#: The one builder, shared by every parse.
AST_BUILDER = AstBuilder()
