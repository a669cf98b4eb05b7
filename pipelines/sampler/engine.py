"""The IC-LoRA engine: one call from a GenerateRequest to an mp4 + JSON sidecar, through diffusers'
LTX2InContextPipeline. What diffusers does right (VAE encode of references, RoPE positions scaled by D, clean
re-pinned reference tokens, cutting them off before decode, LoRA loading) we use as is. What it gets wrong
(the linear attention-mask bias and its dense tokens x tokens mask, SPEC.md 2) we replace: the pipeline never gets
a mask; our attn1 processors (pipelines.sampler.attention) apply the log bias.

Reads top to bottom: check -> LoRAs -> references (+mask weights) -> first frame -> schedule -> denoise (with
progress / previews / cancel) -> optional stage 2 -> write.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import Cancelled, UserError
from pipelines.models.lora import LoraFile, check_compatible, read_lora, validate_lora
from pipelines.requests import DISTILLED_SIGMAS, STAGE2_SIGMAS, GenerateRequest, Schedule
from pipelines.video_io import IMAGE_EXTS, read_image

log = logging.getLogger(__name__)



@dataclass
class StepEvent:
    stage: int
    step: int  # 1-based
    total: int
    preview: np.ndarray | None  # uint8 RGB latent preview, or None


@dataclass
class GenerateResult:
    path: Path
    sidecar: Path
    metadata: dict
    frames: np.ndarray | None = field(default=None, repr=False)


@dataclass
class PreparedReferences:
    conditions: list  # diffusers LTX2ReferenceCondition
    weights: "object | None"  # torch [R] per-token weights, None = unbiased
    reports: list[str]
    token_counts: list[int]


def _fit_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    from pipelines.video_io import resize_cover_crop

    out, _ = resize_cover_crop(img[None], width, height)
    return out[0]


def _isolate_video_from_audio(transformer) -> None:
    """Video-only runs carry one dummy audio token; without isolate_modalities=True the pipeline's main pass lets
    information flow reference -> audio token (v2a) -> target (a2v), so strength 0 / a hard mask would not remove
    the reference (SPEC.md 5). Force isolation on every forward. Idempotent."""
    if getattr(transformer, "_iclora_isolated", False):
        return

    def pre_hook(module, args, kwargs):
        kwargs["isolate_modalities"] = True
        return args, kwargs

    transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    transformer._iclora_isolated = True


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
        _isolate_video_from_audio(loaded.pipe.transformer)
        if loaded.bias_state is None:  # the sampler installs its attention processor; the loader knows nothing of it
            from pipelines.sampler.attention import install_reference_bias

            loaded.bias_state = install_reference_bias(loaded.pipe.transformer)

    # ---- LoRAs ----
    def _module_names(self) -> set[str]:
        import torch

        return {n for n, mod in self.m.pipe.transformer.named_modules() if isinstance(mod, torch.nn.Linear)}

    def prepare_loras(self, req: GenerateRequest) -> tuple[list[LoraFile], int, int]:
        files = [read_lora(lo.path, self._module_names()) for lo in req.loras]
        for lf in files:
            validate_lora(lf, self.m.pipe.transformer)
        d, dt = check_compatible(files)
        if dt != 1:
            raise UserError(f"reference_temporal_scale_factor={dt} is not supported yet (only 1); "
                            "use an IC-LoRA without temporal downscaling")
        return files, d, dt

    def _apply_loras(self, files: list[LoraFile], weights: list[float], ic_weight_scale: float = 1.0) -> None:
        pipe = self.m.pipe
        names = []
        for lf in files:
            key = (lf.path, Path(lf.path).stat().st_mtime)
            if key not in self._adapters:
                # unique per model, not per Engine: other engines (a trainer's validation sampler) share it
                name = f"lora{len(self._adapters)}_{uuid.uuid4().hex[:8]}"
                pipe.load_lora_weights(dict(lf.tensors), adapter_name=name)
                self._adapters[key] = name
            names.append(self._adapters[key])
        if not names:
            if self._adapters:
                pipe.disable_lora()
            return
        pipe.enable_lora()
        ws = [w * (ic_weight_scale if lf.is_ic_lora else 1.0) for lf, w in zip(files, weights)]
        pipe.set_adapters(names, ws)

    # ---- references ----
    def prepare_references(self, req: GenerateRequest, d: int, width: int, height: int) -> PreparedReferences:
        import torch
        from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition

        from pipelines import masks

        if not req.controls:
            return PreparedReferences([], None, [], [])
        if width % (32 * d) or height % (32 * d):
            raise UserError(f"{width}x{height} must be a multiple of {32 * d} for this IC-LoRA (reference "
                            f"downscale factor D={d} -> reference at {width // d}x{height // d})")
        rw, rh = width // d, height // d
        conds, reports, counts, weights = [], [], [], []
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
            lf = (len(frames) - 1) // 8 + 1
            if lf > lf_target:
                raise UserError(f"control {i + 1} has more frames than the output")
            conds.append(LTX2ReferenceCondition(frames=frames.astype(np.float32) / 255.0, strength=float(c.strength)))
            lh, lw = rh // 32, rw // 32
            counts.append(lf * lh * lw)
            if mask is not None:
                m = mask if mask.ndim == 2 else mask[: len(frames)]
                if m.ndim == 3 and (len(m) - 1) % 8:
                    m = m[: (len(m) - 1) // 8 * 8 + 1]
                lw_ = masks.latent_weights(m, latent_frames=lf if m.ndim == 2 or len(m) == 1 else None,
                                           latent_height=lh, latent_width=lw)
                if lw_.shape[0] == 1 and lf > 1:
                    lw_ = np.repeat(lw_, lf, axis=0)
                weights.append(lw_.reshape(-1) * req.attention_strength)
            else:
                weights.append(np.full(lf * lh * lw, req.attention_strength, np.float32))
        w = torch.from_numpy(np.concatenate(weights).astype(np.float32))
        return PreparedReferences(conds, None if bool((w >= 1).all()) else w, reports, counts)

    PROMPT_CACHE = 4  # entries of prompt embeddings (CPU copies on a GPU host)

    def encode_prompt(self, prompt: str, negative: str, cfg: bool) -> dict:
        """pipe(...) keyword arguments with the prompt already encoded. Embeddings are cached by text, so a new
        seed or strength on the same prompt never runs the text encoder again. On the resident tiers the text
        encoder lives in CPU memory (pipelines.models.loader.park_text_encoder): it is brought to the GPU for
        the encoding only and freed right after, so it never sits beside the transformer's activations."""
        import torch

        m, pipe = self.m, self.m.pipe
        key = (prompt, negative if cfg else "", cfg, m.max_sequence_length)
        hit = self._prompts.get(key)
        if hit is None:
            te = pipe.text_encoder
            visit = m.device != "cpu" and te is not None and next(te.parameters()).device.type == "cpu" \
                and not hasattr(te, "_hf_hook")  # offload tiers move it themselves
            if visit:
                te.to(m.device)
            try:
                with torch.no_grad():
                    pe, pm, ne, nm = pipe.encode_prompt(prompt=prompt, negative_prompt=negative,
                                                        do_classifier_free_guidance=cfg,
                                                        max_sequence_length=m.max_sequence_length, device=m.device)
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

    CONTROL_CACHE = 2  # entries (a 121x768x512 control is 140 MB of uint8)

    def _control_frames(self, path: str, req: GenerateRequest, rw: int, rh: int) -> tuple[np.ndarray, str | None]:
        """A control video's frames at the reference size (conformed when the request allows), uint8
        [F,rh,rw,3], and the conform report in words; cached by (file identity, target)."""
        from pipelines.video_io import ConformTarget, conform, read_video

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
        frames, fps = read_video(path)
        note = None
        if req.conform_controls:
            frames, rep = conform(frames, fps, ConformTarget(width=rw, height=rh, frames=req.frames, fps=req.fps, pad=True))
            note = "; ".join(rep.changes) or None
        elif frames.shape[1:3] != (rh, rw) or len(frames) != req.frames:
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

    # ---- the run ----
    def generate(self, req: GenerateRequest, out_path: str | Path | None = None,
                 on_step: Callable[[StepEvent], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None,
                 previews: bool = True, write: bool = True) -> GenerateResult:
        import torch
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        req = req.validate()
        t0 = time.perf_counter()
        m, pipe = self.m, self.m.pipe
        files, d, _ = self.prepare_loras(req)
        if req.stages == 2:
            if m.upsampler is None:
                raise UserError("two-stage runs need the latent upsampler "
                                "(ltx-2.3-spatial-upscaler-x2-1.0.safetensors in the models folder)")
            if req.controls and (req.width % (64 * d) or req.height % (64 * d)):
                raise UserError(f"two-stage runs with D={d} need width and height multiples of {64 * d}")
        w1, h1 = (req.width // 2, req.height // 2) if req.stages == 2 else (req.width, req.height)
        refs = self.prepare_references(req, d, w1, h1)
        image_cond = None
        if req.image:
            img = _fit_image(read_image(req.image), w1, h1)
            from PIL import Image

            image_cond = LTX2VideoCondition(frames=Image.fromarray(img), index=0, strength=float(req.image_strength))
        self._apply_loras(files, [lo.weight for lo in req.loras])

        gen = torch.Generator(device="cpu").manual_seed(req.seed)
        lf = (req.frames - 1) // 8 + 1
        n_target = lf * (h1 // 32) * (w1 // 32)
        m.bias_state.set(n_target, refs.weights)
        if refs.weights is not None and m.device != "cpu":
            m.bias_state.log_w = m.bias_state.log_w.to(m.device)
        if previews and self._proj is None:
            from pipelines.sampler.preview import fit_projection

            self._proj = fit_projection(pipe, m.device, m.dtype)

        total_steps = (8 if req.schedule == Schedule.DISTILLED else req.steps) + (3 if req.stages == 2 else 0)
        counter = {"step": 0}

        def callback(p, i, t, kw, stage=1, grid=(lf, h1 // 32, w1 // 32)):
            counter["step"] += 1
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled by the user")
            if on_step is not None:
                prev = None
                if previews:
                    from pipelines.sampler.preview import latent_preview

                    prev = latent_preview(kw["latents"], self._proj, *grid)
                on_step(StepEvent(stage=stage, step=counter["step"], total=total_steps, preview=prev))
            return {}

        cfg = req.schedule != Schedule.DISTILLED and float(req.guidance_scale) > 1.0
        common = dict(**self.encode_prompt(req.prompt, req.negative_prompt or "", cfg), num_frames=req.frames,
                      frame_rate=float(req.fps), max_sequence_length=m.max_sequence_length, generator=gen,
                      stg_scale=0.0, modality_scale=1.0, audio_guidance_scale=1.0, audio_stg_scale=0.0,
                      audio_modality_scale=1.0, return_dict=False)
        if req.schedule == Schedule.DISTILLED:
            pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
                pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None)
            sched = dict(sigmas=DISTILLED_SIGMAS[:-1], num_inference_steps=8, guidance_scale=1.0)
        else:
            sched = dict(num_inference_steps=req.steps, guidance_scale=float(req.guidance_scale))
        audio = self._dummy_audio(pipe, m.device)
        try:
            out_type = "latent" if req.stages == 2 else "np"
            video, _ = pipe(reference_conditions=refs.conditions or None,
                            conditions=[image_cond] if image_cond is not None else None,
                            reference_downscale_factor=d, height=h1, width=w1, audio_latents=audio,
                            callback_on_step_end=callback, output_type=out_type, **sched, **common)
            if req.stages == 2:
                video = self._stage2(req, video, refs, files, d, audio, callback, common, n_target)
        finally:
            m.bias_state.clear()
        frames = (np.clip(video[0], 0, 1) * 255).round().astype(np.uint8)
        elapsed = time.perf_counter() - t0
        meta = self.metadata(req, d, refs.reports, elapsed)
        if not write:
            return GenerateResult(path=Path(""), sidecar=Path(""), metadata=meta, frames=frames)
        return self.write(frames, req, meta, out_path)

    def _stage2(self, req, latents, refs, files, d, audio, callback, common, n_target1):
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.ltx2.pipeline_ltx2_latent_upsample import LTX2LatentUpsamplePipeline

        m, pipe = self.m, self.m.pipe
        up = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=m.upsampler)
        up.set_progress_bar_config(disable=True)
        latents = up(latents=latents, height=req.height // 2, width=req.width // 2, num_frames=req.frames,
                     output_type="latent", return_dict=False)[0]
        keep = req.stage2_keep_ic and bool(refs.conditions)
        refs2 = self.prepare_references(req, d, req.width, req.height) if keep else None
        self._apply_loras(files, [lo.weight for lo in req.loras], ic_weight_scale=1.0 if keep else 0.0)
        lf = (req.frames - 1) // 8 + 1
        n_target = lf * (req.height // 32) * (req.width // 32)
        m.bias_state.set(n_target, refs2.weights if refs2 else None)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None)

        def cb2(p, i, t, kw):
            return callback(p, i, t, kw, stage=2, grid=(lf, req.height // 32, req.width // 32))

        video, _ = pipe(reference_conditions=refs2.conditions if refs2 else None, reference_downscale_factor=d,
                        height=req.height, width=req.width, latents=latents, audio_latents=audio,
                        sigmas=STAGE2_SIGMAS[:-1], num_inference_steps=3, noise_scale=STAGE2_SIGMAS[0],
                        guidance_scale=1.0, callback_on_step_end=cb2, output_type="np", **common)
        return video

    @staticmethod
    def _dummy_audio(pipe, device):
        """One audio latent frame: the joint transformer needs an audio stream; a single token keeps it ~free."""
        import torch

        c = pipe.audio_vae.config.latent_channels
        mel = pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio
        return torch.zeros(1, c, 1, mel, device=device)

    def metadata(self, req: GenerateRequest, d: int, reports: list[str], elapsed: float) -> dict:
        from pipelines.models.tiny import TINY_MODEL_NOTICE

        return {
            "app": "iclora-studio", "request": req.to_dict(), "model": self.m.spec.name,
            "tiny_model": self.m.is_tiny, "notice": TINY_MODEL_NOTICE if self.m.is_tiny else "",
            "reference_downscale_factor": d, "conform": reports, "device": self.m.device,
            "tier": self.m.tier.value, "seconds": round(elapsed, 3),
        }

    def write(self, frames: np.ndarray, req: GenerateRequest, meta: dict, out_path) -> GenerateResult:
        from pipelines.video_io import write_video

        if out_path is None:
            raise UserError("no output path given")
        out = Path(out_path)
        if out.suffix.lower() != ".mp4":
            raise UserError(f"output must be an .mp4 file (got {out.name})")
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(meta, sort_keys=True)
        write_video(out, frames, req.fps, comment=text)
        sidecar = out.with_suffix(".json")
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(sidecar)
        return GenerateResult(path=out, sidecar=sidecar, metadata=meta, frames=frames)
