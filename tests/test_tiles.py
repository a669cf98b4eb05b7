"""Tile plans as data (issue 15.1, DESIGN.md): windows, overlaps, blend weights, predicted peak per tile."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.errors import UserError
from pipelines.sampler.tiles import TileBlender, Window, plan_for_budget, plan_tiles, split_axis, window_indices


def test_split_axis_covers_evenly_with_overlap():
    for n, tile, ov in [(48, 24, 2), (16, 9, 1), (10, 4, 1), (32, 16, 0), (7, 7, 2), (5, 9, 1)]:
        wins = split_axis(n, tile, ov)
        assert wins[0][0] == 0 and wins[-1][1] == n
        assert all(e - s == min(tile, n) for s, e in wins)
        assert all(wins[k][1] - wins[k + 1][0] >= ov for k in range(len(wins) - 1))
    assert all(s % 2 == 0 for s, _ in split_axis(48, 12, 2, align=2))
    with pytest.raises(UserError, match="smaller than the tile"):
        split_axis(10, 4, 4)


def test_plan_shape_and_pixels():
    plan = plan_tiles(256, 192, 33, tile_width=128, tile_height=128, tile_frames=17, overlap=64, overlap_frames=8)
    assert plan.grid == (5, 6, 8) and plan.tile == (3, 4, 4)
    assert plan.count == 2 * 2 * 3 == len(plan.tiles)
    w0 = plan.tiles[0].window
    assert w0.pixels() == {"frames": [0, 17], "y": [0, 128], "x": [0, 128]}
    last = plan.tiles[-1].window
    assert last.pixels()["frames"] == [9, 33] and last.t1 == 5 and last.x1 == 8 and last.y1 == 6
    d = plan.to_dict()
    assert d["count"] == 12 and len(d["tiles"]) == 12 and "12 tiles (2 in time x 2 x 3 in space)" in d["text"]
    assert plan.work_ratio > 1.0


def test_weights_are_a_partition_of_unity_and_positive():
    for blend in ("linear", "hard"):
        # overlaps up to half a tile: neighbours' ramps sum to one by themselves
        plan = plan_tiles(320, 224, 41, tile_width=192, tile_height=160, tile_frames=25, overlap=64,
                          overlap_frames=8, blend=blend)
        assert plan.count == 2 * 2 * 2
        cov = plan.coverage()
        assert cov.shape == plan.grid
        assert np.allclose(cov, 1.0, atol=1e-6), blend
        # heavier overlaps (a cell in three windows): blending divides by the coverage, which never drops to 0
        dense = plan_tiles(320, 224, 41, tile_width=128, tile_height=96, tile_frames=17, overlap=64,
                           overlap_frames=8, blend=blend)
        assert dense.coverage().min() >= 1.0 - 1e-6
        total = sum(np.pad(dense.normalised_weights(i), [(w.t0, dense.grid[0] - w.t1), (w.y0, dense.grid[1] - w.y1),
                                                       (w.x0, dense.grid[2] - w.x1)])
                    for i, w in enumerate(t.window for t in dense.tiles))
        assert np.allclose(total, 1.0, atol=1e-6)
    plan = plan_tiles(320, 224, 41, tile_width=128, tile_height=96, tile_frames=17, overlap=64, overlap_frames=8)
    assert all(plan.weights(i).min() > 0 for i in range(plan.count))  # linear: every cell of a window counts


def test_blending_a_local_operation_equals_the_untiled_result():
    """A token-local operation run per tile and blended is the untiled result exactly, whatever the plan (the
    identity the tiled pass rests on); and a one-tile plan is the identity of indices."""
    plan = plan_tiles(256, 192, 33, tile_width=128, tile_height=96, tile_frames=17, overlap=64, overlap_frames=8)
    n = int(np.prod(plan.grid))
    x = torch.randn(1, n, 5)
    f = lambda t: torch.tanh(t) * 3 + 1  # noqa: E731
    blender = TileBlender(plan, x)
    for i in range(plan.count):
        idx = plan.token_indices(i)
        blender.add(i, f(x[:, idx]))
    assert torch.allclose(blender.result(), f(x), atol=1e-6)
    one = plan_tiles(256, 192, 33)
    assert one.count == 1 and torch.equal(one.token_indices(0), torch.arange(n))


def test_window_indices_match_a_slice_of_the_grid():
    grid = (4, 5, 6)
    lat = torch.arange(np.prod(grid)).reshape(grid)
    w = Window(1, 3, 2, 5, 1, 4)
    assert torch.equal(window_indices(w, grid), lat[1:3, 2:5, 1:4].reshape(-1))


def test_reference_windows_are_aligned_to_d():
    plan = plan_tiles(512, 256, 17, tile_width=256, tile_height=128, overlap=64, references=1, downscale=2)
    for i in range(plan.count):
        w = plan.tiles[i].window
        assert w.y0 % 2 == w.x0 % 2 == w.y1 % 2 == w.x1 % 2 == 0
        r = plan.reference_window(i)
        assert (r.y1 - r.y0) * 2 == w.y1 - w.y0 and plan.tiles[i].reference_tokens == r.cells
    assert plan.reference_grid() == (3, 4, 8)
    with pytest.raises(UserError, match="multiple of 64"):
        plan_tiles(512, 256, 17, tile_width=224, downscale=2, references=1)


def test_predicted_peak_and_budget():
    plan = plan_tiles(1536, 1024, 121, tile_width=768, tile_height=512, tile_frames=65)
    assert plan.peak_gb < plan.untiled_peak_gb
    big = plan_for_budget(1536, 1024, 121, 100.0)
    assert big.count == 1
    fit = plan_for_budget(1536, 1024, 121, 45.0)
    assert 1 < fit.count and fit.peak_gb <= 45.0
    with pytest.raises(UserError, match="no tile plan fits 10 GB"):
        plan_for_budget(1536, 1024, 121, 10.0)


def test_bad_sizes_are_refused():
    with pytest.raises(UserError, match="8n\\+1"):
        plan_tiles(256, 256, 20)
    with pytest.raises(UserError, match="multiple of 32"):
        plan_tiles(256, 256, 17, tile_width=100)
    with pytest.raises(UserError, match="multiple of 32 px and of 8 frames"):
        plan_tiles(256, 256, 17, tile_width=128, overlap=48)
    with pytest.raises(UserError, match="blend"):
        plan_tiles(256, 256, 17, blend="soft")


def test_step_bytes_follow_the_largest_tile():
    from pipelines.models.memory import denoise_step_bytes

    whole = plan_tiles(2048, 1024, 65)
    tiled = plan_tiles(2048, 1024, 65, tile_width=512, tile_height=512, overlap=64)
    a, b = whole.step_bytes(32, 16, 4), tiled.step_bytes(32, 16, 4)
    assert a["total"] == denoise_step_bytes(9 * 32 * 64, 32, 4) and a["blend"] == 0
    biggest = max(t.tokens for t in tiled.tiles)
    assert b["tile_pass"] == denoise_step_bytes(biggest, 32, 4) and b["blend"] == 9 * 32 * 64 * (16 * 4 + 4)
    assert b["total"] < a["total"] / 4
