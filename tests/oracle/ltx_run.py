"""Running Lightricks' pipelines (ltx-pipelines 1.0.0) and our engine side by side on the same files, for the
oracle tests (tests/oracle/test_sampler_parity.py) and bench/generate.py.

The official pipelines run on the CPU in float32 here: ICLoraPipeline / TI2VidOneStagePipeline hard-code bfloat16 and
call torch.cuda.synchronize(); `ltx_cpu_float32` gives their module a torch whose bfloat16 is float32 and makes
synchronize a no-op, nothing else. ltx-core 1.0.0 fuses LoRA deltas into bf16 / fp8 weights only (`_fuse_deltas`
raises on float32); the same fusion, W + delta, is allowed for float32 weights. The prompt is encoded once by our path
and handed to both (text encoding is compared on its own in test_official_load.py); everything else (reading the
control and image files, VAE encodes, conditioning, noise, denoising, upsampling, decoding) runs on each side.
"""
from __future__ import annotations

import contextlib
import subprocess
import types
from pathlib import Path

import numpy as np
import torch

RTOL = 2e-4


def assert_close(ours, theirs, what, rtol=RTOL):
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    ours, theirs = ours.double().cpu(), theirs.double().cpu()
    scale = 1.0 + theirs.abs().max().item()
    err = (ours - theirs).abs().max().item()
    assert err <= rtol * scale, f"{what}: max |ours - ltx| = {err:.3g} > {rtol:g} x {scale:.3g}"
    assert theirs.abs().max().item() > 1e-3, f"{what}: the official output is ~0, the comparison proves nothing"
    return err / scale


# ------------------------------------------------------------------------------------------------ inputs

def write_lossless(path: Path, frames: np.ndarray, fps: float = 24.0) -> Path:
    """An RGB-lossless h264 file: both sides decode exactly these pixels (ours through ffmpeg, theirs PyAV)."""
    from pipelines.video_io import ffmpeg_exe

    t, h, w, _ = frames.shape
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                    "-r", str(fps), "-i", "-", "-c:v", "libx264rgb", "-qp", "0", str(path)],
                   input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def control(tmp, name, w, h, frames=9, seed=0) -> str:
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
    clip = np.stack([np.roll(base, 3 * i, axis=1) for i in range(frames)]).astype(np.float32)
    clip += g.normal(0, 20, clip.shape)
    return str(write_lossless(Path(tmp) / name, np.clip(clip, 0, 255).astype(np.uint8)))


