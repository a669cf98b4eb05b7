"""The detail / upscale pass on an EXISTING video (a result or an upload), as its own action:

- ``spatial``: LTX-2.3's spatial upscaler x2 on the video's latent, then refine steps at the full size with the
  stage-2 sigmas and no LoRA: ICLoraPipeline's second stage, run on a video you already have.
- ``detailer``: a Detailer IC-LoRA pass: the video itself is the reference (at target / D, D read from the LoRA's
  metadata), the target is at 2x, started from the upscaled latent (the spatial upscaler's when the model has
  one, else the latent repeated 2x2) and refined with the same sigmas while attending to the reference.

Long or large videos run tiled (pipelines.sampler.tiles + tiled): the tile plan, with its predicted peak memory
per tile, is made before anything runs and comes back in the result. The video is decoded whole (on a GPU with
the VAE's own tiling). Video only: the output has no soundtrack.

    res = upscale_video(engine, UpscaleRequest(video="out.mp4"), "out-x2.mp4")
"""
from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import UserError
from pipelines.requests import STAGE2_SIGMAS

SCALE = 2


class UpscaleMode(str, enum.Enum):
    SPATIAL = "spatial"
    DETAILER = "detailer"


@dataclass
class UpscaleRequest:
    video: str
    mode: UpscaleMode = UpscaleMode.SPATIAL
    prompt: str = ""                 # empty: the prompt in the video's own metadata, else a neutral one
    model: str = "tiny"
    seed: int = 0
    lora: str | None = None          # detailer: the Detailer IC-LoRA file
    lora_weight: float = 1.0
    reference_strength: float = 1.0  # detailer: conditioning strength of the video as reference
    noise: float = STAGE2_SIGMAS[0]  # the sigma the refine starts from (how much it may change)
    tile_width: int | None = None    # tile size in OUTPUT pixels (None: whole frame), frames 8n+1 (None: all)
    tile_height: int | None = None
    tile_frames: int | None = None
    overlap: int = 64                # px (multiple of 32)
    overlap_frames: int = 8          # frames (multiple of 8)
    version: int = 1

    def validate(self) -> "UpscaleRequest":
        if not isinstance(self.mode, UpscaleMode):
            try:
                self.mode = UpscaleMode(str(self.mode))
            except ValueError:
                raise UserError(f"mode={self.mode!r} must be spatial or detailer") from None
        if not self.video:
            raise UserError("no video to upscale: pick a result or upload a clip")
        if self.mode is UpscaleMode.DETAILER and not self.lora:
            raise UserError("the detailer pass needs a Detailer IC-LoRA file (put it in models/loras)")
        if not (0.0 < float(self.noise) <= 1.0):
            raise UserError(f"noise={self.noise} must be in (0, 1]: the sigma the refine starts from")
        if not (0.0 <= float(self.reference_strength) <= 1.0):
            raise UserError(f"reference_strength={self.reference_strength} must be between 0 and 1")
        if not (-4.0 <= float(self.lora_weight) <= 4.0):
            raise UserError(f"lora_weight={self.lora_weight} must be between -4 and 4")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed={self.seed} must be a non-negative integer")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = UpscaleMode(self.mode).value
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "UpscaleRequest":
        if not isinstance(data, dict):
            raise UserError("an upscale request must be a JSON object with a video")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown upscale setting(s): {', '.join(unknown)}")
        try:
            kw = dict(data)
            for k in ("seed", "tile_width", "tile_height", "tile_frames", "overlap", "overlap_frames", "version"):
                if kw.get(k) is not None:
                    kw[k] = int(kw[k])
            for k in ("lora_weight", "reference_strength", "noise"):
                if kw.get(k) is not None:
                    kw[k] = float(kw[k])
            return cls(**kw).validate()
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid upscale request: {exc}") from None


@dataclass
class UpscaleResult:
    path: Path
    sidecar: Path
    metadata: dict
    frames: np.ndarray | None = field(default=None, repr=False)
    latent: object = field(default=None, repr=False)  # the refined latent (tests compare tiled and untiled)


def source_prompt(path: str) -> str:
    """The prompt stored in a studio video's metadata (its .json sidecar or mp4 comment), else ''."""
    p = Path(path)
    for text in (_read(p.with_suffix(".json")), _comment(p)):
        try:
            meta = json.loads(text) if text else None
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            req = meta.get("request") if isinstance(meta.get("request"), dict) else meta
            if isinstance(req, dict) and isinstance(req.get("prompt"), str):
                return req["prompt"]
    return ""


