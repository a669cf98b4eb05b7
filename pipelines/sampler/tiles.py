"""Tile plans: a long or large pass split into windows in time and space, with overlaps and blend weights, as
DATA (DESIGN.md) so the plan can be shown, tested and benchmarked before anything runs.

    plan = plan_tiles(1536, 1024, 121, tile_width=768, tile_height=512, tile_frames=65)
    plan.text()            # "6 tiles (2 x 2 x ... ), predicted peak 43.1 GB per tile ..."
    plan.token_weights(i)  # blend weight of each token of tile i (torch, flattened f, h, w)

Everything is on the TARGET's latent grid (one cell = 8 frames x 32 x 32 px, the first latent frame = pixel frame
0 alone, SPEC.md 1). A window is [t0, t1) x [y0, y1) x [x0, x1) latent cells; neighbouring windows overlap by at
least the requested overlap and the windows of one axis are spread evenly, so every tile has the same size.

Blending (MultiDiffusion-style, used by pipelines.sampler.tiled): at every denoising step each tile predicts
its tokens and the predictions are averaged with these weights, then ONE Euler step moves the whole latent.
Weights ramp linearly across an overlap (never 0 inside a window; 1 away from overlaps and at the video's
edges) and are normalised by their sum, so they form a partition of unity: a token covered by one tile takes
that tile's value exactly, and a plan with a single tile is the untiled pass bit for bit. ``blend="hard"``
cuts each overlap in its middle instead (a seam on purpose: the negative control of the seam tests).

The predicted peak per tile comes from pipelines.models.memory (the same transparent sum the studio shows
before a generation): resident weights + the largest activation set at the TILE's token count (+ references).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import UserError

CELL_T, CELL_S = 8, 32  # pixel frames / pixels per latent cell
BLENDS = ("linear", "hard")


@dataclass(frozen=True)
class Window:
    """A tile's window in latent cells, [start, stop) per axis."""

    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1 - self.t0, self.y1 - self.y0, self.x1 - self.x0

    @property
    def cells(self) -> int:
        f, h, w = self.shape
        return f * h * w

    def pixels(self) -> dict:
        """The window in pixels: frames [start, stop) (latent frame 0 is pixel frame 0 alone), y and x."""
        f0 = 0 if self.t0 == 0 else CELL_T * (self.t0 - 1) + 1
        f1 = CELL_T * (self.t1 - 1) + 1
        return {"frames": [f0, f1], "y": [self.y0 * CELL_S, self.y1 * CELL_S], "x": [self.x0 * CELL_S, self.x1 * CELL_S]}

    def to_dict(self) -> dict:
        return {"latent": {"t": [self.t0, self.t1], "y": [self.y0, self.y1], "x": [self.x0, self.x1]},
                "pixels": self.pixels()}


@dataclass
class Tile:
    index: int
    window: Window
    tokens: int               # target tokens in the tile
    reference_tokens: int     # reference tokens that go with it (IC-LoRA passes)
    predicted_peak_gb: float  # pipelines.models.memory on the plan's tier and model sizes

    def to_dict(self) -> dict:
        return {"index": self.index, **self.window.to_dict(), "tokens": self.tokens,
                "reference_tokens": self.reference_tokens, "predicted_peak_gb": round(self.predicted_peak_gb, 3)}


