"""Canny edges, as the Union IC-LoRA saw them in training: plain cv2.Canny at 92/200 (SPEC.md 6).

Not controlnet-aux's detector, which silently resizes to multiples of 64. Edges are cv2.Canny's own 1 px lines
on every frame (the clip is conformed first, so the edge width is the same at the target size on every
frame); `dilate` thickens them by a fixed amount.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from pipelines.control.types import CannyOptions, ProgressFn


def canny_frame(rgb: np.ndarray, options: CannyOptions, kernel: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H,W,3] RGB -> uint8 [H,W] edge map (0 or 255)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if options.blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), options.blur_sigma)
    edges = cv2.Canny(gray, options.low_threshold, options.high_threshold)
    if kernel is not None:
        edges = cv2.dilate(edges, kernel)
    return edges


def run_canny(frames: np.ndarray, options: CannyOptions, progress: ProgressFn | None = None) -> np.ndarray:
    """uint8 [T,H,W,3] RGB -> uint8 [T,H,W,3] white edges on black.

    Frames run on a few threads (OpenCV releases the GIL) and each result is expanded to 3 channels straight
    into the output array: at 768x512 the copies, not Canny itself, were the slow part."""
    kernel = None
    if options.dilate > 0:
        k = 2 * options.dilate + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    t, h, w = frames.shape[:3]
    out = np.empty((t, h, w, 3), np.uint8)

    def one(i: int) -> None:
        cv2.cvtColor(canny_frame(frames[i], options, kernel), cv2.COLOR_GRAY2RGB, dst=out[i])

    workers = max(1, min(4, os.cpu_count() or 1, t))
    step = max(1, t // 20)
    with ThreadPoolExecutor(workers) as pool:
        for done, _ in enumerate(pool.map(one, range(t)), start=1):
            if progress is not None and (done % step == 0 or done == t):
                progress(done / t, f"canny {done}/{t}")
    return out
