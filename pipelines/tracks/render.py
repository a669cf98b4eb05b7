"""Render tracks as the Motion-Track IC-LoRA saw them in training (SPEC.md 7).

Per output frame t, on a black canvas whose SHORT side is 1080 px: for every earlier frame tau in
[max(0, t-50), t], oldest first, and every track present at tau, a filled opaque circle (cv2.circle, LINE_8,
no anti-aliasing) at the track's position scaled to the canvas and rounded; age = t - tau, r = 1 - age/50,
radius = round(2 + 6r) px (8 for the newest, 2 for 50 frames old), colour by age (red newest -> yellow ->
green -> blue oldest). A track that has ended keeps its trail for up to 50 more frames, because its last points
keep aging inside the window. Then a bilinear resize (cv2.INTER_LINEAR) to the target size and RGB -> BGR.

The output is in BGR channel order ON PURPOSE: the trained LoRA expects the control video that way. The
colours are therefore drawn already swapped; since the resize treats channels independently this is the
same array as drawing RGB, resizing and swapping, one copy cheaper.

Canvas geometry: the 1080 canvas has the TARGET's aspect. The drawing canvas (TrackSet.width/height) is
scaled to cover it and centred, the same resize + centre-crop the video conform step applies to the clip, so
tracks stay on the pixels they were drawn on. When both aspects match (the usual case) this is a plain scale.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import UserError
from pipelines.tracks.format import TrackSet
from pipelines.tracks.spline import round_half_up, trackset_positions

TRAIL = 50
CANVAS_SHORT_SIDE = 1080
MAX_RADIUS = 8
MIN_RADIUS = 2


def age_colour(age: int) -> tuple[float, float, float]:
    """RGB in [0,1] for a circle drawn `age` frames ago (SPEC.md 7 ramp)."""
    r = 1.0 - age / TRAIL
    if r <= 1 / 3:
        return (0.0, 3 * r, 1 - 3 * r)
    if r <= 2 / 3:
        return (3 * (r - 1 / 3), 1.0, 0.0)
    return (1.0, 1 - 3 * (r - 2 / 3), 0.0)


def age_radius(age: int) -> int:
    """Circle radius in canvas px: 2 + 6r rounded half up (8 newest ... 2 at 50 frames old)."""
    r = 1.0 - age / TRAIL
    return int(np.floor(MIN_RADIUS + (MAX_RADIUS - MIN_RADIUS) * r + 0.5))


def age_colour_u8(age: int) -> tuple[int, int, int]:
    """RGB uint8 of the ramp (c * 255 rounded half up)."""
    return tuple(int(np.floor(c * 255 + 0.5)) for c in age_colour(age))


@dataclass(frozen=True)
class CanvasGeometry:
    """Where drawing-canvas pixels land on the 1080 canvas: X = round(x * scale - offset_x)."""

    width: int
    height: int
    scale: float
    offset_x: float
    offset_y: float

    @classmethod
    def for_target(cls, src_w: int, src_h: int, width: int, height: int) -> "CanvasGeometry":
        if width >= height:
            cw, ch = int(round_half_up(width * CANVAS_SHORT_SIDE / height)), CANVAS_SHORT_SIDE
        else:
            cw, ch = CANVAS_SHORT_SIDE, int(round_half_up(height * CANVAS_SHORT_SIDE / width))
        scale = max(cw / src_w, ch / src_h)
        return cls(cw, ch, scale, (src_w * scale - cw) / 2, (src_h * scale - ch) / 2)

    def map(self, xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy, dtype=np.int64)
        out[..., 0] = round_half_up(xy[..., 0] * self.scale - self.offset_x)
        out[..., 1] = round_half_up(xy[..., 1] * self.scale - self.offset_y)
        # far off-canvas points draw nothing either way; keep them inside cv2's int range
        return np.clip(out, -(1 << 20), 1 << 20)


def _check_size(width: int, height: int, frames: int | None) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive whole number of pixels (got {v!r})")
    if frames is not None and (not isinstance(frames, (int, np.integer)) or frames < 1):
        raise UserError(f"frames must be a positive whole number (got {frames!r})")


def render_tracks(trackset: TrackSet, width: int, height: int, frames: int | None = None) -> np.ndarray:
    """Track video, uint8 [T,H,W,3] in BGR order (what the Motion-Track IC-LoRA expects).

    T = frames or trackset.frames. With a different T, untimed tracks are spread over the new length and
    timed tracks keep their frame indices (cut at the end)."""
    _check_size(width, height, frames)
    frames = trackset.frames if frames is None else int(frames)
    xy, present = trackset_positions(trackset, frames)
    geo = CanvasGeometry.for_target(trackset.width, trackset.height, width, height)
    canvas_xy = geo.map(xy)

    # centres per frame, in track order (painter's order inside one age)
    centres = [[(int(canvas_xy[k, tau, 0]), int(canvas_xy[k, tau, 1])) for k in np.flatnonzero(present[:, tau])]
               for tau in range(frames)]
    styles = [(age_radius(a), tuple(float(c) for c in reversed(age_colour_u8(a)))) for a in range(TRAIL + 1)]

    direct = (geo.width, geo.height) == (width, height)
    # Drawing straight into the output (1080p targets): np.zeros hands out lazily zeroed pages, so only the
    # pages a circle touches are ever written here; no per-frame clear of a 6 MB frame.
    out = (np.zeros if direct else np.empty)((frames, height, width, 3), np.uint8)
    canvas = None if direct else np.zeros((geo.height, geo.width, 3), np.uint8)
    for t in range(frames):
        target = out[t] if direct else canvas
        if not direct:
            target.fill(0)
        for tau in range(max(0, t - TRAIL), t + 1):
            radius, colour = styles[t - tau]
            for centre in centres[tau]:
                cv2.circle(target, centre, radius, colour, thickness=-1, lineType=cv2.LINE_8)
        if not direct:
            cv2.resize(canvas, (width, height), dst=out[t], interpolation=cv2.INTER_LINEAR)
    return out


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_track_video(trackset: TrackSet, path: str | os.PathLike, width: int, height: int,
                      frames: int | None = None, fps: float | None = None) -> Path:
    """Render and write to ``.mp4`` (h264 via video_io, BGR data as the LoRA wants it) or ``.npy`` (raw uint8
    [T,H,W,3], for exact checks). Atomic: a temp file in the same folder, then os.replace."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".npy"):
        raise UserError(f"output {path.name} must end in .mp4 (video) or .npy (raw uint8 array)")
    video = render_tracks(trackset, width, height, frames)
    if suffix == ".npy":
        def _save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, video)
        return _atomic_write(path, _save)
    from pipelines.video_io import write_video

    comment = json.dumps({"kind": "motion_tracks", "channel_order": "BGR", "width": width, "height": height,
                          "frames": int(video.shape[0]), "tracks": len(trackset.tracks)})
    return Path(write_video(path, video, fps or trackset.fps, comment=comment))
