"""The named API (issue 8.5) through gradio_client: upload, preprocess, tracks render, train, status, control."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from gradio_client import handle_file


def _wait(client, jid, timeout=300):
    job = client.predict(jid, float(timeout), api_name="/wait")
    assert job["status"] in ("done", "failed", "cancelled", "interrupted"), job
    return job


def test_api_lists_every_named_endpoint(studio_client):
    names = set(studio_client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for name in ("generate", "upload", "preprocess", "tracks_render", "train", "train_control", "job", "wait",
                 "cancel", "resume", "jobs", "models"):
        assert f"/{name}" in names, name


def test_upload_then_generate_with_a_first_frame(studio_client, tmp_path):
    import cv2

    img = tmp_path / "first.png"
    cv2.imwrite(str(img), np.full((64, 96, 3), 200, np.uint8))
    path = studio_client.predict(handle_file(str(img)), api_name="/upload")
    assert path.endswith("first.png") and "/local/uploads/" in path
    jid = studio_client.predict({"prompt": "a test", "width": 96, "height": 64, "frames": 9, "image": path},
                                api_name="/generate")
    job = _wait(studio_client, jid)
    assert job["status"] == "done", job
    with pytest.raises(Exception, match="outside|not allowed|inside"):
        studio_client.predict({"prompt": "x", "width": 96, "height": 64, "frames": 9, "image": "/etc/hostname"},
                              api_name="/generate")


def test_tracks_render_and_preprocess(studio_client, tmp_path):
    from pipelines.video_io import probe
    from tests.helpers import synthetic_video

    tracks = tmp_path / "tracks.json"
    tracks.write_text(json.dumps([[{"x": 10, "y": 20}, {"x": 100, "y": 50}]]))  # ComfyUI spline editor data
    out = studio_client.predict(handle_file(str(tracks)), 128, 64, 9, api_name="/tracks_render")
    path = out["path"] if isinstance(out, dict) else out
    info = probe(path)
    assert (info.width, info.height, info.frames) == (128, 64, 9)
    # a lossless control: reading it gives exactly the render the model should see
    from pipelines.tracks import load_tracks, render_tracks
    from pipelines.video_io import read_video

    assert path.endswith(".mkv") and info.codec == "ffv1"
    want = render_tracks(load_tracks(tracks, width=128, height=64, frames=9), 128, 64)
    assert np.array_equal(read_video(path)[0], want)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[{"x": "left", "y": 1}]]))
    with pytest.raises(Exception, match=r"tracks\[0\]\[0\]\.x"):
        studio_client.predict(handle_file(str(bad)), 128, 64, 9, api_name="/tracks_render")

    clip = synthetic_video(tmp_path / "clip.mp4", frames=12, width=96, height=64)
    jid = studio_client.predict(handle_file(str(clip)), "canny", 96, 64, 9, 24.0, {"low": 50, "high": 150},
                                api_name="/preprocess")
    job = _wait(studio_client, jid)
    assert job["status"] == "done", job
    assert probe(job["result"]["control"]).frames == 9


def test_train_through_the_api(studio_client, tmp_path):
    from tests.test_ui_train import SMALL, make_clips

    clips = make_clips(tmp_path / "clips", n=3)
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in clips:
            zf.write(p, p.name)
            zf.write(p.with_suffix(".txt"), p.with_suffix(".txt").name)
    jid = studio_client.predict(handle_file(str(z)), {"preset": "face", "trigger": "subj",
                                                      "overrides": dict(SMALL, steps=2, sample_every=0)},
                                api_name="/train")
    job = _wait(studio_client, jid)
    assert job["status"] == "done", job
    assert job["result"]["step"] == 2 and job["result"]["lora"].endswith("lora.safetensors")
    with pytest.raises(Exception, match="not running"):
        studio_client.predict(jid, "stop", api_name="/train_control")
    with pytest.raises(Exception, match="unknown"):
        studio_client.predict(handle_file(str(z)), {"overrides": {"bogus": 1}}, api_name="/train")


def test_bad_lora_is_refused_at_submit_not_after_the_queue(studio_server, studio_client, tiny_model):
    """A LoRA with a NaN, or IC-LoRAs with different factors, are refused when submitted (no job is made)."""
    from pathlib import Path

    import torch

    from tests.test_lora import MODS, _ab, write_official

    _, ctx, _ = studio_server
    folder = Path(ctx.outputs_dir) / "local" / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    ab = _ab(tiny_model.pipe.transformer)
    # two different factors that are not 1 (a factor of 1 combines with any, as in Lightricks' ICLoraPipeline)
    d1 = write_official(folder / "d3.safetensors", ab, {"reference_downscale_factor": "3"})
    d2 = write_official(folder / "d2.safetensors", ab, {"reference_downscale_factor": "2"})
    ab[MODS[1]] = (ab[MODS[1]][0], ab[MODS[1]][1].clone().index_fill_(1, torch.tensor([0]), float("nan")))
    nan = write_official(folder / "nan.safetensors", ab, {})
    before = len(ctx.jobs.list("local", limit=1000))
    base = {"prompt": "x", "width": 64, "height": 64, "frames": 9}
    with pytest.raises(Exception, match=r"nan\.safetensors contains NaN/Inf values in .*to_v\.lora_B"):
        studio_client.predict(dict(base, loras=[{"path": str(nan)}]), api_name="/generate")
    with pytest.raises(Exception, match="cannot be combined"):
        studio_client.predict(dict(base, loras=[{"path": str(d1)}, {"path": str(d2)}]), api_name="/generate")
    assert len(ctx.jobs.list("local", limit=1000)) == before  # nothing was queued
