"""Helpers tests share (importable as tests.helpers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def textured_frames(frames: int = 17, width: int = 96, height: int = 64, seed: int = 0, motion=(1.0, 0.5)) -> np.ndarray:
    """uint8 [T,H,W,3] RGB: a smooth random texture translated by `motion` px per frame (sub-pixel ok)."""
    import cv2

    rng = np.random.default_rng(seed)
    pad = int(abs(motion[0]) * frames + abs(motion[1]) * frames) + 8
    big = rng.integers(0, 256, size=((height + 2 * pad) // 4 + 1, (width + 2 * pad) // 4 + 1, 3), dtype=np.uint8)
    big = cv2.resize(big, ((width + 2 * pad) // 4 * 4 + 4, (height + 2 * pad) // 4 * 4 + 4), interpolation=cv2.INTER_CUBIC)
    big = cv2.GaussianBlur(big, (0, 0), 1.0)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        dx, dy = motion[0] * t, motion[1] * t
        m = np.float32([[1, 0, -pad - dx], [0, 1, -pad - dy]])
        out[t] = cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def synthetic_video(path, frames: int = 17, width: int = 96, height: int = 64, fps: float = 24.0, seed: int = 0,
                    pix_fmt: str = "yuv420p", codec: str = "libx264") -> Path:
    """Write a deterministic textured clip with the bundled ffmpeg (no dependency on project code)."""
    import subprocess

    import imageio_ffmpeg

    path = Path(path)
    data = textured_frames(frames, width, height, seed)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-c:v", codec, "-pix_fmt", pix_fmt]
    if codec == "libx264":
        cmd += ["-crf", "12", "-preset", "veryfast"]
    cmd.append(str(path))
    subprocess.run(cmd, input=data.tobytes(), check=True)
    return path
