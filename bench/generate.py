"""Generation overhead: the studio's engine against a bare diffusers LTX2InContextPipeline call, same inputs.

Both run on the tiny random-weight LTX-2.3 stack (CPU), distilled 8 steps, one control video reference:

(a) bare:    pipe(reference_conditions=[LTX2ReferenceCondition(frames)], ...) with the frames already conformed
             and the scheduler already set: only the diffusers call.
(b) engine:  Engine.generate(GenerateRequest) without writing the mp4: request validation, LoRA check, the
             control's conformed frames and the prompt embeddings (both cached from the previous run with the
             same file and text, as when a user tries seeds), attention-bias set-up, per-step callback with a latent preview
             frame, uint8 conversion.
(b0) engine, cold: (b) with the control and prompt caches emptied first (a new control video and prompt).
(c) engine + write: (b) plus the h264 mp4, the settings sidecar and the mp4 comment tag (what the studio does).

Runs alternate a/b/c, --repeats times after a warm-up; prints medians and the ratios b/a (goal <= 1.05) and c/a.
The tiny model makes the diffusers call cheap, so this is a worst case for the engine's fixed costs: at real
LTX-2.3 sizes the same fixed costs are a far smaller share of a run.

    python bench/generate.py [--width 256 --height 160 --frames 25] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=160)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec
    from pipelines.requests import DISTILLED_SIGMAS, ControlInput, GenerateRequest
    from pipelines.sampler.engine import Engine
    from pipelines.video_io import read_video, write_video

    torch.manual_seed(0)
    m = ModelCache().get(tiny_spec())
    eng = Engine(m)
    pipe = m.pipe
    w, h, n = args.width, args.height, args.frames
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    rng = np.random.default_rng(0)
    ctrl = (rng.random((n, h, w, 3)) * 255).astype(np.uint8)
    write_video(tmp / "control.mp4", ctrl, 24.0)
    decoded, _ = read_video(tmp / "control.mp4")
    req = GenerateRequest(prompt="a red ball rolling on a wooden table", width=w, height=h, frames=n, seed=3,
                          controls=[ControlInput(path=str(tmp / "control.mp4"))])

    def bare():
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None)
        gen = torch.Generator(device="cpu").manual_seed(3)
        out, _ = pipe(reference_conditions=[LTX2ReferenceCondition(frames=decoded.astype(np.float32) / 255.0)],
                      reference_downscale_factor=1, prompt=req.prompt, negative_prompt="", height=h, width=w,
                      num_frames=n, frame_rate=24.0, max_sequence_length=m.max_sequence_length, generator=gen,
                      sigmas=DISTILLED_SIGMAS[:-1], num_inference_steps=8, guidance_scale=1.0, stg_scale=0.0,
                      modality_scale=1.0, audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                      audio_latents=Engine._dummy_audio(pipe, m.device), output_type="np", return_dict=False)
        return out

    def engine():
        return eng.generate(req, on_step=lambda e: None, previews=True, write=False)

    def engine_cold():
        eng._controls.clear()  # as on the first run with a new control and prompt: decode + conform from disk,
        eng._prompts.clear()  # and the text encoder
        return eng.generate(req, on_step=lambda e: None, previews=True, write=False)

    def engine_write(i=[0]):
        i[0] += 1
        return eng.generate(req, out_path=tmp / f"out{i[0]}.mp4", on_step=lambda e: None, previews=True)

    times = {"a": [], "b": [], "b0": [], "c": []}
    with torch.inference_mode():
        for fn in (bare, engine, engine_cold, engine_write):  # warm-up (first-call allocations, preview projection fit)
            fn()
        for _ in range(args.repeats):
            for key, fn in (("a", bare), ("b", engine), ("b0", engine_cold), ("c", engine_write)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny LTX-2.3 stack on {m.device}, {w}x{h}x{n}, distilled 8 steps, 1 control reference, "
          f"{args.repeats} repeats (median)")
    print(f"  (a) bare LTX2InContextPipeline call : {med['a'] * 1000:8.1f} ms")
    print(f"  (b) engine.generate, no file       : {med['b'] * 1000:8.1f} ms")
    print(f"  (b0) same, new control and prompt   : {med['b0'] * 1000:8.1f} ms")
    print(f"  (c) engine.generate + mp4 + sidecar : {med['c'] * 1000:8.1f} ms")
    print(f"overhead ratio b/a = {med['b'] / med['a']:.3f} (goal <= 1.05; control and prompt seen before, as "
          f"when trying seeds); b0/a = {med['b0'] / med['a']:.3f}; c/a = {med['c'] / med['a']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
