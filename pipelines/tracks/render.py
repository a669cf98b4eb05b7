"""Render tracks as the Motion-Track IC-LoRA saw them in training (SPEC.md 7), pixel for pixel.

The reference is ComfyUI-LTXVideo's ``LTXVDrawTracks`` (sparse_tracks.py), Lightricks' own renderer for this
LoRA. tests/oracle/test_tracks_oracle.py compares the two on the Motion-Track example workflow's tracks and on
random ones; the output equals round(255 * theirs) at every pixel. What it takes to be exact:

- Canvas: short side 1080, long side ``int(long * 1080 / short)`` (truncated), computed from the TARGET size;
  a square target counts as landscape. Points scale by ``canvas / target`` per axis.
- Centres: ``float32(x * scale)`` rounded half to even (torch.round), per axis.
- Circles: for age a (frames since the point), r = 1 - a/50, radius = 2 + 6r, all in float32; a pixel at
  integer offset (dx, dy) from the centre is inside when dx^2 + dy^2 <= radius^2 (float32). No cv2.circle: its
  integer-radius polygon is a different shape.
- Colour by age in float32 (newest red -> yellow -> green -> oldest blue), opaque; among overlapping circles
  the newest wins (same-age circles share one colour, so their order does not matter).
- A point is drawn for frames t with t - 50 <= tau <= t, so a finished track's trail fades over 50 frames.
- Downscale: torch's CPU bilinear (align_corners=False, no antialias) on the float canvas, reproduced here
  operation for operation: per axis scale = float32(in / out), source index fma(scale, d + 0.5, -0.5) clamped
  at 0, weights l1 = src - floor(src), l0 = 1 - l1; value = fma(h0, a0, h1 * a1) with h = fma(x0, b0, x1 * b1)
  per canvas row (fused multiply-adds, as the compiled kernel does). Then float16 (the node's output dtype),
  then uint8 = rint(255 * value). Checked bit for bit against torch 2.13's CPU kernel; another build or
  ComfyUI on a GPU may round the last float bit differently, which moves a rare pixel by 1/255.
- Channel order BGR, ON PURPOSE: the trained LoRA expects the control video that way.

Speed: nothing dense is ever computed. Per frame, circles are stamped into a padded uint8 LABEL canvas (0 =
empty, else age + 1; oldest first so the newest overwrites) and only the output pixels whose bilinear
footprint touches a circle's box are interpolated, from the labels through the float32 palette. A frame of
8 tracks touches a few thousand output pixels out of hundreds of thousands.

Canvas geometry for drawings of another size: the drawing canvas (TrackSet.width/height) is first mapped onto
the target by the cover + centre-crop the video conform step applies to the clip, so tracks stay on the pixels
they were drawn on. When the drawing is the target size (the usual case, and ComfyUI's) this is the identity.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import UserError
from pipelines.tracks.format import TrackSet
from pipelines.tracks.spline import trackset_positions

TRAIL = 50
CANVAS_SHORT_SIDE = 1080
MAX_RADIUS = 8
MIN_RADIUS = 2
_PAD = 2 * MAX_RADIUS  # label-canvas margin: a disc whose box touches the canvas never wraps a row
_F32 = np.float32


# ------------------------------------------------------------------------------------------- age styles ---

def _ratios() -> np.ndarray:
    """r = 1 - age/50 for ages 0..50, float32 as the reference computes it."""
    ages = np.arange(TRAIL + 1, dtype=_F32)
    return (_F32(1.0) - ages / _F32(TRAIL)).astype(_F32)


def _radii() -> np.ndarray:
    return (_F32(MIN_RADIUS) + _F32(MAX_RADIUS - MIN_RADIUS) * _ratios()).astype(_F32)


def _palette_rgb() -> np.ndarray:
    """[51, 3] float32 RGB per age (SPEC.md 7 ramp, float32 thresholds and arithmetic)."""
    r = _ratios()
    c = np.zeros((len(r), 3), _F32)
    third, two_thirds = _F32(1 / 3), _F32(2 / 3)
    m1 = r <= third
    m2 = (r > third) & (r <= two_thirds)
    m3 = r > two_thirds
    t1 = r[m1] * _F32(3)
    c[m1, 1], c[m1, 2] = t1, _F32(1) - t1
    c[m2, 0], c[m2, 1] = (r[m2] - third) * _F32(3), 1
    c[m3, 0], c[m3, 1] = 1, _F32(1) - (r[m3] - two_thirds) * _F32(3)
    return c


def _to_u8(v: np.ndarray) -> np.ndarray:
    """float32 [0,1] -> float16 (the reference node's output dtype) -> rint(255 * v) uint8."""
    v16 = np.asarray(v, _F32).astype(np.float16).astype(_F32)
    return np.clip(np.rint(v16 * _F32(255)), 0, 255).astype(np.uint8)


_PALETTE = _palette_rgb()
_RADII = _radii()


def age_colour(age: int) -> tuple[float, float, float]:
    """RGB in [0,1] for a circle drawn `age` frames ago (SPEC.md 7 ramp, float32 values)."""
    return tuple(float(c) for c in _PALETTE[int(age)])


def age_radius(age: int) -> float:
    """Circle radius in canvas px, 2 + 6r (8 newest ... 2 at 50 frames old), float32 value."""
    return float(_RADII[int(age)])


def age_colour_u8(age: int) -> tuple[int, int, int]:
    """RGB uint8 of the ramp as a pixel inside a circle of that age reads at 1080p (no resize)."""
    return tuple(int(c) for c in _to_u8(_PALETTE[int(age)]))


def disc_offsets(age: int) -> np.ndarray:
    """[n, 2] integer (dy, dx) offsets of the pixels inside a circle of that age: dx^2 + dy^2 <= radius^2."""
    r = _RADII[int(age)]
    d = np.arange(-MAX_RADIUS, MAX_RADIUS + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    inside = (dy * dy + dx * dx).astype(_F32) <= r * r
    return np.stack([dy[inside], dx[inside]], axis=1)


# ----------------------------------------------------------------------------------------------- geometry ---

def canvas_size(width: int, height: int) -> tuple[int, int]:
    """The drawing canvas for a target: short side 1080, long side truncated (a square is landscape)."""
    if height <= width:
        return int(width * CANVAS_SHORT_SIDE / height), CANVAS_SHORT_SIDE
    return CANVAS_SHORT_SIDE, int(height * CANVAS_SHORT_SIDE / width)


@dataclass(frozen=True)
class CanvasGeometry:
    """Drawing pixel (x, y) -> target pixel (x * draw_scale - offset_x, ...) -> canvas pixel
    rint(float32(target * (canvas / target size))) per axis."""

    width: int  # the 1080 canvas
    height: int
    scale_x: float  # canvas / target, per axis
    scale_y: float
    draw_scale: float  # drawing canvas -> target (cover), 1 when the drawing is the target size
    offset_x: float
    offset_y: float

    @classmethod
    def for_target(cls, src_w: int, src_h: int, width: int, height: int) -> "CanvasGeometry":
        cw, ch = canvas_size(width, height)
        s = 1.0 if (src_w, src_h) == (width, height) else max(width / src_w, height / src_h)
        return cls(cw, ch, cw / width, ch / height, s, (src_w * s - width) / 2, (src_h * s - height) / 2)

    def map(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        out = np.empty(xy.shape, np.int64)
        for axis, scale, off in ((0, self.scale_x, self.offset_x), (1, self.scale_y, self.offset_y)):
            v = xy[..., axis] * self.draw_scale - off if self.draw_scale != 1.0 else xy[..., axis]
            v = np.clip(v * scale, -(1 << 20), 1 << 20)  # far off-canvas points draw nothing either way
            out[..., axis] = np.rint(v.astype(_F32)).astype(np.int64)
        return out


@dataclass(frozen=True)
class _Axis:
    """torch's bilinear source indices and weights along one axis (see the module docstring)."""

    i0: np.ndarray
    i1: np.ndarray
    w0: np.ndarray  # float32
    w1: np.ndarray
    identity: bool

    @classmethod
    def build(cls, n_in: int, n_out: int) -> "_Axis":
        d = np.arange(n_out)
        if n_in == n_out:
            return cls(d, d, np.ones(n_out, _F32), np.zeros(n_out, _F32), True)
        scale = _F32(_F32(n_in) / _F32(n_out))
        centre = d.astype(_F32) + _F32(0.5)
        # fma(scale, d + 0.5, -0.5): the product of two float32 is exact in float64, so one rounding to float32
        src = (np.float64(scale) * centre.astype(np.float64) - 0.5).astype(_F32)
        src = np.maximum(src, _F32(0))
        i0 = src.astype(np.int64)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        w1 = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
        return cls(i0, i1, (_F32(1) - w1).astype(_F32), w1, False)

    def span(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output indices [first, last] whose two source indices touch canvas range [lo, hi]."""
        return np.searchsorted(self.i1, lo, "left"), np.searchsorted(self.i0, hi, "right") - 1


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add: a*b is exact in float64, then one rounding of the sum."""
    return (a.astype(np.float64) * b + c).astype(_F32)


def _check_size(width: int, height: int, frames: int | None) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive whole number of pixels (got {v!r})")
    if frames is not None and (not isinstance(frames, (int, np.integer)) or frames < 1):
        raise UserError(f"frames must be a positive whole number (got {frames!r})")


# ------------------------------------------------------------------------------------------------- render ---

_REACH_HALF = (MAX_RADIUS, 6, 4)  # box half-sizes covering the discs of each age class
_REACH_CLASS = np.array([0 if _RADII[a] > 6 else 1 if _RADII[a] > 4 else 2 for a in range(TRAIL + 1)])


def _reach(c: np.ndarray, half: int, cw: int, ch: int, xa: "_Axis", ya: "_Axis", width: int) -> np.ndarray:
    """Output pixel indices whose bilinear corners can fall in the boxes [c - half, c + half] (an index may
    repeat where two boxes overlap; marking it twice is harmless)."""
    if not len(c):
        return np.empty(0, np.int64)
    r0, r1 = ya.span(np.maximum(c[:, 1] - half, 0), np.minimum(c[:, 1] + half, ch - 1))
    c0, c1 = xa.span(np.maximum(c[:, 0] - half, 0), np.minimum(c[:, 0] + half, cw - 1))
    rows = r0[:, None] + np.arange(max(1, int((r1 - r0).max()) + 1))
    cols = c0[:, None] + np.arange(max(1, int((c1 - c0).max()) + 1))
    ok = (rows <= r1[:, None])[:, :, None] & (cols <= c1[:, None])[:, None, :]
    return (rows[:, :, None] * width + cols[:, None, :])[ok]


def render_tracks(trackset: TrackSet, width: int, height: int, frames: int | None = None) -> np.ndarray:
    """Track video, uint8 [T,H,W,3] in BGR order (what the Motion-Track IC-LoRA expects).

    T = frames or trackset.frames. With a different T, untimed tracks are spread over the new length and
    timed tracks keep their frame indices (cut at the end)."""
    _check_size(width, height, frames)
    frames = trackset.frames if frames is None else int(frames)
    xy, present = trackset_positions(trackset, frames)
    geo = CanvasGeometry.for_target(trackset.width, trackset.height, width, height)
    cw, ch = geo.width, geo.height
    centres = geo.map(xy)  # [K,T,2] canvas pixels
    # a circle is drawn when its box [c-8, c+8] touches the canvas; the padding holds the rest of it
    visible = present & (centres[..., 0] >= -MAX_RADIUS) & (centres[..., 0] < cw + MAX_RADIUS) \
        & (centres[..., 1] >= -MAX_RADIUS) & (centres[..., 1] < ch + MAX_RADIUS)

    pw = cw + 2 * _PAD
    labels = np.zeros((ch + 2 * _PAD) * pw, np.uint8)  # 0 = black, else age + 1
    discs = [(o[:, 0] * pw + o[:, 1]).astype(np.int64) for o in map(disc_offsets, range(TRAIL + 1))]
    ya, xa = _Axis.build(ch, height), _Axis.build(cw, width)
    identity = ya.identity and xa.identity

    # per source frame tau: the label-canvas index of each visible centre, and the output pixels a circle there
    # can reach through the bilinear footprint, for three box sizes (ages 0-16 radius <= 8, 17-33 <= 6,
    # 34-50 <= 4); computed once, reused by the 51 frames that draw tau
    bases, reach = [], []
    for tau in range(frames):
        c = centres[visible[:, tau], tau]
        bases.append(((c[:, 1] + _PAD) * pw + c[:, 0] + _PAD).astype(np.int64))
        reach.append([_reach(c, half, cw, ch, xa, ya, width) for half in _REACH_HALF])
    pal_f = np.concatenate([np.zeros((1, 3), _F32), _PALETTE[:, ::-1]])  # BGR, label-indexed
    pal_px = _to_u8(pal_f).view("V3").ravel()  # one 3-byte pixel per label: one copy per write, not three
    row0, row1 = (ya.i0 + _PAD) * pw, (ya.i1 + _PAD) * pw
    col0, col1 = xa.i0 + _PAD, xa.i1 + _PAD
    a0, a1, b0, b1 = ya.w0[:, None], ya.w1[:, None], xa.w0[:, None], xa.w1[:, None]

    # np.zeros hands out lazily zeroed pages: only pages near a circle are ever written
    out = np.zeros((frames, height, width, 3), np.uint8)
    mark = np.zeros(height * width, bool)
    for t in range(frames):
        first = max(0, t - TRAIL)
        if not any(len(bases[tau]) for tau in range(first, t + 1)):
            continue
        labels.fill(0)
        for tau in range(first, t + 1):  # oldest first: the newest circle ends on top
            if len(bases[tau]):
                labels[(bases[tau][:, None] + discs[t - tau]).ravel()] = t - tau + 1
        for tau in range(first, t + 1):
            mark[reach[tau][_REACH_CLASS[t - tau]]] = True
        idx = np.flatnonzero(mark)
        mark[idx] = False
        i, j = np.divmod(idx, width)
        pixels = out[t].reshape(-1, 3).view("V3").ravel()
        if identity:
            lab = labels[row0[i] + col0[j]]
            keep = lab != 0
            pixels[idx[keep]] = pal_px[lab[keep]]
            continue
        r0, r1, c0, c1 = row0[i], row1[i], col0[j], col1[j]
        l00, l01, l10, l11 = labels[r0 + c0], labels[r0 + c1], labels[r1 + c0], labels[r1 + c1]
        keep = np.flatnonzero((l00 | l01 | l10 | l11) != 0)  # the box reaches further than a small circle
        idx, i, j = idx[keep], i[keep], j[keep]
        x00, x01, x10, x11 = (pal_f[lab[keep]] for lab in (l00, l01, l10, l11))
        bw0, bw1, aw0, aw1 = b0[j], b1[j], a0[i], a1[i]
        h0 = _fma(x00, bw0, (x01 * bw1).astype(_F32))
        h1 = _fma(x10, bw0, (x11 * bw1).astype(_F32))
        pixels[idx] = _to_u8(_fma(h0, aw0, (h1 * aw1).astype(_F32))).view("V3").ravel()
    return out


# ------------------------------------------------------------------------------------------------ writing ---

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
    """Render and write, atomically (a temp file in the same folder, then os.replace), by suffix:

    - ``.mkv``: lossless FFV1 (video_io.write_video_lossless). THE control video for the model: reading it
      back gives exactly ``render_tracks``'s frames.
    - ``.mp4``: h264 yuv420p, for people and browsers; lossy (colours shift, thin dots blur), not for the model.
    - ``.npy``: the raw uint8 [T,H,W,3] array.

    Frames are in BGR order, as the LoRA wants them."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mkv", ".mp4", ".npy"):
        raise UserError(f"output {path.name} must end in .mkv (lossless control video), .mp4 (h264 preview) "
                        "or .npy (raw uint8 array)")
    video = render_tracks(trackset, width, height, frames)
    if suffix == ".npy":
        def _save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, video)
        return _atomic_write(path, _save)
    from pipelines.video_io import write_video, write_video_lossless

    comment = json.dumps({"kind": "motion_tracks", "channel_order": "BGR", "width": width, "height": height,
                          "frames": int(video.shape[0]), "tracks": len(trackset.tracks)})
    write = write_video_lossless if suffix == ".mkv" else write_video
    return Path(write(path, video, fps or trackset.fps, comment=comment))
