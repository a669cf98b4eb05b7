"""Control points -> one integer position per frame (SPEC.md 7).

Untimed tracks: uniform Catmull-Rom (tension 0.5) over the whole clip, endpoints duplicated as phantom points,
each segment getting an equal share of frames: sample i of n has g = i/(n-1) * nSeg,
segment = min(floor(g), nSeg-1), local t = g - segment. One point is a static track, two points are a straight
line at constant speed (the phantom-point curve would ease in and out).

Timed tracks (every point has a frame index): segment k runs from frame f_k to f_(k+1) with local
t = (f - f_k) / (f_(k+1) - f_k), so the curve passes through each point exactly at its frame and moves
forward along the curve as time goes forward. Tangents are Catmull-Rom's measured per frame (see
sample_timed), so evenly timed points give exactly the uniform curve and uneven timing does not jerk. The track is ABSENT before its first timed frame and after
its last one (it appears and disappears there, and the renderer's trail then fades over 50 frames): a point
timed at frame 30 means "starts here at 30", not "has been sitting here since frame 0". A single timed point
is present at that one frame only.

Positions are rounded to integer pixels of the drawing canvas half to even, like Python's round() in
ComfyUI-LTXVideo's LTXVSparseTrackEditor, whose output is what its LTXVDrawTracks draws (its browser preview
rounds half up with Math.round, but the node re-samples the control points in Python). A two-point track is
a + (b - a) * i / (n - 1), in that order of operations, as there.
"""
from __future__ import annotations

import numpy as np

from pipelines.tracks.format import Track, TrackSet


def catmull_rom(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Uniform Catmull-Rom, tension 0.5, between p1 (t=0) and p2 (t=1). Points [..., 2], t broadcast as [..., 1]."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    t2 = t * t
    t3 = t2 * t
    return 0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)


def _eval_segments(ctrl: np.ndarray, seg: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Evaluate segment `seg` (0..n-2) at local `t`; 2 control points -> straight line."""
    if len(ctrl) == 2:
        return ctrl[0] + (ctrl[1] - ctrl[0]) * np.asarray(t, np.float64)[:, None]
    padded = np.concatenate([ctrl[:1], ctrl, ctrl[-1:]])  # phantom endpoints
    return catmull_rom(padded[seg], padded[seg + 1], padded[seg + 2], padded[seg + 3], t)


def sample_uniform(ctrl: np.ndarray, n: int) -> np.ndarray:
    """n samples [n,2] float of the untimed spline through `ctrl` [m,2]."""
    ctrl = np.asarray(ctrl, np.float64).reshape(-1, 2)
    if len(ctrl) == 1 or n == 1:
        return np.repeat(ctrl[:1], n, axis=0)
    if len(ctrl) == 2:  # a + (b - a) * i / (n - 1): the reference's order of operations, bit for bit
        return ctrl[0] + (ctrl[1] - ctrl[0]) * np.arange(n, dtype=np.float64)[:, None] / (n - 1)
    n_seg = len(ctrl) - 1
    g = np.arange(n, dtype=np.float64) / (n - 1) * n_seg
    seg = np.minimum(np.floor(g).astype(np.int64), n_seg - 1)
    return _eval_segments(ctrl, seg, g - seg)


def sample_timed(ctrl: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Positions [f_last - f_first + 1, 2] float for frames f_first..f_last of a timed spline.

    Catmull-Rom in Hermite form with tangents measured per FRAME, m_k = (p_(k+1) - p_(k-1)) /
    (f_(k+1) - f_(k-1)), scaled by each segment's duration: velocity stays continuous when segments last
    different numbers of frames (uniform per-segment t would jerk and overshoot there). Phantom endpoints sit
    one segment-duration beyond the ends. With evenly spaced frames this is exactly the uniform curve of
    SPEC.md 7. Two points: a straight line at constant speed."""
    ctrl = np.asarray(ctrl, np.float64).reshape(-1, 2)
    frames = np.asarray(frames, np.int64)
    if len(ctrl) == 1:
        return ctrl.copy()
    f = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
    seg = np.clip(np.searchsorted(frames, f, side="right") - 1, 0, len(ctrl) - 2)
    dur = np.diff(frames).astype(np.float64)
    t = (f - frames[seg]) / dur[seg]
    if len(ctrl) == 2:
        return _eval_segments(ctrl, seg, t)
    pts = np.concatenate([ctrl[:1], ctrl, ctrl[-1:]])
    times = np.concatenate([[frames[0] - dur[0]], frames, [frames[-1] + dur[-1]]]).astype(np.float64)
    tangents = (pts[2:] - pts[:-2]) / (times[2:] - times[:-2])[:, None]  # per frame, one per control point
    h = dur[seg][:, None]
    t = t[:, None]
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1) * ctrl[seg] + (t3 - 2 * t2 + t) * h * tangents[seg]
            + (-2 * t3 + 3 * t2) * ctrl[seg + 1] + (t3 - t2) * h * tangents[seg + 1])


def round_position(v: np.ndarray) -> np.ndarray:
    """Half to even, like Python's round() (np.rint), to int64."""
    return np.rint(np.asarray(v, np.float64)).astype(np.int64)


def track_positions(track: Track, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(xy int64 [frames,2], present bool [frames]) for one track over a clip of `frames` frames.

    Untimed tracks span every frame; timed tracks are present from their first to their last timed frame
    (cut at the clip's end)."""
    xy = np.zeros((frames, 2), np.int64)
    present = np.zeros(frames, bool)
    ctrl = np.array([[p.x, p.y] for p in track.points], np.float64)
    if not track.timed:
        xy[:] = round_position(sample_uniform(ctrl, frames))
        present[:] = True
        return xy, present
    fidx = np.array([p.frame for p in track.points], np.int64)
    start, stop = int(fidx[0]), min(int(fidx[-1]) + 1, frames)
    if start >= frames:
        return xy, present
    xy[start:stop] = round_position(sample_timed(ctrl, fidx)[: stop - start])
    present[start:stop] = True
    return xy, present


def trackset_positions(trackset: TrackSet, frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(xy int64 [K,T,2], present bool [K,T]) in drawing-canvas pixels; T = frames or trackset.frames."""
    frames = trackset.frames if frames is None else int(frames)
    xy = np.zeros((len(trackset.tracks), frames, 2), np.int64)
    present = np.zeros((len(trackset.tracks), frames), bool)
    for k, track in enumerate(trackset.tracks):
        xy[k], present[k] = track_positions(track, frames)
    return xy, present