@dataclass
class TilePlan:
    width: int
    height: int
    frames: int
    grid: tuple[int, int, int]      # latent cells of the whole target (F, H, W)
    tile: tuple[int, int, int]      # latent cells of one tile
    overlap: tuple[int, int, int]   # requested overlap in latent cells
    axes: tuple[list, list, list]   # windows per axis: [(start, stop), ...]
    tiles: list[Tile]
    blend: str = "linear"
    downscale: int = 1              # reference downscale factor D of the pass (1 = none / same grid)
    references: int = 0
    tier: str = "bf16"
    untiled_peak_gb: float = 0.0    # the same pass in one piece
    notes: list[str] = field(default_factory=list)

    # ---- what a person reads ----
    @property
    def count(self) -> int:
        return len(self.tiles)

    @property
    def peak_gb(self) -> float:
        return max(t.predicted_peak_gb for t in self.tiles)

    @property
    def work_ratio(self) -> float:
        """Tokens processed by all tiles / tokens of the target: the overlap's extra work (1.0 = no overlap)."""
        f, h, w = self.grid
        return sum(t.tokens for t in self.tiles) / float(f * h * w)

    def text(self) -> str:
        nt, ny, nx = (len(a) for a in self.axes)
        f, h, w = self.tile
        px = self.tiles[0].window.pixels()
        head = (f"{self.count} tile{'s' if self.count != 1 else ''} ({nt} in time x {ny} x {nx} in space) of "
                f"{px['x'][1] - px['x'][0]}x{px['y'][1] - px['y'][0]} px x {CELL_T * (f - 1) + 1} frames "
                f"({f}x{h}x{w} latent cells) over {self.width}x{self.height} x {self.frames} frames")
        mem = (f"predicted peak {self.peak_gb:.1f} GB per tile on {self.tier} (untiled {self.untiled_peak_gb:.1f} GB); "
               f"work x{self.work_ratio:.2f} from the overlaps")
        return "; ".join([head, mem, *self.notes])

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "frames": self.frames, "grid": list(self.grid),
                "tile": list(self.tile), "overlap": list(self.overlap), "blend": self.blend,
                "downscale": self.downscale, "references": self.references, "tier": self.tier,
                "count": self.count, "peak_gb": round(self.peak_gb, 3),
                "untiled_peak_gb": round(self.untiled_peak_gb, 3), "work_ratio": round(self.work_ratio, 4),
                "tiles": [t.to_dict() for t in self.tiles], "notes": list(self.notes), "text": self.text()}

    def step_bytes(self, hidden: int, latent: int, dtype_bytes: int) -> dict:
        """Predicted peak bytes of one tiled denoising step on the device (pipelines.models.memory's per-token
        figure): the largest tile's pass, plus what the blend keeps for the whole latent while tiles run (the
        float32 accumulator and weight sum) and the tile's sliced state (latent, clean, mask, positions). The
        resident model and the whole latent state are already there before the step and are not counted."""
        from pipelines.models.memory import denoise_step_bytes

        f, h, w = self.grid
        n = f * h * w + self.references * f * (h // self.downscale) * (w // self.downscale)
        biggest = max(t.tokens + t.reference_tokens for t in self.tiles)
        tile = denoise_step_bytes(biggest, hidden, dtype_bytes)
        if self.count == 1:
            return {"tile_pass": tile, "blend": 0, "slices": 0, "total": tile}
        blend = n * latent * 4 + n * 4
        slices = biggest * (2 * latent * dtype_bytes + 4 + 3 * 2 * dtype_bytes)
        return {"tile_pass": tile, "blend": blend, "slices": slices, "total": tile + blend + slices}

    # ---- blending ----
    def axis_weights(self, axis: int, k: int) -> np.ndarray:
        """1-D blend weights of the k-th window of an axis (0 = time, 1 = height, 2 = width)."""
        wins = self.axes[axis]
        s, e = wins[k]
        left = (wins[k - 1][1] - s) if k > 0 else 0
        right = (e - wins[k + 1][0]) if k + 1 < len(wins) else 0
        return _ramp(e - s, max(0, left), max(0, right), self.blend)

    def weights(self, i: int) -> np.ndarray:
        """Blend weights of tile i on its window, float32 [f, h, w] (not normalised)."""
        kt, ky, kx = self._axis_index(i)
        wt, wy, wx = self.axis_weights(0, kt), self.axis_weights(1, ky), self.axis_weights(2, kx)
        return (wt[:, None, None] * wy[None, :, None] * wx[None, None, :]).astype(np.float32)

    def coverage(self) -> np.ndarray:
        """Sum of all tiles' weights over the grid (what blending divides by), float32 [F, H, W]."""
        out = np.zeros(self.grid, np.float32)
        for t in self.tiles:
            w = t.window
            out[w.t0:w.t1, w.y0:w.y1, w.x0:w.x1] += self.weights(t.index)
        return out

    def normalised_weights(self, i: int) -> np.ndarray:
        w = self.tiles[i].window
        return self.weights(i) / self.coverage()[w.t0:w.t1, w.y0:w.y1, w.x0:w.x1]

    def _axis_index(self, i: int) -> tuple[int, int, int]:
        ny, nx = len(self.axes[1]), len(self.axes[2])
        return i // (ny * nx), (i // nx) % ny, i % nx

    # ---- tokens ----
    def token_indices(self, i: int):
        """Indices (torch int64) of tile i's tokens among the target's (patchified order f, h, w)."""
        return window_indices(self.tiles[i].window, self.grid)

    def reference_window(self, i: int) -> Window:
        """Tile i's window on the reference grid (spatial cells / D; the reference has the target's latent
        frames)."""
        w, d = self.tiles[i].window, self.downscale
        return Window(w.t0, w.t1, w.y0 // d, w.y1 // d, w.x0 // d, w.x1 // d)

    def reference_grid(self) -> tuple[int, int, int]:
        f, h, w = self.grid
        return f, h // self.downscale, w // self.downscale

    def border_columns(self) -> list[int]:
        """Latent x positions where one tile's own region ends and the next one's begins (the middle of each
        overlap), where a seam would show; the same for rows via border_rows()."""
        return _borders(self.axes[2])

    def border_rows(self) -> list[int]:
        return _borders(self.axes[1])

    def border_frames(self) -> list[int]:
        return _borders(self.axes[0])


def _borders(wins: list) -> list[int]:
    return [(wins[k][1] + wins[k + 1][0]) // 2 for k in range(len(wins) - 1)]


def _ramp(n: int, left: int, right: int, blend: str) -> np.ndarray:
    w = np.ones(n, np.float64)
    if blend == "hard":
        # each overlap is cut in its middle: the left window owns the first half, the right one the rest
        if left:
            w[: left - left // 2] = 0.0
        if right:
            w[n - right // 2:] = 0.0
        return w
    if left:
        w[:left] = np.minimum(w[:left], (np.arange(left) + 1.0) / (left + 1.0))
    if right:
        w[n - right:] = np.minimum(w[n - right:], (right - np.arange(right)) / (right + 1.0))
    return w


def window_indices(window: Window, grid: tuple[int, int, int]):
    """Token indices of a window on a (F, H, W) grid, in patchified order (f, h, w), torch int64."""
    import torch

    _, h, w = grid
    f_ = torch.arange(window.t0, window.t1)
    y_ = torch.arange(window.y0, window.y1)
    x_ = torch.arange(window.x0, window.x1)
    return ((f_[:, None, None] * h + y_[None, :, None]) * w + x_[None, None, :]).reshape(-1)


def split_axis(n: int, tile: int, overlap: int, align: int = 1) -> list[tuple[int, int]]:
    """Windows of `tile` cells covering [0, n) with at least `overlap` cells shared by neighbours, spread evenly
    (same size each), starts on multiples of `align`."""
    if tile >= n:
        return [(0, n)]
    if overlap >= tile:
        raise UserError(f"tile overlap ({overlap} cells) must be smaller than the tile ({tile} cells)")
    count = math.ceil((n - overlap) / (tile - overlap))
    while True:
        starts = [int(round(k * (n - tile) / (count - 1) / align)) * align for k in range(count)]
        starts[-1] = n - tile
        ok = all(starts[k] + tile - starts[k + 1] >= overlap for k in range(count - 1))
        if ok or count > n:
            break
        count += 1
    return [(s, s + tile) for s in starts]


def pass_peak_gb(est) -> float:
    """Peak of a pass's denoise / decode phase from a memory.VramEstimate: resident weights + activations + the
    CUDA margin. The text encoder's visit (once per prompt, before any tile runs) is not part of a tile."""
    from pipelines.models.memory import MARGIN_GB

    return est.weights_gb + est.activations_gb + MARGIN_GB


def plan_tiles(width: int, height: int, frames: int, *, tile_width: int | None = None,
               tile_height: int | None = None, tile_frames: int | None = None, overlap: int = 64,
               overlap_frames: int = 8, blend: str = "linear", references: int = 0, downscale: int = 1,
               tier=None, sizes: dict | None = None, cfg: bool = False) -> TilePlan:
    """Plan the tiles of a pass producing width x height x frames (pixels). Tile sizes in pixels (multiples of
    32, frames 8n+1; None = the whole axis), overlaps in pixels (multiple of 32) and frames (multiple of 8).
    `references` reference videos at downscale D go with each tile (their windows are the tile's / D).
    `tier` and `sizes` feed pipelines.models.memory's prediction (default: bf16, the real LTX-2.3 sizes)."""
    from pipelines.models.memory import estimate, token_count
    from pipelines.requests import MemoryTier

    if blend not in BLENDS:
        raise UserError(f"blend {blend!r} must be one of: {', '.join(BLENDS)}")
    d = max(1, int(downscale))
    for name, v, m in (("width", width, CELL_S * d), ("height", height, CELL_S * d)):
        if v < m or v % m:
            raise UserError(f"{name} {v} must be a multiple of {m} to be tiled")
    if frames < 1 or (frames - 1) % CELL_T:
        raise UserError(f"frames {frames} must be 8n+1 to be tiled")
    tw, th, tf = tile_width or width, tile_height or height, tile_frames or frames
    for name, v, m in (("tile width", tw, CELL_S * d), ("tile height", th, CELL_S * d)):
        if v < m or v % m:
            raise UserError(f"{name} {v} must be a positive multiple of {m}")
    if tf < 1 or (tf - 1) % CELL_T:
        raise UserError(f"tile frames {tf} must be 8n+1 (9, 17, ...)")
    if overlap < 0 or overlap % CELL_S or overlap_frames < 0 or overlap_frames % CELL_T:
        raise UserError(f"tile overlap must be a multiple of 32 px and of 8 frames (got {overlap} px, "
                        f"{overlap_frames} frames)")
    grid = ((frames - 1) // CELL_T + 1, height // CELL_S, width // CELL_S)
    tile = (min(grid[0], (tf - 1) // CELL_T + 1), min(grid[1], th // CELL_S), min(grid[2], tw // CELL_S))
    ov = (overlap_frames // CELL_T, overlap // CELL_S, overlap // CELL_S)
    notes = []
    ov_eff = list(ov)
    for ax, name in enumerate(("frames", "height", "width")):
        if tile[ax] < grid[ax] and ov[ax] >= tile[ax]:
            raise UserError(f"the overlap in {name} ({ov[ax]} cells) must be smaller than the tile ({tile[ax]} cells)")
        if tile[ax] < grid[ax] and ov[ax] == 0:
            notes.append(f"no overlap in {name}: tile borders may show")
            ov_eff[ax] = 0
    axes = (split_axis(grid[0], tile[0], ov_eff[0]), split_axis(grid[1], tile[1], ov_eff[1], d),
            split_axis(grid[2], tile[2], ov_eff[2], d))
    tier = MemoryTier(tier) if tier is not None else MemoryTier.BF16
    tiles = []
    for (t0, t1) in axes[0]:
        for (y0, y1) in axes[1]:
            for (x0, x1) in axes[2]:
                win = Window(t0, t1, y0, y1, x0, x1)
                f, h, w = win.shape
                px_w, px_h, px_f = w * CELL_S, h * CELL_S, CELL_T * (f - 1) + 1
                n_ref = token_count(px_w, px_h, px_f, references, d) - token_count(px_w, px_h, px_f)
                est = estimate(tier, px_w, px_h, px_f, refs=references, downscale=d, cfg=cfg, sizes=sizes)
                tiles.append(Tile(index=len(tiles), window=win, tokens=win.cells, reference_tokens=n_ref,
                                  predicted_peak_gb=pass_peak_gb(est)))
    untiled = pass_peak_gb(estimate(tier, width, height, frames, refs=references, downscale=d, cfg=cfg, sizes=sizes))
    return TilePlan(width=width, height=height, frames=frames, grid=grid, tile=tile, overlap=ov, axes=axes,
                    tiles=tiles, blend=blend, downscale=d, references=references, tier=tier.value,
                    untiled_peak_gb=untiled, notes=notes)


def plan_for_budget(width: int, height: int, frames: int, budget_gb: float, *, overlap: int = 64,
                    overlap_frames: int = 8, references: int = 0, downscale: int = 1, tier=None,
                    sizes: dict | None = None, blend: str = "linear", max_splits: int = 8) -> TilePlan:
    """The plan with the fewest tiles whose predicted peak fits `budget_gb` (ties: fewer splits in time, as a
    time border costs more than a spatial one). UserError when even the smallest tile does not fit."""
    d = max(1, int(downscale))
    grid = ((frames - 1) // CELL_T + 1, height // CELL_S, width // CELL_S)
    ov = (overlap_frames // CELL_T, overlap // CELL_S, overlap // CELL_S)

    def cells(ax: int, k: int) -> int:
        n = grid[ax]
        c = min(n, math.ceil((n + (k - 1) * ov[ax]) / k))
        if ax:
            c = min(n, math.ceil(c / d) * d)
        return c

    combos = sorted(((kt, ky, kx) for kt in range(1, max_splits + 1) for ky in range(1, max_splits + 1)
                     for kx in range(1, max_splits + 1)), key=lambda k: (k[0] * k[1] * k[2], k[0], abs(k[1] - k[2])))
    seen, last = set(), None
    for kt, ky, kx in combos:
        tile = (cells(0, kt), cells(1, ky), cells(2, kx))
        if tile in seen or any(tile[a] < grid[a] and tile[a] <= ov[a] for a in range(3)):
            continue
        seen.add(tile)
        last = plan_tiles(width, height, frames, tile_width=tile[2] * CELL_S, tile_height=tile[1] * CELL_S,
                          tile_frames=CELL_T * (tile[0] - 1) + 1, overlap=overlap, overlap_frames=overlap_frames,
                          references=references, downscale=d, tier=tier, sizes=sizes, blend=blend)
        if last.peak_gb <= budget_gb:
            return last
    smallest = f" (the smallest tile tried needs {last.peak_gb:.1f} GB on {last.tier})" if last else ""
    raise UserError(f"no tile plan fits {budget_gb:g} GB{smallest}; pick a lower memory tier (fp8, offload) or a "
                    "smaller output")


class TileBlender:
    """Accumulate per-tile token values [B, n_tile, C] into the whole target [B, N, C] with the plan's weights;
    ``result()`` divides by the coverage. Tokens no tile covers would stay 0 (a plan covers all of them)."""

    def __init__(self, plan: TilePlan, like):
        import torch

        self.plan = plan
        self.acc = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        self.wsum = torch.zeros((1, like.shape[1], 1), dtype=torch.float32, device=like.device)
        self.dtype = like.dtype

    def add(self, i: int, values, indices=None) -> None:
        import torch

        idx = (indices if indices is not None else self.plan.token_indices(i)).to(self.acc.device)
        w = torch.from_numpy(self.plan.weights(i).reshape(-1)).to(self.acc.device)[None, :, None]
        self.acc.index_add_(1, idx, values.to(torch.float32) * w)
        self.wsum.index_add_(1, idx, w)

    def result(self):
        return (self.acc / self.wsum.clamp_min(1e-12)).to(self.dtype)
