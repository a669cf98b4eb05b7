"""Union control tab: the preprocess job on the bundled sample clip, missing-weight refusals, the request the
tab builds, and the whole flow in a browser (sample clip -> canny -> tiny generation)."""
from __future__ import annotations


import gradio as gr
import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.presets import sample_clip_path
from studio.ui import guard
from tests.conftest import screenshot


@pytest.fixture
def union_ctx(tmp_path, monkeypatch):
    """A minimal studio context: a real JobManager in a temp folder, an empty models folder."""
    from studio.jobs import JobManager
    from studio.kinds.preprocess import register

    for var in ("ICLORA_MODELS_DIR", "ICLORA_DEPTH_DIR", "ICLORA_POSE_DIR"):
        monkeypatch.delenv(var, raising=False)
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    from studio.context import StudioConfig, StudioContext

    jobs = JobManager(tmp_path / "out")
    ctx = StudioContext(config=StudioConfig(outputs_dir=str(tmp_path / "out"), models_dir=str(models)), jobs=jobs,
                        service=None)
    register(ctx)
    yield ctx
    jobs.shutdown(timeout=5)


def _make(ctx, kind="canny", width=128, height=64, frames=9, fps=24.0, clip=None, **opts):
    from studio.kinds.preprocess import submit_preprocess
    from studio.tabs.union import wait_job

    o = dict(low=92, high=200, blur=0.0, invert=False) | opts
    jid = submit_preprocess(ctx, str(clip or sample_clip_path()), kind, o["low"], o["high"], o["blur"],
                            o["invert"], width, height, frames, fps, None)
    *_, job = wait_job(ctx, jid, "local", timeout=60)
    return job.result


@pytest.mark.parametrize("frames, size", [(9, (128, 64)), (33, (192, 128)), (57, (64, 64))])
def test_make_control_canny_on_sample_has_exact_target_shape(union_ctx, frames, size):
    from pipelines.video_io import probe, read_video
    from studio.tabs.union import scrub_frames

    res = _make(union_ctx, width=size[0], height=size[1], frames=frames)  # 57 > the sample's 49: padded
    for key in ("control", "input"):
        info = probe(res[key])
        assert (info.width, info.height, info.frames, info.fps) == (*size, frames, 24.0), key
    ctl, _ = read_video(res["control"])
    edge_share = (ctl.max(axis=-1) > 128).mean()
    assert 0.005 < edge_share < 0.5, edge_share  # real edges of the moving shapes, not blank, not noise
    assert "canny" in res["report"]
    a, b = scrub_frames(res, frames - 1)
    assert a.shape == b.shape and a.shape[2] == 3
    k = a.shape[0] // size[1]  # whole-number upscale of small sizes for the display, same for both
    assert k >= 1 and a.shape[:2] == (size[1] * k, size[0] * k)
    a0, _ = scrub_frames(res, 0)
    assert not np.array_equal(a0, a)  # the scrubber shows different frames


def test_canny_thresholds_change_the_control(union_ctx):
    from pipelines.video_io import read_video

    strict = read_video(_make(union_ctx, low=200, high=255)["control"])[0]
    loose = read_video(_make(union_ctx, low=5, high=20)["control"])[0]
    assert (loose > 128).sum() > (strict > 128).sum()


def test_depth_without_weights_is_a_clear_error_listing_paths(union_ctx):
    from studio.kinds.preprocess import submit_preprocess
    from studio.tabs.union import kind_notice

    with pytest.raises(gr.Error) as exc:
        guard(submit_preprocess)(union_ctx, str(sample_clip_path()), "depth", 92, 200, 0, False, 128, 64, 9, 24, None)
    msg = str(exc.value)
    assert str(union_ctx.models_dir / "depth-anything-v2-small") in msg and "model.safetensors" in msg
    assert "Traceback" not in msg
    assert union_ctx.jobs.list("local") == []  # refused before any job was queued
    note = kind_notice(union_ctx.models_dir, "pose")
    assert "missing weights" in note and str(union_ctx.models_dir / "dwpose") in note
    assert kind_notice(union_ctx.models_dir, "canny") == ""


def test_no_clip_and_bad_size_are_user_errors(union_ctx):
    from studio.kinds.preprocess import submit_preprocess

    with pytest.raises(UserError, match="no clip"):
        submit_preprocess(union_ctx, None, "canny", 92, 200, 0, False, 128, 64, 9, 24, None)
    with pytest.raises(UserError, match="8n\\+1"):
        submit_preprocess(union_ctx, str(sample_clip_path()), "canny", 92, 200, 0, False, 128, 64, 10, 24, None)


