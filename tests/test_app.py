"""The studio as a user meets it: served over HTTP, driven by gradio_client and by headless Chromium."""
from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import screenshot


def test_root_serves_200(studio_server):
    url, _, _ = studio_server
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    assert "IC-LoRA Studio" in body


def test_api_generate_tiny_roundtrip(studio_server, studio_client):
    from pipelines.video_io import probe, read_comment

    req = {"prompt": "a dog running", "width": 96, "height": 64, "frames": 9, "fps": 12, "seed": 3}
    job_id = studio_client.predict(req, api_name="/generate")
    job = studio_client.predict(job_id, 120, api_name="/wait")
    assert job["status"] == "done", job
    video = job["result"]["video"]
    info = probe(video)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 9, 12.0)
    meta = json.loads(read_comment(video))
    assert meta["request"]["seed"] == 3 and meta["tiny_model"] is True
    assert "random weights" in job["result"]["notice"]


def test_api_bad_request_is_a_clear_error(studio_client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as exc:
        studio_client.predict({"prompt": "x", "frames": 117}, api_name="/generate")
    assert "8n+1" in str(exc.value) and "Traceback" not in str(exc.value)


@pytest.mark.browser
def test_browser_generate_tab_runs_tiny_generation(studio_server, page):
    url, _, _ = studio_server
    page.goto(url, wait_until="load")
    page.wait_for_selector("#tiny-notice", timeout=30_000)
    assert "random weights" in page.inner_text("#tiny-notice")
    page.get_by_role("tab", name="Generate").click()
    page.fill("#gen-prompt textarea", "a red car in the city at night")
    page.click("#gen-go")
    page.wait_for_selector('#gen-progress [data-status="done"]', timeout=120_000)
    page.wait_for_selector("#gen-video video", timeout=30_000)
    src = page.get_attribute("#gen-video video", "src")
    assert src and ".mp4" in src
    shot = screenshot(page, "generate_tab_done")
    assert shot.stat().st_size > 10_000


def test_bind_address_local_lan_and_spaces():
    """127.0.0.1 by default; --listen or --host for a LAN; on Spaces GRADIO_SERVER_NAME=0.0.0.0 is honoured
    (the Space's proxy reaches the app there, and app.py gets no arguments)."""
    import app

    assert app.resolve_host(app.parse_args([]), env={}) == "127.0.0.1"
    assert app.resolve_host(app.parse_args(["--listen"]), env={}) == "0.0.0.0"
    assert app.resolve_host(app.parse_args(["--host", "10.0.0.5"]), env={"GRADIO_SERVER_NAME": "0.0.0.0"}) == "10.0.0.5"
    assert app.resolve_host(app.parse_args([]), env={"GRADIO_SERVER_NAME": "0.0.0.0"}) == "0.0.0.0"


def test_every_event_handler_takes_the_inputs_it_is_given(tmp_path):
    """Gradio only warns when a handler's parameters do not match its inputs (a lambda cannot declare the
    request, so it is counted as an input) and the click then fails at run time as "internal error". Building the
    whole studio must raise no such warning: this caught the Compare tab's refresh button."""
    import warnings

    from studio.app import build_app
    from studio.context import StudioConfig, build_context

    ctx = build_context(StudioConfig(outputs_dir=str(tmp_path / "out")))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_app(ctx)
    finally:
        ctx.jobs.shutdown(timeout=5)
    arity = [str(w.message) for w in caught if "arguments for function" in str(w.message)]
    assert not arity, arity
