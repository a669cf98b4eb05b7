"""Bench: the tiled detail / upscale pass against the untiled one, and a tile plan's predicted peak memory against
the measured one, on the tiny model on CPU.

    python bench/tiles.py [--repeats 3] [--width 256 --height 128 --frames 33]

1. Overhead (goal <= 1.3x): the upscale pass (encode, 2x latent upsample, 3 refine steps, decode) on a source of
   --width x --height x --frames, whole (one tile) and tiled in two along the width with a 64 px overlap, both
   fitting in memory. Median of --repeats, the two interleaved; the ratio is against the untiled run measured in the
   same process. Also the denoise phase alone (after the upsample to the decode: the part the tiles change).
2. Peak memory (goal within 15%): one denoising step of the tiny transformer on a 2048x1024 x 65-frame latent
   (18432 tokens) run whole and under two tile plans. Measured as the resident set's high-water mark (VmHWM,
   reset through /proc/self/clear_refs) above the resident set just before the step, with glibc told to return
   freed blocks (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, set by re-running this script); that is RSS, not
   tracemalloc (torch's CPU allocator is invisible to tracemalloc). Predicted by TilePlan.step_bytes from
   pipelines.models.memory (the per-token activation figure times the tokens of the largest tile, plus the blend
   buffers). Ratio = measured / predicted.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def overhead(engine, args) -> None:
    from pipelines.sampler.upscale import UpscaleRequest, upscale_video
    from tests.helpers import synthetic_video

    clip = synthetic_video(Path(tempfile.mkdtemp()) / "src.mp4", frames=args.frames, width=args.width,
                           height=args.height)
    out_w = 2 * args.width
    tile_w = (out_w // 2 // 32 + 1) * 32  # two tiles along the width with (at least) a 64 px overlap

    def run(tiled: bool):
        marks = {}

        def on_step(phase, msg, frac):
            marks.setdefault(phase, time.perf_counter())

        t0 = time.perf_counter()
        res = upscale_video(engine, UpscaleRequest(video=str(clip), tile_width=tile_w if tiled else None,
                                                   overlap=64), write=False, on_step=on_step)
        total = time.perf_counter() - t0
        return total, marks["decode"] - marks["upsample"], res.metadata["plan"]

    run(False)  # warm-up (first-call costs)
    run(True)
    whole, tiled = [], []
    for _ in range(args.repeats):  # interleaved: a shared machine's load drifts over a minute
        whole.append(run(False))
        tiled.append(run(True))
    plan = tiled[0][2]
    w_tot, t_tot = statistics.median(x[0] for x in whole), statistics.median(x[0] for x in tiled)
    w_den, t_den = statistics.median(x[1] for x in whole), statistics.median(x[1] for x in tiled)
    print(f"1. overhead: {args.width}x{args.height}x{args.frames} -> {out_w}x{2 * args.height}, tiny model, CPU, "
          f"median of {args.repeats}")
    print(f"   plan: {plan['text']}")
    print(f"   whole pass   untiled {w_tot:.2f} s   tiled {t_tot:.2f} s   ratio {t_tot / w_tot:.2f}x (goal <= 1.3x)")
    print(f"   denoise only untiled {w_den:.2f} s   tiled {t_den:.2f} s   ratio {t_den / w_den:.2f}x "
          f"(work x{plan['work_ratio']:.2f} from the overlap)")


def peak_memory(engine) -> None:
    import torch

    from pipelines.models.memory import model_dims
    from pipelines.requests import GenerateRequest
    from pipelines.sampler import state as S
    from pipelines.sampler.denoise import X0Model, guided_denoiser
    from pipelines.sampler.tiled import tiled_denoiser
    from pipelines.sampler.tiles import plan_tiles

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None or not _reset_peak():
        print("2. peak memory: skipped (needs Linux's /proc/self/clear_refs and the glibc settings this script sets)")
        return
    m = engine.m
    dims = model_dims(m)
    width, height, frames = 2048, 1024, 65
    pos, _ = engine.contexts(GenerateRequest(prompt="a detailed street"), cfg=False)
    model = X0Model(m.pipe.transformer, m.bias_state)
    sig = torch.tensor([0.909375, 0.725, 0.0])
    f, h, w = (frames - 1) // 8 + 1, height // 32, width // 32
    st = S.video_state((1, dims["latent"], f, h, w), 24.0, m.dtype, m.device,
                       initial=torch.randn(1, dims["latent"], f, h, w, generator=torch.Generator().manual_seed(0)))
    audio = engine._dummy_audio_state()
    print(f"2. peak memory of one denoising step, {width}x{height}x{frames} ({f * h * w} tokens), tiny transformer "
          f"(hidden {dims['hidden']}, {dims['dtype_bytes']}-byte floats), CPU; measured = RSS high-water mark above "
          "the RSS before the step")
    rows = []
    for label, tw, th in (("untiled", None, None), ("tiles 1024x1024", 1024, 1024), ("tiles 512x512", 512, 512)):
        plan = plan_tiles(width, height, frames, tile_width=tw, tile_height=th, overlap=64)
        if plan.count == 1:
            engine._set_attention(st)
            den = guided_denoiser(model, pos, None, audio=False)
        else:
            den = tiled_denoiser(lambda i: guided_denoiser(model, pos, None, audio=False), plan,
                                 before_tile=engine._set_attention)
        with torch.no_grad():
            den(st, audio, sig, 0)  # warm-up: first-call allocations are not the step's
        gc.collect()
        samples = []
        for _ in range(3):
            gc.collect()
            base = _status("VmRSS")
            _reset_peak()
            with torch.no_grad():
                out = den(st, audio, sig, 0)
            samples.append(_status("VmHWM") - base)
            del out
        measured = statistics.median(samples)
        pred = plan.step_bytes(dims["hidden"], dims["latent"], dims["dtype_bytes"])
        m.bias_state.clear()
        rows.append((label, plan.count, measured, pred["total"]))
        print(f"   {label:16s} {plan.count:2d} tile(s)  measured {measured / 2**20:7.1f} MB   predicted "
              f"{pred['total'] / 2**20:7.1f} MB (pass {pred['tile_pass'] / 2**20:.1f} + blend {pred['blend'] / 2**20:.1f}"
              f" + slices {pred['slices'] / 2**20:.1f})   measured/predicted {measured / pred['total']:.2f} "
              "(goal 0.85-1.15)")
    base = rows[0][2]
    for label, n, meas, _ in rows[1:]:
        print(f"   {label}: peak {meas / base:.2f}x the untiled step's")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()) and sys.platform.startswith("linux"):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.sampler.engine import Engine

    engine = Engine(ModelCache().get(tiny_spec()))
    if not args.skip_overhead:
        overhead(engine, args)
    peak_memory(engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
