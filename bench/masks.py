"""Bench: materialise + reduce a keyframed attention mask, against a plain numpy copy of the same array.

    python bench/masks.py [--frames 121 --height 1216 --width 704 --downscale 1 --repeats 5]

The mask: 3 keyframes of shapes (rect + ellipse with feather, a moving ellipse, a constant), fade in and out,
global feather, invert. Baseline: `np.ndarray.copy()` of a (F,H,W) float32 array of the same shape (a fresh
allocation, like materialise's output). Goal: materialise + reduce <= 20x the copy. Median of `--repeats`.
CPU only: masks are numpy/OpenCV work done before the GPU is involved.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.masks import MaskSpec, latent_weights_at_target, materialise  # noqa: E402


def bench_spec(frames: int, height: int, width: int) -> MaskSpec:
    last = frames - 1
    return MaskSpec.from_dict({
        "version": 1, "width": width, "height": height, "frames": frames, "strength": 0.8,
        "keyframes": {
            "0": [{"type": "rect", "x": width * 0.1, "y": height * 0.1, "w": width * 0.6, "h": height * 0.5,
                   "feather": 12},
                  {"type": "ellipse", "cx": width * 0.4, "cy": height * 0.3, "rx": width * 0.1, "ry": height * 0.08,
                   "value": 0.0, "feather": 8}],
            str(last // 2): [{"type": "ellipse", "cx": width * 0.6, "cy": height * 0.5, "rx": width * 0.3,
                              "ry": height * 0.3, "feather": 24}],
            str(last): {"fill": 0.25},
        },
        "fade_in": 12, "fade_out": 12, "feather": 6.0, "invert": True,
    })


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        result = None  # free the previous result before timing the next run
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--height", type=int, default=1216)
    ap.add_argument("--width", type=int, default=704)
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    spec = bench_spec(args.frames, args.height, args.width)
    shape = (args.frames, args.height, args.width)
    src = np.random.default_rng(0).random(shape, dtype=np.float32)
    t_copy, _ = timed(src.copy, args.repeats)
    del src

    t_mat, mask = timed(lambda: materialise(spec), args.repeats)
    t_red, weights = timed(lambda: latent_weights_at_target(mask, args.downscale), args.repeats)
    mb = mask.nbytes / 2**20
    total = t_mat + t_red
    print(f"mask {shape} float32 = {mb:.0f} MiB, 3 keyframes of shapes, fades, feather, invert; D={args.downscale}")
    print(f"plain numpy copy     : {t_copy * 1e3:8.1f} ms  ({mb / 1024 / t_copy:.1f} GiB/s)")
    print(f"materialise          : {t_mat * 1e3:8.1f} ms  ({t_mat / t_copy:.2f}x copy)")
    print(f"reduce to latent     : {t_red * 1e3:8.1f} ms  ({t_red / t_copy:.2f}x copy) -> {tuple(weights.shape)}")
    print(f"materialise + reduce : {total * 1e3:8.1f} ms")
    print(f"ratio to copy        : {total / t_copy:.2f}x (goal <= 20x)")


if __name__ == "__main__":
    main()
