"""pipelines.masks: spec -> pixel mask (order of operations, shapes, import) -> latent weights (SPEC.md 2)."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.masks import (
    MaskSpec,
    downscale_to_reference,
    import_mask,
    latent_weights,
    latent_weights_at_target,
    load_spec,
    materialise,
    ramp_weights,
    reference_pixel_size,
    save_spec,
    spec_latent_weights,
)


def spec(**kw) -> MaskSpec:
    d = {"width": 64, "height": 32, "frames": 17}
    d.update(kw)
    return MaskSpec.from_dict(d)


# ------------------------------------------------------------------ reference implementations (plain loops)

def loop_latent(mask: np.ndarray, cell: int = 32) -> np.ndarray:
    """Straightforward reference: causal temporal groups, then cell x cell area average, one cell at a time."""
    if mask.ndim == 2:
        mask = mask[None]
    F, H, W = mask.shape
    groups = [[0]] + [list(range(1 + 8 * g, 9 + 8 * g)) for g in range((F - 1) // 8)]
    out = np.zeros((len(groups), H // cell, W // cell), dtype=np.float64)
    for li, frames in enumerate(groups):
        for i in range(H // cell):
            for j in range(W // cell):
                total = 0.0
                for t in frames:
                    total += float(np.sum(mask[t, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell], dtype=np.float64))
                out[li, i, j] = total / (len(frames) * cell * cell)
    return out


# ------------------------------------------------------------------ interpolation, ramps, invert, feather

def test_keyframes_interpolate_linearly_and_hold_outside():
    m = materialise(spec(keyframes={"4": 0.0, "12": 1.0}))
    assert m.shape == (17, 32, 64) and m.dtype == np.float32
    per_frame = m.reshape(17, -1)
    assert np.all(per_frame.min(1) == per_frame.max(1))  # constant masks stay constant
    values = per_frame[:, 0]
    np.testing.assert_allclose(values[:5], 0.0)  # held before the first keyframe
    np.testing.assert_allclose(values[6], 0.25, atol=1e-6)
    np.testing.assert_allclose(values[8], 0.5, atol=1e-6)
    np.testing.assert_allclose(values[10], 0.75, atol=1e-6)
    np.testing.assert_allclose(values[12:], 1.0)  # held after the last


def test_keyframe_shapes_interpolate_per_pixel():
    a = [{"type": "rect", "x": 0, "y": 0, "w": 16, "h": 32}]
    b = [{"type": "rect", "x": 48, "y": 0, "w": 16, "h": 32}]
    m = materialise(spec(keyframes={"0": a, "16": b}))
    np.testing.assert_allclose(m[4, :, :16], 0.75, atol=1e-6)
    np.testing.assert_allclose(m[4, :, 48:], 0.25, atol=1e-6)
    np.testing.assert_allclose(m[4, :, 16:48], 0.0)
    np.testing.assert_allclose(m[16, :, 48:], 1.0)


def test_ramps_at_known_frames():
    m = materialise(spec(fade_in=4, fade_out=8))  # no source: 1 everywhere
    v = m[:, 0, 0]
    np.testing.assert_allclose(v[[0, 1, 2, 4, 8]], [0.0, 0.25, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(v[[12, 14, 16]], [0.5, 0.25, 0.0], atol=1e-6)
    np.testing.assert_allclose(ramp_weights(17, 4, 8), v, atol=1e-6)


def test_invert_happens_before_ramps():
    m = materialise(spec(mask=0.2, invert=True, fade_in=8))
    np.testing.assert_allclose(m[0], 0.0)  # ramp after invert: frame 0 is 0, not 1
    np.testing.assert_allclose(m[4], 0.4, atol=1e-6)  # (1 - 0.2) * 4/8
    np.testing.assert_allclose(m[8:], 0.8, atol=1e-6)


def test_shapes_cover_exact_pixels_and_paint_over():
    d = [{"type": "rect", "x": 8, "y": 4, "w": 32, "h": 16},
         {"type": "ellipse", "cx": 24, "cy": 12, "rx": 4, "ry": 4, "value": 0.0}]
    m = materialise(spec(frames=1, mask=d))[0]
    assert m.sum() == pytest.approx(32 * 16 - np.count_nonzero(m[4:20, 8:40] == 0), abs=1e-3)
    assert m[4, 8] == 1.0 and m[19, 39] == 1.0 and m[3, 8] == 0.0 and m[4, 40] == 0.0
    assert m[12, 24] == 0.0  # the value-0 ellipse punched a hole
    hole = np.count_nonzero(m[4:20, 8:40] == 0)
    assert abs(hole - math.pi * 16) < 8
    # a big ellipse's area approaches pi*rx*ry
    e = materialise(MaskSpec.from_dict({"width": 256, "height": 128, "frames": 1,
                                        "mask": [{"type": "ellipse", "cx": 128, "cy": 64, "rx": 100, "ry": 50}]}))
    assert abs(e.sum() - math.pi * 100 * 50) / (math.pi * 100 * 50) < 0.01


def test_feather_softens_symmetrically_and_keeps_mass():
    hard = materialise(spec(frames=1, mask=[{"type": "rect", "x": 16, "y": 0, "w": 32, "h": 32}]))[0]
    soft = materialise(spec(frames=1, mask=[{"type": "rect", "x": 16, "y": 0, "w": 32, "h": 32}], feather=6))[0]
    row = soft[16]
    assert 0.3 < row[15] < 0.5 and 0.5 < row[16] < 0.7  # the edge at x=16 is now a ramp
    np.testing.assert_allclose(row, row[::-1], atol=1e-5)  # symmetric rect -> symmetric profile
    assert soft.sum() == pytest.approx(hard.sum(), rel=1e-3)
    assert soft.min() >= 0 and soft.max() <= 1
    # a shape's own feather does the same
    own = materialise(spec(frames=1, mask=[{"type": "rect", "x": 16, "y": 0, "w": 32, "h": 32, "feather": 6}]))[0]
    np.testing.assert_allclose(own, soft, atol=1e-5)


def test_inline_array_and_image_sources(tmp_path):
    arr = np.zeros((32, 64), np.float32)
    arr[:, :10] = 0.5
    m = materialise(spec(frames=1, mask={"array": arr.tolist()}))
    np.testing.assert_allclose(m[0], arr)
    img = np.zeros((32, 64), np.uint8)
    img[10:20, 30:40] = 255
    cv2.imwrite(str(tmp_path / "k.png"), img)
    (tmp_path / "s.json").write_text(json.dumps({"version": 1, "width": 64, "height": 32, "frames": 9,
                                                "keyframes": {"0": "k.png", "8": 0}}))
    m = materialise(load_spec(tmp_path / "s.json"))  # path relative to the spec file
    assert m[0, 15, 35] == 1.0 and m[0, 5, 5] == 0.0
    assert m[4, 15, 35] == pytest.approx(0.5)


def test_spec_json_round_trip(tmp_path):
    s = spec(keyframes={"0": [{"type": "ellipse", "cx": 10, "cy": 10, "rx": 5, "ry": 8, "feather": 2}],
                        "16": {"fill": 0.5}}, fade_in=2, invert=True, feather=1.5, strength=0.7)
    path = save_spec(s, tmp_path / "m.json")
    again = load_spec(path)
    assert again == s
    np.testing.assert_array_equal(materialise(again), materialise(s))


# ------------------------------------------------------------------ invalid specs

@pytest.mark.parametrize("d, words", [
    ({"width": 60}, "multiple of 32"),
    ({"height": 0}, "height"),
    ({"frames": 20}, "8n+1"),
    ({"strength": 1.5}, "strength"),
    ({"keyframes": {"17": 1.0}}, "keyframe 17 is out of range"),
    ({"keyframes": {"-1": 1.0}}, "out of range"),
    ({"keyframes": {"x": 1.0}}, "not a frame number"),
    ({"mask": [{"type": "star", "x": 1}]}, "unknown type 'star'"),
    ({"mask": [{"type": "rect", "x": 1, "y": 1, "w": 2}]}, "missing h"),
    ({"mask": [{"type": "rect", "x": 1, "y": 1, "w": 2, "h": 2, "value": 2}]}, "between 0 and 1"),
    ({"mask": [{"type": "ellipse", "cx": 1, "cy": 1, "rx": 0, "ry": 2}]}, "rx"),
    ({"mask": {"array": [[0.5] * 10] * 10}}, "10x10"),
    ({"mask": {"array": [[2.0] * 64] * 32}}, "values from 2 to 2"),
    ({"mask": 0.5, "keyframes": {"0": 1}}, "only one of"),
    ({"fade_in": 40}, "fade_in"),
    ({"feather": -1}, "feather"),
    ({"fadein": 3}, "unknown field(s) fadein"),
    ({"version": 9}, "version 9"),
])
def test_invalid_specs_give_clear_errors(d, words):
    with pytest.raises(UserError) as err:
        spec(**d)
    assert words in str(err.value)


def test_image_of_wrong_size_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "k.png"), np.zeros((10, 20), np.uint8))
    with pytest.raises(UserError, match="is 20x10; it must be 64x32"):
        materialise(spec(mask=str(tmp_path / "k.png")))
    with pytest.raises(UserError, match="does not exist"):
        materialise(spec(mask=str(tmp_path / "nope.png")))


# ------------------------------------------------------------------ latent reduction

def test_latent_weights_match_loop_reference():
    rng = np.random.default_rng(0)
    mask = rng.random((17, 64, 96), dtype=np.float32)
    got = latent_weights(mask)
    assert got.shape == (3, 2, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_latent(mask), atol=1e-6)


def test_hard_edge_inside_one_cell_121_frames():
    mask = np.zeros((121, 64, 64), np.float32)
    mask[:, :, :40] = 1.0  # edge at x=40: inside the second column of 32x32 cells
    mask[0] = 0.0  # frame 0 alone is latent frame 0
    mask[9:17, :, :] = 0.0  # pixel frames 9..16 = latent frame 2
    mask[120] = 1.0  # last frame of the last group
    got = latent_weights(mask)
    assert got.shape == (16, 2, 2)
    ref = loop_latent(mask)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got[0], 0.0)
    np.testing.assert_allclose(got[1], [[1.0, 8 / 32], [1.0, 8 / 32]], atol=1e-6)
    np.testing.assert_allclose(got[2], 0.0)
    np.testing.assert_allclose(got[15, :, 1], (7 * 8 / 32 + 1) / 8, atol=1e-6)


def test_spatial_mask_broadcasts_over_latent_frames():
    mask = np.zeros((64, 64), np.float32)
    mask[:16] = 1.0
    one = latent_weights(mask)
    assert one.shape == (1, 2, 2)
    np.testing.assert_allclose(one[0], [[0.5, 0.5], [0.0, 0.0]])
    many = latent_weights(mask, latent_frames=16)
    assert many.shape == (16, 2, 2) and np.all(many == one)


def test_latent_size_not_dividing_uses_area_average():
    mask = np.zeros((9, 96, 96), np.float32)
    mask[:, :, :48] = 1.0
    got = latent_weights(mask, latent_height=2, latent_width=2)  # 48 px cells: block mean
    np.testing.assert_allclose(got, [[[1, 0], [1, 0]]] * 2)
    odd = latent_weights(mask, latent_height=5, latent_width=5)  # 19.2 px cells: INTER_AREA
    assert odd.shape == (2, 5, 5)
    assert odd[:, :, :2].min() == pytest.approx(1.0) and odd[:, :, 3:].max() == pytest.approx(0.0)
    assert odd[:, :, 2].mean() == pytest.approx(0.5, abs=1e-5)


def test_target_size_helper_equals_reduction_by_32d():
    rng = np.random.default_rng(1)
    mask = rng.random((9, 128, 192), dtype=np.float32)
    assert reference_pixel_size(128, 192, 2) == (64, 96)
    ref = downscale_to_reference(mask, 2)
    assert ref.shape == (9, 64, 96)
    got = latent_weights_at_target(mask, 2)
    np.testing.assert_allclose(got, loop_latent(mask, cell=64), atol=1e-6)
    np.testing.assert_allclose(latent_weights_at_target(mask, 1), loop_latent(mask), atol=1e-6)


def test_spec_latent_weights_apply_strength():
    s = spec(strength=0.5, mask=[{"type": "rect", "x": 0, "y": 0, "w": 32, "h": 32}])
    w = spec_latent_weights(s)
    assert w.shape == (3, 1, 2)
    np.testing.assert_allclose(w[:, 0], [[0.5, 0.0]] * 3)


@pytest.mark.parametrize("mask, words", [
    (np.full((9, 64, 64), 1.5, np.float32), "values from 1.5 to 1.5"),
    (np.full((9, 64, 64), -0.1, np.float32), "between 0 and 1"),
    (np.full((9, 64, 64), 255, np.uint8), "divide by 255"),
    (np.full((9, 64, 64), np.nan, np.float32), "between 0 and 1"),
    (np.zeros((2, 9, 64, 64), np.float32), "shape (2, 9, 64, 64)"),
    (np.zeros((10, 64, 64), np.float32), "10 frames; it must be 8n+1"),
    (np.zeros((9, 60, 64), np.float32), "not a multiple of 32"),
])
def test_latent_weights_reject_bad_masks(mask, words):
    with pytest.raises(UserError) as err:
        latent_weights(mask)
    assert words in str(err.value)


def test_latent_frames_mismatch_and_bad_downscale():
    with pytest.raises(UserError, match="3 latent frames, but 4"):
        latent_weights(np.zeros((17, 32, 32), np.float32), latent_frames=4)
    with pytest.raises(UserError, match="multiple of 64"):
        latent_weights_at_target(np.zeros((9, 96, 64), np.float32), 2)
    with pytest.raises(UserError, match="downscale factor"):
        reference_pixel_size(64, 64, 0)


# ------------------------------------------------------------------ import

def test_png_sequence_import_gray_and_alpha(tmp_path):
    gray_dir = tmp_path / "gray"
    gray_dir.mkdir()
    for i in range(5):  # frame i has value i*50 and natural-sort names (f2 before f10)
        cv2.imwrite(str(gray_dir / f"f{i * 4 + 2}.png"), np.full((20, 40), i * 50, np.uint8))
    got = import_mask(gray_dir, width=64, height=32, frames=9)
    assert got.mask.shape == (9, 32, 64) and got.source_frames == 5
    # nearest frame in normalised time: t -> floor((t + 0.5) * 5 / 9)
    expected = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4]) * 50 / 255
    np.testing.assert_allclose(got.mask[:, 16, 32], expected, atol=1e-6)
    assert any("resampled 5 frames to 9" in c for c in got.changes)
    assert any("40x20" in c for c in got.changes)

    alpha_dir = tmp_path / "alpha"
    alpha_dir.mkdir()
    for i in range(3):
        bgra = np.full((32, 64, 4), 255, np.uint8)  # white colour everywhere ...
        bgra[..., 3] = 0
        bgra[:, : 10 * (i + 1), 3] = 255  # ... the mask is in the alpha channel
        cv2.imwrite(str(alpha_dir / f"m_{i:03d}.png"), bgra)
    got = import_mask(str(alpha_dir / "m_*.png"), width=64, height=32, frames=3)
    assert "alpha" in got.text()
    for i in range(3):
        assert got.mask[i].sum() == pytest.approx(32 * 10 * (i + 1))


def test_spec_with_sequence_source(tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((32, 64), 255 * i, np.uint8))
    (tmp_path / "s.json").write_text(json.dumps({"width": 64, "height": 32, "frames": 9, "sequence": ".",
                                                "invert": True}))
    m = materialise(load_spec(tmp_path / "s.json"))
    np.testing.assert_allclose(m[:4, 0, 0], 1.0)  # first half of the frames comes from 0.png, inverted
    np.testing.assert_allclose(m[5:, 0, 0], 0.0)


def test_video_import(tmp_path):
    video_io = pytest.importorskip("pipelines.video_io")
    frames = np.zeros((9, 32, 64, 3), np.uint8)
    frames[:, :, 32:] = 255
    path = video_io.write_video(tmp_path / "m.mp4", frames, fps=24.0)
    got = import_mask(path, width=64, height=32, frames=17)
    assert got.mask.shape == (17, 32, 64)
    assert got.mask[:, :, 36:].min() > 0.9 and got.mask[:, :, :28].max() < 0.1


# ------------------------------------------------------------------ CLI

def test_cli_round_trip(tmp_path, capsys):
    from pipelines.cli import main

    (tmp_path / "s.json").write_text(json.dumps({
        "version": 1, "width": 64, "height": 64, "frames": 9, "strength": 0.5,
        "keyframes": {"0": [{"type": "rect", "x": 0, "y": 0, "w": 64, "h": 32}], "8": 0.0}}))
    assert main(["mask", "build", str(tmp_path / "s.json"), "--out", str(tmp_path / "m.npy"), "--frames", "17"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape"] == [17, 64, 64] and out["max"] == 1.0 and out["min"] == 0.0
    mask = np.load(tmp_path / "m.npy")
    np.testing.assert_array_equal(mask, materialise(load_spec(tmp_path / "s.json", frames=17)))

    assert main(["mask", "latent", str(tmp_path / "m.npy"), "--out", str(tmp_path / "l.npy"),
                 "--downscale", "2", "--strength", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    lat = np.load(tmp_path / "l.npy")
    assert out["shape"] == [3, 1, 1] == list(lat.shape)
    np.testing.assert_allclose(lat, loop_latent(mask, cell=64) * 0.5, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left

    # bad input: one error line, exit code 2, no output file
    assert main(["mask", "build", str(tmp_path / "s.json"), "--out", str(tmp_path / "bad.npy"), "--frames", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mask frames is 10") and "8n+1" in err
    assert not (tmp_path / "bad.npy").exists()

    for i in range(2):
        cv2.imwrite(str(tmp_path / f"seq{i}.png"), np.full((32, 32), 255 * i, np.uint8))
    assert main(["mask", "import", str(tmp_path / "seq*.png"), "--out", str(tmp_path / "i.npy"),
                 "--frames", "9", "--width", "64", "--height", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [9, 64, 64]
