"""Policy files -> bytes -> policy text: reading only regular files of a bounded size, UTF-8
decoding with located errors, and line-ending normalization.

The first step of every parse; nothing here knows the grammar.
"""

from __future__ import annotations

import os
import stat

from .errors import Diagnostic, PolicySourceError

#: Largest policy file read (16 MiB). Real policies are a few hundred bytes; the cap stops a
#: log file or a disk image passed by mistake from being read into memory.
MAX_POLICY_BYTES = 16 * 1024 * 1024

# Open without blocking: opening a FIFO for reading otherwise waits for a writer, and the check
# that refuses it must not hang itself. O_NOCTTY: a terminal device never becomes ours.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_file(path: str, mode: int, size: int, what: str, limit: int) -> None:
    if stat.S_ISDIR(mode):
        raise PolicySourceError(Diagnostic("FP001", f"is a directory, not a {what}", path))
    if not stat.S_ISREG(mode):
        raise PolicySourceError(
            Diagnostic(
                "FP004",
                f"is {_kind(mode)}, not a regular file; a {what} must be a regular file",
                path,
            )
        )
    if size > limit:
        raise PolicySourceError(
            Diagnostic(
                "FP005", f"is {size:,} bytes; a {what} is at most {limit:,} bytes", path
            )
        )


def read_file_bytes(
    path: str, *, what: str = "policy file", limit: int = MAX_POLICY_BYTES
) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or a `PolicySourceError`: FP001
    (missing, a directory, unreadable), FP004 (a FIFO, device or socket: never opened in a way
    that could block), FP005 (too large, also when it grows while it is read)."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise PolicySourceError(Diagnostic("FP001", f"no such {what}", path)) from None
    except OSError as exc:
        raise PolicySourceError(
            Diagnostic("FP001", f"cannot read {what}: {exc.strerror}", path)
        ) from None
    _check_file(path, before.st_mode, before.st_size, what, limit)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise PolicySourceError(
            Diagnostic("FP001", f"cannot read {what}: {exc.strerror}", path)
        ) from None
    try:
        opened = os.fstat(fd)  # the file may have been replaced since os.stat
        _check_file(path, opened.st_mode, opened.st_size, what, limit)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                _check_file(path, opened.st_mode, total, what, limit)
    except OSError as exc:
        raise PolicySourceError(
            Diagnostic("FP001", f"cannot read {what}: {exc.strerror}", path)
        ) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_policy_file(path: str) -> bytes:
    """The bytes of a policy file (see `read_file_bytes`)."""
    return read_file_bytes(path)


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
