"""The issue-15 endpoints through gradio_client: /sweep, /upscale, /enhance (the caller's own files and jobs)."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file


def _wait(client, jid, timeout=600):
    return client.predict(jid, timeout, api_name="/wait")


def test_new_endpoints_are_listed(studio_client):
    names = set(studio_client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/sweep", "/upscale", "/enhance"} <= names


def test_sweep_upscale_and_enhance_through_the_api(studio_client, tmp_path):
    from pipelines.video_io import probe
    from tests.helpers import synthetic_video

    clip = studio_client.predict(handle_file(str(synthetic_video(tmp_path / "c.mp4", frames=9, width=64, height=64))),
                                 api_name="/upload")
    req = {"prompt": "a red ball", "width": 64, "height": 64, "frames": 9, "audio": False,
           "controls": [{"path": clip}]}
    jid = studio_client.predict(req, "seed", [1, 2], 0, api_name="/sweep")
    job = _wait(studio_client, jid)
    assert job["status"] == "done", job
    r = job["result"]
    assert r["labels"] == ["seed 1", "seed 2"] and len(r["videos"]) == 2 and r["differences"][0][1] > 0
    assert probe(r["grid"]).width == 128
    with pytest.raises(Exception, match="takes no values"):
        studio_client.predict(req, "ab", [1], 0, api_name="/sweep")

    up = studio_client.predict({"video": r["videos"][0], "tile_width": 64, "overlap": 32}, api_name="/upscale")
    job = _wait(studio_client, up)
    assert job["status"] == "done", job
    info = probe(job["result"]["video"])
    assert (info.width, info.height, info.frames) == (128, 128, 9) and job["result"]["plan"]["text"].startswith("3 tiles")

    res = studio_client.predict({"prompt": "a red ball", "max_new_tokens": 8}, api_name="/enhance")
    assert res["text"] and res["tokens"] > 0 and "random" in res["notice"]
    with pytest.raises(Exception, match="empty"):
        studio_client.predict({"prompt": " "}, api_name="/enhance")
    with pytest.raises(Exception):
        studio_client.predict({"video": "/etc/passwd"}, api_name="/upscale")  # outside the caller's folders