def _read(p: Path) -> str | None:
    try:
        return p.read_text()
    except OSError:
        return None


def _comment(p: Path) -> str | None:
    from pipelines.video_io import read_comment

    try:
        return read_comment(p)
    except UserError:
        return None


def load_source(path: str) -> tuple[np.ndarray, float, list[str]]:
    """The video as uint8 frames at a size the model takes (multiples of 32, 8n+1 frames: trimmed / cropped and
    said so), with its fps."""
    from pipelines.video_io import ConformTarget, conform_file

    frames, fps, rep = conform_file(path, ConformTarget(multiple=32))
    return np.ascontiguousarray(frames), float(fps), list(rep.changes)


def plan_for(req: UpscaleRequest, width: int, height: int, frames: int, downscale: int, tier=None, sizes=None):
    """The tile plan of the pass producing width x height x frames (output pixels)."""
    from pipelines.sampler.tiles import plan_tiles

    refs = 1 if UpscaleMode(req.mode) is UpscaleMode.DETAILER else 0
    return plan_tiles(width, height, frames, tile_width=req.tile_width, tile_height=req.tile_height,
                      tile_frames=req.tile_frames, overlap=req.overlap, overlap_frames=req.overlap_frames,
                      references=refs, downscale=downscale if refs else 1, tier=tier, sizes=sizes)


