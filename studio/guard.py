"""The studio's front door: one ASGI middleware that every HTTP request passes before Gradio sees it.

It is installed when the server app is CREATED (``demo.launch(app_kwargs={"middleware": [...]})``), so no
request is ever served without it; the first version was installed after ``launch()`` returned, which in
``python app.py`` is when the server stops.

What it enforces (each rule also has a unit test and the served-studio tests drive it over HTTP):

- **File routes are an allow-list.** ``/gradio_api/file=<path>`` (and ``/gradio_api/file/<path>``, under any
  root path) serves a path only when, after resolving symlinks, it lies in the caller's own outputs folder,
  in the studio's assets folder, in Gradio's own static folders, or is a file in Gradio's upload/cache folder
  that the server handed to this caller or that this caller uploaded (``OwnedFiles``). Everything else is
  404, whatever the URL form (percent-encoded, ``//``, ``/proc/self/...``, ``/.``): the job database, the
  browser-state secret, the users file and other users' files are never served. URL targets
  (``file=https://...``) and ``/proxy=`` are refused: the studio fetches nothing from the network.
- **Cache files belong to someone.** Gradio keeps every upload, and a copy of every file an event returns, in
  one shared folder. The middleware reads the JSON / event-stream responses it passes on and records each
  path under that folder for the user the response went to; an upload response is recorded the same way.
  A request body that names a cache file the caller was never given, or a file in another user's outputs
  folder, is refused with 403 before Gradio runs anything (``studio.routes`` applies the same rule again
  when a job starts, for callers that do not come through HTTP).
- **Logins are throttled.** ``POST /login`` is refused with 429 while the client address or the user name is
  in back-off after repeated failures (exponential, capped), so a login flood costs no password hashing; the
  hashing itself runs off the event loop (``studio.auth.Authenticator.check_async``).
- **Sessions end with their user.** When the users file changes, every session token of a removed user or of
  a user whose password changed is dropped (checked at most once a second).

Pure ASGI (no gradio import): the Gradio app is read from ``scope["app"]`` the way ``gradio.routes`` finds the
user (the ``access-token-<cookie id>`` cookie looked up in ``app.tokens``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("studio.guard")

LOCAL_OWNER = "local"
# /gradio_api/file=<path>, /gradio_api/file/<path> (deprecated form), after any root path.
_FILE_ROUTE = re.compile(r"/gradio_api/file(?:=|/)(?P<path>.*)$", re.DOTALL)
_PROXY_ROUTE = re.compile(r"/gradio_api/proxy=")
_LOGIN_ROUTE = re.compile(r"/login/?$")
# Routes whose JSON body carries component values / API arguments (where a file path can be smuggled in).
_DATA_ROUTE = re.compile(r"/gradio_api/(?:queue/join|run/|api/|call/)")
_SCANNED_TYPES = (b"application/json", b"text/event-stream", b"text/html", b"text/plain")
MAX_BODY_BYTES = 16 * 1024 * 1024  # a request body we inspect; prompts and requests are far smaller
_TAIL = 4096  # bytes of a response chunk kept to find a path cut by a chunk boundary


def file_route_target(url_path: str) -> str | None:
    """The file path a Gradio file route would serve for this (percent-decoded) URL path, else None."""
    m = _FILE_ROUTE.search(url_path)
    return m.group("path") if m else None


def has_parent_refs(path: str) -> bool:
    """True if any segment of ``path`` is ``..`` (either slash style): never legitimate in a file URL."""
    return any(part == ".." for part in re.split(r"[\\/]+", path))


def resolve(path: str) -> Path | None:
    """Absolute, symlink-resolved form of a path as Gradio would open it (relative: from the cwd)."""
    try:
        return Path(os.path.abspath(path)).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


class OwnedFiles:
    """Which files in Gradio's shared upload/cache folder each user was given or uploaded.

    In memory (a restart forgets: pages then upload again). Bounded per user (oldest forgotten first)."""

    def __init__(self, cache_dir: str | os.PathLike, per_user: int = 50_000):
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.prefix = str(self.cache_dir) + os.sep
        self.per_user = per_user
        self._lock = threading.Lock()
        self._by_user: dict[str, OrderedDict[str, None]] = {}

    def in_cache(self, path: Path) -> bool:
        return _inside(path, self.cache_dir)

    def add(self, user: str, path: str | os.PathLike) -> None:
        p = resolve(os.fspath(path))
        if p is None or not self.in_cache(p) or p == self.cache_dir:
            return
        with self._lock:
            owned = self._by_user.setdefault(user, OrderedDict())
            owned[str(p)] = None
            owned.move_to_end(str(p))
            while len(owned) > self.per_user:
                owned.popitem(last=False)

    def owns(self, user: str, path: str | os.PathLike) -> bool:
        p = resolve(os.fspath(path))
        if p is None:
            return False
        with self._lock:
            return str(p) in self._by_user.get(user, ())

    def record_text(self, user: str, text: str) -> int:
        """Record every cache path mentioned in ``text`` (a JSON / event-stream body) for ``user``."""
        n, start = 0, 0
        while True:
            i = text.find(self.prefix, start)
            if i < 0:
                return n
            j = i + len(self.prefix)
            while j < len(text) and text[j] not in '"\'<>\n\r\t' and not (text[j] == "\\" and text[j + 1:j + 2] == '"'):
                j += 1
            raw = text[i:j].replace("\\/", "/")
            if "\\u" in raw:
                try:
                    raw = json.loads(f'"{raw}"')
                except ValueError:
                    pass
            self.add(user, raw)
            n += 1
            start = j


class LoginThrottle:
    """Exponential back-off after failed logins, per client address and per user name.

    ``free`` failures are allowed; after that each failure doubles the wait (from 1 s), capped at ``cap`` s.
    A success clears the user's and the address's record."""

    def __init__(self, *, address_free: int = 10, address_cap: float = 300.0, user_free: int = 5,
                 user_cap: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._rules = {"address": (address_free, address_cap), "user": (user_free, user_cap)}
        self._fails: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()
        self.clock = clock

    def _wait(self, kind: str, key: str, now: float) -> float:
        count, last = self._fails.get((kind, key), (0, 0.0))
        free, cap = self._rules[kind]
        if count < free:
            return 0.0
        return max(0.0, last + min(cap, 2.0 ** (count - free)) - now)

    def retry_after(self, address: str, user: str | None) -> float:
        """Seconds until a login from ``address`` for ``user`` may be tried (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [self._wait("address", address, now)]
            if user:
                waits.append(self._wait("user", user, now))
        return max(waits)

    def failed(self, address: str, user: str | None) -> None:
        now = self.clock()
        with self._lock:
            for kind, key in (("address", address), ("user", user)):
                if key:
                    count, _ = self._fails.get((kind, key), (0, 0.0))
                    self._fails[(kind, key)] = (count + 1, now)
            if len(self._fails) > 100_000:  # a flood of distinct names: forget the oldest half
                for k in sorted(self._fails, key=lambda k: self._fails[k][1])[:50_000]:
                    del self._fails[k]

    def succeeded(self, address: str, user: str | None) -> None:
        with self._lock:
            self._fails.pop(("address", address), None)
            if user:
                self._fails.pop(("user", user), None)


class GuardState:
    """What the middleware knows about the studio: folders, the owner ledger, login back-off, the users file.

    ``owner_of(user)`` maps a logged-in name to its outputs owner (``studio.auth.owner_name``); with no
    authenticator every visitor is the single local owner."""

    def __init__(self, *, outputs_dir: str | os.PathLike, public_dirs: Iterable[str | os.PathLike],
                 cache_dir: str | os.PathLike, authenticator: Any | None = None,
                 owner_of: Callable[[str], str] | None = None, throttle: LoginThrottle | None = None):
        self.outputs_dir = Path(outputs_dir).expanduser().resolve()
        self.public_dirs = [Path(d).expanduser().resolve() for d in public_dirs if d]
        self.files = OwnedFiles(cache_dir)
        self.authenticator = authenticator
        self.owner_of = owner_of or (lambda user: user)
        self.throttle = throttle or LoginThrottle()
        self._revoke_checked = 0.0

    @property
    def auth_enabled(self) -> bool:
        return self.authenticator is not None

    def owner(self, user: str | None) -> str | None:
        """The outputs owner of a request's user: None when auth is on and nobody is logged in."""
        if not self.auth_enabled:
            return LOCAL_OWNER
        if not user:
            return None
        try:
            return self.owner_of(user)
        except Exception:  # noqa: BLE001  an odd name owns nothing
            return None

    # -- files ---------------------------------------------------------------------------------------------
    def may_read(self, target: str, user: str | None) -> bool:
        """Whether a file route may serve ``target`` to ``user`` (the allow-list above)."""
        if not target or "\x00" in target or has_parent_refs(target) or "://" in target:
            return False
        path = resolve(target)
        owner = self.owner(user)
        if path is None or owner is None:
            return False
        if _inside(path, self.outputs_dir):
            return path != self.outputs_dir / owner and _inside(path, self.outputs_dir / owner)
        if self.files.in_cache(path):
            return self.files.owns(owner, path)
        return any(_inside(path, d) for d in self.public_dirs)

    def may_name(self, text: str, owner: str) -> bool:
        """Whether a request may name ``text`` as a file: cache files only if given to / uploaded by
        ``owner``, files in the outputs folder only in ``owner``'s own folder. Other paths are left to the
        job-level checks (studio.routes), which know each field's allowed roots."""
        path = resolve(text)
        if path is None:
            return True
        if _inside(path, self.outputs_dir):
            return _inside(path, self.outputs_dir / owner)
        if self.files.in_cache(path):
            return self.files.owns(owner, path)
        return True

    # -- sessions --------------------------------------------------------------------------------------------
    def revoke_stale_sessions(self, app: Any) -> int:
        """Drop the session tokens of users removed from (or re-passworded in) the users file."""
        if self.authenticator is None:
            return 0
        now = time.monotonic()
        if now - self._revoke_checked < 1.0:
            return 0
        self._revoke_checked = now
        stale = self.authenticator.stale_users()
        tokens = getattr(app, "tokens", None)
        if not stale or not isinstance(tokens, dict):
            return 0
        dropped = [t for t, u in list(tokens.items()) if u in stale]
        for t in dropped:
            tokens.pop(t, None)
        if dropped:
            log.warning("ended %d session(s) of %s (removed or password changed)", len(dropped), sorted(stale))
        return len(dropped)


def current_user(app: Any, cookies: dict[str, str]) -> str | None:
    """The logged-in user name for a request's cookies, exactly as gradio.routes.get_current_user finds it."""
    cookie_id = getattr(app, "cookie_id", None)
    tokens = getattr(app, "tokens", None) or {}
    if cookie_id is None:
        return None
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


def parse_cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar: dict[str, str] = {}
    for key, value in headers:
        if key.lower() == b"cookie":
            c = SimpleCookie()
            try:
                c.load(value.decode("latin-1"))
            except Exception:  # noqa: BLE001  a malformed cookie header is just no cookie
                continue
            jar.update({k: m.value for k, m in c.items()})
    return jar


def _strings(obj: Any, depth: int = 0) -> Iterable[str]:
    if depth > 64:
        return
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, depth + 1)