def _req_kwargs(**kw):
    base = dict(prompt="a fox", negative="", control_path="/x/control.mp4", control_kind="canny",
                control_strength=0.8, ic_choice="(none)", ic_upload=None, ic_strength=1.0, lora_table=None,
                attention=0.7, use_mask=True, mask_path="/x/mask.npy", image=None, image_strength=1.0, model="tiny",
                schedule="distilled", steps=30, cfg=3.0, stages=1, tier="auto", seed=5, width=128, height=64,
                frames=9, fps=24)
    return base | kw


def test_build_request_carries_control_mask_and_loras(union_ctx):
    from studio.tabs.union import build_request

    lora_dir = union_ctx.models_dir / "loras"
    (lora_dir / "union-control.safetensors").write_bytes(b"x")
    (lora_dir / "style.safetensors").write_bytes(b"x")
    req = build_request(union_ctx, **_req_kwargs(ic_choice=str(lora_dir / "union-control.safetensors"),
                                                 ic_strength=0.9, lora_table=[["style", 0.5], ["", 1.0]]))
    assert req.controls[0].path == "/x/control.mp4" and req.controls[0].strength == 0.8
    assert req.controls[0].kind.value == "canny"
    assert req.mask == "/x/mask.npy" and req.attention_strength == 0.7
    assert [(lo.path.split("/")[-1], lo.weight) for lo in req.loras] == [("union-control.safetensors", 0.9),
                                                                        ("style.safetensors", 0.5)]
    assert build_request(union_ctx, **_req_kwargs(use_mask=False)).mask is None
    with pytest.raises(UserError, match="'missing' not found"):
        build_request(union_ctx, **_req_kwargs(lora_table=[["missing", 1.0]]))
    with pytest.raises(UserError, match="Make control"):
        build_request(union_ctx, **_req_kwargs(control_path=None))


@pytest.mark.browser
def test_browser_union_tab_canny_then_tiny_generation(studio_server, page):
    url, _, _ = studio_server
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Union control").click()
    page.click("#union-sample")
    page.wait_for_selector("#union-clip video", timeout=30_000)
    page.click("#union-make")
    page.wait_for_selector('#union-pre-progress [data-status="done"]', timeout=60_000)
    page.wait_for_selector("#union-ctl-frame img", timeout=30_000)
    page.wait_for_selector("#union-control-video video", timeout=30_000)
    assert "canny" in page.inner_text("#union-pre-report")
    page.fill("#union-prompt textarea", "a red ball rolling past a yellow box")
    page.click("#union-go")
    page.wait_for_selector('#union-progress [data-status="done"]', timeout=120_000)
    page.wait_for_selector("#union-video video", timeout=30_000)
    page.wait_for_selector("#union-used-control video", timeout=30_000)
    assert ".mp4" in (page.get_attribute("#union-video video", "src") or "")
    page.wait_for_timeout(500)
    shot = screenshot(page, "union_tab")
    assert shot.stat().st_size > 10_000


def _tab_fn(demo, name):
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_preset_fills_the_form_and_keeps_tiny_size(studio_server):
    _, _, demo = studio_server
    apply = _tab_fn(demo, "apply_preset")
    vals = apply("union-canny")
    prompt, negative, kind, low, high, blur = vals[:6]
    assert kind == "canny" and (low, high, blur) == (92, 200, 0.0) and "cinematic" in prompt
    note = vals[-1]
    assert "Canny" in note and "tiny model: kept the small test size" in note and "union-control" in note
    assert apply("union-pose")[2] == "pose"
    with pytest.raises(gr.Error, match="no preset"):
        apply("nope")


def test_preprocessed_control_reaches_the_model_losslessly(union_ctx):
    """The control the model reads is exactly what the preprocessor made (FFV1 .mkv); people get an h264 preview.
    Through h264 (yuv420p) 1 px canny edges blur: the old .mp4 control differed from the preprocessor's output."""
    from pipelines.control import run_control
    from pipelines.control.types import ControlKind, resolve_options
    from pipelines.video_io import ConformTarget, conform_file, read_video
    from studio.kinds.preprocess import control_options

    res = _make(union_ctx, width=128, height=64, frames=9)
    assert res["control"].endswith(".mkv") and res["preview"].endswith(".mp4")
    target = ConformTarget(width=128, height=64, frames=9, fps=24.0, pad=True)
    frames, _, rep = conform_file(str(sample_clip_path()), target)
    expected, _ = run_control(ControlKind.CANNY, frames, target,
                              resolve_options(ControlKind.CANNY, control_options("canny", 92, 200, 0.0, False)),
                              None, None, fps=rep.fps)
    got, _ = read_video(res["control"])
    assert np.array_equal(got, expected)
    seen, _ = read_video(res["preview"])
    assert seen.shape == expected.shape and not np.array_equal(seen, expected)  # the lossy preview is only for eyes
