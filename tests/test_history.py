"""History tab logic (studio.tabs.history) on a real JobManager with a fake, fast job kind. ~2 s."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.requests import GenerateRequest
from studio.jobs import JobManager, JobNotFound
from studio.tabs import history


@pytest.fixture
def ctx(tmp_path):
    jobs = JobManager(tmp_path / "outputs")

    def fake_generate(request: dict, jctx) -> dict:
        if request.get("prompt") == "boom":
            from pipelines.errors import UserError

            raise UserError("bad prompt")
        video = Path(jctx.out_dir) / "output.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
        side = Path(jctx.out_dir) / "output.json"
        side.write_text(json.dumps({"request": request, "seed": request.get("seed"), "notice": "tiny"}))
        jctx.add_output(video)
        return {"video": str(video), "settings": str(side)}

    jobs.register("generate", fake_generate)
    yield SimpleNamespace(jobs=jobs, tabs=[], owner=lambda r: "alice")
    jobs.shutdown(timeout=5)


def req(**kw) -> dict:
    return GenerateRequest.from_dict(dict({"prompt": "a cat", "model": "tiny", "width": 96, "height": 64,
                                           "frames": 9, "seed": 7}, **kw)).validate().to_dict()


def test_rows_gallery_and_settings(ctx):
    a1 = ctx.jobs.submit("alice", "generate", req())
    a2 = ctx.jobs.submit("alice", "generate", req(prompt="boom"))
    b1 = ctx.jobs.submit("bob", "generate", req(prompt="bob's"))
    for j in (a1, a2, b1):
        ctx.jobs.wait(j, timeout=10)
    jobs = ctx.jobs.list("alice")
    rows = history.job_rows(jobs)
    assert [r[0] for r in rows] == [a2, a1]  # newest first, only alice's
    assert rows[0][2] == "failed" and rows[0][4] == "bad prompt"
    assert rows[1][2] == "done" and rows[1][3] == 100 and "96x64x9 seed 7" in rows[1][7]
    items = history.gallery_items(jobs)
    assert len(items) == 1 and items[0][0].endswith(f"alice/{a1}/output.mp4")
    s = history.settings_of(ctx.jobs.get(a1, "alice"))
    assert s["seed"] == 7 and s["request"]["prompt"] == "a cat"  # read from the sidecar JSON
    assert history.settings_of(ctx.jobs.get(a2, "alice"))["request"]["prompt"] == "boom"  # no sidecar: request


def test_reuse_request_round_trips_and_is_owned(ctx):
    original = req(seed=123, prompt="a dog running")
    jid = ctx.jobs.submit("alice", "generate", original)
    ctx.jobs.wait(jid, timeout=10)
    again = history.reuse_request(ctx, jid, "alice")
    assert again == original
    assert GenerateRequest.from_dict(again).validate().seed == 123
    with pytest.raises(JobNotFound):
        history.reuse_request(ctx, jid, "bob")


def test_view_resends_gallery_only_on_change(ctx):
    import gradio as gr

    jid = ctx.jobs.submit("alice", "generate", req())
    ctx.jobs.wait(jid, timeout=10)
    rows, gallery, ids, sig, bars, pick = history.history_view(ctx, "alice", None, None)
    assert ids == [jid] and len(gallery) == 1 and "no running jobs" in bars
    assert pick["value"] == jid
    _, gallery2, _, sig2, _, _ = history.history_view(ctx, "alice", jid, sig)
    assert sig2 == sig and isinstance(gallery2, type(gr.skip()))
    video, settings, note, resume = history.detail_view(ctx, "alice", jid)
    assert video.endswith("output.mp4") and settings["seed"] == 7 and "done" in note
    assert resume["visible"] is False  # a finished generation has nothing to resume
    with pytest.raises(JobNotFound):
        history.detail_view(ctx, "bob", jid)


def test_interrupted_training_offers_resume(ctx):
    def train(request, jctx):
        for _ in range(200):
            jctx.raise_if_cancelled()  # a run cut short between steps
            time.sleep(0.05)
        return {}

    ctx.jobs.register("train", train, resumable=True)
    jid = ctx.jobs.submit("alice", "train", {"data": "x"})
    for _ in range(100):
        if ctx.jobs.get(jid, "alice").status.value == "running":
            break
        time.sleep(0.05)
    ctx.jobs.cancel(jid, "alice")
    assert ctx.jobs.wait(jid, timeout=10).status.value == "cancelled"
    *_, note, resume = history.detail_view(ctx, "alice", jid)
    assert resume["visible"] is True and "Resume" in note
    new = ctx.jobs.resume(jid, "alice")
    assert ctx.jobs.get(new, "alice").resumed_from == jid


def test_running_job_shows_progress(ctx):
    import threading

    gate = threading.Event()

    def slow(request, jctx):
        jctx.progress(0.5, "step 4/8")
        gate.wait(10)
        return {}

    ctx.jobs.register("slow", slow)
    jid = ctx.jobs.submit("alice", "slow", {"x": 1})
    for _ in range(100):
        if ctx.jobs.get(jid, "alice").message == "step 4/8":
            break
        __import__("time").sleep(0.05)
    *_, bars, _ = history.history_view(ctx, "alice", None, None)
    assert jid in bars and 'aria-valuenow="50"' in bars and "running" in bars
    gate.set()
    assert ctx.jobs.wait(jid, timeout=10).status.value == "done"


def test_spaces_detection_and_wrap():
    from studio import spaces

    local = {}
    space = {"SYSTEM": "spaces", "SPACE_ID": "me/studio"}
    zero = dict(space, SPACES_ZERO_GPU="true")
    assert not spaces.on_spaces(local) and spaces.on_spaces(space) and not spaces.on_zero_gpu(space)
    assert spaces.on_zero_gpu(zero)
    fn = lambda: 1  # noqa: E731
    assert spaces.gpu_wrap(fn, 120, env=local) is fn
    assert spaces.training_available(local) == (True, "")
    ok, why = spaces.training_available(zero)
    assert not ok and "ZeroGPU" in why
    lim = spaces.default_limits(zero)
    assert lim.profile == "zerogpu" and lim.max_frames == 121 and spaces.default_limits(local).profile == "default"
    from pipelines.errors import UserError

    with pytest.raises(UserError, match="4096x512 has a side over .* 1024 px .*ZeroGPU"):
        spaces.check_limits({"width": 4096, "height": 512, "frames": 121}, lim)
    spaces.check_limits({"width": 768, "height": 512, "frames": 121}, lim)
    assert "sdk: gradio" in spaces.SPACES_README_FRONT_MATTER and "app_file: app.py" in spaces.SPACES_README_FRONT_MATTER


def test_zero_gpu_runs_gpu_jobs_inside_the_callers_spaces_gpu_call(tmp_path, monkeypatch):
    """On ZeroGPU the GPU exists only inside a @spaces.GPU call made by the request: ctx.submit must run a gpu
    job right there (not in a worker thread), through spaces.GPU(duration=300); light jobs still queue."""
    import sys
    import threading
    import types

    from studio.context import StudioConfig, StudioContext

    calls = []
    fake = types.ModuleType("spaces")

    def gpu(duration=60):
        def wrap(fn):
            def run(*a, **k):
                calls.append(duration)
                return fn(*a, **k)
            return run
        return wrap

    fake.GPU = gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    for k, v in {"SYSTEM": "spaces", "SPACE_ID": "me/studio", "SPACES_ZERO_GPU": "true"}.items():
        monkeypatch.setenv(k, v)
    jobs = JobManager(tmp_path / "out")
    seen = {}
    jobs.register("generate", lambda r, j: seen.update(gen=threading.get_ident()) or {"ok": 1}, lane="gpu")
    jobs.register("preview", lambda r, j: seen.update(light=threading.get_ident()) or {}, lane="light")
    ctx = StudioContext(config=StudioConfig(outputs_dir=str(tmp_path / "out")), jobs=jobs, service=None)
    try:
        jid = ctx.submit("alice", "generate", {"prompt": "x"})
        job = jobs.get(jid, "alice")
        assert job.status.value == "done" and job.result == {"ok": 1}  # finished when submit returned
        assert seen["gen"] == threading.get_ident() and calls == [300]
        lid = ctx.submit("alice", "preview", {})
        jobs.wait(lid, timeout=10)
        assert seen["light"] != threading.get_ident() and calls == [300]  # queued as usual, no GPU call
    finally:
        jobs.shutdown(timeout=5)


def test_browser_reuse_settings_fills_the_generate_tab(studio_server, page):
    """History -> pick a past generation -> "Reuse settings": its prompt, size and seed are back in Generate."""
    from pipelines.requests import GenerateRequest

    url, ctx, _ = studio_server
    req = GenerateRequest(prompt="a red ball on a blue floor, reuse me", width=64, height=64, frames=9, seed=4242)
    jid = ctx.jobs.submit("local", "generate", req.to_dict())
    assert ctx.jobs.wait(jid, timeout=120).status.value == "done"
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="History").click()
    page.locator("#hist-refresh").click()
    page.wait_for_function("id => document.querySelector('#hist-table')?.innerText.includes(id)", arg=jid,
                           timeout=20_000)
    pick = page.locator("#hist-pick input")
    pick.click()
    page.get_by_role("option", name=jid[:8], exact=False).first.click()
    page.locator("#hist-reuse").click()
    page.wait_for_function("() => document.querySelector('#hist-request textarea, #hist-request .cm-content')"
                           "?.innerText?.includes('reuse me') || document.querySelector('#hist-request')"
                           "?.innerText.includes('reuse me')", timeout=20_000)
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_function("() => document.querySelector('#gen-prompt textarea').value.includes('reuse me')",
                           timeout=20_000)
    from tests.conftest import screenshot

    screenshot(page, "history_reuse_generate")
    page.get_by_text("Sampling").first.click()  # the seed lives in the closed "Sampling" accordion
    assert page.locator("#gen-seed input").input_value(timeout=10_000) == "4242"
