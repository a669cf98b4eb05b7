"""Latent states and conditioning, with the semantics of Lightricks' ltx-core (conditioning/types/*, tools.py,
noisers.py); our own code, checked against theirs in tests/oracle/.

A state holds patchified tokens (patch size 1): the target's tokens first, then any appended groups (keyframe
images, then reference videos), each token with

- `latent`   the current (noisy) value, `clean` the value it is pinned to,
- `denoise_mask` 1 - strength: how much the model's prediction replaces `clean` (1 = a free target token, 0 = a
  fully pinned condition); the token's timestep is denoise_mask * sigma,
- `positions` its RoPE coordinates: [start, end) per axis, time in seconds, height / width in pixels.

Conditioning by strength is the official one: the model sees the token at timestep (1 - strength) * sigma, its
prediction is blended with the clean value by the same weights every step (`post_process`), and the Euler step
moves every token (ltx-core's `euler_denoising_loop`).

Attention between appended groups follows ltx-core's `build_attention_mask` (pipelines.sampler.attention): with no
group masked, everything attends to everything; once a group carries an attention mask (strength < 1 or a mask),
that group and every later one see only the target tokens (with their weights) and themselves, and the groups
appended before the first masked one keep seeing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

VIDEO_SCALE = (8, 32, 32)  # time, height, width: pixel frames / pixels per latent cell


@dataclass
class AppendedGroup:
    kind: str  # "keyframe" | "reference"
    count: int
    weights: torch.Tensor | None = None  # [count] attention weight with the target tokens (None: no mask given)
    masked: bool = False  # wrapped with an attention mask (ltx-core ConditioningItemAttentionStrengthWrapper)


@dataclass
class LatentState:
    latent: torch.Tensor  # [B, T, C]
    denoise_mask: torch.Tensor  # [B, T, 1] float32
    clean: torch.Tensor  # [B, T, C]
    positions: torch.Tensor  # [B, axes, T, 2]
    num_target: int
    groups: list[AppendedGroup] = field(default_factory=list)

    def attention(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weights [R], group ids [R]) of the appended tokens for the attention bias, or (None, None) when
        ltx-core would build no mask at all."""
        first = next((i for i, g in enumerate(self.groups) if g.masked), None)
        if first is None:
            return None, None
        weights, ids = [], []
        for i, g in enumerate(self.groups):
            w = g.weights if (g.masked and g.weights is not None) else torch.ones(g.count)
            weights.append(w.detach().float().cpu().reshape(-1))
            ids.append(torch.full((g.count,), 0 if i < first else 1 + i - first, dtype=torch.int64))
        return torch.cat(weights), torch.cat(ids)


# ------------------------------------------------------------------------------------------------ tokens

def patchify(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, F*H*W, C] (patch size 1, token order f, h, w)."""
    return latent.flatten(2).transpose(1, 2)


def unpatchify(tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, frames, height, width)


def patchify_audio(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, T, M] -> [B, T, C*M]."""
    return latent.transpose(1, 2).flatten(2)


def unpatchify_audio(tokens: torch.Tensor, channels: int, mel_bins: int) -> torch.Tensor:
    b, t, _ = tokens.shape
    return tokens.reshape(b, t, channels, mel_bins).transpose(1, 2)


def pixel_bounds(frames: int, height: int, width: int, batch: int = 1, causal_fix: bool = True,
                 device=None) -> torch.Tensor:
    """[B, 3, F*H*W, 2] integer [start, end) pixel coordinates of each latent cell; with the causal fix the first
    latent frame covers pixel frame 0 alone (the VAE encodes it by itself)."""
    f, h, w = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                             torch.arange(width, device=device), indexing="ij")
    start = torch.stack([f, h, w]).flatten(1)  # [3, N]
    bounds = torch.stack([start, start + 1], dim=-1)  # [3, N, 2]
    scale = torch.tensor(VIDEO_SCALE, device=device).view(3, 1, 1)
    pix = (bounds * scale).unsqueeze(0).repeat(batch, 1, 1, 1)
    if causal_fix:
        pix[:, 0] = (pix[:, 0] + 1 - VIDEO_SCALE[0]).clamp(min=0)
    return pix


# ------------------------------------------------------------------------------------------------ states

