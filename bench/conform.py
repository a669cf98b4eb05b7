"""Conforming a large clip: resize while decoding (conform_file) against decode-everything-then-conform.

    python bench/conform.py [--width 1920 --height 1080 --fps 30 --frames 160] [--repeats 3]

Clip: a synthetic h264 mp4 (moving texture) at the given size and rate, as a phone gives. Target: 768x512,
121 frames at 24 fps, as the Union tab asks. Baseline: ``read_video`` of the frames the target needs, then
``conform`` (the path before); new: ``conform_file`` (each frame resized as it is decoded). Both must give the
same pixels (checked). Prints the median time and the peak of Python-tracked memory (numpy buffers) of each,
and the ratios new / baseline. Goal: time <= 1.1x, memory well under the baseline's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.video_io import (ConformTarget, _frames_needed, conform, conform_file, probe,  # noqa: E402
                                read_video)
from tests.helpers import synthetic_video  # noqa: E402


def measure(fn) -> tuple[float, int, np.ndarray]:
    tracemalloc.start()
    t = time.perf_counter()
    try:
        out = fn()
        dt = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return dt, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    target = ConformTarget(width=768, height=512, frames=121, fps=24.0)
    with tempfile.TemporaryDirectory() as d:
        clip = synthetic_video(Path(d) / "clip.mp4", frames=args.frames, width=args.width, height=args.height,
                               fps=args.fps)
        info = probe(clip)

        def before():
            frames, fps = read_video(clip, max_frames=_frames_needed(info, target), info=info)
            return conform(frames, fps, target)[0]

        def after():
            return conform_file(clip, target)[0]

        rows = {"decode all, then conform": [], "resize while decoding": []}
        outs = {}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for name, fn in (("decode all, then conform", before), ("resize while decoding", after)):
                dt, peak, out = measure(fn)
                rows[name].append((dt, peak))
                outs[name] = out
        same = np.array_equal(*outs.values())
    print(f"clip {args.width}x{args.height}, {args.frames} frames at {args.fps:g} fps -> 768x512x121 at 24 fps "
          f"(median of {args.repeats}); same pixels: {same}")
    med = {k: (statistics.median(t for t, _ in v), statistics.median(p for _, p in v)) for k, v in rows.items()}
    for name, (t, p) in med.items():
        print(f"  {name:26s} {t:6.2f} s   peak {p / 2**20:8.1f} MiB")
    (tb, pb), (ta, pa) = med["decode all, then conform"], med["resize while decoding"]
    print(f"ratio new / baseline: time {ta / tb:.2f}x (goal <= 1.1), memory {pa / pb:.3f}x")
    if not same:
        raise SystemExit("the two paths gave different pixels")


if __name__ == "__main__":
    main()
