"""Motion tracks tab: the Python handlers (import / export / preview) and the canvas sketcher in a real browser."""
from __future__ import annotations

import json

import cv2
import gradio as gr
import numpy as np
import pytest

from pipelines.errors import UserError
from studio.tabs import tracks as tab
from studio.ui import guard
from tests.conftest import screenshot


# ------------------------------------------------------------------------------------------- handlers ---

def test_import_comfyui_json_becomes_canvas_value(tmp_path):
    f = tmp_path / "comfy.json"
    f.write_text(json.dumps([[{"x": 10, "y": 20}, {"x": 100, "y": 50}], [{"x": 5, "y": 6}]]))
    value = tab.import_value(str(f), tab.blank_value(320, 200, 33, 12), keep_canvas=True)
    obj = json.loads(value)
    assert (obj["width"], obj["height"], obj["frames"], obj["fps"]) == (320, 200, 33, 12)
    assert [[(p["x"], p["y"]) for p in t["points"]] for t in obj["tracks"]] == [[(10, 20), (100, 50)], [(5, 6)]]


def test_import_own_format_scales_onto_the_loaded_background(tmp_path):
    f = tmp_path / "own.json"
    f.write_text(json.dumps({"format": "ic-lora-studio/tracks", "version": 1, "width": 100, "height": 50,
                             "frames": 9, "fps": 24, "tracks": [{"points": [{"x": 50, "y": 25, "frame": 0},
                                                                            {"x": 100, "y": 50, "frame": 8}]}]}))
    kept = json.loads(tab.import_value(str(f), tab.blank_value(400, 100, 9), keep_canvas=False))
    assert kept["width"] == 100 and kept["tracks"][0]["points"][0] == {"x": 50, "y": 25, "frame": 0}
    scaled = json.loads(tab.import_value(str(f), tab.blank_value(400, 100, 9), keep_canvas=True))
    assert scaled["width"] == 400 and scaled["tracks"][0]["points"][1] == {"x": 400, "y": 100, "frame": 8}


def test_bad_json_is_a_gr_error_naming_the_path(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([[{"x": 1, "y": 2}, {"x": "left", "y": 3}]]))
    with pytest.raises(gr.Error) as exc:
        guard(tab.import_value)(str(f), tab.blank_value(), True)
    assert "tracks[0][1].x" in str(exc.value) and "Traceback" not in str(exc.value)
    g = tmp_path / "broken.json"
    g.write_text("{not json")
    with pytest.raises(gr.Error, match="not valid JSON"):
        guard(tab.import_value)(str(g), tab.blank_value(), True)
    with pytest.raises(UserError, match="no tracks"):
        tab.export_file(tab.blank_value(), tmp_path)


def test_export_and_preview_render_the_canvas_value(tmp_path):
    from pipelines.video_io import probe, read_video

    value = json.dumps({"format": "ic-lora-studio/tracks", "version": 1, "width": 320, "height": 200, "frames": 9,
                        "fps": 12, "tracks": [{"points": [{"x": 40, "y": 100}, {"x": 280, "y": 100}]}]})
    path = tab.export_file(value, tmp_path)
    assert json.loads(open(path).read())["tracks"][0]["points"][1] == {"x": 280, "y": 100}
    mp4 = tab.render_preview(value, tmp_path)
    info = probe(mp4)
    assert (info.frames, info.height) == (9, tab.PREVIEW_SHORT_SIDE) and info.width == 410
    frames, _ = read_video(mp4)
    # last frame: the newest dot is red in the human preview (RGB), at x = 280/320 of the width
    last = frames[-1].astype(int)
    y, x = int(100 / 200 * info.height), int(280 / 320 * info.width)
    r, g, b = last[y, x]
    assert r > 180 and g < 80 and b < 80, (r, g, b)
    assert tab.render_preview(tab.blank_value(), tmp_path) is None


def test_extract_tracks_from_a_clip_lands_on_the_canvas(make_video):
    clip = make_video(frames=9, width=128, height=96, fps=12)
    value = json.loads(tab.extract_value(str(clip), tab.blank_value(256, 192, 9, 12), 4))
    assert (value["width"], value["height"], value["frames"]) == (256, 192, 9)
    assert 1 <= len(value["tracks"]) <= 4
    for t in value["tracks"]:
        assert all(0 <= p["x"] <= 256 and 0 <= p["y"] <= 192 and 0 <= p["frame"] < 9 for p in t["points"])
    with pytest.raises(UserError, match="upload a video"):
        tab.extract_value(None, tab.blank_value(), 4)


# ------------------------------------------------------------------------------------------- browser ---

