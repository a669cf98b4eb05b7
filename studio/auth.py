"""Users for a shared (LAN) studio: a JSON file of salted password hashes.

File format (``--auth FILE``)::

    {"version": 1,
     "users": {"alice": {"hash": "scrypt$16384$8$1$<salt b64>$<key b64>", "created": 1732240000.0}}}

Each user has their own random 16-byte salt; the scrypt parameters are stored with the hash so they can be
raised later without breaking old entries. Checks use ``hmac.compare_digest`` and also hash a dummy password
for unknown users, so the answer time does not tell which names exist. Writes are atomic (temp file in the
same folder + ``os.replace``) and the file is made readable by its owner only.

Use with Gradio: ``demo.launch(auth=Authenticator(path))`` (a callable ``(username, password) -> bool``).
Add users with ``python -m studio.cli_users add USERS_FILE NAME``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path

from pipelines.errors import UserError
from studio.security import validate_username

__all__ = [
    "LOCAL_USER", "MIN_PASSWORD_LENGTH", "Authenticator", "owner_name", "add_user", "check", "hash_password", "list_users", "remove_user",
    "validate_username", "verify_password",
]

MIN_PASSWORD_LENGTH = 8
# Owner of jobs and outputs when the studio runs without --auth (gradio's request.username is then None).
LOCAL_USER = "local"
FILE_VERSION = 1
# scrypt cost: n=2**14, r=8 takes ~50 ms and 16 MiB per check on a laptop core: cheap for a login, costly
# for guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_LEN = 2**14, 8, 1, 32

_write_lock = threading.Lock()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=dklen)


def hash_password(password: str) -> str:
    """Return ``scrypt$n$r$p$salt$key`` for ``password`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_LEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


_DUMMY_HASH: str | None = None


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a stored ``hash_password`` string. False if malformed."""
    try:
        algo, n, r, p, salt_b64, key_b64 = encoded.split("$")
        if algo != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        key = _scrypt(password, salt, int(n), int(r), int(p), len(expected))
    except (ValueError, TypeError, AttributeError):
        return False
    return hmac.compare_digest(key, expected)


def _load(path: Path) -> dict[str, dict]:
    """Users mapping from the file; an absent file means no users yet. A broken file is a UserError."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"users file {path} cannot be read ({exc}); fix or recreate it with "
                        f"'python -m studio.cli_users add {path} NAME'") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise UserError(f"users file {path} has no 'users' table; recreate it with 'python -m studio.cli_users add'")
    return users


def _save(path: Path, users: dict[str, dict]) -> None:
    """Atomic write, mode 0600: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"version": FILE_VERSION, "users": users}, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def add_user(path: str | os.PathLike, name: str, password: str, *, overwrite: bool = False) -> None:
    """Add ``name`` with ``password`` to the users file (created if absent).

    Raises UserError for an invalid name, a password shorter than MIN_PASSWORD_LENGTH, or an existing user
    unless ``overwrite`` (which changes their password).
    """
    validate_username(name)
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password for {name!r} is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    path = Path(path)
    with _write_lock:
        users = _load(path)
        if name in users and not overwrite:
            raise UserError(f"user {name!r} already exists in {path}; pass --force to change their password")
        users[name] = {"hash": hash_password(password), "created": time.time()}
        _save(path, users)


def remove_user(path: str | os.PathLike, name: str) -> bool:
    """Remove ``name``; returns False when there was no such user."""
    path = Path(path)
    with _write_lock:
        users = _load(path)
        if users.pop(name, None) is None:
            return False
        _save(path, users)
        return True


def owner_name(username: str | None) -> str:
    """The job/output owner for a request: ``gr.Request.username``, or LOCAL_USER when auth is off."""
    return LOCAL_USER if not username else validate_username(username)


def list_users(path: str | os.PathLike) -> list[str]:
    return sorted(_load(Path(path)))


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    return _DUMMY_HASH


def _check_users(users: dict[str, dict], name: str, password: str) -> bool:
    if not isinstance(name, str) or not isinstance(password, str):
        return False
    entry = users.get(name)
    encoded = entry.get("hash") if isinstance(entry, dict) else None
    if not isinstance(encoded, str):
        verify_password(password, _dummy_hash())  # same work as a real check: no timing hint for unknown names
        return False
    return verify_password(password, encoded)


def check(path: str | os.PathLike, name: str, password: str) -> bool:
    """True when ``name`` exists in the users file and ``password`` matches. Never raises for bad input."""
    try:
        users = _load(Path(path))
    except UserError:
        return False
    return _check_users(users, name, password)


class Authenticator:
    """``auth=`` callable for Gradio: ``Authenticator(path)(username, password) -> bool``.

    Re-reads the file when its modification time changes, so users added with the CLI can log in without a
    restart. A missing file at construction is a UserError (a server with --auth and no users would lock
    everyone out silently).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"users file {self.path} does not exist; create it with "
                            f"'python -m studio.cli_users add {self.path} NAME'")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, dict] = {}
        self._reload()
        self._seen = _fingerprints(self._users)
        self._pool = None

    def _reload(self) -> dict[str, dict]:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                return self._users
            if stamp != self._stamp:
                try:
                    self._users = _load(self.path)
                except UserError:
                    pass  # keep the last good table rather than lock everyone out mid-edit
                self._stamp = stamp
            return self._users

    def __call__(self, username: str, password: str) -> bool:
        return _check_users(self._reload(), username, password)

    async def check_async(self, username: str, password: str) -> bool:
        """The same check, with the password hashing (~50 ms of scrypt) on a small thread pool instead of the
        event loop: a login flood must not stall every logged-in user's requests. At most two hashes run at
        once; further logins wait their turn (the login back-off in studio.guard refuses floods before this)."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="login")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.__call__, username, password)

    def stale_users(self) -> set[str]:
        """Names removed from the users file, or whose password changed, since the last call: their open
        sessions must end (studio.guard drops their tokens)."""
        now = _fingerprints(self._reload())
        with self._lock:
            stale = {name for name, fp in self._seen.items() if now.get(name) != fp}
            self._seen = now
        return stale


def _fingerprints(users: dict[str, dict]) -> dict[str, str | None]:
    return {name: (entry.get("hash") if isinstance(entry, dict) else None) for name, entry in users.items()}
