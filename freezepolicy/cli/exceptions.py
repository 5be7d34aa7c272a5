"""Saying what an exception from someone else's code was, whatever that code does."""

from __future__ import annotations


def describe_exception(exc: BaseException) -> str:
    """`TypeName: message`, or `TypeName` alone; never raises, even when the exception's own
    `__str__` does (an error message must not turn into a second error)."""
    try:
        name = type(exc).__name__
    except Exception:  # pragma: no cover - a class whose __name__ lookup fails
        name = "exception"
    try:
        text = str(exc)
    except (Exception, SystemExit):
        text = "(its message could not be shown: str() of it failed)"
    if not isinstance(text, str):  # pragma: no cover - str() always gives a str
        text = ""
    return f"{name}: {text}" if text else name
