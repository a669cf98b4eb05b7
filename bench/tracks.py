"""Benchmark the motion-track renderer and LK auto-tracks against decoding the same clip.

    python bench/tracks.py [--repeats 3] [--frames 121]

Prints median seconds of: decoding a synthetic 768x512 mp4 (video_io.read_video, the baseline), rendering
8 tracks at 768x512 and at 1920x1080 (the renderer that matches ComfyUI-LTXVideo's LTXVDrawTracks pixel for
pixel, issue 17), writing that 768x512 render as the lossless control the model reads (.mkv, FFV1) and as
h264 (.mp4, what people see), and auto-tracks (8 tracks) on the decoded clip, each with its ratio to the
decode. Goal (issues 5, 17): render <= 1x decode. CPU only: nothing here uses a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.tracks import Point, Track, TrackSet, auto_tracks, render_tracks  # noqa: E402
from pipelines.video_io import read_video, write_video, write_video_lossless  # noqa: E402
from tests.helpers import textured_frames  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the last output first: a 1080p render is 750 MB, two alive at once page-fault badly
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def make_tracks(frames: int, width: int = 768, height: int = 512, n: int = 8, seed: int = 0) -> TrackSet:
    """8 tracks of 4 control points each, half untimed, half timed over part of the clip (realistic mix)."""
    rng = np.random.default_rng(seed)
    tracks = []
    for k in range(n):
        xy = rng.uniform((0, 0), (width, height), size=(4, 2))
        if k % 2:
            keys = np.sort(rng.choice(np.arange(frames), 4, replace=False))
            tracks.append(Track([Point(float(x), float(y), int(f)) for (x, y), f in zip(xy, keys)]))
        else:
            tracks.append(Track([Point(float(x), float(y)) for x, y in xy]))
    return TrackSet(width, height, frames, 24.0, tracks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=121)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_video(clip, textured_frames(args.frames, 768, 512, seed=1, motion=(1.3, 0.6)), 24.0, crf=18)
        decode_s, (video, _) = timed(lambda: read_video(clip), args.repeats)

    ts = make_tracks(args.frames)
    rows = [("decode 768x512 (baseline)", decode_s)]
    render_s, control = timed(lambda: render_tracks(ts, 768, 512), args.repeats)
    rows.append(("render 8 tracks 768x512", render_s))
    rows.append(("render 8 tracks 1920x1080", timed(lambda: render_tracks(ts, 1920, 1080), args.repeats)[0]))
    with tempfile.TemporaryDirectory() as tmp:
        mkv_s, mkv = timed(lambda: write_video_lossless(Path(tmp) / "c.mkv", control, 24.0), args.repeats)
        mp4_s, mp4 = timed(lambda: write_video(Path(tmp) / "c.mp4", control, 24.0), args.repeats)
        sizes = mkv.stat().st_size / 1e6, mp4.stat().st_size / 1e6
    rows.append((f"write control .mkv ({sizes[0]:.1f} MB)", mkv_s))
    rows.append((f"write preview .mp4 ({sizes[1]:.1f} MB)", mp4_s))
    auto_s, auto = timed(lambda: auto_tracks(video, max_tracks=8), args.repeats)
    rows.append(("auto-tracks LK 768x512 (8 kept)", auto_s))

    print(f"frames={args.frames} repeats={args.repeats} (median seconds; ratio = time / decode time)")
    for name, sec in rows:
        print(f"  {name:34s} {sec:8.3f} s   {sec / decode_s:6.2f}x decode")
    kept = [np.isfinite(t.dense[:, 0]).sum() for t in auto.tracks]
    print(f"  auto-tracks kept {len(auto.tracks)} tracks, frames alive {min(kept)}..{max(kept)}, "
          f"control points {sum(len(t.points) for t in auto.tracks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
