"""Policy bytes -> policy text: UTF-8 decoding with located errors, and line-ending normalization.

The first step of every parse; nothing here knows the grammar.
"""

from __future__ import annotations

from .errors import Diagnostic, PolicySourceError


def decode_source(data: bytes, path: str) -> str:
    """Bytes of a policy file -> text, or a `PolicySourceError` saying where it is not text."""
    nul = data.find(b"\x00")
    if nul != -1:
        line, col, shown = _locate_byte(data, nul)
        raise PolicySourceError(
            Diagnostic(
                "FP002",
                "this is not a policy file: it contains NUL bytes (is it binary?)",
                path,
                line,
                col,
                source_line=shown,
            )
        )
    # Strip the byte-order mark here rather than with "utf-8-sig", whose error offsets would
    # count from after the mark.
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start + bom
        line, col, shown = _locate_byte(data, bad)
        raise PolicySourceError(
            Diagnostic(
                "FP003",
                f"invalid UTF-8 (byte 0x{data[bad]:02x}); save the policy as UTF-8 text",
                path,
                line,
                col,
                source_line=shown,
            )
        ) from None


def _locate_byte(data: bytes, offset: int) -> tuple[int, int, str]:
    """Line, column and printable text of the line holding the byte at `offset`.

    Columns count characters, so the line is decoded leniently: each undecodable byte shows
    as U+FFFD and a NUL as U+2400, one character each, which keeps the caret under the byte.
    A byte-order mark is not part of the first line, as in `normalize_text`.
    """
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    if start == 0 and data.startswith(b"\xef\xbb\xbf"):
        start = 3
    end = data.find(b"\n", offset)
    raw = data[start : len(data) if end == -1 else end].rstrip(b"\r")
    col = len(data[start:offset].decode("utf-8", "replace")) + 1
    shown = raw.decode("utf-8", "replace").replace("\x00", "\u2400")
    return line, col, shown


def normalize_text(text: str) -> str:
    """Drop a byte-order mark and turn CRLF / CR line endings into LF (columns are unchanged)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text
