"""Cheap latent previews: a linear latent -> RGB projection, fitted once per model from one small VAE encode of
a fixed colour chart (ridge regression), so it works for any latent layout (tiny 16 ch, real 128 ch)."""
from __future__ import annotations

import numpy as np


def colour_chart(size: int = 256) -> np.ndarray:
    """A deterministic chart: hue sweep across x, brightness down y, plus flat patches. float32 [H,W,3] in [0,1]."""
    import cv2

    h = np.linspace(0, 179, size, dtype=np.float32)[None, :].repeat(size, 0)
    s = np.full((size, size), 220, np.float32)
    v = np.linspace(255, 30, size, dtype=np.float32)[:, None].repeat(size, 1)
    hsv = np.stack([h, s, v], -1).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    rgb[: size // 4, : size // 4] = 0.5
    rgb[: size // 4, -size // 4:] = 1.0
    rgb[-size // 4:, : size // 4] = 0.0
    return rgb


def fit_projection(pipe, device, dtype, ridge: float = 1e-2) -> np.ndarray:
    """[C+1, 3] matrix mapping (normalised latent channels, 1) -> RGB in [0,1]."""
    import torch

    chart = colour_chart(256)
    x = torch.from_numpy(chart).permute(2, 0, 1)[None, :, None] * 2 - 1  # [1,3,1,H,W] in [-1,1]
    with torch.no_grad():
        lat = pipe.vae.encode(x.to(device, pipe.vae.dtype)).latent_dist.mode()
        lat = pipe._normalize_latents(lat, pipe.vae.latents_mean, pipe.vae.latents_std).float().cpu()
    c, gh, gw = lat.shape[1], lat.shape[3], lat.shape[4]
    feats = lat[0, :, 0].permute(1, 2, 0).reshape(-1, c).numpy()
    import cv2

    target = cv2.resize(chart, (gw, gh), interpolation=cv2.INTER_AREA).reshape(-1, 3)
    a = np.concatenate([feats, np.ones((feats.shape[0], 1), np.float32)], 1)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1], dtype=np.float32), a.T @ target)
    return w.astype(np.float32)


def latent_preview(tokens, proj: np.ndarray, frames: int, height: int, width: int, frame_index: int | None = None,
                   upscale: int | None = None) -> np.ndarray:
    """tokens: [1, T, C] packed target latents (normalised). Returns uint8 [h*upscale, w*upscale, 3] for one latent
    frame (the middle one by default), upscaled with nearest neighbour so latent cells stay visible."""
    import cv2

    t = tokens[0, : frames * height * width].float().cpu().numpy().reshape(frames, height, width, -1)
    f = frames // 2 if frame_index is None else frame_index
    x = t[f].reshape(-1, t.shape[-1])
    rgb = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], 1) @ proj
    img = (np.clip(rgb, 0, 1) * 255).astype(np.uint8).reshape(height, width, 3)
    if upscale is None:  # at least ~256 px wide so a tiny latent grid is visible, at most 8x (32x would be 1:1)
        upscale = int(min(32, max(8, -(-256 // width))))
    return cv2.resize(img, (width * upscale, height * upscale), interpolation=cv2.INTER_NEAREST)