def _png(path, w=320, h=200):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), np.full_like(xx, 120)], -1).astype(np.uint8)
    cv2.circle(img, (w // 2, h // 2), 30, (255, 255, 255), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.mark.browser
def test_browser_sketch_preview_export(studio_server, page, tmp_path):
    url, _, _ = studio_server
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Motion tracks").click()
    page.wait_for_selector("#tracks-canvas canvas.tk-canvas", timeout=30_000)
    page.set_input_files("#tracks-bg-image input[type=file]", str(_png(tmp_path / "bg.png")))
    page.wait_for_function("document.querySelector('#tracks-status')?.innerText.includes('320×200')",
                           timeout=30_000)
    page.wait_for_function("document.querySelector('#tracks-canvas .tk-info').innerText.includes('320×200')",
                           timeout=10_000)
    canvas = page.locator("#tracks-canvas canvas.tk-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()

    def at(fx, fy):
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    clicks = [(0.2, 0.3), (0.5, 0.6), (0.8, 0.35)]
    for fx, fy in clicks:
        page.mouse.click(*at(fx, fy))
        page.wait_for_timeout(150)
    # drag the middle point down a little
    page.mouse.move(*at(0.5, 0.6))
    page.mouse.down()
    page.mouse.move(*at(0.5, 0.7), steps=5)
    page.mouse.up()
    clicks[1] = (0.5, 0.7)
    # a second, static track
    page.click("#tracks-canvas [data-act=static]")
    page.mouse.click(*at(0.3, 0.8))
    page.wait_for_function("document.querySelectorAll('#tracks-canvas .tk-chip').length === 2", timeout=5_000)

    page.wait_for_selector("#tracks-preview video[src]", timeout=30_000)
    src = page.get_attribute("#tracks-preview video", "src")
    assert src and ".mp4" in src

    page.click("#tracks-export-btn")
    link = page.wait_for_selector("#tracks-export a[href]", timeout=30_000)
    body = page.request.get(link.get_attribute("href")).text()
    data = json.loads(body)
    assert data["format"] == "ic-lora-studio/tracks" and (data["width"], data["height"]) == (320, 200)
    assert [len(t["points"]) for t in data["tracks"]] == [3, 1]
    got = [(p["x"], p["y"]) for p in data["tracks"][0]["points"]] + [(data["tracks"][1]["points"][0]["x"],
                                                                       data["tracks"][1]["points"][0]["y"])]
    want = [(fx * 320, fy * 200) for fx, fy in clicks + [(0.3, 0.8)]]
    for (gx, gy), (wx, wy) in zip(got, want):
        assert abs(gx - wx) < 3 and abs(gy - wy) < 3, (got, want)
    # edit tools (each edit re-renders the preview): subdivide track 1 (3 -> 5 points), make it timed (frames spread over the clip)
    page.locator("#tracks-canvas .tk-chip").first.click()
    page.click("#tracks-canvas [data-act=subdivide]")
    page.wait_for_function("document.querySelector('#tracks-canvas .tk-info').innerText.includes('6 points')",
                           timeout=5_000)
    page.wait_for_function("s => document.querySelector('#tracks-preview video')?.getAttribute('src') !== s",
                           arg=src, timeout=30_000)
    page.check("#tracks-canvas .tk-timed")
    page.wait_for_function("document.querySelector('#tracks-canvas .tk-chip').innerText.includes('timed')",
                           timeout=5_000)
    # per-point timing: select the first point, move it to frame 1 with the frame slider
    box = canvas.bounding_box()
    page.mouse.click(*at(*clicks[0]))
    page.locator("#tracks-canvas .tk-frame").fill("1")
    page.wait_for_function("document.querySelector('#tracks-canvas .tk-frame-label').innerText"
                           ".includes('point 1 at frame 1')", timeout=5_000)
    page.wait_for_timeout(500)
    shot = screenshot(page, "tracks_tab")
    assert shot.stat().st_size > 10_000


def _tiny_ic_lora(transformer, path):
    """A random rank-4 IC-LoRA (D=2) for the tiny model, in the official format."""
    import torch

    from pipelines.models.lora import save_lora

    g = torch.Generator().manual_seed(0)
    mods = dict(transformer.named_modules())
    t = {}
    for m in ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_v"]:
        lin = mods[m]
        t[f"diffusion_model.{m}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) * 0.05
        t[f"diffusion_model.{m}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g) * 0.05
    return save_lora(path, t, {"reference_downscale_factor": "2"})


def test_generate_request_with_motion_track_lora_runs_on_tiny(studio_server, studio_client, tiny_model, tiny_engine,
                                                              tmp_path):
    from pathlib import Path

    from pipelines.tracks import render_tracks
    from pipelines.video_io import probe, read_video
    from studio.context import LOCAL_OWNER

    _, ctx, _ = studio_server
    tmp_path = Path(ctx.outputs_dir) / LOCAL_OWNER / tmp_path.name  # the tab writes into the user's own folder
    tmp_path.mkdir(parents=True, exist_ok=True)
    value = json.dumps({"format": "ic-lora-studio/tracks", "version": 1, "width": 320, "height": 160, "frames": 9,
                        "fps": 12, "tracks": [{"points": [{"x": 20, "y": 80}, {"x": 300, "y": 80}]}]})
    first = _png(tmp_path / "first.png", 320, 160)
    lora = _tiny_ic_lora(tiny_model.pipe.transformer, tmp_path / "motion.safetensors")
    with pytest.raises(UserError, match="LoRA"):
        tab.build_request(value, None, str(first), "a ball", 128, 64, 9, 12, 1.0, 0, "tiny")
    # the control video is rendered by a light job (never in the request thread), then goes into the request
    rendered = tab.render_control(ctx, LOCAL_OWNER, value, 128, 64, 9, 12)
    req = tab.build_request(value, str(lora), str(first), "a ball", 128, 64, 9, 12, 1.0, 0, "tiny", rendered)
    (control,) = req.controls
    assert control.kind.value == "motion_track" and req.loras[0].path == str(lora)
    info = probe(control.path)
    assert (info.width, info.height, info.frames) == (128, 64, 9)
    # the control video is BGR: the newest (red) dot reads back as blue from the RGB decoder
    # (at 64 px the bilinear downscale from the 1080 canvas can miss the dots: check at 512x256)
    big = tab.render_control(ctx, LOCAL_OWNER, value, 512, 256, 9, 12)
    # lossless: the file holds exactly the renderer's frames, and so does what the engine's reader hands on
    want = render_tracks(tab.parse_value(value), 512, 256)
    assert big.endswith(".mkv") and np.array_equal(read_video(big)[0], want)
    req_big = tab.build_request(value, str(lora), str(first), "a ball", 512, 256, 9, 12, 1.0, 0, "tiny", big)
    refs = tiny_engine.prepare_references(req_big, 1, 512, 256)
    assert np.array_equal(np.rint(refs.conditions[0].frames * 255).astype(np.uint8), want)
    last = read_video(big)[0][-1].astype(int)
    r, g, b = last[128, 480]  # the newest dot, pure red in RGB, at the track's end
    assert b > 150 and r < 80 and g < 80, (r, g, b)
    r, g, b = last[128, 32]  # 8 frames old: orange (1, .48, 0) in RGB, stored swapped
    assert b > 150 and 60 < g < 170 and r < 80, (r, g, b)
    jid = ctx.jobs.submit(LOCAL_OWNER, "generate", req.to_dict())
    job = studio_client.predict(jid, 180, api_name="/wait")
    assert job["status"] == "done", job
    out = probe(job["result"]["video"])
    assert (out.width, out.height, out.frames) == (128, 64, 9)


def test_preview_pruning_survives_a_file_removed_by_another_render(tmp_path, monkeypatch):
    """Two renders at once: one lists an old preview, the other deletes it before the first reads its time
    stamp. That was an 'internal error' while drawing (issue 13); now the vanished file is simply skipped."""
    import os
    import pathlib
    import time

    old = tmp_path / "preview-1.mp4"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 500, time.time() - 500))
    gone = tmp_path / "preview-2.mp4"
    gone.write_bytes(b"x")
    real_stat = pathlib.Path.stat

    def racing_stat(self, *a, **kw):
        if self.name == "preview-2.mp4":
            raise FileNotFoundError(self)  # deleted by the other render after the listing
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(pathlib.Path, "stat", racing_stat)
    tab.prune_previews(tmp_path)
    monkeypatch.undo()
    assert not old.exists() and gone.exists()


def test_background_of_another_aspect_sets_the_output_size_and_says_so(make_video):
    """A 320x240 background on a 128x64 output: the output follows the 4:3 aspect on the D=2 grid."""
    w, h, note = tab.aspect_note(320, 240, 128, 64, downscale=2)
    assert (w, h) == (256, 192) and "256x192" in note and "320x240" in note and "it was 128x64" in note
    assert tab.aspect_note(256, 128, 128, 64, downscale=2) == (128, 64, "")  # same aspect: unchanged
    w, h, note = tab.aspect_note(1920, 1080, 128, 64, downscale=2)
    assert w % 64 == 0 and h % 64 == 0 and "cropped a little" in note