def image(tmp, name, w=96, h=80, seed=1) -> str:
    import cv2

    g = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (230, 60, 20)
    img[h // 4: h // 2, w // 2:] = (20, 160, 240)
    img = np.clip(img.astype(int) + g.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(Path(tmp) / name), img[..., ::-1])
    return str(Path(tmp) / name)


def write_lora(engine, path, meta=None, scale=0.5, seed=7) -> str:
    """An official-format (ltx-trainer / ComfyUI) LoRA: diffusion_model.<module>.lora_A/B, the factors in the
    metadata only when they are not 1 (as the trainer writes them)."""
    from pipelines.models.lora import save_lora

    g = torch.Generator().manual_seed(seed)
    mods = dict(engine.m.pipe.transformer.named_modules())
    t = {}
    for name in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_v",
                 "transformer_blocks.1.attn1.to_k", "transformer_blocks.1.ff.net.2", "transformer_blocks.0.attn2.to_q"):
        lin = mods[name]
        t[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * scale
        t[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * scale
    return str(save_lora(path, t, meta or {}))


# ------------------------------------------------------------------------------------------------ running both

class _Capture:
    def __init__(self):
        self.video_latent = self.video = self.audio_latent = self.audio = self.rate = None


@contextlib.contextmanager
def ltx_cpu_float32(patch, module, ctx_pos, ctx_neg=None):
    """Run one ltx-pipelines pipeline module on the CPU in float32, with our prompt encoding, capturing the latents
    it decodes and what it decodes them to."""
    import ltx_core.loader.fuse_loras as fl

    patch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)

    class _Torch32:
        bfloat16 = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    patch.setattr(module, "torch", _Torch32())
    real_fuse = fl._fuse_deltas

    def fuse(deltas, weight, key, sd, target_dtype, device, *rest):
        if deltas is not None and weight.dtype == torch.float32:
            return fl._fuse_delta_with_bfloat16(deltas, weight, key, target_dtype)  # W + delta, as for bf16
        return real_fuse(deltas, weight, key, sd, target_dtype, device, *rest)

    patch.setattr(fl, "_fuse_deltas", fuse)
    ctxs = [types.SimpleNamespace(video_encoding=c.video, audio_encoding=c.audio)
            for c in (ctx_pos, ctx_neg) if c is not None]
    patch.setattr(module, "encode_prompts", lambda prompts, ledger, **kw: ctxs[: len(prompts)])
    cap = _Capture()
    real_v, real_a = module.vae_decode_video, module.vae_decode_audio

    def dec_v(latent, decoder, *a, **k):
        cap.video_latent = latent.detach().clone()
        with torch.no_grad():
            cap.video = decoder(latent)
        return real_v(latent, decoder, *a, **k)

    def dec_a(latent, decoder, vocoder):
        cap.audio_latent = latent.detach().clone()
        out = real_a(latent, decoder, vocoder)
        cap.audio, cap.rate = out.waveform, out.sampling_rate
        return out

    patch.setattr(module, "vae_decode_video", dec_v)
    patch.setattr(module, "vae_decode_audio", dec_a)
    yield cap


def run_ours(engine, req, patch):
    """Engine.generate, capturing the latents it decodes and the decoded float video / waveform."""
    cap = _Capture()
    cls = type(engine)
    real_v, real_a = cls.decode_video, cls.decode_audio

    def dec_v(self, latent):
        cap.video_latent = latent.detach().clone()
        out = real_v(self, latent)
        cap.video = torch.from_numpy(np.asarray(out)).permute(3, 0, 1, 2)[None] * 2 - 1  # back to [-1, 1]
        return out

    def dec_a(self, tokens, frames):
        from pipelines.sampler.state import unpatchify_audio

        cap.audio_latent = unpatchify_audio(tokens, 8, 16).detach().clone()
        wav, rate = real_a(self, tokens, frames)
        cap.audio, cap.rate = torch.from_numpy(wav), rate
        return wav, rate

    patch.setattr(cls, "decode_video", dec_v)
    patch.setattr(cls, "decode_audio", dec_a)
    res = engine.generate(req, write=False, previews=False)
    patch.setattr(cls, "decode_video", real_v)
    patch.setattr(cls, "decode_audio", real_a)
    return cap, res


def run_ic_lora_pipeline(patch, models_dir, ctx, loras, **call):
    """ltx_pipelines.ic_lora.ICLoraPipeline(...)(**call) on the official checkpoint (float32, CPU)."""
    import ltx_pipelines.ic_lora as ic
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps

    models_dir = Path(models_dir)
    with ltx_cpu_float32(patch, ic, ctx) as cap:
        pipe = ic.ICLoraPipeline(
            distilled_checkpoint_path=str(models_dir / "ltx-2.3-22b-distilled-1.1.safetensors"),
            spatial_upsampler_path=str(models_dir / "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"),
            gemma_root=None,  # the prompt encoding is handed over (encode_prompts above)
            loras=[LoraPathStrengthAndSDOps(p, w, LTXV_LORA_COMFY_RENAMING_MAP) for p, w in loras])
        with torch.no_grad():
            video, audio = pipe(prompt="unused: the encoding is ours", tiling_config=None, **call)
            list(video)
    return cap


def compare(ours: _Capture, theirs: _Capture, audio: bool = True) -> dict:
    errs = {"video latent": assert_close(ours.video_latent, theirs.video_latent, "final video latent"),
            # both clamp to [-1, 1] on the way to pixels (theirs in decode_video's uint8 conversion)
            "decoded video": assert_close(ours.video, theirs.video.clamp(-1, 1), "decoded video")}
    if audio:
        errs["audio latent"] = assert_close(ours.audio_latent, theirs.audio_latent, "final audio latent")
        errs["waveform"] = assert_close(ours.audio, theirs.audio, "waveform")
        assert ours.rate == theirs.rate, f"sample rate {ours.rate} != {theirs.rate}"
    return errs


def contexts(engine, req):
    with torch.no_grad():
        return engine.contexts(req.validate(), cfg=req.schedule.value == "full")


