"""Control clean-up (issue 15.4): temporal smoothing, deflicker, denoise, edges, fps match; measured, recorded in
the control's report and readable back for the output metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.control.cleanup import (CleanupOptions, clean_control, control_provenance, deflicker,
                                       edge_contrast, frame_change, match_fps, median_denoise, temporal_gaussian,
                                       thicken_edges)
from pipelines.errors import UserError


def flickering_control(frames=33, h=64, w=96, seed=0) -> np.ndarray:
    """A static edge map (a rectangle outline) plus edge pixels that flicker on and off at random every frame:
    what canny does on a noisy clip."""
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w), np.uint8)
    base[16, 16:80] = base[48, 16:80] = 255
    base[16:49, 16] = base[16:49, 80] = 255
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        f = base.copy()
        f[rng.random((h, w)) < 0.04] = 255  # flicker: ~4% of pixels light up for one frame
        out[t] = f[..., None]
    return out


def test_temporal_smoothing_lowers_flicker_by_a_measured_factor():
    ctl = flickering_control()
    before = frame_change(ctl)
    out, steps = clean_control(ctl, {"temporal_smooth": 2.0}, kind="canny")
    after = frame_change(out)
    factor = before / after
    print(f"frame-to-frame change {before:.3f} -> {after:.3f}: {factor:.2f}x lower")
    assert factor >= 5.0  # measured 5.5x (sigma 1: 2.6x, 1.5: 4.0x, 3: 8.7x)
    assert steps[0].name == "temporal smoothing"
    assert steps[0].change_before == pytest.approx(before, abs=1e-3) and steps[0].change_after == pytest.approx(after, abs=1e-3)
    # the static structure survives: the rectangle's pixels stay bright, the background dark
    mean = out.astype(np.float32).mean(axis=0)[..., 0]
    assert mean[16, 20:76].min() > 200 and np.median(mean) < 25
    assert out.shape == ctl.shape and out.dtype == np.uint8


def test_smoothing_is_centred_no_lag():
    """A step in brightness at frame 16 stays centred at 16 (an EMA would move it later)."""
    f = np.zeros((33, 8, 8, 3), np.uint8)
    f[16:] = 200
    out = temporal_gaussian(f, 2.0)[:, 0, 0, 0].astype(float)
    half = np.argmax(out >= 100)
    assert half in (16,) and out[15] < 100 <= out[16]
    assert abs(out[15] + out[16] - 200) <= 2  # symmetric about the step


def test_deflicker_evens_out_per_frame_gain():
    rng = np.random.default_rng(1)
    scene = rng.integers(40, 200, (1, 32, 32, 3)).astype(np.float32)
    gains = 1.0 + 0.2 * (np.arange(25) % 2 * 2 - 1)  # 0.8, 1.2, 0.8, ...
    ctl = np.clip(scene * gains[:, None, None, None], 0, 255).astype(np.uint8)
    out, pct = deflicker(ctl)
    assert frame_change(ctl) / frame_change(out) > 5
    assert pct > 10


def test_denoise_removes_specks_keeps_lines():
    f = np.zeros((3, 40, 40, 3), np.uint8)
    f[:, 10:13, :] = 255  # a 3 px line
    f[:, 30, 5] = f[:, 25, 33] = 255  # isolated specks
    out = median_denoise(f, 1)
    assert out[:, 30, 5].max() == 0 and out[:, 25, 33].max() == 0
    assert (out[:, 11, 2:38] == 255).all()


def test_edge_thickness_and_contrast():
    f = np.zeros((2, 21, 21, 3), np.uint8)
    f[:, 10, :] = 255
    thick = thicken_edges(f, 2)
    assert (thick[0, 8:13, 5, 0] == 255).all() and thick[0, 7, 5, 0] == 0
    gray = np.full((1, 4, 4, 3), 100, np.uint8)
    gray[0, 0, 0] = 180
    c = edge_contrast(gray, 3.0)
    assert c[0, 1, 1, 0] == round((100 - 127.5) * 3 + 127.5) and c[0, 0, 0, 0] == 255


def test_match_fps_nearest_and_blend():
    from pipelines.video_io import resample_fps_indices

    f = np.stack([np.full((4, 4, 3), 8 * i, np.uint8) for i in range(31)])  # 30 fps, 1 s
    near = match_fps(f, 30.0, 24.0, "nearest")
    assert len(near) == 25 and np.array_equal(near[:, 0, 0, 0], f[resample_fps_indices(31, 30, 24), 0, 0, 0])
    blend = match_fps(f, 30.0, 24.0, "blend")
    assert len(blend) == 25
    # output frame 1 sits at 1/24 s = source position 1.25: 0.75 * 8 + 0.25 * 16 = 10
    assert blend[1, 0, 0, 0] == 10
    assert blend[4, 0, 0, 0] == 40  # position 5.0: exactly source frame 5
    assert match_fps(f, 24.0, 24.0, "blend") is f


def test_options_are_checked():
    with pytest.raises(UserError, match="unknown clean-up option"):
        CleanupOptions.from_dict({"smooth": 1})
    with pytest.raises(UserError, match="temporal_smooth"):
        CleanupOptions.from_dict({"temporal_smooth": 50})
    with pytest.raises(UserError, match="canny and passthrough"):
        clean_control(np.zeros((2, 8, 8, 3), np.uint8), {"edge_thickness": 1}, kind="depth")
    assert not CleanupOptions().active
    assert CleanupOptions.from_dict({"deflicker": "yes"}).deflicker is True


def test_run_control_records_cleanup_in_report_and_sidecar(tmp_path, make_video):
    from pipelines.control import run_control, save_control
    from pipelines.video_io import ConformTarget, read_comment

    clip = make_video(frames=25, fps=30.0)
    target = ConformTarget(width=96, height=64, frames=17, fps=24.0)
    raw, rep0 = run_control("canny", clip, target)
    out, rep = run_control("canny", clip, target, cleanup={"temporal_smooth": 1.0, "edge_contrast": 2.0,
                                                           "fps_mode": "blend"})
    assert out.shape == raw.shape == (17, 64, 96, 3)
    assert rep0.cleanup["fps"].endswith("by the nearest frame in time") and rep0.cleanup["steps"] == []
    c = rep.cleanup
    assert [s["name"] for s in c["steps"]] == ["temporal smoothing", "edge contrast"]
    assert "blending neighbouring frames" in c["fps"] and c["options"]["temporal_smooth"] == 1.0
    assert any(n.startswith("clean-up (temporal smoothing, edge contrast)") for n in rep.notes)
    assert frame_change(out) < frame_change(raw)
    path = save_control(tmp_path / "ctl.mp4", out, rep)
    assert json.loads(read_comment(path))["cleanup"]["steps"][0]["name"] == "temporal smoothing"
    prov = control_provenance(path)
    assert prov["kind"] == "canny" and prov["cleanup"]["options"]["edge_contrast"] == 2.0
    assert control_provenance(clip) is None  # a user's own file has no report


def test_cli_control_cleanup_flags(tmp_path, make_video, capsys):
    from pipelines.cli import main

    clip = make_video(frames=17)
    out = tmp_path / "c.mp4"
    assert main(["control", "canny", str(clip), "--out", str(out), "--smooth", "1.5", "--denoise", "1",
                 "--edge-thickness", "1"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in rep["cleanup"]["steps"]] == ["denoise", "temporal smoothing", "edge thickness"]
    assert main(["control", "canny", str(clip), "--out", str(out), "--smooth", "99"]) == 2


class _Job:
    def __init__(self, out_dir):
        self.out_dir, self.outputs, self.events = str(out_dir), [], []

    def progress(self, f, m=None, p=None):
        self.events.append((f, m))

    def raise_if_cancelled(self):
        pass

    def add_output(self, p):
        self.outputs.append(str(p))


def test_preprocess_job_keeps_before_and_after(tmp_path, make_video):
    """The preprocess job with a clean-up: the control before it is kept as scrubber frames (the before/after
    view), the clean-up is in the result and the control's report."""
    from studio.kinds.preprocess import run_preprocess_job

    clip = make_video(frames=17)
    job = _Job(tmp_path)
    res = run_preprocess_job({"clip": str(clip), "kind": "canny", "options": {}, "width": 96, "height": 64,
                              "frames": 17, "fps": 24.0, "cleanup": {"temporal_smooth": 1.5}}, job)
    before, after = np.load(res["scrub_control_raw"]), np.load(res["scrub_control"])
    assert before.shape == after.shape and frame_change(after) < frame_change(before)
    assert res["cleanup"]["steps"][0]["name"] == "temporal smoothing"
    assert "clean-up (temporal smoothing)" in res["report"]
    assert control_provenance(res["control"])["cleanup"]["options"]["temporal_smooth"] == 1.5
    res2 = run_preprocess_job({"clip": str(clip), "kind": "canny", "options": {}, "width": 96, "height": 64,
                               "frames": 17, "fps": 24.0}, _Job(tmp_path / "b"))
    assert "scrub_control_raw" not in res2 and res2["cleanup"] is None