def video_state(shape: tuple[int, int, int, int, int], fps: float, dtype: torch.dtype, device,
                initial: torch.Tensor | None = None) -> LatentState:
    """The target's state (ltx-core VideoLatentTools.create_initial_state): zeros or `initial` [B, C, F, H, W]
    (normalised latents), all tokens free. Positions are rounded to the state's dtype, as there."""
    b, c, f, h, w = shape
    if initial is not None and tuple(initial.shape) != tuple(shape):
        raise ValueError(f"initial latent {tuple(initial.shape)} != {tuple(shape)}")
    lat = initial.to(device=device, dtype=dtype) if initial is not None else torch.zeros(shape, device=device,
                                                                                          dtype=dtype)
    pos = pixel_bounds(f, h, w, b, causal_fix=True, device=device).float()
    pos[:, 0] = pos[:, 0] / fps
    tokens = patchify(lat)
    return LatentState(latent=tokens, denoise_mask=torch.ones(b, f * h * w, 1, device=device, dtype=torch.float32),
                       clean=tokens.clone(), positions=pos.to(dtype), num_target=f * h * w)


def audio_frames(num_frames: int, fps: float, sample_rate: int = 16000, hop_length: int = 160,
                 downsample: int = 4) -> int:
    """Audio latent frames for a video of num_frames at fps (ltx-core AudioLatentShape.from_duration)."""
    per_second = float(sample_rate) / float(hop_length) / float(downsample)
    return round(float(num_frames) / float(fps) * per_second)


def audio_positions(frames: int, batch: int = 1, sample_rate: int = 16000, hop_length: int = 160,
                    downsample: int = 4, device=None) -> torch.Tensor:
    """[B, 1, T, 2] seconds covered by each audio latent frame, causal (ltx-core AudioPatchifier)."""

    def seconds(start):
        mel = torch.arange(start, start + frames, dtype=torch.float32, device=device) * downsample
        mel = (mel + 1 - downsample).clip(min=0)
        return mel * hop_length / sample_rate

    pos = torch.stack([seconds(0), seconds(1)], dim=-1)  # [T, 2]
    return pos.unsqueeze(0).expand(batch, -1, -1).unsqueeze(1)


def audio_state(frames: int, channels: int, mel_bins: int, dtype: torch.dtype, device, batch: int = 1,
                initial: torch.Tensor | None = None, sample_rate: int = 16000, hop_length: int = 160,
                downsample: int = 4) -> LatentState:
    shape = (batch, channels, frames, mel_bins)
    lat = initial.to(device=device, dtype=dtype) if initial is not None else torch.zeros(shape, device=device,
                                                                                          dtype=dtype)
    tokens = patchify_audio(lat)
    return LatentState(latent=tokens, denoise_mask=torch.ones(batch, frames, 1, device=device, dtype=torch.float32),
                       clean=tokens.clone(), num_target=frames,
                       positions=audio_positions(frames, batch, sample_rate, hop_length, downsample, device))


# ------------------------------------------------------------------------------------------------ conditions

def replace_latent_frames(state: LatentState, latent: torch.Tensor, strength: float, latent_index: int = 0,
                          grid: tuple[int, int] | None = None) -> LatentState:
    """An image (or clip) encoded to `latent` [B, C, f, H, W] takes the place of latent frames latent_index.. of the
    target (ltx-core VideoConditionByLatentIndex): first-frame conditioning."""
    _, _, _, h, w = latent.shape
    if grid is not None and (h, w) != tuple(grid):
        raise ValueError(f"image latent grid {h}x{w} != target grid {grid[0]}x{grid[1]}")
    tokens = patchify(latent).to(state.latent.dtype)
    start = latent_index * h * w
    stop = start + tokens.shape[1]
    s = replace(state, latent=state.latent.clone(), clean=state.clean.clone(),
                denoise_mask=state.denoise_mask.clone())
    s.latent[:, start:stop] = tokens
    s.clean[:, start:stop] = tokens
    s.denoise_mask[:, start:stop] = 1.0 - strength
    return s


def _append(state: LatentState, tokens: torch.Tensor, positions: torch.Tensor, strength: float,
            group: AppendedGroup) -> LatentState:
    tokens = tokens.to(state.latent.dtype)
    mask = torch.full((*tokens.shape[:2], 1), 1.0 - strength, device=tokens.device, dtype=tokens.dtype)
    return LatentState(latent=torch.cat([state.latent, tokens], dim=1),
                       denoise_mask=torch.cat([state.denoise_mask, mask], dim=1),
                       positions=torch.cat([state.positions, positions], dim=2),
                       clean=torch.cat([state.clean, tokens], dim=1), num_target=state.num_target,
                       groups=[*state.groups, group])


