"""The guidance / soundtrack / keyframe controls every generating tab shares (studio.sampling): their defaults
are the request's (Lightricks' LTX_2_3_PARAMS), they turn into GenerateRequest fields and back, and in the
browser a soundtrack switch and a keyframe reach the job."""
from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.requests import GenerateRequest, KeyframeInput


def test_defaults_are_the_requests_and_round_trip(tmp_path):
    from studio.sampling import SamplingExtras

    with gr.Blocks():
        x = SamplingExtras(prefix="t")
    defaults = [c.value for c in x.components]
    f = x.fields(defaults)
    r = GenerateRequest(prompt="p")
    assert (f["audio"], f["stg_scale"], f["stg_blocks"], f["guidance_rescale"], f["modality_scale"],
            f["audio_guidance_scale"]) == (r.audio, r.stg_scale, r.stg_blocks, r.guidance_rescale, r.modality_scale,
                                           r.audio_guidance_scale)
    assert f["keyframes"] == []  # no image, no keyframe
    img = tmp_path / "k.png"
    img.write_bytes(b"png")
    vals = list(defaults)
    vals[0], vals[1], vals[2] = False, 2.5, "3; 7"
    vals[6:9] = [str(img), 16, 0.5]
    f = x.fields(vals)
    assert f["audio"] is False and f["stg_scale"] == 2.5 and f["stg_blocks"] == [3, 7]
    assert f["keyframes"] == [KeyframeInput(path=str(img), frame=16, strength=0.5)]
    back = x.values_from(GenerateRequest(prompt="p", frames=33, **f))
    assert back[:3] == [False, 2.5, "3, 7"] and back[6:9] == [str(img), 16, 0.5]
    with pytest.raises(UserError, match="STG blocks"):
        x.fields([True, 1.0, "twenty", 0.7, 3.0, 7.0] + [None, 8, 1.0] * 3)


@pytest.mark.browser
def test_browser_soundtrack_switch_and_a_keyframe_reach_the_job(studio_server, page, tmp_path):
    import cv2

    url, ctx, _ = studio_server
    img = tmp_path / "keyframe.png"
    cv2.imwrite(str(img), np.full((64, 96, 3), (40, 200, 90), np.uint8))
    before = set(ctx.outputs_dir.glob("local/*/output.json"))
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Generate").click()
    page.fill("#gen-frames input", "17")
    page.get_by_text("Guidance (Full schedule) and soundtrack").click()
    page.get_by_label("Soundtrack (generated with the video, AAC)").uncheck()
    page.get_by_text("Images at other frames (keyframes)").click()
    page.set_input_files("#gen-kf0 input[type=file]", str(img))
    page.wait_for_selector("#gen-kf0 img", timeout=30_000)
    page.click("#gen-go")
    page.wait_for_selector('#gen-progress [data-status="done"]', timeout=180_000)
    new = set(ctx.outputs_dir.glob("local/*/output.json")) - before
    assert len(new) == 1
    req = json.loads(new.pop().read_text())["request"]
    assert req["audio"] is False
    assert [(k["frame"], k["strength"]) for k in req["keyframes"]] == [(8, 1.0)]
