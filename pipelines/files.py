"""Writing files whole or not at all, and saying plainly why a write failed.

Every file the studio keeps (uploads, staged datasets, outputs, checkpoints) is written to a temporary name in
the destination folder and renamed into place, so a full disk, a killed process or a read-only folder never
leaves a half-written file under the real name; on failure the temporary file is removed. Pure Python.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipelines.errors import UserError, os_error_message

__all__ = ["atomic_copy", "atomic_write_bytes", "atomic_write_text", "remove_stale_temp"]

TEMP_MARK = ".partial"


def _temp_in(folder: Path, name: str) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_MARK, dir=folder)
    return fd, Path(tmp)


def _write_atomic(dest: str | os.PathLike, fill) -> Path:
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_in(dest.parent, dest.name)
    except OSError as exc:
        raise UserError(f"cannot write {dest.name}: {os_error_message(exc, dest.parent)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {dest.name}: {os_error_message(exc, dest.parent)}") from None
        raise
    return dest


def atomic_copy(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dest`` through a temporary file in dest's folder; UserError (disk full, permission
    denied, ...) with nothing left behind when it fails."""
    src = Path(src)
    try:
        fh_src = open(src, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {src.name}: {os_error_message(exc, src)}") from None
    with fh_src:
        return _write_atomic(dest, lambda fh: shutil.copyfileobj(fh_src, fh, 1 << 20))


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    return _write_atomic(dest, lambda fh: fh.write(data))


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"))


def remove_stale_temp(folder: str | os.PathLike, patterns: tuple[str, ...] = (f".*{TEMP_MARK}",)) -> list[Path]:
    """Remove temporary files/folders a killed process left in ``folder`` (matching ``patterns``); returns
    what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for p in folder.glob(pattern):
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
