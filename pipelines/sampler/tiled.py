"""Tiled execution of a tile plan (pipelines.sampler.tiles): a denoiser over the whole latent state that runs the
model on one tile at a time and blends the tiles' predictions (MultiDiffusion-style), so the Euler loop
(pipelines.sampler.denoise.euler_loop) is unchanged and moves the whole latent once per step.

Why blend the predictions at every step rather than denoise each tile to the end and blend the results: the
tiles then agree on every overlapping token at every step (one latent, one noise drawn for the whole video), so
no tile drifts towards its own solution and no seam builds up; and a plan with one tile is the untiled pass, bit
for bit. The cost is that every step runs every tile (the plan's work_ratio: 1.1-1.5x for usual overlaps).

A tile's sub-state keeps the GLOBAL positions of its tokens (RoPE sees where the tile sits in the video and the
reference), its target tokens in the plan's window and, for IC-LoRA passes, the reference tokens of the same
window on the reference grid (spatial cells / D). Attention weights of masked references are sliced with them.
Reference tokens' predictions (they matter when the reference strength is below 1) are averaged over the tiles
that hold them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pipelines.sampler.tiles import TilePlan, window_indices


def sub_state(state, plan: TilePlan, i: int):
    """(tile i's LatentState, its token indices in `state`, the number of its target tokens). Supports a target
    plus appended reference groups laid out on the plan's reference grid (one group after another)."""
    import torch

    from pipelines.sampler.state import LatentState

    tgt = plan.token_indices(i).to(state.latent.device)
    parts, groups = [tgt], []
    offset = state.num_target
    ref_grid = plan.reference_grid()
    ref_win = plan.reference_window(i)
    per_ref = ref_grid[0] * ref_grid[1] * ref_grid[2]
    for g in state.groups:
        if g.kind != "reference" or g.count != per_ref:
            raise ValueError(f"a tiled pass takes reference groups on the plan's reference grid {ref_grid}; got a "
                             f"{g.kind} group of {g.count} tokens")
        local = window_indices(ref_win, ref_grid)
        parts.append(local.to(state.latent.device) + offset)
        groups.append(replace(g, count=int(local.numel()),
                              weights=None if g.weights is None else g.weights.reshape(-1)[local]))
        offset += g.count
    idx = torch.cat(parts)
    sub = LatentState(latent=state.latent[:, idx], denoise_mask=state.denoise_mask[:, idx], clean=state.clean[:, idx],
                      positions=state.positions[:, :, idx], num_target=int(tgt.numel()), groups=groups)
    return sub, idx, int(tgt.numel())


def tiled_denoiser(make_denoise: Callable, plan: TilePlan, before_tile: Callable | None = None,
                   on_tile: Callable[[int, int], None] | None = None):
    """denoise(video, audio, sigmas, i) -> (x0 video, x0 audio) over the whole state, running
    ``make_denoise(tile_index)`` (one denoiser per tile, so a guided denoiser's per-step memory stays per tile) on
    each tile's sub-state. ``before_tile(sub_state)`` runs before each tile (the engine sets the attention bias
    for the tile's token layout there); ``on_tile(step, tile)`` after each (progress, cancel)."""
    import torch

    denoisers = {}

    def denoise(video, audio, sigmas, step):
        n = video.latent.shape[1]
        acc = torch.zeros(video.latent.shape, dtype=torch.float32, device=video.latent.device)
        wsum = torch.zeros((1, n, 1), dtype=torch.float32, device=video.latent.device)
        x0_audio = None
        for i in range(plan.count):
            sub, idx, n_tgt = sub_state(video, plan, i)
            if before_tile is not None:
                before_tile(sub)
            if i not in denoisers:
                denoisers[i] = make_denoise(i)
            x0_v, x0_a = denoisers[i](sub, audio, sigmas, step)
            w = torch.ones((1, idx.numel(), 1), dtype=torch.float32, device=acc.device)
            w[:, :n_tgt, 0] = torch.from_numpy(plan.weights(i).reshape(-1)).to(acc.device)
            acc.index_add_(1, idx, x0_v.to(torch.float32) * w)
            wsum.index_add_(1, idx, w)
            x0_audio = x0_a
            if on_tile is not None:
                on_tile(step, i)
        return (acc / wsum.clamp_min(1e-12)).to(video.latent.dtype), x0_audio

    return denoise
