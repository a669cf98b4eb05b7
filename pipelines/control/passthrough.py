"""The user's own control video (a Blender depth pass, a LiDAR render): conformed, optionally gray/inverted."""
from __future__ import annotations

import cv2
import numpy as np

from pipelines.control.types import PassthroughOptions, ProgressFn


def ema_frames(frames: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average over time: out[t] = weight * out[t-1] + (1 - weight) * in[t]."""
    if weight <= 0:
        return frames
    out = np.empty_like(frames)
    acc = frames[0].astype(np.float32)
    out[0] = frames[0]
    for t in range(1, len(frames)):
        acc = weight * acc + (1.0 - weight) * frames[t].astype(np.float32)
        out[t] = np.clip(np.rint(acc), 0, 255).astype(frames.dtype) if frames.dtype == np.uint8 else acc
    return out


def run_passthrough(frames: np.ndarray, options: PassthroughOptions, progress: ProgressFn | None = None) -> np.ndarray:
    out = frames
    if options.gray:
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in out])
        out = np.repeat(gray[..., None], 3, axis=-1)
    if options.smoothing > 0:
        out = ema_frames(out, options.smoothing)
    if options.invert:
        out = 255 - out
    if progress is not None:
        progress(1.0, "passthrough")
    return np.ascontiguousarray(out, dtype=np.uint8)
