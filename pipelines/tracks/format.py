"""The studio's own track file format, and the importers for the formats people bring from elsewhere.

Own format (version 1), JSON::

    {"format": "ic-lora-studio/tracks", "version": 1,
     "width": 768, "height": 512, "fps": 24.0, "frames": 121,
     "tracks": [{"name": "ball", "points": [{"x": 100, "y": 200}, {"x": 300, "y": 220, "frame": null}]},
                {"points": [{"x": 10, "y": 20, "frame": 0}, {"x": 60, "y": 20, "frame": 40}]}]}

``width``/``height`` are the size of the image the points were drawn on (pixels, origin top-left).
A track's points are either all untimed (``frame`` absent or null: time is spread uniformly over the clip, one
spline segment per equal share of frames, SPEC.md 7) or all timed (``frame`` = the frame index the track passes
through that point; strictly increasing). A timed track exists only from its first to its last timed frame.

Imports (``load_tracks`` detects them):
- ComfyUI's spline editor data: a bare list of splines, each a list of ``{"x", "y"}`` control points (no frame
  indices), possibly given as a JSON string. A list of ``{"x", "y"}`` dicts alone is read as one spline.
- Per-frame coordinate lists: a list of tracks, each a list with one ``[x, y]`` (or ``{"x", "y"}``, or null for
  "absent") per frame; entry i becomes a point timed at frame i. A list of dicts with no pair and no null is
  read as ComfyUI splines; when such a spline has exactly ``frames`` points both readings give the same render
  (so the editor's ``coordinates`` widget and its ``tracks`` output, one point per frame, load either way).
  Like ComfyUI's LTXVDrawTracks, a list whose items are JSON strings (one per track or per group) is unwrapped.
- A ComfyUI workflow file (the UI format with ``nodes``, or the API prompt format) holding one
  ``LTXVSparseTrackEditor`` node: its ``points_store`` splines (or, when empty, its per-frame ``coordinates``),
  with its ``points_to_sample`` as the frame count unless ``frames`` is given. The canvas size is the size of the
  image the editor showed, which the file does not hold: pass width and height.

Every problem is a ``UserError`` whose message names the path into the JSON (``tracks[2].points[5].x is not a
number``), so a person can find the bad value in their file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import UserError

FORMAT_NAME = "ic-lora-studio/tracks"
FORMAT_VERSION = 1
DEFAULT_FPS = 24.0


class TrackSource(str, Enum):
    """What kind of data ``load_tracks`` was given (or should assume)."""

    AUTO = "auto"
    OWN = "own"
    COMFYUI = "comfyui"
    PER_FRAME = "per_frame"


@dataclass(frozen=True)
class Point:
    """One control point in pixels of the drawing canvas; ``frame`` is set only on timed tracks."""

    x: float
    y: float
    frame: int | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"x": _plain_number(self.x), "y": _plain_number(self.y)}
        if self.frame is not None:
            d["frame"] = int(self.frame)
        return d


@dataclass
class Track:
    """A list of control points. ``dense`` (not saved) holds a measured per-frame path, [T,2] float with NaN
    where the track is absent, when the track came from ``auto_tracks``: the ground truth the fitted control
    points approximate."""

    points: list[Point]
    name: str | None = None
    dense: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def timed(self) -> bool:
        return bool(self.points) and self.points[0].frame is not None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        if self.name is not None:
            d["name"] = self.name
        d["points"] = [p.to_dict() for p in self.points]
        return d


@dataclass
class TrackSet:
    """Everything needed to render a track video: canvas size, timing and the tracks."""

    width: int
    height: int
    frames: int
    fps: float = DEFAULT_FPS
    tracks: list[Track] = field(default_factory=list)
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "version": self.version, "width": self.width, "height": self.height,
                "fps": _plain_number(self.fps), "frames": self.frames,
                "tracks": [t.to_dict() for t in self.tracks]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def validate(self) -> "TrackSet":
        """Re-check a TrackSet built in code (files are checked while parsing). Returns self."""
        parse_trackset(self.to_dict())
        return self


def _plain_number(v: float) -> int | float:
    """Write 12.0 as 12 so files stay readable; keep real fractions."""
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


# ---------------------------------------------------------------------------------------------- checking ---

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, path: str) -> float:
    if not _is_number(v):
        raise UserError(f"{path} is not a number (got {_show(v)})")
    f = float(v)
    if not math.isfinite(f):
        raise UserError(f"{path} is not a finite number (got {_show(v)})")
    return f


def _int(v: Any, path: str, minimum: int | None = None) -> int:
    f = _number(v, path)
    if not f.is_integer():
        raise UserError(f"{path} must be a whole number (got {_show(v)})")
    i = int(f)
    if minimum is not None and i < minimum:
        raise UserError(f"{path} must be at least {minimum} (got {i})")
    return i


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _point_dict(obj: Any, path: str, allow_frame: bool) -> Point:
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a point: expected {{\"x\": ..., \"y\": ...}} (got {_show(obj)})")
    for key in ("x", "y"):
        if key not in obj:
            raise UserError(f"{path}.{key} is missing")
    x = _number(obj["x"], f"{path}.x")
    y = _number(obj["y"], f"{path}.y")
    frame = obj.get("frame") if allow_frame else None
    if frame is not None:
        frame = _int(frame, f"{path}.frame", minimum=0)
    return Point(x, y, frame)


def _check_track_timing(points: list[Point], path: str, frames: int | None) -> None:
    """All timed or all untimed; timed frames strictly increasing and inside the clip."""
    if not points:
        raise UserError(f"{path} is empty; a track needs at least one point")
    timed = [p.frame is not None for p in points]
    if any(timed) and not all(timed):
        i = timed.index(False) if timed[0] else timed.index(True)
        state = "is missing but point 0 has one" if timed[0] else "is set but point 0 has none"
        raise UserError(f"{path}[{i}].frame {state}; give every point of a track a frame, or none")
    if not all(timed):
        return
    for i in range(1, len(points)):
        if points[i].frame <= points[i - 1].frame:
            raise UserError(f"{path}[{i}].frame ({points[i].frame}) must be greater than the previous point's "
                            f"frame ({points[i - 1].frame}); timed points go forward in time")
    if frames is not None and points[-1].frame >= frames:
        raise UserError(f"{path}[{len(points) - 1}].frame is {points[-1].frame} but the clip has {frames} "
                        f"frames (0..{frames - 1})")


def parse_trackset(obj: Any) -> TrackSet:
    """Own format (a dict already parsed from JSON) -> TrackSet, with path-naming errors."""
    if not isinstance(obj, dict):
        raise UserError(f"track file root is not an object (got {_show(obj)})")
    if "version" not in obj:
        raise UserError("version is missing; a studio track file starts with "
                        f"{{\"format\": \"{FORMAT_NAME}\", \"version\": {FORMAT_VERSION}, ...}}")
    version = _int(obj["version"], "version", minimum=1)
    if version > FORMAT_VERSION:
        raise UserError(f"version is {version} but this studio reads track files up to version {FORMAT_VERSION}; "
                        "update the studio or re-export the file")
    fmt = obj.get("format", FORMAT_NAME)
    if fmt != FORMAT_NAME:
        raise UserError(f"format is {_show(fmt)}, expected \"{FORMAT_NAME}\"")
    for key in ("width", "height", "frames"):
        if key not in obj:
            raise UserError(f"{key} is missing")
    width = _int(obj["width"], "width", minimum=1)
    height = _int(obj["height"], "height", minimum=1)
    frames = _int(obj["frames"], "frames", minimum=1)
    fps = _number(obj.get("fps", DEFAULT_FPS), "fps")
    if fps <= 0:
        raise UserError(f"fps must be positive (got {_show(obj['fps'])})")
    raw_tracks = obj.get("tracks")
    if not isinstance(raw_tracks, list):
        raise UserError("tracks is missing or not a list" if raw_tracks is None else
                        f"tracks is not a list (got {_show(raw_tracks)})")
    tracks = []
    for k, raw in enumerate(raw_tracks):
        path = f"tracks[{k}]"
        if not isinstance(raw, dict):
            raise UserError(f"{path} is not a track: expected {{\"points\": [...]}} (got {_show(raw)})")
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise UserError(f"{path}.name is not a string (got {_show(name)})")
        raw_points = raw.get("points")
        if not isinstance(raw_points, list):
            raise UserError(f"{path}.points is missing or not a list")
        points = [_point_dict(p, f"{path}.points[{i}]", allow_frame=True) for i, p in enumerate(raw_points)]
        _check_track_timing(points, f"{path}.points", frames)
        tracks.append(Track(points, name))
    return TrackSet(width, height, frames, fps, tracks, version)


# ----------------------------------------------------------------------------------------------- imports ---

def _need_canvas(width: int | None, height: int | None, what: str) -> tuple[int, int]:
    if width is None or height is None:
        raise UserError(f"{what} has no canvas size; pass width and height (the size of the image the points "
                        "were drawn on)")
    return _int(width, "width", 1), _int(height, "height", 1)


def parse_comfyui(obj: list, width: int | None, height: int | None, frames: int | None,
                  fps: float = DEFAULT_FPS) -> TrackSet:
    """ComfyUI editor data: list of splines of {x, y} (untimed, uniform time per segment)."""
    w, h = _need_canvas(width, height, "ComfyUI editor data")
    if frames is None:
        raise UserError("ComfyUI editor data has no frame count; pass frames (e.g. --frames 121)")
    frames = _int(frames, "frames", 1)
    if obj and all(isinstance(p, dict) for p in obj):
        obj = [obj]  # one spline given on its own
    tracks = []
    for k, spline in enumerate(obj):
        path = f"tracks[{k}]"
        if not isinstance(spline, list):
            raise UserError(f"{path} is not a list of points (got {_show(spline)})")
        points = [_point_dict(p, f"{path}[{i}]", allow_frame=False) for i, p in enumerate(spline)]
        _check_track_timing(points, path, frames)
        tracks.append(Track(points))
    return TrackSet(w, h, frames, fps, tracks)


def parse_per_frame(obj: list, width: int | None, height: int | None, frames: int | None,
                    fps: float = DEFAULT_FPS) -> TrackSet:
    """Per-frame coordinates: entry i of a track is its position at frame i ([x, y], {x, y} or null)."""
    w, h = _need_canvas(width, height, "per-frame coordinate data")
    longest = max((len(t) for t in obj if isinstance(t, list)), default=0)
    frames = longest if frames is None else _int(frames, "frames", 1)
    tracks = []
    for k, entries in enumerate(obj):
        path = f"tracks[{k}]"
        if not isinstance(entries, list):
            raise UserError(f"{path} is not a list of per-frame positions (got {_show(entries)})")
        points = []
        for i, e in enumerate(entries):
            if e is None:
                continue
            if isinstance(e, dict):
                p = _point_dict(e, f"{path}[{i}]", allow_frame=False)
            elif isinstance(e, (list, tuple)):
                if len(e) != 2:
                    raise UserError(f"{path}[{i}] must be [x, y] (got {_show(e)})")
                p = Point(_number(e[0], f"{path}[{i}][0]"), _number(e[1], f"{path}[{i}][1]"))
            else:
                raise UserError(f"{path}[{i}] is not a position: expected [x, y], {{\"x\", \"y\"}} or null "
                                f"(got {_show(e)})")
            if i >= frames:
                raise UserError(f"{path} has a position at frame {i} but the clip has {frames} frames")
            points.append(Point(p.x, p.y, i))
        if not points:
            raise UserError(f"{path} has no positions (all null or empty)")
        tracks.append(Track(points))
    return TrackSet(w, h, frames, fps, tracks)


def _looks_per_frame(obj: list) -> bool:
    """Per-frame lists hold [x, y] pairs or nulls; ComfyUI splines hold only {x, y} dicts."""
    for track in obj:
        if isinstance(track, list):
            for e in track:
                if e is None or isinstance(e, (list, tuple)):
                    return True
    return False


def _from_array(arr: np.ndarray) -> list:
    """[N,T,2] float array (NaN = absent) -> per-frame lists."""
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise UserError(f"a track array must have shape [tracks, frames, 2] (got {list(arr.shape)})")
    out = []
    for row in arr.astype(float):
        out.append([None if not np.all(np.isfinite(p)) else [float(p[0]), float(p[1])] for p in row])
    return out


def _read_json_text(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _unwrap_strings(items: list[str]) -> list:
    """["<track JSON>", ...] or ["<list of tracks JSON>"] -> one list of tracks (as LTXVDrawTracks reads it)."""
    tracks: list = []
    for i, text in enumerate(items):
        value = _read_json_text(text, f"track data [{i}] (a JSON string)")
        if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
            tracks.append(value)  # one track
        elif isinstance(value, list):
            tracks.extend(value)  # a list of tracks
        else:
            raise UserError(f"track data [{i}] is not a track or a list of tracks (got {_show(value)})")
    return tracks


_EDITOR_NODE = "LTXVSparseTrackEditor"


def _is_comfy_workflow(obj: dict) -> bool:
    if isinstance(obj.get("nodes"), list):
        return True
    return bool(obj) and all(isinstance(v, dict) and "class_type" in v for v in obj.values())


def _workflow_tracks(obj: dict) -> tuple[Any, bool, int | None]:
    """(splines or per-frame lists, is per-frame, points_to_sample) of the workflow's one track editor."""
    editors = []
    if isinstance(obj.get("nodes"), list):  # UI format: widgets_values = [points_store, coordinates, samples, ...]
        for node in obj["nodes"]:
            if isinstance(node, dict) and node.get("type") == _EDITOR_NODE:
                w = list(node.get("widgets_values") or []) + [None] * 3
                editors.append((node.get("id"), w[0], w[1], w[2]))
    else:  # API prompt format
        for key, node in obj.items():
            if node.get("class_type") == _EDITOR_NODE:
                inputs = node.get("inputs") or {}
                editors.append((key, inputs.get("points_store"), inputs.get("coordinates"),
                                inputs.get("points_to_sample")))
    if not editors:
        raise UserError(f"this ComfyUI workflow has no {_EDITOR_NODE} node; export the tracks from one, or give "
                        "the editor's points as a JSON list")
    if len(editors) > 1:
        ids = ", ".join(str(e[0]) for e in editors)
        raise UserError(f"this ComfyUI workflow has {len(editors)} {_EDITOR_NODE} nodes ({ids}); keep the one "
                        "whose tracks you want and import that")
    node_id, store, coords, samples = editors[0]
    samples = samples if isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1 else None

    def parsed(value, name):
        if isinstance(value, str):
            value = _read_json_text(value or "[]", f"{_EDITOR_NODE} {node_id} {name}")
        return value if isinstance(value, list) else []

    splines = parsed(store, "points_store")
    if splines and all(isinstance(sp, list) for sp in splines):
        return splines, False, samples
    per_frame = parsed(coords, "coordinates")
    if per_frame:
        return per_frame, True, samples
    raise UserError(f"the {_EDITOR_NODE} node {node_id} holds no tracks (draw some in ComfyUI and save again)")