def upscale_video(engine, req: UpscaleRequest, out_path: str | Path | None = None,
                  on_step: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
                  write: bool = True, blend: str | None = None, force_tiled: bool = False) -> UpscaleResult:
    """Run the pass on engine.m (a loaded model). A one-tile plan runs the plain (untiled) denoiser unless
    ``force_tiled``; ``blend`` overrides the plan's blend ("hard": the seam tests' negative control)."""
    import torch

    from pipelines.errors import Cancelled
    from pipelines.requests import GenerateRequest
    from pipelines.sampler import state as S
    from pipelines.sampler.denoise import X0Model, euler_loop, guided_denoiser
    from pipelines.sampler.tiled import tiled_denoiser

    req = req.validate()
    t0 = time.perf_counter()
    m, pipe = engine.m, engine.m.pipe
    mode = UpscaleMode(req.mode)
    src, fps, notes = load_source(req.video)
    f, h, w = src.shape[0], src.shape[1], src.shape[2]
    W, H = w * SCALE, h * SCALE
    from pipelines.limits import active

    active().check_video("upscaled video", W, H, f)
    files, d, s = [], 1, 1
    if mode is UpscaleMode.DETAILER:
        from pipelines.requests import LoraSpec

        files, d, s = engine.prepare_loras(GenerateRequest(prompt="x", loras=[LoraSpec(req.lora, req.lora_weight)]))
        if s != 1:
            raise UserError(f"the detailer pass takes IC-LoRAs without temporal scaling (this one has {s})")
        if W % (32 * d) or H % (32 * d):
            raise UserError(f"a 2x upscale of {w}x{h} is {W}x{H}, not a multiple of {32 * d} that this Detailer "
                            f"IC-LoRA (D={d}) needs; crop the video to a multiple of {16 * d} first")
    elif m.upsampler is None:
        raise UserError("the spatial upscale needs the latent upsampler (ltx-2.3-spatial-upscaler-x2-1.1.safetensors "
                        "in the models folder)")
    plan = plan_for(req, W, H, f, d)
    if blend is not None:
        from pipelines.sampler.tiles import plan_tiles

        plan = plan_tiles(W, H, f, tile_width=req.tile_width, tile_height=req.tile_height,
                          tile_frames=req.tile_frames, overlap=req.overlap, overlap_frames=req.overlap_frames,
                          references=plan.references, downscale=plan.downscale, blend=blend)
    prompt = req.prompt.strip() or source_prompt(req.video) or "a high quality video with fine, sharp details"
    steps = [x for x in STAGE2_SIGMAS if x <= float(req.noise) + 1e-9]
    sigmas = torch.tensor(([float(req.noise)] if abs(steps[0] - float(req.noise)) > 1e-9 else []) + steps,
                          dtype=torch.float32).to(m.device)
    total = (len(sigmas) - 1) * plan.count
    done = {"n": 0}

    def progress(phase: str, msg: str, frac: float):
        if should_cancel is not None and should_cancel():
            raise Cancelled("cancelled by the user")
        if on_step is not None:
            on_step(phase, msg, frac)

    progress("encode", "encoding the video", 0.02)
    with torch.no_grad():
        pos, _ = engine.contexts(GenerateRequest(prompt=prompt), cfg=False)
        latent = engine.encode_frames(src)
        if m.upsampler is not None:
            progress("upsample", "upsampling the latent 2x", 0.1)
            up = engine.upsample(latent)
        else:  # detailer on a model without the upsampler: each latent cell repeated 2x2
            up = latent.repeat_interleave(SCALE, dim=3).repeat_interleave(SCALE, dim=4)
        lf = up.shape[2]
        refs = None
        if mode is UpscaleMode.DETAILER:
            from pipelines.video_io import resize_cover_crop

            rw, rh = W // d, H // d
            ref_frames = src if (rw, rh) == (w, h) else resize_cover_crop(src, rw, rh)[0]
            engine._apply_loras(files, [req.lora_weight])
            from types import SimpleNamespace

            refs = SimpleNamespace(frames=[ref_frames], strengths=[float(req.reference_strength)], attention=[None])
        else:
            engine._apply_loras([], [])
        vstate = _stage_state(engine, up, fps, refs, d)
        gen = torch.Generator(device=m.device).manual_seed(int(req.seed))
        vstate = S.add_noise(vstate, gen, sigmas[0])
        astate = engine._dummy_audio_state()
        model = X0Model(pipe.transformer, m.bias_state)

        def before_tile(sub):
            engine._set_attention(sub)

        def on_tile(step, tile):
            done["n"] += 1
            progress("denoise", f"step {step + 1}/{len(sigmas) - 1}, tile {tile + 1}/{plan.count}",
                     0.15 + 0.7 * done["n"] / max(1, total))

        if plan.count == 1 and not force_tiled:  # the untiled pass: the plain denoiser on the whole state
            engine._set_attention(vstate)
            plain = guided_denoiser(model, pos, None, audio=False)

            def denoise(video, audio, sig, i):
                out = plain(video, audio, sig, i)
                on_tile(i, 0)
                return out
        else:
            denoise = tiled_denoiser(lambda i: guided_denoiser(model, pos, None, audio=False), plan,
                                     before_tile=before_tile, on_tile=on_tile)
        try:
            vstate, _ = euler_loop(sigmas, vstate, astate, denoise, None, audio_on=False)
        finally:
            m.bias_state.clear()
        out_latent = S.unpatchify(S.target_only(vstate).latent, lf, H // 32, W // 32)
    progress("decode", "decoding the video", 0.88)
    video = engine.decode_video(out_latent)
    frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
    meta = {"app": "iclora-studio", "kind": "upscale", "upscale": req.to_dict(), "model": m.spec.name,
            "tiny_model": m.is_tiny, "notice": _notice(m), "source": {"path": str(req.video), "width": w,
                                                                      "height": h, "frames": f, "fps": fps},
            "width": W, "height": H, "frames": int(frames.shape[0]), "prompt": prompt,
            "reference_downscale_factor": d if mode is UpscaleMode.DETAILER else None, "conform": notes,
            "plan": plan.to_dict(), "sigmas": [round(float(x), 6) for x in sigmas.tolist()],
            "model_passes": model.calls, "seconds": round(time.perf_counter() - t0, 3), "device": m.device,
            "tier": m.tier.value}
    if not write:
        return UpscaleResult(Path(""), Path(""), meta, frames, out_latent)
    progress("write", "writing the mp4", 0.97)
    path, sidecar = _write(frames, fps, meta, out_path)
    return UpscaleResult(path, sidecar, meta, frames, out_latent)


def _stage_state(engine, latent, fps: float, refs, d: int):
    """The target state from `latent` (all tokens free) plus the reference (detailer), as the engine builds
    stage states."""
    from pipelines.sampler import state as S

    m = engine.m
    st = S.video_state(tuple(latent.shape), float(fps), m.dtype, m.device, initial=latent)
    if refs is not None:
        for frames, strength in zip(refs.frames, refs.strengths):
            st = S.append_reference(st, engine.encode_frames(frames), float(fps), downscale=d, temporal_scale=1,
                                    strength=float(strength), attention=None)
    return st


def _notice(m) -> str:
    from pipelines.models.tiny import TINY_MODEL_NOTICE

    return TINY_MODEL_NOTICE if m.is_tiny else ""


def _write(frames: np.ndarray, fps: float, meta: dict, out_path) -> tuple[Path, Path]:
    from pipelines.video_io import output_mp4, write_video

    out = output_mp4(out_path)
    write_video(out, frames, fps, comment=json.dumps(meta, sort_keys=True))
    sidecar = out.with_suffix(".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(sidecar)
    return out, sidecar
