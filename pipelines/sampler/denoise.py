"""The denoising loop: diffusers' LTX-2 transformer as an x0 model, the guided denoiser and the Euler loop, with
the semantics of Lightricks' ltx-core / ltx-pipelines (X0Model, multi_modal_guider_denoising_func,
simple_denoising_func, euler_denoising_loop). Small functions over tensors and LatentStates, one callback per step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from pipelines.sampler.guidance import NO_GUIDANCE, GuidanceParams, guide
from pipelines.sampler.state import LatentState, euler_step, post_process, to_denoised


@dataclass
class PromptContext:
    """One encoded prompt, after the text connectors: what the transformer cross-attends to."""

    video: torch.Tensor
    audio: torch.Tensor
    mask: torch.Tensor | None = None


class X0Model:
    """diffusers' LTX2VideoTransformer3DModel called the way ltx-core's X0Model calls LTXModel: per-token timesteps
    (denoise_mask x sigma), positions from the state, the prompt's sigma for LTX-2.3's prompt modulation, and the
    prediction turned into x0 with each token's own timestep. Perturbations (STG blocks, modality isolation) are
    passed per call; our attention processors read them from the shared bias state."""

    def __init__(self, transformer, bias_state):
        self.transformer = transformer
        self.state = bias_state
        self.mult = float(transformer.config.get("timestep_scale_multiplier", 1000))
        self.calls = 0

    def __call__(self, video: LatentState, audio: LatentState, sigma: torch.Tensor, ctx: PromptContext, *,
                 skip_video_blocks=(), skip_audio_blocks=(), isolate: bool = False):
        v_ts = video.denoise_mask * sigma
        a_ts = audio.denoise_mask * sigma
        b = video.latent.shape[0]
        s = (sigma.to(torch.float32) * self.mult).reshape(1).expand(b)
        self.state.skip_video_blocks = frozenset(skip_video_blocks)
        self.state.skip_audio_blocks = frozenset(skip_audio_blocks)
        try:
            vel_v, vel_a = self.transformer(
                hidden_states=video.latent, audio_hidden_states=audio.latent,
                encoder_hidden_states=ctx.video, audio_encoder_hidden_states=ctx.audio,
                timestep=(v_ts * self.mult).squeeze(-1), audio_timestep=(a_ts * self.mult).squeeze(-1),
                sigma=s, audio_sigma=s, encoder_attention_mask=ctx.mask, audio_encoder_attention_mask=ctx.mask,
                video_coords=video.positions, audio_coords=audio.positions, isolate_modalities=isolate,
                use_cross_timestep=True, return_dict=False)
        finally:
            self.state.skip_video_blocks = frozenset()
            self.state.skip_audio_blocks = frozenset()
        self.calls += 1
        return to_denoised(video.latent, vel_v, v_ts), to_denoised(audio.latent, vel_a, a_ts)


def guided_denoiser(model: X0Model, positive: PromptContext, negative: PromptContext | None,
                    video_guidance: GuidanceParams = NO_GUIDANCE, audio_guidance: GuidanceParams = NO_GUIDANCE,
                    audio: bool = True):
    """denoise(video_state, audio_state, sigmas, i) -> (x0 video, x0 audio), guided per modality as ltx-pipelines'
    multi_modal_guider_denoising_func. With audio off (a dummy audio token, modalities isolated in every pass) the
    isolated pass equals the conditional one, so it is not run and modality guidance adds exactly 0."""
    vg, ag = video_guidance, (audio_guidance if audio else NO_GUIDANCE)
    last = {"v": None, "a": None}

    def denoise(video: LatentState, aud: LatentState, sigmas: torch.Tensor, i: int):
        if vg.skips(i) and ag.skips(i):
            return last["v"], last["a"]
        sigma = sigmas[i]
        iso = not audio
        cond_v, cond_a = model(video, aud, sigma, positive, isolate=iso)
        unc_v = unc_a = ptb_v = ptb_a = mod_v = mod_a = 0.0
        if vg.needs_uncond or ag.needs_uncond:
            if negative is None:
                raise ValueError("CFG needs the negative prompt's encoding")
            unc_v, unc_a = model(video, aud, sigma, negative, isolate=iso)
        if vg.needs_perturbed or ag.needs_perturbed:
            ptb_v, ptb_a = model(video, aud, sigma, positive, isolate=iso,
                                 skip_video_blocks=vg.stg_blocks if vg.needs_perturbed else (),
                                 skip_audio_blocks=ag.stg_blocks if ag.needs_perturbed else ())
        if vg.needs_isolated or ag.needs_isolated:
            mod_v, mod_a = model(video, aud, sigma, positive, isolate=True) if audio else (cond_v, cond_a)
        out_v = last["v"] if vg.skips(i) else guide(cond_v, unc_v, ptb_v, mod_v, vg)
        out_a = last["a"] if ag.skips(i) else guide(cond_a, unc_a, ptb_a, mod_a, ag)
        last["v"], last["a"] = out_v, out_a
        return out_v, out_a

    return denoise


def euler_loop(sigmas: torch.Tensor, video: LatentState, audio: LatentState, denoise: Callable,
               on_step: Callable[[int, LatentState], None] | None = None, audio_on: bool = True):
    """ltx-pipelines' euler_denoising_loop: predict, pin conditioned tokens to their clean values by their
    denoise mask, step every token. With audio off the dummy audio token is left as it is."""
    for i in range(len(sigmas) - 1):
        x0_v, x0_a = denoise(video, audio, sigmas, i)
        x0_v = post_process(x0_v, video.denoise_mask, video.clean)
        video = replace(video, latent=euler_step(video.latent, x0_v, sigmas, i))
        if audio_on:
            x0_a = post_process(x0_a, audio.denoise_mask, audio.clean)
            audio = replace(audio, latent=euler_step(audio.latent, x0_a, sigmas, i))
        if on_step is not None:
            on_step(i, video)
    return video, audio