def load_tracks(source: Any, width: int | None = None, height: int | None = None, frames: int | None = None,
                fps: float | None = None, kind: TrackSource | str = TrackSource.AUTO) -> TrackSet:
    """Read tracks from a file path, JSON text, parsed JSON (dict / list) or a [N,T,2] array.

    For the own format ``width``/``height``/``frames``/``fps`` are ignored (the file says). For imports they
    give what the data lacks: the drawing canvas size and (ComfyUI splines) the frame count.
    A str that starts with ``[``, ``{`` or ``"`` is JSON text; any other str is a path.
    """
    kind = TrackSource(kind)
    obj = source
    if isinstance(obj, (str, Path)) and not (isinstance(obj, str) and obj.lstrip()[:1] in ("[", "{", '"')):
        path = Path(obj)
        if not path.is_file():
            raise UserError(f"track file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read track file {path}: {exc}") from None
        obj = _read_json_text(text, f"track file {path}")
    elif isinstance(obj, str):
        obj = _read_json_text(obj, "track data")
    # ComfyUI widgets store the point list as a JSON string (sometimes inside another JSON string)
    for _ in range(2):
        if isinstance(obj, str):
            obj = _read_json_text(obj, "track data (a JSON string inside the JSON)")
    if isinstance(obj, np.ndarray):
        obj = _from_array(obj)
        kind = TrackSource.PER_FRAME if kind is TrackSource.AUTO else kind
    if isinstance(obj, list) and obj and all(isinstance(item, str) for item in obj):
        obj = _unwrap_strings(obj)
    if isinstance(obj, dict) and kind in (TrackSource.AUTO, TrackSource.COMFYUI, TrackSource.PER_FRAME) \
            and _is_comfy_workflow(obj):
        obj, per_frame, samples = _workflow_tracks(obj)
        frames = samples if frames is None else frames
        if kind is TrackSource.AUTO:
            kind = TrackSource.PER_FRAME if per_frame else TrackSource.COMFYUI
    fps_ = DEFAULT_FPS if fps is None else _number(fps, "fps")

    if kind is TrackSource.AUTO:
        if isinstance(obj, dict):
            kind = TrackSource.OWN
        elif isinstance(obj, list):
            kind = TrackSource.PER_FRAME if _looks_per_frame(obj) else TrackSource.COMFYUI
        else:
            raise UserError(f"track data must be an object (studio format) or a list of tracks (got {_show(obj)})")
    if kind is TrackSource.OWN:
        return parse_trackset(obj)
    if not isinstance(obj, list):
        raise UserError(f"{kind.value} track data must be a list of tracks (got {_show(obj)})")
    if kind is TrackSource.COMFYUI:
        return parse_comfyui(obj, width, height, frames, fps_)
    return parse_per_frame(obj, width, height, frames, fps_)


def save_tracks(trackset: TrackSet, path: str | os.PathLike) -> Path:
    """Validate, then write the own format atomically (temp file in the same folder + os.replace)."""
    trackset.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(trackset.to_json())
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
