"""Moving a job's files to and from a worker that does not see the studio's folders (Ray's object store).

A worker on the studio's own host, or one that mounts the shared folder (``--shared-dir``) at the same path,
reads the request's files and writes the job's folder itself: nothing moves. For any other worker the studio
ships every input file a request names (the path fields studio.routes checks) as bytes; the worker writes them
into a scratch folder, runs the job with its paths pointing there, and sends the job's output files back, which
the studio writes into the job's own folder (atomically, like every output). Paths in the result, the progress
and the text files written beside outputs (settings .json) are mapped back to the studio's paths.

Pure Python; used on both sides.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.routes import PATH_KEYS, PATH_MAP_KEYS, PRESET_KEYS, _is_path_like

__all__ = ["map_paths", "map_strings", "request_paths", "pack_files", "unpack_files", "prefix_mapper",
           "TEXT_SUFFIXES"]

TEXT_SUFFIXES = (".json", ".txt", ".jsonl")  # files whose text may name paths (settings sidecars, run notes)


def map_paths(request: Any, fn: Callable[[str], str]) -> Any:
    """A copy of ``request`` with ``fn`` applied to the value of every path-like field (the fields studio.routes
    checks: ``PATH_KEYS`` at any depth, ``reference_overrides`` values, a ``preset`` given as a path)."""
    if not isinstance(request, dict):
        return request
    out = dict(request)
    for key, value in request.items():
        if isinstance(value, dict):
            if key in PATH_MAP_KEYS:
                out[key] = {k: fn(v) if isinstance(v, str) and v else v for k, v in value.items()}
            else:
                out[key] = map_paths(value, fn)
        elif isinstance(value, list):
            out[key] = [map_paths(v, fn) if isinstance(v, dict)
                        else fn(v) if key in PATH_KEYS and isinstance(v, str) and v else v for v in value]
        elif isinstance(value, str) and value and (
                key in PATH_KEYS or (key in PRESET_KEYS and _is_path_like(value))):
            out[key] = fn(value)
    return out


def request_paths(request: Any) -> list[str]:
    """Every path a request names, in order, without repeats."""
    seen: list[str] = []

    def note(p: str) -> str:
        if p not in seen:
            seen.append(p)
        return p

    map_paths(request, note)
    return seen


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """``obj`` (JSON-like) with ``fn`` applied to every string in it, at any depth."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [map_strings(v, fn) for v in obj]
    return obj


def prefix_mapper(pairs: list[tuple[str, str]]) -> Callable[[str], str]:
    """A string map replacing a leading ``old`` path (the whole string, or up to a separator) by ``new``."""
    pairs = sorted(((os.fspath(a), os.fspath(b)) for a, b in pairs if a), key=lambda p: -len(p[0]))

    def fn(s: str) -> str:
        for old, new in pairs:
            if s == old:
                return new
            if s.startswith(old) and s[len(old)] in ("/", os.sep):
                return new + s[len(old):]
        return s

    return fn


def pack_files(folder: str | os.PathLike, skip: Callable[[str], bool] | None = None) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``folder`` (links and temp files left out)."""
    root = Path(folder)
    out: dict[str, bytes] = {}
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        rel = p.relative_to(root).as_posix()
        if skip is not None and skip(rel):
            continue
        out[rel] = p.read_bytes()
    return out


def unpack_files(files: dict[str, bytes], dest: str | os.PathLike,
                 rewrite: Callable[[str], str] | None = None) -> list[Path]:
    """Write ``files`` ({relative path: bytes}) under ``dest``, each atomically; text files (``TEXT_SUFFIXES``)
    get ``rewrite`` applied to their text. A name that would leave ``dest`` is refused."""
    from pipelines.files import atomic_write_bytes

    root = Path(dest).resolve()
    written = []
    for rel, data in files.items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"a worker sent a file outside the job folder: {rel!r}")
        if rewrite is not None and target.suffix.lower() in TEXT_SUFFIXES:
            try:
                data = rewrite(data.decode("utf-8")).encode("utf-8")
            except UnicodeDecodeError:
                pass
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_bytes(target, data))
    return written


def text_rewriter(mapper: Callable[[str], str], olds: list[str]) -> Callable[[str], str]:
    """Replace every occurrence of the ``olds`` paths inside a text by what ``mapper`` makes of them."""
    olds = sorted({o for o in olds if o}, key=len, reverse=True)

    def fn(text: str) -> str:
        for old in olds:
            if old in text:
                text = text.replace(old, mapper(old))
        return text

    return fn
