"""Generation cost: the studio's engine against a bare diffusers LTX2InContextPipeline call, and against Lightricks'
own ICLoraPipeline (ltx-pipelines 1.0.0, the reference our sampling matches), same inputs.

Part 1, the tiny random-weight LTX-2.3 stack (CPU), distilled 8 steps, one control video reference, video only
(diffusers' call gets one dummy audio token, the engine audio=False: the same work):

(a) bare:    pipe(reference_conditions=[LTX2ReferenceCondition(frames)], ...) with the frames already conformed
             and the scheduler already set: only the diffusers call.
(b) engine:  Engine.generate(GenerateRequest) without writing the mp4: request validation, LoRA check, the
             control's conformed frames and the prompt embeddings (both cached from the previous run with the
             same file and text, as when a user tries seeds), attention-bias set-up, per-step callback with a latent preview
             frame, uint8 conversion.
(b0) engine, cold: (b) with the control and prompt caches emptied first (a new control video and prompt).
(c) engine + write: (b) plus the h264 mp4, the settings sidecar and the mp4 comment tag (what the studio does).
(e) engine with the soundtrack (the default): (b) plus the audio stream through the transformer, audio decode.

Runs alternate, --repeats times after a warm-up; prints medians and the ratios b/a (goal <= 1.05) and c/a.
The tiny model makes the diffusers call cheap, so this is a worst case for the engine's fixed costs: at real
LTX-2.3 sizes the same fixed costs are a far smaller share of a run.

Part 2, the oracle (needs ltx-core / ltx-pipelines, requirements-oracle.txt): the tiny official-format checkpoint
the oracle tests use (tests/oracle/official.py: written by ltx-core's classes), loaded by our loader; the same
distilled one-stage IC-LoRA run (one control, an official D=1 LoRA, video + audio, float32 CPU) by
(o) Engine.generate and (l) ICLoraPipeline(skip_stage_2=True) with its models built once beforehand (its ledgers
rebuild them from the file on every call; that time is printed apart). Ratio o/l: ours / ltx-pipelines.

    python bench/generate.py [--width 256 --height 160 --frames 25] [--repeats 5] [--no-oracle]
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
    ap.add_argument("--no-oracle", action="store_true", help="skip part 2 (ours vs Lightricks' ICLoraPipeline)")
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
                          controls=[ControlInput(path=str(tmp / "control.mp4"))], audio=False)
    req_audio = GenerateRequest(**{**req.__dict__, "audio": True})

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

    def engine_audio():
        return eng.generate(req_audio, on_step=lambda e: None, previews=True, write=False)

    times = {"a": [], "b": [], "b0": [], "c": [], "e": []}
    runs = (("a", bare), ("b", engine), ("b0", engine_cold), ("c", engine_write), ("e", engine_audio))
    with torch.inference_mode():
        for _, fn in runs:  # warm-up (first-call allocations, preview projection fit)
            fn()
        for _ in range(args.repeats):
            for key, fn in runs:
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
    print(f"  (e) engine.generate with soundtrack : {med['e'] * 1000:8.1f} ms")
    print(f"overhead ratio b/a = {med['b'] / med['a']:.3f} (goal <= 1.05; control and prompt seen before, as "
          f"when trying seeds); b0/a = {med['b0'] / med['a']:.3f}; c/a = {med['c'] / med['a']:.3f}; "
          f"e/b = {med['e'] / med['b']:.3f} (the soundtrack)")
    if not args.no_oracle:
        oracle(args, tmp)
    return 0


def oracle(args, tmp: Path) -> None:
    """Part 2: ours vs Lightricks' ICLoraPipeline on the tiny official checkpoint (module docstring)."""
    import statistics

    import torch

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from tests.oracle.ltx_env import import_ltx

        import_ltx()
    except ImportError as exc:
        print(f"oracle: skipped ({str(exc).splitlines()[0]})")
        return
    import ltx_pipelines.ic_lora as ic

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import get_spec
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec
    from pipelines.sampler.engine import Engine
    from tests.oracle.ltx_run import contexts, control, ltx_cpu_float32, write_lora
    from tests.oracle.official import write_models_dir

    class _Patch:  # monkeypatch-like setattr with undo, outside pytest
        def __init__(self):
            self.undo = []

        def setattr(self, obj, name, value):
            self.undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

        def restore(self):
            for obj, name, value in reversed(self.undo):
                setattr(obj, name, value)

    w, h, n = args.width // 64 * 64, args.height // 64 * 64, args.frames
    models = write_models_dir(tmp / "official")
    m = ModelCache(dtype=torch.float32).get(get_spec("ltx-2.3-distilled", models))
    eng = Engine(m)
    lora = write_lora(eng, tmp / "ic.safetensors")
    ctl = control(tmp, "oracle_control.mp4", w // 2, h // 2, frames=n)
    req = GenerateRequest(prompt="a red ball rolling", width=w // 2, height=h // 2, frames=n, seed=3,
                          controls=[ControlInput(ctl)], loras=[LoraSpec(lora, 1.0)])
    ctx = contexts(eng, req)[0]
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps

    patch = _Patch()
    try:
        with ltx_cpu_float32(patch, ic, ctx):
            pipe = ic.ICLoraPipeline(
                distilled_checkpoint_path=str(models / "ltx-2.3-22b-distilled-1.1.safetensors"),
                spatial_upsampler_path=str(models / "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"), gemma_root=None,
                loras=[LoraPathStrengthAndSDOps(lora, 1.0, LTXV_LORA_COMFY_RENAMING_MAP)])
            call = dict(prompt="p", seed=3, height=h, width=w, num_frames=n, frame_rate=24.0, images=[],
                        video_conditioning=[(ctl, 1.0)], skip_stage_2=True, tiling_config=None)

            def theirs():
                video, _ = pipe(**call)
                list(video)

            with torch.no_grad():
                t0 = time.perf_counter()
                theirs()  # builds its models from the file (every call does, by design)
                build_call = time.perf_counter() - t0
                ledger = pipe.stage_1_model_ledger
                for name in ("transformer", "video_encoder", "video_decoder", "audio_decoder", "vocoder"):
                    built = getattr(ledger, name)()
                    patch.setattr(ledger, name, lambda built=built: built)
                times = {"o": [], "l": []}
                theirs()
                eng.generate(req, write=False, previews=False)
                for _ in range(args.repeats):
                    for key, fn in (("o", lambda: eng.generate(req, write=False, previews=False)), ("l", theirs)):
                        t0 = time.perf_counter()
                        fn()
                        times[key].append(time.perf_counter() - t0)
    finally:
        patch.restore()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"oracle: tiny official-format LTX-2.3 checkpoint, float32 CPU, {w // 2}x{h // 2}x{n}, distilled 8 steps, "
          f"1 control + D=1 IC-LoRA, video + audio, {args.repeats} repeats (median)")
    print(f"  (o) ours, Engine.generate             : {med['o'] * 1000:8.1f} ms")
    print(f"  (l) ltx-pipelines ICLoraPipeline      : {med['l'] * 1000:8.1f} ms  (models built once; a plain "
          f"call that builds them: {build_call * 1000:.0f} ms)")
    print(f"ratio ours / ltx-pipelines o/l = {med['o'] / med['l']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
