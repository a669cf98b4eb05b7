"""The one exception type for mistakes a user can fix, and the plain words for failures of the machine.

Anything raised as ``UserError`` is shown to people as-is (gr.Error in the UI, one ``error:`` line and exit
code 2 in the CLI). Its message must say what was wrong and what to do about it. Every other exception is a
bug: logged with a traceback and shown as a short message with a log id.

Some failures are neither the user's mistake nor a bug: the disk is full, a folder is read-only or not
writable, a file is over the size the system allows. ``plain_error`` turns those (OSError with ENOSPC,
EDQUOT, EFBIG, EACCES, EPERM, EROFS, ENOTDIR, and SQLite's "database or disk is full") into a short
sentence a person can act on ("disk full", "permission denied: /srv/outputs"), so a job that hits one ends
with that message instead of "internal error".
"""
from __future__ import annotations

import errno
import os


class UserError(Exception):
    """A problem with the user's input or setup, explained in words a person can act on."""


class Cancelled(Exception):
    """The user asked a running job to stop. Not an error: jobs that raise it are marked cancelled."""


_PLAIN = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EMFILE: "too many open files",
    errno.ENAMETOOLONG: "file name too long",
}
_WITH_PLACE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG}


def os_error_message(exc: OSError, where: str | os.PathLike | None = None) -> str:
    """A short sentence for an OSError: "disk full", "permission denied: /srv/outputs", or the system's text.
    ``where`` (a folder the caller was writing into) is named instead of the file the system names (often a
    temporary file the person never asked for)."""
    words = _PLAIN.get(exc.errno)
    place = where if where is not None else exc.filename
    if words is None:
        words = exc.strerror or type(exc).__name__
        return f"{words}: {place}" if place is not None else words
    if exc.errno in _WITH_PLACE and place is not None:
        return f"{words}: {os.fspath(place) if isinstance(place, os.PathLike) else place}"
    return words


def plain_error(exc: BaseException) -> str | None:
    """The plain message for a failure of the machine (disk, permissions, size limits, the job database), or
    None when ``exc`` is something else (a bug)."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # a wrapped OSError still counts
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _PLAIN:
            return os_error_message(exc)
        text = str(exc).lower()
        if type(exc).__module__ == "sqlite3" or type(exc).__name__ in ("OperationalError", "DatabaseError"):
            if "disk is full" in text:
                return "disk full"
            if "readonly database" in text or "read-only" in text:
                return "the job database is read-only"
            if "disk i/o error" in text:
                return "disk error while saving the job's state"
        exc = exc.__cause__ or exc.__context__
    return None