def test_union_tab_cleanup_fields_and_before_after(tmp_path, make_video):
    from studio.tabs.union import cleanup_options, raw_frame_view
    from studio.kinds.preprocess import run_preprocess_job

    assert cleanup_options("canny", 0, 0, False, "nearest", 0, 1.0) is None
    assert cleanup_options("depth", 1.5, 0, False, "nearest", 3, 2.0) == {
        "temporal_smooth": 1.5, "denoise": 0, "deflicker": False, "fps_mode": "nearest"}  # no edge steps on depth
    opts = cleanup_options("canny", 1.0, 1, True, "blend", 2, 2.0)
    assert opts["edge_thickness"] == 2 and opts["fps_mode"] == "blend"
    res = run_preprocess_job({"clip": str(make_video(frames=17)), "kind": "canny", "options": {}, "width": 96,
                              "height": 64, "frames": 17, "fps": 24.0, "cleanup": opts}, _Job(tmp_path))
    up = raw_frame_view(res, 3)
    assert up["visible"] is True and up["value"].shape == np.load(res["scrub_control"])[3].shape
    assert not np.array_equal(up["value"], np.load(res["scrub_control"])[3])  # before != after
    assert raw_frame_view({"scrub_control": res["scrub_control"]}, 0)["visible"] is False


def test_cleanup_reaches_the_output_metadata(tmp_path, make_video, tiny_engine):
    """A generation with a cleaned control records what cleaned it (steps measured) in its own metadata."""
    from pipelines.requests import ControlInput, GenerateRequest
    from studio.kinds.preprocess import run_preprocess_job

    res = run_preprocess_job({"clip": str(make_video(frames=9)), "kind": "canny", "options": {}, "width": 96,
                              "height": 64, "frames": 9, "fps": 24.0, "cleanup": {"temporal_smooth": 1.0}},
                             _Job(tmp_path))
    out = tiny_engine.generate(GenerateRequest(prompt="a dog", width=96, height=64, frames=9, audio=False,
                                               controls=[ControlInput(path=res["control"])]),
                               tmp_path / "g.mp4", previews=False)
    ctl = out.metadata["controls"][0]
    assert ctl["kind"] == "canny" and ctl["cleanup"]["steps"][0]["name"] == "temporal smoothing"
    from pipelines.video_io import read_comment

    assert json.loads(read_comment(out.path))["controls"][0]["cleanup"]["options"]["temporal_smooth"] == 1.0
