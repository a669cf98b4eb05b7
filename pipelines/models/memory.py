"""Memory tiers and a predicted peak VRAM for a request, shown before a run (no torch needed to predict).

The prediction is a transparent sum, not a measurement: weights resident on the GPU for the tier + the largest
activation set (transformer at the requested token count, or VAE decode), + a fixed CUDA/workspace margin.
Sizes of real LTX-2.3 (SPEC.md 1): transformer ~19B params + text connectors ~3B, Gemma 3 12B text encoder,
video VAE ~0.5B. The text encoder runs first and is moved off the GPU after encoding.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.requests import MemoryTier

GB = 1024**3
REAL = dict(transformer=19.0e9, connectors=3.0e9, text_encoder=12.0e9, vae=0.5e9, hidden=4096, layers=48, latent=128)
MARGIN_GB = 1.5


@dataclass
class VramEstimate:
    tier: MemoryTier
    weights_gb: float
    activations_gb: float
    text_encoder_gb: float
    peak_gb: float

    def text(self) -> str:
        return (f"{self.tier.value}: predicted peak {self.peak_gb:.1f} GB (weights {self.weights_gb:.1f} GB, "
                f"activations {self.activations_gb:.1f} GB, text encoder phase {self.text_encoder_gb:.1f} GB)")


def token_count(width: int, height: int, frames: int, refs: int = 0, downscale: int = 1) -> int:
    lf = (frames - 1) // 8 + 1
    target = lf * (height // 32) * (width // 32)
    ref = refs * lf * (height // (32 * downscale)) * (width // (32 * downscale))
    return target + ref


def estimate(tier: MemoryTier, width: int, height: int, frames: int, refs: int = 0, downscale: int = 1,
             cfg: bool = False, sizes: dict | None = None) -> VramEstimate:
    s = {**REAL, **(sizes or {})}
    tokens = token_count(width, height, frames, refs, downscale) * (2 if cfg else 1)
    bf16 = 2
    tr = (s["transformer"] + s["connectors"]) * bf16
    if tier == MemoryTier.FP8:
        tr = s["transformer"] * 1 + s["connectors"] * bf16
    vae = s["vae"] * bf16
    te = s["text_encoder"] * bf16
    if tier in (MemoryTier.BF16, MemoryTier.FP8, MemoryTier.AUTO):
        weights = tr + vae
    elif tier == MemoryTier.OFFLOAD:  # one whole model on the GPU at a time
        weights = max(tr, vae)
    else:  # group offload: ~2 transformer blocks + streams' prefetch
        weights = tr / s["layers"] * 2 + vae
    # transformer activations at inference: ~ tokens x hidden x (q,k,v,out + 4x FFN) in bf16, one layer live
    act_tr = tokens * s["hidden"] * 12 * bf16
    # VAE decode with tiling on GPU: bounded by a tile (~ 8 frames x 512 x 512 x 512 ch) -> ~2-3 GB
    px = frames * width * height
    act_vae = min(px * 128 * bf16 / 8, 3.0 * GB)
    act = max(act_tr, act_vae)
    # The text encoder's visit (prompt activations are negligible). Resident tiers park it in CPU memory and
    # bring it in only to encode, beside the resident transformer + VAE but never beside their activations;
    # model offload holds one model at a time; group offload streams it block by block like the rest.
    if tier in (MemoryTier.BF16, MemoryTier.FP8, MemoryTier.AUTO):
        te_phase = weights + te
    elif tier == MemoryTier.OFFLOAD:
        te_phase = te
    else:
        te_phase = te / 12
    peak = max(weights + act, te_phase) + MARGIN_GB * GB
    return VramEstimate(tier=tier, weights_gb=weights / GB, activations_gb=act / GB, text_encoder_gb=te_phase / GB,
                        peak_gb=peak / GB)


def free_vram_gb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return free / GB


def choose_tier(spec, device: str, width: int = 768, height: int = 512, frames: int = 121) -> MemoryTier:
    """Largest-footprint (fastest) tier that fits in free VRAM with a margin; CPU -> BF16 placeholder."""
    if device == "cpu" or getattr(spec, "is_tiny", False):
        return MemoryTier.BF16
    free = free_vram_gb() or 0.0
    for tier in (MemoryTier.BF16, MemoryTier.FP8, MemoryTier.OFFLOAD, MemoryTier.GROUP_OFFLOAD):
        if estimate(tier, width, height, frames, refs=1).peak_gb < free * 0.95:
            return tier
    return MemoryTier.GROUP_OFFLOAD


# ---- one denoising step of the transformer, on any device (the tiled passes' per-tile term) ----
# Live activation elements per target token and per hidden unit during one model pass of diffusers' LTX-2.3
# transformer (per-token adaLN modulation of the 2.3 blocks, q/k/v and the attention output, the 4x feed-forward,
# RoPE tables, the gates), with attention run by SDPA without a tokens x tokens matrix (memory linear in tokens).
# Counted from the tiny model on CPU (float32, hidden 32): 33.5-34.5 over 768-36864 tokens, flat; bench/tiles.py
# measures it again beside its prediction. estimate() above keeps its own GPU-side figure (bench/gpu_suite.py
# checks that one against a real device).
STEP_ELEMS_PER_TOKEN_HIDDEN = 34.0


def model_dims(loaded) -> dict:
    """{"hidden", "latent", "dtype_bytes"} of a loaded model's transformer (what the step estimate needs)."""
    tr = loaded.pipe.transformer
    cfg = tr.config
    hidden = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    p = next(tr.parameters())
    return {"hidden": hidden, "latent": int(cfg.in_channels), "dtype_bytes": int(p.element_size())}


def denoise_step_bytes(tokens: int, hidden: int, dtype_bytes: int = 2,
                       factor: float = STEP_ELEMS_PER_TOKEN_HIDDEN) -> int:
    """Peak activation bytes of one transformer pass over `tokens` tokens (target + references)."""
    return int(round(tokens * hidden * factor * dtype_bytes))

