"""The IC-LoRA engine: one call from a GenerateRequest to an mp4 (video + AAC soundtrack) + JSON sidecar.

Sampling follows Lightricks' reference (ltx-core / ltx-pipelines 1.0.0): their latent states and conditioning items,
schedules, multi-modal guidance and Euler loop (pipelines.sampler.state / schedules / guidance / denoise), and
ICLoraPipeline's two-stage recipe. The model components are diffusers' (transformer, VAEs, vocoder, text encoder
and connectors, latent upsampler, LoRA loading); diffusers' pipeline __call__ is not used: its loop differs from
the reference (token-count shift, x0 from the global sigma for conditioned tokens, a linear and dense attention
mask, STG on both modalities at once), so the loop is ours and tests/oracle/ checks it against the official code.

Reads top to bottom: check -> LoRAs -> prompts -> conditions (images, references + attention weights) -> stage 1
(state, noise, denoise) -> optional stage 2 (upsample, no LoRAs, images again at full size) -> decode video and
audio -> write. Nothing is kept between runs except caches keyed by their inputs (prompt embeddings, conformed
controls, loaded LoRA adapters); every schedule is computed from the request.
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import Cancelled, UserError
from pipelines.models.lora import LoraFile, check_compatible, read_lora, validate_lora
from pipelines.requests import GenerateRequest, Schedule
from pipelines.video_io import IMAGE_EXTS, read_image

log = logging.getLogger(__name__)


@dataclass
class StepEvent:
    """Progress of a run. Denoising steps carry stage / step / total (1-based step over all stages) and a latent
    preview; the other phases ("encode prompt", "encode conditions", "upsample", "decode", "audio decode", "write")
    carry step 0. `fraction` is of the whole run and only moves forward; `message` is what a person reads."""

    stage: int
    step: int  # 1-based over all denoising steps; 0 outside denoising
    total: int
    preview: np.ndarray | None  # uint8 RGB latent preview, or None
    phase: str = "denoise"
    fraction: float = 0.0
    message: str = ""


@dataclass
class GenerateResult:
    path: Path
    sidecar: Path
    metadata: dict
    frames: np.ndarray | None = field(default=None, repr=False)
    audio: np.ndarray | None = field(default=None, repr=False)  # float32 [channels, samples] in [-1, 1]
    sample_rate: int | None = None


@dataclass
class PreparedReferences:
    frames: list  # uint8 [F, h, w, 3] per reference, at the reference size (temporal scale applied)
    strengths: list[float]
    attention: list  # per reference: None (no attention mask), a float, or per-token weights (torch [F*h*w])
    reports: list[str]
    token_counts: list[int]

    @property
    def weights(self):
        """All references' attention weights concatenated (torch [R]), or None when none carries a mask."""
        import torch

        if all(a is None for a in self.attention):
            return None
        parts = [torch.ones(n) if a is None else (torch.full((n,), float(a)) if isinstance(a, float) else a)
                 for a, n in zip(self.attention, self.token_counts)]
        return torch.cat(parts)

    @property
    def conditions(self) -> list:
        """The references as diffusers' LTX2ReferenceCondition holds them (frames float [0, 1], strength)."""
        from types import SimpleNamespace

        return [SimpleNamespace(frames=f.astype(np.float32) / 255.0, strength=s)
                for f, s in zip(self.frames, self.strengths)]


def _control_provenance(req: GenerateRequest) -> list:
    """What made each control video (kind, backend, options, the clean-up with its measured steps), from the
    report written beside it by the preprocessor; None for a file without one (the user's own video)."""
    from pipelines.control.cleanup import control_provenance

    return [control_provenance(c.path) for c in req.controls]


def _fit_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from pipelines.video_io import resize_cover_crop

    out, _ = resize_cover_crop(img[None], width, height)
    return out[0]


# Relative cost of the phases, for a progress fraction that moves (denoising is split over its model passes).
_PHASE_WEIGHTS = {"encode prompt": 0.03, "encode conditions": 0.04, "denoise": 0.78, "upsample": 0.02,
                  "decode": 0.1, "audio decode": 0.02, "write": 0.01}


