"""Mask painter tab: handlers (painted alpha -> mask -> keyframes -> spec -> .npy), the flow of a painted mask
into a tiny-model generation (the engine gets latent reduction x strength), and a browser run of the tab."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import mask_ui, masks
from pipelines.errors import UserError
from studio.tabs import masks as tab


def _editor(alpha: np.ndarray, scale: int = 1) -> dict:
    """An ImageMask value as Gradio hands it over (type="numpy", layers=False): RGBA layer, alpha = paint."""
    h, w = alpha.shape
    bg = np.full((h * scale, w * scale, 3), 80, np.uint8)
    return {"background": bg, "layers": [mask_ui.layer_from_alpha(alpha, scale)], "composite": bg}


# ----------------------------------------------------------------------------------------------- handlers

def test_painted_alpha_becomes_unit_mask_at_target_size():
    # A stroke painted on the 5x display canvas comes back area-averaged to the target pixels.
    disp = np.zeros((64 * 5, 96 * 5), np.float32)
    disp[0:160, 0:240] = 1.0  # top-left 32x48 target pixels, exactly
    disp[200:203, 300:305] = 1.0  # 3x5 display px = 15/25 of target pixel (40, 60)
    value = {"background": None, "layers": [mask_ui.layer_from_alpha(disp)], "composite": None}
    a = mask_ui.alpha_from_editor(value, 96, 64)
    assert a.shape == (64, 96) and a.dtype == np.float32
    assert np.allclose(a[:32, :48], 1.0) and a[40, 60] == pytest.approx(15 / 25, abs=1 / 255)
    assert a.sum() == pytest.approx(32 * 48 + 15 / 25, abs=0.05)
    assert mask_ui.alpha_from_editor(None, 96, 64).sum() == 0
    assert mask_ui.alpha_from_editor({"background": None, "layers": [], "composite": None}, 96, 64).sum() == 0


def test_load_frame_and_shapes_roundtrip_through_editor_value():
    ed = tab.load_frame(None, 0, 96, 64, {}, None)
    s = mask_ui.editor_scale(96, 64)
    assert ed["background"].shape == (64 * s, 96 * s, 3) and ed["layers"][0].shape == (64 * s, 96 * s, 4)
    ed = tab.add_shape(ed, "rect", 8, 4, 16, 20, 1.0, 96, 64)
    ed = tab.add_shape(ed, "ellipse", 8, 4, 16, 20, 0.0, 96, 64)  # cut the inscribed ellipse out again
    a = mask_ui.alpha_from_editor(ed, 96, 64)
    rect = np.zeros((64, 96), np.float32)
    masks.paint_shape(rect, masks.RectShape(8, 4, 16, 20))
    masks.paint_shape(rect, masks.EllipseShape(16, 14, 8, 10, value=0.0))
    assert np.allclose(a, rect, atol=1 / 255)
    assert 0 < a.sum() < 16 * 20  # corners of the rect stay, the ellipse is a hole
    # a keyframe set at frame 3 comes back when frame 3 is loaded again, even after clearing the painting
    keys, rows = tab.set_keyframe(ed, {}, 3, 96, 64, 9)
    assert rows == [[3, f"{(a > 0.5).mean() * 100:.1f}%", round(float(a.mean()), 3)]]
    cleared = tab.clear_paint(ed, 96, 64)
    assert mask_ui.alpha_from_editor(cleared, 96, 64).sum() == 0
    back = tab.load_frame(None, 3, 96, 64, keys, cleared)
    assert np.allclose(mask_ui.alpha_from_editor(back, 96, 64), a, atol=1 / 255)


def test_keyframes_build_spec_and_materialise_with_ramps_and_invert():
    left = np.zeros((64, 96), np.float32)
    left[:, :48] = 1
    right = left[:, ::-1].copy()
    keys, _ = tab.set_keyframe(_editor(left, 2), {}, 0, 96, 64, 17)
    keys, rows = tab.set_keyframe(_editor(right, 2), keys, 8, 96, 64, 17)
    assert [r[0] for r in rows] == [0, 8]
    spec, pixels, reference, weights = tab.compute(None, keys, 96, 64, 17, 1, 0.5, 0, 0, False, 0)
    assert isinstance(spec, masks.MaskSpec) and sorted(spec.keyframes) == [0, 8]
    assert pixels.shape == (17, 64, 96)
    assert np.allclose(pixels[0], left) and np.allclose(pixels[8], right) and np.allclose(pixels[16], right)
    assert np.allclose(pixels[4], 0.5)  # halfway between the keyframes
    assert np.allclose(weights, masks.latent_weights(reference) * 0.5)
    # fade in over 8 frames, inverted
    spec, pixels, _, _ = tab.compute(None, keys, 96, 64, 17, 1, 1.0, 8, 0, True, 0)
    assert np.allclose(pixels[0], 0) and np.allclose(pixels[8], 1 - right) and np.allclose(pixels[4], 0.5 * 0.5)
    # remove a keyframe; errors are UserErrors with a clear message
    keys2, rows2 = tab.remove_keyframe(keys, 0)
    assert list(keys2) == [8] and len(rows2) == 1 and list(keys) == [0, 8]
    with pytest.raises(UserError, match="no keyframe at frame 5"):
        tab.remove_keyframe(keys, 5)
    with pytest.raises(UserError, match="outside"):
        tab.set_keyframe(_editor(left), keys, 17, 96, 64, 17)
    with pytest.raises(UserError, match="8n\\+1"):
        tab.compute(None, keys, 96, 64, 12, 1, 1.0, 0, 0, False, 0)
    with pytest.raises(UserError, match="multiple of 64"):
        tab.compute(None, keys, 96, 64, 17, 2, 1.0, 0, 0, False, 0)


def test_save_mask_writes_reference_size_npy(tmp_path):
    paint = np.zeros((64, 128), np.float32)
    paint[10:30, 20:60] = 1.0
    path, md = tab.save_mask(_editor(paint, 4), {}, 128, 64, 9, 2, 0.7, 0, 0, False, 0, out_dir=tmp_path / "m")
    arr = np.load(path)
    assert Path(path).parent == tmp_path / "m" and "Saved" in md
    assert arr.shape == (9, 32, 64) and arr.dtype == np.float32  # (F, H/D, W/D)
    expect = masks.downscale_to_reference(paint, 2)
    assert np.allclose(arr, expect[None], atol=1e-6)
    assert arr[:, 5:15, 10:30].min() == pytest.approx(1.0) and arr[:, 20:, :].max() == 0.0


def test_preview_shows_pixels_and_latent_tokens():
    paint = np.zeros((64, 96), np.float32)
    paint[:32, :32] = 1.0
    pix, lat, table, note = tab.preview(None, _editor(paint), {}, 4, 96, 64, 9, 1, 0.5, 0, 0, False, 0)
    assert pix.shape == lat.shape and pix.dtype == np.uint8 and pix.shape[2] == 3
    assert table == [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]  # 3x2 tokens, strength 0.5
    assert "latent frame 1 of 2" in note
    # the painted corner is tinted in the pixel view; the latent view is blocky (one colour per token cell)
    assert not np.array_equal(pix[0, 0], pix[-1, -1])
    strip = mask_ui.preview_strip(np.zeros((9, 64, 96, 3), np.uint8), np.repeat(paint[None], 9, 0),
                                  masks.latent_weights(np.repeat(paint[None], 9, 0)))
    assert strip.shape == (9, 64, 192, 3)


def test_generate_request_carries_mask_control_and_strength(tmp_path):
    control = tab.control_clip(None, 9, 96, 64, 1, tmp_path)
    from pipelines.video_io import probe

    info = probe(control)
    assert (info.width, info.height, info.frames) == (96, 64, 9)
    req = tab.generate_request("a cat", str(tmp_path / "m.npy"), control, 96, 64, 9, 0.4)
    assert req["mask"].endswith("m.npy") and req["attention_strength"] == 0.4
    assert req["controls"][0]["path"] == control
    with pytest.raises(UserError, match="prompt"):
        tab.generate_request("", "m.npy", control, 96, 64, 9, 0.4)


# ----------------------------------------------------------------------------------------------- into the engine

def test_painted_mask_flows_into_tiny_generation(tmp_path, tiny_model, tiny_engine, make_video):
    """The engine's reference weights == latent reduction of the painted pixels x strength."""
    from pipelines.requests import GenerateRequest

    paint = np.zeros((64, 96), np.float32)
    paint[0:40, 10:70] = 1.0  # hard edges inside token cells -> fractional weights
    key2 = np.zeros((64, 96), np.float32)
    key2[30:64, 50:96] = 1.0
    keys, _ = tab.set_keyframe(_editor(paint, 5), {}, 0, 96, 64, 9)
    keys, _ = tab.set_keyframe(_editor(key2, 5), keys, 8, 96, 64, 9)
    strength = 0.6
    path, _ = tab.save_mask(None, keys, 96, 64, 9, 1, strength, 0, 0, False, 0, out_dir=tmp_path)
    control = make_video("control.mp4", frames=9, width=96, height=64, fps=24)
    req = GenerateRequest.from_dict(tab.generate_request("a dog", path, str(control), 96, 64, 9, strength))

    state = tiny_model.bias_state
    captured = []
    original = state.set

    def spy(n_target, weights):
        captured.append((n_target, None if weights is None else weights.detach().cpu().numpy().copy()))
        return original(n_target, weights)

    state.set = spy
    try:
        tiny_engine.generate(req, previews=False, write=False)
    finally:
        del state.set  # back to the class method
    assert captured and captured[0][1] is not None
    n_target, got = captured[0]
    pixels = np.load(path)
    expect = masks.latent_weights(pixels) * np.float32(strength)  # (2, 2, 3)
    assert expect.shape == (2, 2, 3) and 0 < expect.min() < expect.max() <= strength
    assert len(np.unique(np.round(expect, 4))) > 6  # fractional weights, not a constant
    assert n_target == expect.size and got.shape == (expect.size,)
    np.testing.assert_allclose(got, expect.reshape(-1), atol=1e-6)


