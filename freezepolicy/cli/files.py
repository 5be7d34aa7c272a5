"""Writing a file so that it is either all old or all new: what `freezepolicy fmt -w` does.

Truncating a file and writing it again leaves a shorter file when the write fails half-way (a
full disk, a file-size limit); that shorter policy may still lint clean and silently mean less.
So the new text goes to a temporary file in the same folder, is flushed to disk, takes the old
file's permission bits, and only then replaces the old file in one rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile


class WriteError(Exception):
    """The file could not be written; it is unchanged. `str()` says why, in one line."""


def write_atomically(path: str, data: bytes) -> None:
    """Replace the contents of the existing file `path` with `data`, all at once.

    The file keeps its permission bits; through a symbolic link, the file it points to is
    replaced and the link kept. Owner and group are those of the user writing (as any editor
    that saves by rename does), and a hard link to the old file keeps the old text. A file the
    user may not write is refused, as a plain write would be, even when its folder is writable.
    Raises `WriteError` with the file untouched when anything fails.
    """
    target = os.path.realpath(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError as exc:
        raise WriteError(exc.strerror or str(exc)) from None
    if not os.access(target, os.W_OK):
        raise WriteError(os.strerror(13))  # EACCES: "Permission denied"
    folder = os.path.dirname(target) or "."
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder
        )
    except OSError as exc:
        raise WriteError(exc.strerror or str(exc)) from None
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temporary, mode)  # mkstemp made it 0600
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise WriteError(exc.strerror or str(exc)) from None
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