class _Progress:
    """Turns the run's phases into StepEvents with a fraction that only moves forward."""

    def __init__(self, on_step, should_cancel, total_steps: int, passes: list[int]):
        self.on_step, self.should_cancel = on_step, should_cancel
        self.total = total_steps
        self.passes = passes  # model passes of each denoising step, in order
        self.done = 0.0
        self.step = 0

    def check(self):
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("cancelled by the user")

    def phase(self, name: str, message: str):
        self.check()
        if self.on_step is not None:
            self.on_step(StepEvent(stage=0, step=0, total=self.total, preview=None, phase=name,
                                   fraction=round(min(self.done, 1.0), 4), message=message))
        self.done += _PHASE_WEIGHTS.get(name, 0.0)

    def denoised(self, stage: int, preview):
        i = self.step
        self.step += 1
        self.done += _PHASE_WEIGHTS["denoise"] * self.passes[i] / max(1, sum(self.passes))
        self.check()
        if self.on_step is not None:
            self.on_step(StepEvent(stage=stage, step=self.step, total=self.total, preview=preview, phase="denoise",
                                   fraction=round(min(self.done, 1.0), 4),
                                   message=f"step {self.step}/{self.total} denoising"
                                           + (f" (stage {stage})" if stage > 1 else "")))


class Engine:
    """Generation on one loaded model. Not thread-safe: the job system runs one GPU job at a time."""

    def __init__(self, loaded):
        self.m = loaded
        self._adapters: dict[tuple[str, float], str] = {}
        self._proj = None
        # Conformed control frames of the last few runs, keyed by file identity and target: people iterate on
        # prompt / seed / strength over one control, and decoding it again is most of the engine's own cost.
        self._controls: "OrderedDict[tuple, tuple[np.ndarray, str | None]]" = OrderedDict()
        self._prompts: OrderedDict = OrderedDict()
        if loaded.bias_state is None:  # the sampler installs its attention processor; the loader knows nothing of it
            from pipelines.sampler.attention import install_reference_bias

            loaded.bias_state = install_reference_bias(loaded.pipe.transformer)

    # ---- LoRAs ----
    def _module_names(self) -> set[str]:
        import torch

        return {n for n, mod in self.m.pipe.transformer.named_modules() if isinstance(mod, torch.nn.Linear)}

    def prepare_loras(self, req: GenerateRequest) -> tuple[list[LoraFile], int, int]:
        """Read and check the request's LoRAs; (files, D, S) with the reference factors read as Lightricks'
        ICLoraPipeline reads them (a file without the keys: 1)."""
        files = [read_lora(lo.path, self._module_names()) for lo in req.loras]
        for lf in files:
            validate_lora(lf, self.m.pipe.transformer, getattr(self.m.pipe, "connectors", None))
        d, s = check_compatible(files)
        return files, d, s

    def _apply_loras(self, files: list[LoraFile], weights: list[float]) -> None:
        """Make exactly these LoRAs active (none: all off). Adapters stay loaded, keyed by file version."""
        pipe = self.m.pipe
        names = []
        for lf in files:
            key = (lf.path, Path(lf.path).stat().st_mtime)
            if key not in self._adapters:
                # unique per model, not per Engine: other engines (a trainer's validation sampler) share it
                name = f"lora{len(self._adapters)}_{uuid.uuid4().hex[:8]}"
                pipe.load_lora_weights(lf.transformer_tensors(), adapter_name=name)
                self._adapters[key] = name
            names.append(self._adapters[key])
        if not names:
            # adapters another engine loaded on this model (a trainer's validation sampler) must not act either
            if self._adapters or getattr(pipe.transformer, "peft_config", None):
                pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters(names, [float(w) for w in weights])

    # ---- references ----
    def prepare_references(self, req: GenerateRequest, d: int, width: int, height: int,
                           temporal_scale: int = 1) -> PreparedReferences:
        """The reference (control) videos at (width / D, height / D), at 1/S of the frame rate, and their attention
        weights as ICLoraPipeline builds them: mask x strength per token, else the strength as a scalar when it is
        below 1, else none."""
        import torch

        from pipelines import masks

        if not req.controls:
            return PreparedReferences([], [], [], [], [])
        if width % (32 * d) or height % (32 * d):
            raise UserError(f"{width}x{height} must be a multiple of {32 * d} for this IC-LoRA (reference "
                            f"downscale factor D={d} -> reference at {width // d}x{height // d})")
        rw, rh = width // d, height // d
        frames_l, strengths, attention, reports, counts = [], [], [], [], []
        mask = self._load_mask(req, rw, rh) if req.mask else None
        lf_target = (req.frames - 1) // 8 + 1
        for i, c in enumerate(req.controls):
            if Path(c.path).suffix.lower() in IMAGE_EXTS:
                frames = _fit_image(read_image(c.path), rw, rh)[None]
                reports.append(f"control {i + 1}: still image {Path(c.path).name} used as a 1-frame reference at {rw}x{rh}")
            else:
                frames, note = self._control_frames(c.path, req, rw, rh)
                if note:
                    reports.append(f"control {i + 1} ({Path(c.path).name}): {note}")
                if temporal_scale != 1:
                    n = len(frames[::temporal_scale])
                    keep = (n - 1) // 8 * 8 + 1
                    frames = frames[::temporal_scale][:keep]
                    reports.append(f"control {i + 1}: every {temporal_scale}th frame used ({keep} frames at "
                                   f"{req.fps / temporal_scale:g} fps), as the IC-LoRA's reference_temporal_scale_factor"
                                   f"={temporal_scale} asks")
            lf = (len(frames) - 1) // 8 + 1
            if lf > lf_target:
                raise UserError(f"control {i + 1} has more frames than the output")
            lh, lw = rh // 32, rw // 32
            n = lf * lh * lw
            frames_l.append(frames)
            strengths.append(float(c.strength))
            counts.append(n)
            if mask is not None:
                m = mask if mask.ndim == 2 else mask[:: temporal_scale][: len(frames)]
                if m.ndim == 3 and (len(m) - 1) % 8:
                    m = m[: (len(m) - 1) // 8 * 8 + 1]
                lw_ = masks.latent_weights(m, latent_frames=lf if m.ndim == 2 or len(m) == 1 else None,
                                           latent_height=lh, latent_width=lw)
                if lw_.shape[0] == 1 and lf > 1:
                    lw_ = np.repeat(lw_, lf, axis=0)
                attention.append(torch.from_numpy(np.ascontiguousarray(lw_.reshape(-1) * np.float32(req.attention_strength))))
            elif req.attention_strength < 1.0:
                attention.append(float(req.attention_strength))
            else:
                attention.append(None)
        return PreparedReferences(frames_l, strengths, attention, reports, counts)

    PROMPT_CACHE = 4  # entries of prompt embeddings (CPU copies on a GPU host)

    def encode_prompt(self, prompt: str, negative: str, cfg: bool) -> dict:
        """The text encoder's embeddings of the prompt (and of the negative one with cfg), as keyword arguments of
        diffusers' LTX-2 pipelines. Cached by text, so a new seed or strength on the same prompt never runs the text
        encoder again. On the resident tiers the text encoder lives in CPU memory
        (pipelines.models.loader.park_text_encoder): it is brought to the GPU for the encoding only and freed right
        after, so it never sits beside the transformer's activations."""
        import torch

        m, pipe = self.m, self.m.pipe
        key = (prompt, negative if cfg else "", cfg, m.max_sequence_length)
        hit = self._prompts.get(key)
        if hit is None:
            from pipelines.sampler.enhance import text_encoder_lock

            te = pipe.text_encoder
            # the prompt enhancer uses the same encoder from the light lane, one token step at a time under this
            # lock: its visit to the GPU and the encoding never overlap a step of it
            with text_encoder_lock(m):
                visit = m.device != "cpu" and te is not None and next(te.parameters()).device.type == "cpu" \
                    and not hasattr(te, "_hf_hook")  # offload tiers move it themselves
                if visit:
                    te.to(m.device)
                try:
                    with torch.no_grad():
                        pe, pm, ne, nm = pipe.encode_prompt(prompt=prompt, negative_prompt=negative,
                                                            do_classifier_free_guidance=cfg,
                                                            max_sequence_length=m.max_sequence_length,
                                                            device=m.device)
                finally:
                    if visit:
                        te.to("cpu")
                        torch.cuda.empty_cache()
            hit = tuple(None if t is None else t.detach().to("cpu") for t in (pe, pm, ne, nm))  # no copy on CPU
            self._prompts[key] = hit
            while len(self._prompts) > self.PROMPT_CACHE:
                self._prompts.popitem(last=False)
        else:
            self._prompts.move_to_end(key)
        dev = (lambda t: None if t is None else t.to(m.device))
        pe, pm, ne, nm = (dev(t) for t in hit)
        return dict(prompt=None, negative_prompt=None, prompt_embeds=pe, prompt_attention_mask=pm,
                    negative_prompt_embeds=ne, negative_prompt_attention_mask=nm)

    def contexts(self, req: GenerateRequest, cfg: bool):
        """(positive, negative or None) PromptContexts: the embeddings through the text connectors."""
        from pipelines.sampler.denoise import PromptContext

        pipe = self.m.pipe
        emb = self.encode_prompt(req.prompt, req.negative_prompt or "", cfg)
        out = []
        for e, mk in ((emb["prompt_embeds"], emb["prompt_attention_mask"]),
                      (emb["negative_prompt_embeds"], emb["negative_prompt_attention_mask"])):
            if e is None:
                out.append(None)
                continue
            v, a, mask = pipe.connectors(e.to(self.m.dtype), mk, padding_side=pipe.tokenizer_padding_side)
            out.append(PromptContext(video=v, audio=a, mask=mask))
        return out[0], (out[1] if cfg else None)

    CONTROL_CACHE = 2  # entries (a 121x768x512 control is 140 MB of uint8)

    def _control_frames(self, path: str, req: GenerateRequest, rw: int, rh: int) -> tuple[np.ndarray, str | None]:
        """A control video's frames at the reference size (conformed when the request allows), uint8
        [F,rh,rw,3], and the conform report in words; cached by (file identity, target)."""
        from pipelines.video_io import ConformTarget, conform_file, read_video

        try:
            st = Path(path).stat()
        except OSError:
            raise UserError(f"control video {path} does not exist") from None
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size, rw, rh, req.frames, float(req.fps),
               bool(req.conform_controls))
        hit = self._controls.get(key)
        if hit is not None:
            self._controls.move_to_end(key)
            return hit
        note = None
        if req.conform_controls:  # only the frames it needs, each resized as it is decoded
            frames, _fps, rep = conform_file(path, ConformTarget(width=rw, height=rh, frames=req.frames,
                                                                 fps=req.fps, pad=True))
            note = "; ".join(rep.changes) or None
        else:
            frames, _fps = read_video(path)
            if frames.shape[1:3] != (rh, rw) or len(frames) != req.frames:
                raise UserError(f"control {Path(path).name} is {frames.shape[2]}x{frames.shape[1]}x{len(frames)}; "
                                f"this run needs {rw}x{rh}x{req.frames} (turn on conforming)")
        frames.setflags(write=False)
        self._controls[key] = (frames, note)
        while len(self._controls) > self.CONTROL_CACHE:
            self._controls.popitem(last=False)
        return frames, note

    def _load_mask(self, req: GenerateRequest, rw: int, rh: int) -> np.ndarray:
        try:
            mask = np.load(req.mask, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read mask {req.mask}: {exc}") from None
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim not in (2, 3) or mask.shape[-2:] != (rh, rw):
            raise UserError(f"mask {Path(req.mask).name} has shape {mask.shape}; it must be (H,W) or (F,H,W) at the "
                            f"reference size {rh}x{rw} (height x width)")
        if mask.ndim == 3 and len(mask) not in (1, req.frames):
            raise UserError(f"mask has {len(mask)} frames; the output has {req.frames}")
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise UserError(f"mask values must be in [0, 1] (got {np.nanmin(mask):.3g}..{np.nanmax(mask):.3g})")
        return mask

    # ---- pixels <-> latents ----
    def encode_pixels(self, pixels):
        """[B, 3, F, H, W] in [-1, 1] -> normalised latents (the VAE's mean, per-channel statistics applied), as
        ltx-core's VideoEncoder returns them."""
        import torch

        pipe = self.m.pipe
        with torch.no_grad():
            lat = pipe.vae.encode(pixels.to(self.m.device, pipe.vae.dtype)).latent_dist.mode()
            lat = pipe._normalize_latents(lat, pipe.vae.latents_mean, pipe.vae.latents_std,
                                          pipe.vae.config.scaling_factor)
        return lat.to(self.m.dtype)

    def encode_frames(self, frames: np.ndarray):
        """uint8 [F, H, W, 3] (already at size) -> normalised latents [1, C, f, h, w]."""
        import torch

        x = torch.from_numpy(np.array(frames, copy=True)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        return self.encode_pixels(x)

    def image_pixels(self, path: str, width: int, height: int, crf: int):
        """An image as ltx-pipelines' load_image_conditioning prepares it: H.264 round trip at `crf` (as in
        training), bilinear resize to cover (height, width), centre crop, [-1, 1]. [1, 3, 1, H, W] float32."""
        import torch
        from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf

        img = read_image(path)
        img = apply_image_conditioning_crf(np.ascontiguousarray(img), int(crf)) if crf else img
        t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None]  # [1, 3, h, w]
        src_h, src_w = t.shape[-2:]
        scale = max(height / src_h, width / src_w)
        new_h, new_w = math.ceil(src_h * scale), math.ceil(src_w * scale)
        t = torch.nn.functional.interpolate(t, size=(new_h, new_w), mode="bilinear", align_corners=False)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        t = t[:, :, top: top + height, left: left + width]
        return (t / 127.5 - 1.0).unsqueeze(2)

    def upsample(self, latent):
        """ltx-core upsample_video: un-normalise, the 2x latent upsampler, normalise again."""
        import torch

        pipe, up = self.m.pipe, self.m.upsampler
        with torch.no_grad():
            x = pipe._denormalize_latents(latent, pipe.vae.latents_mean, pipe.vae.latents_std,
                                          pipe.vae.config.scaling_factor)
            x = up(x.to(next(up.parameters()).dtype))
            x = pipe._normalize_latents(x, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor)
        return x.to(self.m.dtype)

    def decode_video(self, latent) -> np.ndarray:
        """Normalised latents [1, C, f, h, w] -> float [F, H, W, 3] in [0, 1]."""
        import torch

        pipe = self.m.pipe
        with torch.no_grad():
            x = pipe._denormalize_latents(latent, pipe.vae.latents_mean, pipe.vae.latents_std,
                                          pipe.vae.config.scaling_factor).to(pipe.vae.dtype)
            timestep = None
            if pipe.vae.config.timestep_conditioning:  # decode at timestep 0, no noise (diffusers' default)
                timestep = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
            video = pipe.vae.decode(x, timestep, return_dict=False)[0]
            return pipe.video_processor.postprocess_video(video, output_type="np")[0]

    def decode_audio(self, tokens, frames: int) -> tuple[np.ndarray, int]:
        """Audio tokens [1, T, C*M] (normalised) -> (float32 waveform [channels, samples], sample rate): the audio
        VAE and the vocoder, as ltx-core's decode_audio."""
        import torch

        from pipelines.sampler.state import unpatchify_audio

        pipe = self.m.pipe
        av = pipe.audio_vae
        with torch.no_grad():
            x = pipe._denormalize_audio_latents(tokens, av.latents_mean, av.latents_std)
            x = unpatchify_audio(x, av.config.latent_channels, self._audio_mel_bins()).to(av.dtype)
            mel = av.decode(x, return_dict=False)[0]
            wav = pipe.vocoder(mel.to(pipe.vocoder.dtype))[0].float().cpu().numpy()
        rate = int(getattr(pipe.vocoder.config, "output_sampling_rate", None) or pipe.audio_sampling_rate)
        return wav, rate

    def _audio_mel_bins(self) -> int:
        pipe = self.m.pipe
        return pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio

    def _audio_state(self, frames: int, initial=None):
        from pipelines.sampler.state import audio_state

        pipe = self.m.pipe
        return audio_state(frames, pipe.audio_vae.config.latent_channels, self._audio_mel_bins(), self.m.dtype,
                           self.m.device, initial=initial, sample_rate=pipe.audio_sampling_rate,
                           hop_length=pipe.audio_hop_length, downsample=pipe.audio_vae_temporal_compression_ratio)

    def _dummy_audio_state(self):
        """Video-only runs: one zero audio token, the modalities isolated in every model pass, so the video is
        independent of it (our own audio-off mode: ltx-pipelines always generates the soundtrack)."""
        return self._audio_state(1)

    # ---- conditions of one stage ----
    def stage_state(self, req: GenerateRequest, width: int, height: int, refs: PreparedReferences | None,
                    d: int, s: int, initial=None):
        """The stage's video state before noise: the target (or `initial`), the images (frame 0 replaces the
        first latent frame, other frames are appended keyframes), then the references (ICLoraPipeline's order)."""
        from pipelines.sampler import state as S

        lf = (req.frames - 1) // 8 + 1
        shape = (1, self.m.pipe.transformer.config.in_channels, lf, height // 32, width // 32)
        st = S.video_state(shape, float(req.fps), self.m.dtype, self.m.device, initial=initial)
        for k in req.all_keyframes():
            lat = self.encode_pixels(self.image_pixels(k.path, width, height, req.image_crf))
            if k.frame == 0:
                st = S.replace_latent_frames(st, lat, float(k.strength), 0, grid=(height // 32, width // 32))
            else:
                st = S.append_keyframe(st, lat, int(k.frame), float(k.strength), float(req.fps))
        if refs is not None:
            for frames, strength, attn in zip(refs.frames, refs.strengths, refs.attention):
                lat = self.encode_frames(frames)
                if attn is not None and not isinstance(attn, float):
                    attn = attn.to(self.m.dtype).float()  # the official mask lives in the model's dtype
                st = S.append_reference(st, lat, float(req.fps), downscale=d, temporal_scale=s,
                                        strength=float(strength), attention=attn)
        return st

    def _set_attention(self, st) -> None:
        w, groups = st.attention()
        if groups is not None and int(groups.max()) == int(groups.min()):
            groups = None  # one group: no group channels
        if groups is None:
            self.m.bias_state.set(st.num_target, w)
        else:
            self.m.bias_state.set(st.num_target, w, groups)
        self.m.bias_state.to(self.m.device)

    # ---- the run ----
    def generate(self, req: GenerateRequest, out_path: str | Path | None = None,
                 on_step: Callable[[StepEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 previews: bool = True, write: bool = True) -> GenerateResult:
        import torch

        from pipelines.sampler import schedules
        from pipelines.sampler import state as S
        from pipelines.sampler.denoise import X0Model, euler_loop, guided_denoiser
        from pipelines.sampler.guidance import NO_GUIDANCE, map_blocks

        req = req.validate()
        t0 = time.perf_counter()
        m, pipe = self.m, self.m.pipe
        files, d, s = self.prepare_loras(req)
        two = req.stages == 2
        if two:
            if m.upsampler is None:
                raise UserError("two-stage runs need the latent upsampler "
                                "(ltx-2.3-spatial-upscaler-x2-1.1.safetensors in the models folder)")
            if req.controls and (req.width % (64 * d) or req.height % (64 * d)):
                raise UserError(f"two-stage runs with D={d} need width and height multiples of {64 * d}")
        w1, h1 = (req.width // 2, req.height // 2) if two else (req.width, req.height)
        for k in req.all_keyframes():
            if not Path(k.path).is_file():
                raise UserError(f"image {k.path} does not exist")

        # guidance (Full only; distilled runs are one model pass per step, as ltx-pipelines' distilled pipelines)
        full = req.schedule == Schedule.FULL
        n_blocks = len(pipe.transformer.transformer_blocks)
        vg = ag = NO_GUIDANCE
        if full:
            vg, ag = req.video_guidance(), req.audio_guidance()
            vg = type(vg)(**{**vg.__dict__, "stg_blocks": map_blocks(vg.stg_blocks, n_blocks)})
            ag = type(ag)(**{**ag.__dict__, "stg_blocks": map_blocks(ag.stg_blocks, n_blocks)})
        audio_on = bool(req.audio)
        sig1 = schedules.stage1_sigmas(req.schedule, req.steps).to(m.device)
        sig2 = schedules.stage2_sigmas().to(m.device) if two else None
        per_step = 1 + (vg.needs_uncond or (audio_on and ag.needs_uncond)) + \
            (vg.needs_perturbed or (audio_on and ag.needs_perturbed)) + \
            (audio_on and (vg.needs_isolated or ag.needs_isolated))
        passes = [int(per_step)] * (len(sig1) - 1) + ([1] * (len(sig2) - 1) if two else [])
        prog = _Progress(on_step, should_cancel, len(passes), passes)

        prog.phase("encode prompt", "encoding the prompt")
        with torch.no_grad():
            pos, neg = self.contexts(req, cfg=vg.needs_uncond or (audio_on and ag.needs_uncond))
        prog.phase("encode conditions", "encoding the control videos and images")
        refs = self.prepare_references(req, d, w1, h1, s)
        self._apply_loras(files, [lo.weight for lo in req.loras])
        if previews and on_step is not None and self._proj is None:
            from pipelines.sampler.preview import fit_projection

            self._proj = fit_projection(pipe, m.device, m.dtype)

        gen = torch.Generator(device=m.device).manual_seed(req.seed)
        model = X0Model(pipe.transformer, m.bias_state)
        lf = (req.frames - 1) // 8 + 1
        n_audio = S.audio_frames(req.frames, req.fps, pipe.audio_sampling_rate, pipe.audio_hop_length,
                                 pipe.audio_vae_temporal_compression_ratio)
        if audio_on and n_audio < 1:
            raise UserError(f"{req.frames} frames at {req.fps:g} fps is too short for a soundtrack; turn audio off")

        def stepper(stage, grid):
            def on_denoised(i, video):
                prev = None
                if previews and on_step is not None and self._proj is not None:
                    from pipelines.sampler.preview import latent_preview

                    prev = latent_preview(video.latent, self._proj, *grid)
                prog.denoised(stage, prev)
            return on_denoised

        try:
            with torch.no_grad():
                # stage 1 (the only one for one-stage runs)
                vstate = self.stage_state(req, w1, h1, refs, d, s)
                vstate = S.add_noise(vstate, gen)
                astate = S.add_noise(self._audio_state(n_audio), gen) if audio_on else self._dummy_audio_state()
                self._set_attention(vstate)
                denoise = guided_denoiser(model, pos, neg, vg, ag, audio=audio_on)
                vstate, astate = euler_loop(sig1, vstate, astate, denoise, stepper(1, (lf, h1 // 32, w1 // 32)),
                                            audio_on=audio_on)
                latent = S.unpatchify(S.target_only(vstate).latent, lf, h1 // 32, w1 // 32)

                if two:  # ICLoraPipeline: upsample, then refine at full size with NO LoRAs, images again
                    prog.phase("upsample", "upsampling the latent 2x")
                    m.bias_state.clear()
                    latent = self.upsample(latent)
                    keep = bool(req.stage2_keep_ic)
                    if not keep:
                        self._apply_loras([], [])
                    refs2 = self.prepare_references(req, d, req.width, req.height, s) if keep and req.controls \
                        else None
                    vstate = self.stage_state(req, req.width, req.height, refs2, d, s, initial=latent)
                    vstate = S.add_noise(vstate, gen, sig2[0])
                    if audio_on:
                        astate = S.add_noise(self._audio_state(n_audio, initial=S.unpatchify_audio(
                            astate.latent, pipe.audio_vae.config.latent_channels, self._audio_mel_bins())), gen, sig2[0])
                    self._set_attention(vstate)
                    denoise = guided_denoiser(model, pos, None, audio=audio_on)
                    vstate, astate = euler_loop(sig2, vstate, astate, denoise,
                                                stepper(2, (lf, req.height // 32, req.width // 32)), audio_on=audio_on)
                    latent = S.unpatchify(S.target_only(vstate).latent, lf, req.height // 32, req.width // 32)
        finally:
            m.bias_state.clear()

        prog.phase("decode", "decoding the video")
        video = self.decode_video(latent)
        wav = rate = None
        if audio_on:
            prog.phase("audio decode", "decoding the soundtrack")
            wav, rate = self.decode_audio(S.target_only(astate).latent, n_audio)
        frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        elapsed = time.perf_counter() - t0
        reports = list(refs.reports)
        if any(lf_.text_projection_modules for lf_ in files):
            reports.append("text_embedding_projection weights in the LoRA are not applied (Lightricks' ltx-pipelines "
                           "fuses LoRAs into the transformer only)")
        meta = self.metadata(req, d, reports, elapsed, s=s, stg_blocks=list(vg.stg_blocks), model_passes=model.calls,
                             audio=audio_on)
        if not write:
            return GenerateResult(path=Path(""), sidecar=Path(""), metadata=meta, frames=frames, audio=wav,
                                  sample_rate=rate)
        prog.phase("write", "writing the mp4")
        return self.write(frames, req, meta, out_path, audio=wav, sample_rate=rate)

    @staticmethod
    def _dummy_audio(pipe, device):
        """One audio latent frame [1, C, 1, M] (kept for the bench's bare-diffusers baseline)."""
        import torch

        c = pipe.audio_vae.config.latent_channels
        mel = pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio
        return torch.zeros(1, c, 1, mel, device=device)

    def metadata(self, req: GenerateRequest, d: int, reports: list[str], elapsed: float, s: int = 1,
                 stg_blocks: list | None = None, model_passes: int | None = None, audio: bool = False) -> dict:
        from pipelines.models.tiny import TINY_MODEL_NOTICE

        return {
            "app": "iclora-studio", "request": req.to_dict(), "model": self.m.spec.name,
            "tiny_model": self.m.is_tiny, "notice": TINY_MODEL_NOTICE if self.m.is_tiny else "",
            "reference_downscale_factor": d, "reference_temporal_scale_factor": s, "conform": reports,
            "device": self.m.device, "tier": self.m.tier.value, "seconds": round(elapsed, 3),
            "stg_blocks_used": stg_blocks or [], "model_passes": model_passes, "audio": audio,
            "controls": _control_provenance(req),
        }

    def write(self, frames: np.ndarray, req: GenerateRequest, meta: dict, out_path, audio=None,
              sample_rate=None) -> GenerateResult:
        from pipelines.video_io import mux_audio, output_mp4, write_video

        out = output_mp4(out_path)
        text = json.dumps(meta, sort_keys=True)
        if audio is None:
            write_video(out, frames, req.fps, comment=text)
        else:
            silent = out.with_name(f".{out.stem}.video{out.suffix}")
            try:
                write_video(silent, frames, req.fps, comment=text)
                mux_audio(silent, audio, sample_rate, out)
            finally:
                silent.unlink(missing_ok=True)
        sidecar = out.with_suffix(".json")
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(sidecar)
        return GenerateResult(path=out, sidecar=sidecar, metadata=meta, frames=frames, audio=audio,
                              sample_rate=sample_rate)
