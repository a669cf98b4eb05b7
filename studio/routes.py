"""Ownership checks on the file routes and on paths inside requests.

Gradio serves every file under ``allowed_paths`` at ``/gradio_api/file=<path>`` to anyone who is logged in, and
the outputs folder must be an allowed path (the UI shows videos from it). On a shared studio that would let
user B download user A's renders by guessing a URL. ``OwnerFileGuard`` is a plain ASGI middleware in front of
the Gradio app: for a file route whose path resolves under the outputs folder it answers 404 unless the path
lies in the logged-in user's own folder (``studio.security.is_owned_path``); a path with ``..`` in it is
refused outright. The logged-in user is read the way Gradio's own ``get_current_user`` does (the
``access-token-<cookie_id>`` cookie looked up in ``app.tokens``); without ``--auth`` every visitor is the
single ``local`` owner.

``check_request_paths`` applies the same idea to path-like fields a user types into a request (first-frame
image, mask, control videos, LoRAs): each must resolve inside the user's outputs folder, the models or assets
folders, or Gradio's upload folder, else UserError. ``install_path_checks`` puts that check in front of the
``generate`` job function so the UI and the API both go through it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from studio.security import is_owned_path, safe_path, user_outputs_dir

log = logging.getLogger("studio.routes")

# /gradio_api/file=<path>, /gradio_api/file/<path> (deprecated form), with or without a root_path before them.
_FILE_ROUTE = re.compile(r"/gradio_api/file(?:=|/)(?P<path>.*)$", re.DOTALL)
LOCAL_OWNER = "local"


def file_route_target(url_path: str) -> str | None:
    """The file path a Gradio file route would serve for this (percent-decoded) URL path, else None."""
    m = _FILE_ROUTE.search(url_path)
    return m.group("path") if m else None


def has_parent_refs(path: str) -> bool:
    """True if any segment of ``path`` is ``..`` (either slash style): never legitimate in a file URL."""
    return any(part == ".." for part in re.split(r"[\\/]+", path))


def _resolve_like_gradio(path: str) -> Path | None:
    """Absolute, symlink-resolved form of a file-route path (Gradio takes relative paths from its cwd)."""
    try:
        return Path(os.path.abspath(path)).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def current_user(gradio_app: Any, cookies: dict[str, str]) -> str | None:
    """The logged-in user name for a request's cookies, exactly as gradio.routes.get_current_user finds it."""
    cookie_id = getattr(gradio_app, "cookie_id", None)
    tokens = getattr(gradio_app, "tokens", None) or {}
    if cookie_id is None:
        return None
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


def _parse_cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
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


def file_access_allowed(target: str, outputs_dir: Path, user: str | None, auth_enabled: bool) -> bool:
    """Whether a file route may serve ``target`` to ``user``. Paths outside the outputs folder are left to
    Gradio's own allowed_paths check; paths inside it need ownership (the jobs database belongs to nobody)."""
    if "\x00" in target or has_parent_refs(target):
        return False
    resolved = _resolve_like_gradio(target)
    if resolved is None:
        return False
    if not (resolved == outputs_dir or resolved.is_relative_to(outputs_dir)):
        return True
    if auth_enabled and not user:
        return False
    from studio.auth import owner_name

    owner = owner_name(user) if user else LOCAL_OWNER
    try:
        return is_owned_path(resolved, outputs_dir, owner)
    except Exception:  # noqa: BLE001  any odd user name: no access
        return False


class OwnerFileGuard:
    """ASGI middleware: 404 for file routes into other users' outputs (and for any ``..`` in a file path)."""

    def __init__(self, app, *, outputs_dir: str | os.PathLike, gradio_app: Any, auth_enabled: bool):
        self.app = app
        self.outputs_dir = Path(outputs_dir).expanduser().resolve()
        self.gradio_app = gradio_app
        self.auth_enabled = auth_enabled

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            target = file_route_target(scope.get("path", ""))
            if target is not None:
                user = current_user(self.gradio_app, _parse_cookies(scope.get("headers") or []))
                if not file_access_allowed(target, self.outputs_dir, user, self.auth_enabled):
                    log.info("refused file route %r for user %r", target, user)
                    await _not_found(send)
                    return
        await self.app(scope, receive, send)


async def _not_found(send) -> None:
    body = b'{"detail":"Not Found"}'
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install_owner_checks(demo, ctx) -> None:
    """Put OwnerFileGuard in front of a launched Blocks' server app (call right after ``demo.launch``).

    Starlette builds its middleware stack on the first request (launch itself makes one), after which
    ``add_middleware`` refuses; so the built stack is wrapped instead. Idempotent. For an app mounted with
    ``gr.mount_gradio_app`` use ``fastapi_app.add_middleware(OwnerFileGuard, ...)`` before serving instead.
    """
    app = getattr(demo, "server_app", None) or demo.app
    if getattr(app, "_studio_owner_guard", False):
        return
    stack = app.middleware_stack or app.build_middleware_stack()
    app.middleware_stack = OwnerFileGuard(stack, outputs_dir=ctx.outputs_dir, gradio_app=app,
                                          auth_enabled=bool(ctx.config.auth_file))
    app._studio_owner_guard = True


# ---------------------------------------------------------------------------------------------- request paths

def upload_dir() -> Path:
    """Where Gradio puts uploads (gradio_client handle_file, gr.Image/gr.Video uploads)."""
    import tempfile

    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def request_roots(ctx, owner: str) -> list[Path]:
    """Folders a user's request may name files in: their own outputs, models, assets, Gradio uploads."""
    roots = [user_outputs_dir(ctx.outputs_dir, owner)]
    roots += [Path(r).resolve() for r in ctx.allowed_roots() if Path(r).resolve() != Path(ctx.outputs_dir).resolve()]
    roots.append(upload_dir())
    return roots


def check_request_paths(request: dict, roots: list[Path]) -> dict:
    """A copy of a request dict whose path fields (image, mask, clip, video, controls[].path, loras[].path) are
    resolved and checked to lie inside ``roots``; UserError naming the field otherwise."""
    out = dict(request)

    def check(field: str, value: Any) -> Any:
        if value in (None, ""):
            return value
        if not isinstance(value, str):
            raise UserError(f"{field} must be a file path, not {type(value).__name__}")
        try:
            return str(safe_path(value, roots))
        except UserError as exc:
            raise UserError(f"{field}: {exc}") from None

    for name in ("image", "mask", "clip", "video"):
        if name in out:
            out[name] = check(name, out[name])
    for group in ("controls", "loras"):
        items = out.get(group) or []
        fixed = []
        for i, item in enumerate(items):
            item = dict(item) if isinstance(item, dict) else item
            if isinstance(item, dict) and "path" in item:
                item["path"] = check(f"{group}[{i}].path", item["path"])
            fixed.append(item)
        if group in out:
            out[group] = fixed
    return out


def install_path_checks(ctx, kinds: tuple[str, ...] = ("generate", "preprocess")) -> None:
    """Wrap the job functions of ``kinds`` so every request's paths are checked against its owner's roots
    before the job runs (covers UI, API and anything else that submits)."""
    for kind in kinds:
        spec = ctx.jobs.kinds.get(kind)
        if spec is None or getattr(spec.fn, "_studio_path_checked", False):
            continue
        inner = spec.fn

        def checked(request: dict, jctx, _inner=inner):
            return _inner(check_request_paths(request, request_roots(ctx, jctx.owner)), jctx)

        checked._studio_path_checked = True  # type: ignore[attr-defined]
        ctx.jobs.register(kind, checked, lane=spec.lane, resumable=spec.resumable)