def append_keyframe(state: LatentState, latent: torch.Tensor, frame: int, strength: float, fps: float) -> LatentState:
    """An image (or clip) shown from pixel frame `frame` on, as appended tokens (ltx-core
    VideoConditionByKeyframeIndex): positions start at that frame, no causal fix unless frame == 0."""
    b, _, f, h, w = latent.shape
    pos = pixel_bounds(f, h, w, b, causal_fix=frame == 0, device=latent.device)
    pos[:, 0] += frame
    pos = pos.to(torch.float32)
    pos[:, 0] /= fps
    return _append(state, patchify(latent), pos, strength, AppendedGroup("keyframe", f * h * w))


def append_reference(state: LatentState, latent: torch.Tensor, fps: float, downscale: int = 1,
                     temporal_scale: int = 1, strength: float = 1.0,
                     attention: float | torch.Tensor | None = None) -> LatentState:
    """A reference (control) video's latent [B, C, F, h, w] appended for IC-LoRA (ltx-core
    VideoConditionByReferenceLatent, wrapped in ConditioningItemAttentionStrengthWrapper when `attention` is given:
    a scalar or per-token weights [F*h*w] in [0, 1]).

    Positions: the reference's own grid in pixels with the causal fix, height / width times `downscale` so it spans
    the target frame. A reference at 1/S of the target's frame rate (`temporal_scale` S) is placed on its own time
    spacing (fps / S) and moved so its last patch ends with the target's; the first (causal) patch's negative start
    is clamped to 0. ltx-core 1.0.0 has no temporal scale; this follows Lightricks' later ltx-core
    (conditioning/types/reference_video_cond.py), and is the identity for S = 1."""
    b, _, f, h, w = latent.shape
    pos = pixel_bounds(f, h, w, b, causal_fix=True, device=latent.device).to(torch.float32)
    pos[:, 0] /= fps / temporal_scale
    if temporal_scale != 1:
        t_target = state.positions[:, 0, 0:1, 1:2].to(torch.float32)  # end of the target's first patch: 1 / fps
        pos[:, 0] = torch.clamp(pos[:, 0] - (temporal_scale - 1) * t_target, min=0)
    if downscale != 1:
        pos[:, 1] *= downscale
        pos[:, 2] *= downscale
    n = f * h * w
    weights = None
    if attention is not None:
        weights = (torch.full((n,), float(attention)) if isinstance(attention, (int, float))
                   else torch.as_tensor(attention, dtype=torch.float32).reshape(-1))
        if weights.numel() != n:
            raise ValueError(f"{weights.numel()} attention weights for {n} reference tokens")
    return _append(state, patchify(latent), pos, strength,
                   AppendedGroup("reference", n, weights=weights, masked=attention is not None))


def add_noise(state: LatentState, generator: torch.Generator, noise_scale: float | torch.Tensor = 1.0) -> LatentState:
    """ltx-core GaussianNoiser: noise on every token in proportion to its denoise mask (one randn over the whole
    state, in the state's dtype)."""
    noise = torch.randn(*state.latent.shape, device=state.latent.device, dtype=state.latent.dtype,
                        generator=generator)
    scaled = state.denoise_mask * noise_scale
    lat = noise * scaled + state.latent * (1 - scaled)
    return replace(state, latent=lat.to(state.latent.dtype))


def target_only(state: LatentState) -> LatentState:
    """The target's tokens, conditioning dropped (ltx-core clear_conditioning)."""
    n = state.num_target
    return LatentState(latent=state.latent[:, :n], denoise_mask=torch.ones_like(state.denoise_mask)[:, :n],
                       clean=state.clean[:, :n], positions=state.positions[:, :, :n], num_target=n)


# ------------------------------------------------------------------------------------------------ the step

def post_process(denoised: torch.Tensor, denoise_mask: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Blend the prediction with the clean values by the denoise mask (ltx-pipelines post_process_latent)."""
    return (denoised * denoise_mask + clean.float() * (1 - denoise_mask)).to(denoised.dtype)


def to_denoised(sample: torch.Tensor, velocity: torch.Tensor, sigma) -> torch.Tensor:
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(torch.float32)
    return (sample.to(torch.float32) - velocity.to(torch.float32) * sigma).to(sample.dtype)


def euler_step(sample: torch.Tensor, denoised: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """One Euler step from sigmas[i] to sigmas[i + 1] (ltx-core EulerDiffusionStep)."""
    sigma = sigmas[i].to(torch.float32).item()
    if sigma == 0:
        raise ValueError("sigma can't be 0")
    dt = sigmas[i + 1] - sigmas[i]
    velocity = ((sample.to(torch.float32) - denoised.to(torch.float32)) / sigma).to(sample.dtype)
    return (sample.to(torch.float32) + velocity.to(torch.float32) * dt).to(sample.dtype)