def _named_paths(text: str, state: GuardState) -> list[str]:
    """Candidate file paths in one string of a request body: the string itself when it is an absolute path,
    and any file-route URL's target inside it."""
    out = []
    if text.startswith("/") or text.startswith("\\") or text.startswith("~"):
        out.append(text)
    target = file_route_target(text) if "gradio_api/file" in text else None
    if target:
        from urllib.parse import unquote

        out.append(unquote(target))
    for root in (state.files.prefix, str(state.outputs_dir) + os.sep):
        if root in text and not text.startswith(root):
            out.append(text[text.index(root):])
    return out


async def _respond(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive, limit: int) -> tuple[bytes | None, list[dict]]:
    """The whole request body (None if over ``limit``) and the messages read, to replay downstream."""
    chunks, messages, size = [], [], 0
    while True:
        msg = await receive()
        messages.append(msg)
        if msg["type"] != "http.request":
            return b"".join(chunks), messages
        data = msg.get("body", b"")
        size += len(data)
        if size > limit:
            return None, messages
        chunks.append(data)
        if not msg.get("more_body", False):
            return b"".join(chunks), messages


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class StudioGuard:
    """The ASGI middleware (see the module docstring). ``Middleware(StudioGuard, state=GuardState(...))``."""

    def __init__(self, app, state: GuardState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        gradio_app = scope.get("app")
        state.revoke_stale_sessions(gradio_app)
        path = scope.get("path", "")
        user = current_user(gradio_app, parse_cookies(scope.get("headers") or []))
        owner = state.owner(user)

        target = file_route_target(path)
        if target is not None or _PROXY_ROUTE.search(path):
            if target is None or not state.may_read(target, user):
                log.info("refused file route %r for user %r", target if target is not None else path, user)
                await _respond(send, 404, "Not Found")
                return
            await self.app(scope, receive, send)
            return

        method = scope.get("method", "GET")
        if method == "POST" and _LOGIN_ROUTE.search(path) and state.auth_enabled:
            await self._login(scope, receive, send)
            return
        if method == "POST" and _DATA_ROUTE.search(path) and owner is not None:
            body, messages = await _read_body(receive, MAX_BODY_BYTES)
            if body is None:
                await _respond(send, 413, f"request body over {MAX_BODY_BYTES // 2**20} MB")
                return
            refused = self._refused_path(body, owner)
            if refused:
                log.info("refused request naming %r for user %r", refused, user)
                await _respond(send, 403, "a file in this request is not yours or no longer exists: upload it again")
                return
            receive = _replay(messages, receive)
        if owner is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._recording_send(send, owner))

    def _refused_path(self, body: bytes, owner: str) -> str | None:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return None  # not JSON: Gradio answers it
        for text in _strings(data):
            if len(text) > 8192:
                continue
            for candidate in _named_paths(text, self.state):
                if not self.state.may_name(candidate, owner):
                    return candidate
        return None

    def _recording_send(self, send, owner: str):
        """Wrap ``send``: record the cache files a JSON / event-stream / HTML response hands to ``owner``."""
        files = self.state.files
        prefix = files.prefix.encode()
        scan = {"on": False, "tail": b""}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                ctype = dict((k.lower(), v) for k, v in message.get("headers") or []).get(b"content-type", b"")
                enc = dict((k.lower(), v) for k, v in message.get("headers") or []).get(b"content-encoding", b"")
                scan["on"] = not enc and any(t in ctype for t in _SCANNED_TYPES)
            elif message["type"] == "http.response.body" and scan["on"]:
                chunk = message.get("body", b"")
                data = scan["tail"] + chunk
                if prefix in data:
                    # a path cut at the end of this chunk is found again, whole, with the next chunk
                    files.record_text(owner, data.decode("utf-8", "replace"))
                scan["tail"] = data[-_TAIL:]
            await send(message)

        return wrapped

    async def _login(self, scope, receive, send):
        state = self.state
        address = (scope.get("client") or ("?", 0))[0]
        body, messages = await _read_body(receive, 64 * 1024)
        if body is None:
            await _respond(send, 413, "login form too large")
            return
        try:
            name = (parse_qs(body.decode("utf-8", "replace")).get("username") or [""])[0].strip() or None
        except Exception:  # noqa: BLE001
            name = None
        wait = state.throttle.retry_after(address, name)
        if wait > 0:
            await _respond(send, 429, f"too many failed logins; try again in {int(wait) + 1} s",
                           [(b"retry-after", str(int(wait) + 1).encode())])
            return
        status = {"code": 0}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message.get("status", 0)
            await send(message)

        await self.app(scope, _replay(messages, receive), watch)
        if status["code"] == 200:
            state.throttle.succeeded(address, name)
        elif status["code"] in (400, 401):
            state.throttle.failed(address, name)