# ----------------------------------------------------------------------------------------------- browser

@pytest.mark.browser
def test_browser_paint_keyframe_and_use_mask(studio_server, page, tmp_path):
    import cv2

    from studio.security import user_outputs_dir
    from tests.conftest import screenshot
    from tests.helpers import textured_frames

    url, ctx, _ = studio_server
    img = tmp_path / "frame.png"
    cv2.imwrite(str(img), textured_frames(1, 96, 64, seed=1)[0][..., ::-1])
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Mask painter").click()
    page.wait_for_selector("#mask-editor .pixi-target canvas", timeout=30_000)
    with page.expect_file_chooser() as chooser:  # an upload button (no drop box to clip)
        page.click("#mask-upload")
    chooser.value.set_files(str(img))
    page.wait_for_function("document.querySelector('#mask-src-note').innerText.includes('frame.png')",
                           timeout=45_000)
    page.click("#mask-load")
    page.wait_for_timeout(1500)  # the background + empty layer arrive and the canvas redraws
    box = page.locator("#mask-editor .pixi-target canvas").first.bounding_box()
    assert box and box["width"] > 100
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 80, cy - 20)
    page.mouse.down()
    for i in range(1, 5):  # few moves: each one is a full software-rendered canvas frame in headless chromium
        page.mouse.move(cx - 80 + i * 40, cy - 20 + i * 10)
    page.mouse.up()
    page.click("#mask-setkey")
    page.wait_for_function("document.querySelector('#mask-keys').innerText.includes('%')", timeout=45_000)
    page.click("#mask-use")
    page.wait_for_function("document.querySelector('#mask-saved').innerText.includes('Saved')", timeout=45_000)
    saved = sorted((user_outputs_dir(ctx.outputs_dir, "local") / "masks").glob("mask-*.npy"))
    assert saved
    arr = np.load(saved[-1])
    assert arr.shape == (9, 32, 64)  # the generator's defaults: 128x64, 9 frames, D=2 -> reference 64x32
    assert arr.max() > 0.5 and 0 < (arr[0] > 0.5).mean() < 0.5  # a stroke, not the whole frame
    page.wait_for_function("document.querySelector('#mask-note').innerText.includes('latent frame')",
                           timeout=45_000)
    shot = screenshot(page, "masks_tab")
    assert shot.stat().st_size > 10_000


