"""Checks for names and paths that come from users.

Two things a shared studio must never let a person do: pick a name that walks out of their own folder
(user names become folder names under the outputs dir) and type a path that makes the server read a file
outside the folders it serves (models, outputs, assets). Both checks live here so the UI, the API and the
CLI apply the same rules. Pure Python; no gradio.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from pipelines.errors import UserError

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Files the studio keeps directly in the outputs folder, beside the per-user folders: no user may be named so.
RESERVED_NAMES = frozenset({"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "jobs.sqlite3-journal"})


def validate_username(name: str) -> str:
    """Return ``name`` if it is safe as a user name and a folder name, else raise UserError.

    Allowed: 1-64 of letters, digits, ``_``, ``.``, ``-``; not ``.``/``..`` and not starting with a dot (no
    hidden folders, no parent-directory tricks), and not one of the studio's own file names in the outputs dir.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("."):
        raise UserError(
            f"user name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', not starting with '.'"
        )
    if name.lower() in RESERVED_NAMES:
        raise UserError(f"user name {name!r} is reserved by the studio; pick another")
    return name


def _root_list(allowed_roots: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    if isinstance(allowed_roots, (str, os.PathLike)):
        allowed_roots = [allowed_roots]
    roots = [Path(r).expanduser().resolve() for r in allowed_roots if r is not None and str(r) != ""]
    if not roots:
        raise ValueError("safe_path needs at least one allowed root")
    return roots


def safe_path(
    user_path: str | os.PathLike,
    allowed_roots: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    must_exist: bool = False,
) -> Path:
    """Resolve a path a user typed and refuse it unless it lies inside one of ``allowed_roots``.

    Symlinks are resolved before the check, so a link inside a root that points outside is refused. A
    relative path is taken relative to the FIRST root (never the server's working directory); ``~`` is not
    expanded (it would be the server's home). Returns the resolved absolute path.

    Raises UserError for empty paths, NUL bytes, paths outside every root and (with ``must_exist``) missing
    files. Note: this checks the path now; a file swapped for a symlink afterwards is outside its scope.
    """
    roots = _root_list(allowed_roots)
    text = os.fspath(user_path) if isinstance(user_path, os.PathLike) else user_path
    if not isinstance(text, str) or not text.strip():
        raise UserError("the path is empty: type a file path inside the models or outputs folder")
    if "\x00" in text:
        raise UserError("the path contains a NUL character; type a plain file path")
    candidate = Path(text.strip())
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loops, too-long names
        raise UserError(f"the path {text!r} cannot be resolved ({exc.__class__.__name__}); check it") from None
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise UserError(f"the path {text!r} is outside the folders the studio may read ({shown}); "
                        f"put the file inside one of them")
    if must_exist and not resolved.exists():
        raise UserError(f"the path {text!r} does not exist")
    return resolved


def user_outputs_dir(outputs_dir: str | os.PathLike, owner: str) -> Path:
    """``outputs_dir/<owner>``: the only folder whose files ``owner`` may see or download."""
    return Path(outputs_dir).expanduser().resolve() / validate_username(owner)


def is_owned_path(path: str | os.PathLike, outputs_dir: str | os.PathLike, owner: str) -> bool:
    """True when ``path`` (after resolving symlinks) lies inside ``owner``'s outputs folder.

    For file routes: serve an output to a user only when this is True. Never raises for odd input. Relative
    paths are refused: their meaning would depend on who resolves them.
    """
    try:
        if not Path(os.fspath(path)).is_absolute():
            return False
        safe_path(path, [user_outputs_dir(outputs_dir, owner)])
    except (UserError, ValueError, TypeError):
        return False
    return True
