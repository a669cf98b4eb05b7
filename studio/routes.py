"""Paths inside requests: every path-like field of every job request resolves inside its owner's roots.

A request (from the UI, the API, the CLI of a shared server or a preset) names files: a first-frame image, a
mask, control videos, LoRAs, a dataset, a validation reference, a preset file, ... Each such field must
resolve (symlinks followed) inside one of the caller's roots:

- their own outputs folder ``<outputs>/<owner>/`` (relative paths are taken from there),
- the studio's models, assets and presets folders (shared, read-only data),
- a file in Gradio's upload/cache folder that THIS caller uploaded or was handed (``studio.guard.OwnedFiles``):
  the cache is one folder for everyone, so a cache path alone proves nothing.

The field names are listed once (``PATH_KEYS``); ``check_request_paths`` walks a request of any kind, nested
lists and dicts included, and ``install_path_checks`` puts the check in front of every registered job kind,
so a job submitted any way meets it again when it runs. The HTTP layer (``studio.guard``) refuses a request
body naming another user's file before Gradio runs anything; this module is what every job relies on.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from studio.security import safe_path, user_outputs_dir

log = logging.getLogger("studio.routes")

# Request fields (at any depth) whose string value is a file or folder path.
PATH_KEYS = frozenset({
    "path", "image", "mask", "clip", "video", "data", "validation_reference", "continue_run", "reference_image",
    "background", "tracks", "control", "lora", "reference", "first_frame", "file", "dataset",
})
# Fields whose value is a mapping of names to paths.
PATH_MAP_KEYS = frozenset({"reference_overrides"})
# A preset is a name ("face") or a path to a recipe .json; a path must lie in the roots or the presets folder.
PRESET_KEYS = frozenset({"preset"})


def upload_dir() -> Path:
    """Where Gradio puts uploads (gradio_client handle_file, gr.Image/gr.Video uploads) and its cached copies."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def request_roots(ctx, owner: str) -> list[Path]:
    """Folders a user's request may name files in: their own outputs, then the models / assets / presets."""
    from pipelines.config import PRESETS_DIR

    roots = [user_outputs_dir(ctx.outputs_dir, owner)]
    out = Path(ctx.outputs_dir).resolve()
    roots += [Path(r).resolve() for r in ctx.allowed_roots() if Path(r).resolve() != out]
    if Path(PRESETS_DIR).resolve() not in roots:
        roots.append(Path(PRESETS_DIR).resolve())
    return roots


class PathChecker:
    """Resolve one owner's path fields: inside ``roots``, or a cache file ``files`` records as theirs."""

    def __init__(self, roots: list[Path], owner: str | None = None, files: Any = None):
        self.roots = roots
        self.owner = owner
        self.files = files  # studio.guard.OwnedFiles (None: no cache file is anyone's)

    def __call__(self, field: str, value: Any) -> Any:
        if value in (None, ""):
            return value
        if not isinstance(value, str):
            raise UserError(f"{field} must be a file path, not {type(value).__name__}")
        cache = self.files.cache_dir if self.files is not None else upload_dir()
        try:
            resolved = Path(os.path.abspath(value.strip())).resolve() if Path(value.strip()).is_absolute() else None
        except (OSError, RuntimeError, ValueError):
            resolved = None
        if resolved is not None and (resolved == cache or resolved.is_relative_to(cache)):
            if self.files is None or self.owner is None or not self.files.owns(self.owner, resolved):
                raise UserError(f"{field}: {Path(value).name} is not one of your uploads (or it has expired): "
                                "upload the file again")
            return str(resolved)
        try:
            return str(safe_path(value, self.roots))
        except UserError as exc:
            raise UserError(f"{field}: {exc}") from None


def _is_path_like(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(".json")


def check_request_paths(request: dict, roots: list[Path] | PathChecker, *, _where: str = "") -> dict:
    """A copy of a request dict whose path-like fields (``PATH_KEYS`` at any depth, ``reference_overrides``
    values, a ``preset`` given as a path) are resolved and checked; UserError naming the field otherwise."""
    check = roots if isinstance(roots, PathChecker) else PathChecker(list(roots))
    if not isinstance(request, dict):
        return request
    out = dict(request)
    for key, value in request.items():
        field = f"{_where}{key}"
        if isinstance(value, dict):
            if key in PATH_MAP_KEYS:
                out[key] = {k: check(f"{field}[{k}]", v) for k, v in value.items()}
            else:
                out[key] = check_request_paths(value, check, _where=f"{field}.")
        elif isinstance(value, list):
            out[key] = [check_request_paths(v, check, _where=f"{field}[{i}].") if isinstance(v, dict)
                        else check(f"{field}[{i}]", v) if key in PATH_KEYS and isinstance(v, str) else v
                        for i, v in enumerate(value)]
        elif key in PATH_KEYS or (key in PRESET_KEYS and isinstance(value, str) and _is_path_like(value)):
            out[key] = check(field, value)
    return out


def checker_for(ctx, owner: str) -> PathChecker:
    """The path check for ``owner``'s requests on this studio."""
    guard = getattr(ctx, "guard", None)
    return PathChecker(request_roots(ctx, owner), owner, guard.files if guard is not None else None)


def install_path_checks(ctx, kinds: tuple[str, ...] | None = None) -> None:
    """Wrap the job functions of ``kinds`` (default: every registered kind) so every request's paths are
    checked against its owner's roots before the job runs (covers UI, API and anything else that submits)."""
    for kind in (kinds or tuple(ctx.jobs.kinds)):
        spec = ctx.jobs.kinds.get(kind)
        if spec is None or getattr(spec.fn, "_studio_path_checked", False):
            continue
        inner = spec.fn

        def checked(request: dict, jctx, _inner=inner):
            return _inner(check_request_paths(request, checker_for(ctx, jctx.owner)), jctx)

        checked._studio_path_checked = True  # type: ignore[attr-defined]
        ctx.jobs.register(kind, checked, lane=spec.lane, resumable=spec.resumable)
