"""Side-by-side grids of videos with labels, as one mp4 (an A/B, a strength sweep, before / after an upscale).

    frames = compose_grid([a, b, c], ["attention 0.5", "attention 0.8", "attention 1"])
    write_grid("grid.mp4", [a, b, c], labels, fps=24)

Pure numpy + OpenCV; written through pipelines.video_io (h264, atomic). Every cell is the size of the largest
video; a smaller one (the original beside its 2x upscale) is scaled to fit it, centred, on black. A shorter video
holds its last frame. Each cell has a label strip above it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import UserError

MAX_CELLS = 16


def grid_layout(n: int, columns: int = 0) -> tuple[int, int]:
    """(columns, rows) for n cells: `columns` when given, else one row up to 4, else a near-square grid."""
    if n < 1:
        raise UserError("a grid needs at least one video")
    if n > MAX_CELLS:
        raise UserError(f"a grid holds at most {MAX_CELLS} videos; got {n}")
    cols = int(columns) if columns else (n if n <= 4 else math.ceil(math.sqrt(n)))
    cols = max(1, min(cols, n))
    return cols, math.ceil(n / cols)


def label_height(cell_height: int) -> int:
    """Height of the label strip above a cell: ~8% of the cell, at least 16 px, even (h264 yuv420p)."""
    return max(16, int(round(cell_height * 0.08 / 2)) * 2)


def grid_size(n: int, width: int, height: int, columns: int = 0) -> tuple[int, int]:
    """(width, height) of the grid video for n cells of width x height."""
    cols, rows = grid_layout(n, columns)
    return cols * width, rows * (height + label_height(height))


def label_strip(text: str, width: int, height: int) -> np.ndarray:
    """White text on a dark strip, shrunk to fit the width (ASCII; other characters become '?')."""
    strip = np.full((height, width, 3), 24, np.uint8)
    text = text.encode("ascii", "replace").decode("ascii")
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = height / 30.0
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    if tw > width - 8:
        scale *= (width - 8) / max(tw, 1)
        (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    org = (max(4, (width - tw) // 2), (height + th) // 2)
    cv2.putText(strip, text, org, font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    s = min(width / w, height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST if float(s).is_integer() else cv2.INTER_CUBIC
    small = cv2.resize(frame, (nw, nh), interpolation=interp)
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def compose_grid(videos: list[np.ndarray], labels: list[str] | None = None, columns: int = 0) -> np.ndarray:
    """uint8 [T,H,W,3] videos -> one uint8 grid video [T_max, rows*(h+L), cols*w, 3]."""
    vids = [np.asarray(v) for v in videos]
    for i, v in enumerate(vids):
        if v.ndim != 4 or v.shape[-1] != 3 or v.dtype != np.uint8 or len(v) < 1:
            raise UserError(f"video {i + 1} must be uint8 frames [T,H,W,3]; got {v.dtype} {v.shape}")
    labels = list(labels or [""] * len(vids))
    if len(labels) != len(vids):
        raise UserError(f"{len(labels)} labels for {len(vids)} videos")
    cols, rows = grid_layout(len(vids), columns)
    w = max(v.shape[2] for v in vids)
    h = max(v.shape[1] for v in vids)
    w += w % 2
    h += h % 2
    lh = label_height(h)
    t = max(len(v) for v in vids)
    out = np.zeros((t, rows * (h + lh), cols * w, 3), np.uint8)
    for i, (v, text) in enumerate(zip(vids, labels)):
        r, c = divmod(i, cols)
        y0, x0 = r * (h + lh), c * w
        out[:, y0:y0 + lh, x0:x0 + w] = label_strip(text, w, lh)
        for k in range(t):
            out[k, y0 + lh:y0 + lh + h, x0:x0 + w] = _fit(v[min(k, len(v) - 1)], w, h)
    return out


def write_grid(path: str | os.PathLike, videos: list[np.ndarray], labels: list[str], fps: float,
               columns: int = 0, comment: str | None = None) -> Path:
    """compose_grid + write_video (h264 mp4, atomic)."""
    from pipelines.video_io import write_video

    return write_video(path, compose_grid(videos, labels, columns), fps, comment=comment)


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference of two videos of one size (0..255), over their common frames."""
    n = min(len(a), len(b))
    if a.shape[1:] != b.shape[1:]:
        raise UserError(f"cannot compare videos of different sizes {a.shape[1:3]} and {b.shape[1:3]}")
    return float(np.mean([cv2.absdiff(a[i], b[i]).mean() for i in range(n)]))
