"""Point tracks extracted from a real video without any model weights (SPEC.md 6).

1. Seeds on the FIRST frame (the frame the sketcher shows): Shi-Tomasi corners (cv2.goodFeaturesToTrack) or
   a regular grid, inside an optional region mask.
2. Pyramidal Lucas-Kanade frame to frame, forward and back: a point dies at the first step where LK loses it,
   where the round trip (t -> t+1 -> t) misses its start by more than ``fb_threshold`` px (1 px), where it
   leaves the frame, or (an addition to SPEC.md 6) where its 11x11 patch stops resembling the previous frame's
   (NCC < 0.5: cuts and occlusions that LK follows consistently both ways). Dead points stay dead: a track is one contiguous run from frame 0.
3. Keep the K best: score = (frames alive / T) * (1 + largest displacement from the start / 5% of the short
   side), so long tracks on moving things win over short ones and over the static background.
4. Fit each dense path to a few TIMED control points so the sketcher can edit it: greedy insertion in
   space-time, starting from the first and last frame and adding the frame where the studio's own timed
   spline (spline.sample_timed, what the renderer will draw) is furthest from the measured path, until it is
   within ``fit_tolerance`` px or has ``max_points`` points. The dense path stays on ``Track.dense``.
"""
from __future__ import annotations

from enum import Enum

import cv2
import numpy as np

from pipelines.errors import UserError
from pipelines.tracks.format import DEFAULT_FPS, Point, Track, TrackSet
from pipelines.tracks.spline import sample_timed


class SeedMode(str, Enum):
    CORNERS = "corners"
    GRID = "grid"


def _gray_frames(frames: np.ndarray) -> list[np.ndarray]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise UserError("frames must be a uint8 array [T,H,W,3] (RGB) or [T,H,W] (gray)")
    if frames.shape[0] < 2:
        raise UserError(f"tracking needs at least 2 frames (got {frames.shape[0]})")
    if frames.ndim == 3:
        return [np.ascontiguousarray(f) for f in frames]
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def _mask_u8(region_mask: np.ndarray | None, width: int, height: int) -> np.ndarray | None:
    """Any [H,W] mask (bool, 0..1 float or 0..255) -> uint8 0/255 at the video size (nearest resize)."""
    if region_mask is None:
        return None
    m = np.asarray(region_mask)
    if m.ndim == 3:
        m = m.max(axis=2)
    if m.ndim != 2:
        raise UserError(f"region mask must be a 2-D image (got shape {list(m.shape)})")
    threshold = 0.5 if m.dtype.kind == "f" and m.max(initial=0) <= 1.0 else (0 if m.dtype == bool else 127)
    m = np.where(m > threshold, 255, 0).astype(np.uint8)
    if m.shape != (height, width):
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    if not m.any():
        raise UserError("region mask is empty: paint the area to track in white")
    return m


def find_seeds(gray: np.ndarray, mode: SeedMode | str = SeedMode.CORNERS, max_seeds: int = 200,
               mask: np.ndarray | None = None) -> np.ndarray:
    """Seed points [N,2] float32 (x, y) on one gray frame, inside `mask` (uint8 0/255) if given."""
    mode = SeedMode(mode)
    h, w = gray.shape
    short = min(h, w)
    if mode is SeedMode.CORNERS:
        found = cv2.goodFeaturesToTrack(gray, maxCorners=max_seeds, qualityLevel=0.01,
                                        minDistance=max(4.0, short / 40), mask=mask, blockSize=7)
        return np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2).astype(np.float32)
    area = float(np.count_nonzero(mask)) if mask is not None else float(h * w)
    step = max(4.0, float(np.sqrt(area / max(1, max_seeds))))
    xs = np.arange(step / 2, w, step)
    ys = np.arange(step / 2, h, step)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    if mask is not None:
        keep = mask[grid[:, 1].astype(int), grid[:, 0].astype(int)] > 0
        grid = grid[keep]
    return grid[:max_seeds]