def test_generate_with_mask_job_runs_on_the_studio(studio_server, tmp_path):
    """What "Generate with this mask" submits (mask .npy + control clip + strength) runs as a "generate" job."""
    import time

    _, ctx, _ = studio_server
    work = Path(ctx.outputs_dir) / "local" / tmp_path.name  # the tab writes into the user's own folder
    work.mkdir(parents=True, exist_ok=True)
    paint = np.zeros((64, 96), np.float32)
    paint[:, :40] = 1.0
    path, _ = tab.save_mask(_editor(paint, 5), {}, 96, 64, 9, 1, 0.5, 0, 0, False, 2.0, out_dir=work)
    control = tab.control_clip(None, 9, 96, 64, 1, work)
    jid = ctx.jobs.submit("local", "generate", tab.generate_request("a fox", path, control, 96, 64, 9, 0.5))
    deadline = time.time() + 120
    while time.time() < deadline:
        job = ctx.jobs.get(jid, "local")
        if job.status.value in ("done", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.5)
    assert job.status.value == "done", job.error
    assert Path(job.result["video"]).is_file()


def test_painter_frames_are_fitted_as_they_are_decoded_with_the_same_pixels(make_video):
    """The painter's background frame and clip are resized frame by frame while decoding (a 4K clip never sits
    in memory at 4K); the pixels equal decoding everything, then resizing."""
    from pipelines.mask_ui import fit_frame
    from pipelines.video_io import read_video, resize_cover_crop
    from studio.tabs.masks import read_frame, read_frames

    src = make_video("paint-src.mp4", frames=9, width=320, height=240)
    full, _ = read_video(src)
    assert np.array_equal(read_frame(str(src), 5, 128, 64), fit_frame(full[5], 128, 64))
    idx = np.minimum(np.arange(17), 8)  # longer than the clip: the last frame held
    want, _ = resize_cover_crop(full, 128, 64, indices=idx)
    assert np.array_equal(read_frames(str(src), 17, 128, 64), want)