def patch_similarity(a: np.ndarray, b: np.ndarray, pa: np.ndarray, pb: np.ndarray, size: int = 11) -> np.ndarray:
    """Normalised cross-correlation [N] of the size x size patches around pa in image a and pb in image b
    (bilinear sampling, border replicated; one cv2.remap per image for all points)."""
    offsets = np.arange(size, dtype=np.float32) - (size - 1) / 2
    ox, oy = np.meshgrid(offsets, offsets)
    ox, oy = ox.ravel()[None, :], oy.ravel()[None, :]

    def patches(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float32).reshape(-1, 2)
        mx = np.ascontiguousarray(pts[:, :1] + ox)
        my = np.ascontiguousarray(pts[:, 1:] + oy)
        out = cv2.remap(img.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return out.astype(np.float64) - out.mean(axis=1, keepdims=True)

    x, y = patches(a, pa), patches(b, pb)
    num = (x * y).sum(axis=1)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    flat = den <= 1e-6  # textureless patches: similar when both are flat
    sim = np.divide(num, den, out=np.zeros_like(num), where=~flat)
    sim[flat] = ((x * x).sum(axis=1)[flat] < 1e-6) & ((y * y).sum(axis=1)[flat] < 1e-6)
    return sim


def lk_paths(gray: list[np.ndarray], seeds: np.ndarray, fb_threshold: float = 1.0, win_size: int = 21,
             levels: int = 3, min_similarity: float = 0.5) -> np.ndarray:
    """Track `seeds` [N,2] from frame 0 through all frames. Returns [N,T,2] float32, NaN once a point died.

    Besides the SPEC's forward-backward check, a point dies when its 11x11 patch changes too much between two
    frames (normalised cross-correlation < `min_similarity`; 0 disables): LK can be consistent both ways on
    unrelated content after a cut or an occlusion, the appearance check catches that."""
    n, frames = len(seeds), len(gray)
    h, w = gray[0].shape
    paths = np.full((n, frames, 2), np.nan, np.float32)
    if n == 0:
        return paths
    paths[:, 0] = seeds
    win = (win_size, win_size)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    alive = np.arange(n)
    for t in range(frames - 1):
        if len(alive) == 0:
            break
        p0 = paths[alive, t].reshape(-1, 1, 2)
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[t + 1], p0, None, winSize=win, maxLevel=levels,
                                              criteria=criteria)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray[t + 1], gray[t], p1, None, winSize=win, maxLevel=levels,
                                                criteria=criteria)
        p1 = p1.reshape(-1, 2)
        round_trip = np.linalg.norm(back.reshape(-1, 2) - p0.reshape(-1, 2), axis=1)
        ok = ((st1.ravel() == 1) & (st2.ravel() == 1) & (round_trip <= fb_threshold)
              & (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1))
        if min_similarity > 0 and ok.any():
            idx = np.flatnonzero(ok)
            sim = patch_similarity(gray[t], gray[t + 1], p0.reshape(-1, 2)[idx], p1[idx])
            ok[idx[sim < min_similarity]] = False
        alive = alive[ok]
        paths[alive, t + 1] = p1[ok]
    return paths


def fit_keyframes(path: np.ndarray, start_frame: int = 0, tolerance: float = 1.0,
                  max_points: int = 16) -> list[Point]:
    """A contiguous dense path [L,2] -> timed control points whose timed spline stays within `tolerance` px
    of it (or uses `max_points` points)."""
    path = np.round(np.asarray(path, np.float64), 2)
    length = len(path)
    keys = [0] if length == 1 else [0, length - 1]
    while len(keys) < max_points and length > 2:
        recon = sample_timed(path[keys], np.array(keys))
        err = np.linalg.norm(recon - path, axis=1)
        worst = int(np.argmax(err))
        if err[worst] <= tolerance:
            break
        keys = sorted(keys + [worst])
    return [Point(float(path[k, 0]), float(path[k, 1]), start_frame + k) for k in keys]


def track_score(path: np.ndarray, short_side: int) -> float:
    """(fraction of frames alive) * (1 + max displacement from the start / (5% of the short side))."""
    alive = np.isfinite(path[:, 0])
    if alive.sum() < 2:
        return 0.0
    pts = path[alive]
    disp = float(np.max(np.linalg.norm(pts - pts[0], axis=1)))
    return float(alive.mean()) * (1.0 + disp / (0.05 * short_side))


def auto_tracks(frames: np.ndarray, max_tracks: int = 8, region_mask: np.ndarray | None = None,
                seeds: SeedMode | str = SeedMode.CORNERS, max_seeds: int | None = None, fb_threshold: float = 1.0,
                min_length: int = 2, fit_tolerance: float = 1.0, max_points: int = 16,
                min_similarity: float = 0.5, fps: float = DEFAULT_FPS) -> TrackSet:
    """Extract up to `max_tracks` editable timed tracks from a clip (uint8 [T,H,W,3] RGB).

    ``max_seeds`` (default max(100, 10 * max_tracks)) bounds the candidates: LK time grows with it.
    The TrackSet's canvas is the video size; each Track keeps its measured path on ``.dense`` ([T,2], NaN
    where absent)."""
    if max_tracks < 1:
        raise UserError(f"max_tracks must be at least 1 (got {max_tracks})")
    gray = _gray_frames(frames)
    h, w = gray[0].shape
    mask = _mask_u8(region_mask, w, h)
    max_seeds = max(100, 10 * max_tracks) if max_seeds is None else max_seeds
    seed_pts = find_seeds(gray[0], seeds, max_seeds, mask)
    if len(seed_pts) == 0:
        where = " inside the region mask" if mask is not None else ""
        raise UserError(f"no trackable points found in the first frame{where}; try seeds='grid' or a larger region")
    paths = lk_paths(gray, seed_pts, fb_threshold, min_similarity=min_similarity)
    lengths = np.isfinite(paths[:, :, 0]).sum(axis=1)
    scores = np.array([track_score(p, min(h, w)) if n >= max(2, min_length) else -1.0
                       for p, n in zip(paths, lengths)])
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= 0][:max_tracks]
    if not order:
        raise UserError("every tracked point was lost within its first frames (fast motion, blur or a cut?); "
                        "try a shorter clip or seeds='grid'")
    tracks = []
    for n, i in enumerate(order):
        path = paths[i]
        length = int(lengths[i])
        points = fit_keyframes(path[:length], 0, fit_tolerance, max_points)
        tracks.append(Track(points, name=f"auto {n + 1}", dense=path.astype(np.float64)))
    return TrackSet(width=w, height=h, frames=len(gray), fps=float(fps), tracks=tracks)
