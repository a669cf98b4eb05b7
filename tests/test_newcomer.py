"""The newcomer path (issue 13): `python app.py` on a fresh machine, then every tab to a finished, playable video
on the built-in tiny model, with no file the user has to find, in headless Chromium.

One studio process for the module, started as a user starts it (its own outputs and cache folders, so the demo
IC-LoRAs are built at first start). Each flow is kept small (128x64, 9 frames, the tiny model's few steps).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import screenshot

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser
IC_LABEL = re.compile(r"^IC-LoRA \(models/loras")  # Union's IC-LoRA dropdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Studio:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.outputs = (tmp / "outputs").resolve()
        self.cache = (tmp / "cache").resolve()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "server.log"
        self.proc = None

    def start(self):
        import httpx

        env = dict(os.environ, ICLORA_CACHE_DIR=str(self.cache), GRADIO_TEMP_DIR=str(self.tmp / "gradio-cache"),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                   HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="localhost,127.0.0.1", PYTHONUNBUFFERED="1")
        env.pop("GRADIO_SERVER_NAME", None)
        env.pop("ICLORA_MODELS_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port), "--outputs-dir",
                                      str(self.outputs)], cwd=ROOT, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer: {self.log.read_text()[-2000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def jobs(self) -> list[dict]:
        """The finished generate jobs' sidecars (settings JSON beside each output), oldest first."""
        return [json.loads(p.read_text()) for p in sorted((self.outputs / "local").glob("*/output.json"),
                                                          key=lambda p: p.stat().st_mtime)]

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = Studio(tmp_path_factory.mktemp("newcomer"))
    s.start()
    try:
        yield s
    finally:
        s.stop()
    assert "internal error" not in s.log_text()


@pytest.fixture
def tab(studio, page):
    """Open the studio and a tab by its title; returns the page."""
    page.set_viewport_size({"width": 1280, "height": 800})

    def open_tab(title: str):
        page.goto(studio.url, wait_until="load")
        page.get_by_role("tab", name=title).click()
        return page

    return open_tab


def wait_done(page, selector: str, timeout: float = 180_000) -> set[str]:
    """Wait until a job panel's progress line is done; returns every label it showed (stages included). Fails
    at once, with the reason, when the job fails or is refused."""
    seen: set[str] = set()
    deadline = time.time() + timeout / 1000
    while time.time() < deadline:
        el = page.query_selector(f"{selector} .job-progress")
        if el is not None:
            status = el.get_attribute("data-status")
            seen.add(el.inner_text())
            if status == "done":
                return seen
            if status in ("failed", "refused", "cancelled", "interrupted"):
                raise AssertionError(f"{selector}: {el.inner_text()}")
        page.wait_for_timeout(250)
    raise AssertionError(f"{selector} not done in time; showed {sorted(seen)}")


def run_job(page, button: str, panel: str, timeout: float = 180_000, studio: "Studio | None" = None) -> set[str]:
    """Click a panel's button and wait for THIS job to be done (the panel may still show a previous job's
    "done" when the button is clicked). With ``studio``: a generation, done once its output is written."""
    n = len(studio.jobs()) if studio is not None else 0
    before = page.inner_text(panel)
    page.click(button)
    try:
        page.wait_for_function("([sel, text]) => document.querySelector(sel)?.innerText !== text", arg=[panel, before],
                               timeout=30_000)
    except Exception:
        screenshot(page, f"run-job-stuck-{panel.strip('#')}")
        raise
    seen = set()
    deadline = time.time() + timeout / 1000
    while studio is not None and len(studio.jobs()) <= n:
        el = page.query_selector(f"{panel} .job-progress")
        if el is not None:
            seen.add(el.inner_text())
            if el.get_attribute("data-status") in ("failed", "refused", "cancelled", "interrupted"):
                raise AssertionError(f"{panel}: {el.inner_text()}")
        assert time.time() < deadline, f"{panel}: no new output; showed {sorted(seen)}"
        page.wait_for_timeout(250)
    page.wait_for_timeout(1500)  # the panel's next poll paints the finished job
    return seen | wait_done(page, panel, timeout)


def playable(page, selector: str) -> str:
    """The video element's source, after the browser has loaded its metadata (a real, decodable mp4)."""
    page.wait_for_selector(f"{selector} video", timeout=30_000)
    page.wait_for_function(f"document.querySelector('{selector} video').readyState >= 1 && "
                           f"document.querySelector('{selector} video').duration > 0", timeout=30_000)
    return page.get_attribute(f"{selector} video", "src") or ""


def frames_of(path: str | Path) -> np.ndarray:
    from pipelines.video_io import read_video

    return read_video(path)[0]


# ------------------------------------------------------------------------------------------- Union control

@pytest.fixture(scope="module")
def union_run(studio, browser):
    """The Union newcomer flow once (sample clip -> canny -> generate with the default IC-LoRA), shared by the
    Union test and History's reuse test."""
    page = browser.new_page()
    page.set_viewport_size({"width": 1280, "height": 800})
    try:
        page.goto(studio.url, wait_until="load")
        page.get_by_role("tab", name="Union control").click()
        ic_label = page.get_by_label(IC_LABEL).input_value()
        # 256x128x33: long enough on the tiny model that the page's 1 s poll sees the steps move
        page.fill("#union-width input", "256")
        page.fill("#union-height input", "128")
        page.fill("#union-frames input", "33")
        page.click("#union-sample")
        page.wait_for_selector("#union-clip video", timeout=30_000)
        run_job(page, "#union-make", "#union-pre-progress", 90_000)
        page.fill("#union-prompt textarea", "a red ball rolling past a yellow box")
        labels = run_job(page, "#union-go", "#union-progress", studio=studio)
        src = playable(page, "#union-video")
        shot = screenshot(page, "newcomer-union")
        return {"ic_label": ic_label, "labels": labels, "src": src, "sidecar": studio.jobs()[-1], "shot": shot,
                "status": page.inner_text("#union-status")}
    finally:
        page.close()


def test_union_canny_reaches_a_video_with_the_demo_ic_lora(union_run):
    # The default IC-LoRA is the demo Union control file (D=2), labelled as a demo with random weights.
    assert "demo · Union control (random weights, tiny model, D=2)" in union_run["ic_label"]
    req = union_run["sidecar"]["request"]
    assert len(req["loras"]) == 1 and Path(req["loras"][0]["path"]).name == "demo-union-control-tiny.safetensors"
    assert union_run["sidecar"]["reference_downscale_factor"] == 2
    assert req["controls"][0]["kind"] == "canny" and ".mp4" in union_run["src"]
    assert "without an IC-LoRA" not in union_run["status"]
    # the progress line named what the job was doing, with a fraction, and moved on to done: how many running
    # phases the page's 1 s poll catches depends on the machine (a fast CI box finishes between two polls)
    assert any("%" in lab and "running" in lab for lab in union_run["labels"])
    assert any(lab.startswith("done") and "100%" in lab for lab in union_run["labels"])


def test_union_without_ic_lora_says_the_control_is_ignored(tab):
    page = tab("Union control")
    page.get_by_label(IC_LABEL).click()
    page.get_by_role("option", name="(none)").click()
    page.wait_for_function("document.querySelector('#union-ic-note').innerText.includes('control is ignored')",
                           timeout=20_000)


# ------------------------------------------------------------------------------------------- Motion tracks

def test_motion_tracks_draw_then_generate(studio, tab):
    page = tab("Motion tracks")
    assert "demo · Motion track" in page.input_value("#tracks-lora input")
    canvas = page.locator("#tracks-canvas canvas.tk-canvas")
    canvas.wait_for(timeout=30_000)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    for fx in (0.2, 0.5, 0.8):  # one track of three points across the canvas
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(150)
    page.wait_for_function("document.querySelector('#tracks-canvas .tk-info').innerText.includes('1 track')",
                           timeout=20_000)
    page.wait_for_selector("#tracks-preview video", timeout=60_000)
    run_job(page, "#tracks-go", "#tracks-progress", studio=studio)
    assert ".mp4" in playable(page, "#tracks-video")
    screenshot(page, "newcomer-tracks")
    req = studio.jobs()[-1]["request"]
    assert req["controls"][0]["kind"] == "motion_track"
    assert Path(req["loras"][0]["path"]).name == "demo-motion-track-tiny.safetensors"
    assert Path(req["controls"][0]["path"]).with_suffix(".tracks.json").is_file()  # kept for "Reuse settings"


# ------------------------------------------------------------------------------------------- Mask painter

def test_mask_painter_paint_then_union_generate(studio, tab):
    page = tab("Mask painter")
    # the painter's defaults are the generator's: same size, frames and D as Union's default IC-LoRA
    assert page.get_by_label("Target width").input_value() == "128"
    assert page.get_by_label("Target height").input_value() == "64"
    page.wait_for_selector("#mask-editor .pixi-target canvas", timeout=30_000)
    page.click("#mask-load")
    page.wait_for_timeout(1500)
    page.locator("#mask-editor .pixi-target canvas").first.scroll_into_view_if_needed()
    box = page.locator("#mask-editor .pixi-target canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 80, cy)
    page.mouse.down()
    for i in range(1, 5):
        page.mouse.move(cx - 80 + i * 30, cy + i * 5)
    page.mouse.up()
    page.click("#mask-use")
    page.wait_for_function("document.querySelector('#mask-saved').innerText.includes('Saved')", timeout=45_000)
    page.get_by_role("tab", name="Union control").click()
    page.wait_for_function("document.querySelector('#union-mask-note').innerText.includes('mask-')",
                           timeout=20_000)
    assert page.get_by_label("Use painter mask").is_checked()
    page.click("#union-sample")
    page.wait_for_selector("#union-clip video", timeout=30_000)
    run_job(page, "#union-make", "#union-pre-progress", 90_000)
    run_job(page, "#union-go", "#union-progress", studio=studio)
    assert ".mp4" in playable(page, "#union-video")
    screenshot(page, "newcomer-mask-union")
    req = studio.jobs()[-1]["request"]
    assert req["mask"] and np.load(req["mask"]).shape == (9, 32, 64)  # reference size: 128x64 / D=2


def test_mask_of_another_size_is_refused_when_handed_over(studio, tab):
    """A mask painted at another size is flagged when it reaches Union, and Generate refuses it at once
    (nothing is queued), instead of failing after the queue."""
    page = tab("Mask painter")
    page.get_by_label("Target width").fill("192")
    page.get_by_label("Target width").press("Enter")
    frames = page.locator("input[aria-label='Frames (8n+1)']:visible")
    frames.fill("17")
    frames.press("Enter")
    page.click("#mask-use")
    page.wait_for_function("document.querySelector('#mask-saved').innerText.includes('Saved')", timeout=45_000)
    page.get_by_role("tab", name="Union control").click()
    page.wait_for_function("document.querySelector('#union-mask-note').innerText.includes('painted for 192x64')",
                           timeout=20_000)
    assert not page.get_by_label("Use painter mask").is_checked()
    page.get_by_label("Use painter mask").check()
    page.click("#union-sample")
    page.wait_for_selector("#union-clip video", timeout=30_000)
    run_job(page, "#union-make", "#union-pre-progress", 90_000)
    n = len(studio.jobs())
    page.click("#union-go")
    page.wait_for_selector('#union-progress [data-status="refused"]', timeout=30_000)
    assert "painted for 192x64, 17 frames, D=2" in page.inner_text("#union-progress")
    assert page.locator("#union-video .error, #union-settings .error").count() == 0  # one error place, no badges
    assert len(studio.jobs()) == n


# ------------------------------------------------------------------------------------------- Face trainer

def test_face_trainer_sample_clips_train_then_generate(studio, tab):
    page = tab("Face trainer")
    assert "On the tiny test model" in page.inner_text("#train-recipe")
    assert page.input_value("#train-steps input") == "20" and page.input_value("#train-every input") == "10"
    page.click("#train-sample-clips")
    page.locator("#train-report").get_by_text("clip0.mp4").first.wait_for(timeout=120_000)
    page.click("#train-start")
    page.wait_for_function("document.querySelector('#train-progress .job-progress')?.getAttribute('data-status') "
                           "!== 'idle'", timeout=30_000)
    # the live loss plot draws from its first point, two named series
    page.wait_for_selector("#train-loss svg circle.pt-loss", timeout=300_000)
    legend = page.text_content("#train-loss svg") or ""
    assert "loss" in legend and "smoothed" in legend and "Infinity" not in legend
    wait_done(page, "#train-progress", 600_000)
    label = page.inner_text("#train-progress")
    assert "finished 20/20" in label
    assert page.locator("#train-loss svg circle.pt-loss").count() == 20
    assert page.locator("#train-loss svg polyline").count() == 2
    page.locator("#train-samples img, #train-samples video").first.wait_for(timeout=30_000)
    screenshot(page, "newcomer-face-trained")
    page.click("#train-use")
    page.locator("#train-note").get_by_text("Sent").wait_for(timeout=30_000)
    page.get_by_role("tab", name="Union control").click()
    page.get_by_text("Using trained IC-LoRA").wait_for(timeout=30_000)
    run_job(page, "#union-go", "#union-progress", studio=studio)
    assert ".mp4" in playable(page, "#union-video")
    req = studio.jobs()[-1]["request"]
    assert req["loras"][0]["path"].endswith("lora.safetensors") and req["controls"][0]["path"].endswith(".png")


# ------------------------------------------------------------------------------------------- History

def test_history_reuse_of_a_union_job_regenerates_the_same_video(studio, union_run, tab):
    first = union_run["sidecar"]
    page = tab("History")
    page.click("#hist-refresh")
    job_id = next(p for p in (studio.outputs / "local").iterdir()
                  if (p / "output.json").is_file() and json.loads((p / "output.json").read_text()) == first).name
    page.click("#hist-pick input")
    page.get_by_role("option", name=job_id[:8]).first.click()
    page.click("#hist-reuse")
    # it opens the tab the job came from, with its control and IC-LoRA
    try:
        page.wait_for_function("document.querySelector('#union-prompt textarea')?.value.includes('red ball rolling')",
                               timeout=30_000)
    except Exception:
        screenshot(page, "history-reuse-stuck")
        raise
    assert page.locator("#union-go").is_visible()
    assert "demo · Union control" in page.get_by_label(IC_LABEL).input_value()
    n = len(studio.jobs())
    run_job(page, "#union-go", "#union-progress", studio=studio)
    playable(page, "#union-video")
    again = studio.jobs()
    assert len(again) == n + 1
    second = again[-1]
    a, b = dict(first["request"]), dict(second["request"])
    assert a == b  # the same request, controls and LoRAs included
    out_a = next(p for p in (studio.outputs / "local").glob("*/output.mp4")
                 if json.loads(p.with_suffix(".json").read_text()) == first)
    out_b = sorted((studio.outputs / "local").glob("*/output.mp4"), key=lambda p: p.stat().st_mtime)[-1]
    np.testing.assert_array_equal(frames_of(out_a), frames_of(out_b))  # the same video


# ------------------------------------------------------------------------------------------- every tab, two sizes

LINES_JS = """(sel) => Array.from(document.querySelectorAll(sel)).map(el => {
    const r = document.createRange(); r.selectNodeContents(el);
    const tops = Array.from(r.getClientRects()).filter(x => x.width > 0).map(x => x.top).sort((a, b) => a - b);
    let lines = tops.length ? 1 : 0;  // line boxes: tops more than 8 px apart (inline code sits a little off)
    for (let i = 1; i < tops.length; i++) if (tops[i] - tops[i - 1] > 8) lines++;
    return [el.innerText.trim(), lines];
})"""


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_every_tab_fits_at_common_window_sizes(studio, page, size):
    """Screenshots of every tab (artifacts/tab-<name>-<width>.png, looked at) and what can be measured of the
    issues found by eye: nothing wider than the window, header cells on one line (no letter-by-letter
    wrapping), the tables' last column inside their frame, upload buttons whole, progress lines on one line."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto(studio.url, wait_until="load")
    for title, name in (("Generate", "generate"), ("Union control", "union"), ("Motion tracks", "tracks"),
                        ("Mask painter", "masks"), ("Face trainer", "train"), ("History", "history"),
                        ("Models", "models")):
        page.get_by_role("tab", name=title).click()
        page.wait_for_timeout(1200)
        if name == "union":
            page.get_by_text("Control backends on this machine").click()
            page.wait_for_timeout(300)
        if name == "history":
            page.click("#hist-refresh")
            page.wait_for_timeout(1500)
        screenshot(page, f"tab-{name}-{size[0]}")
        overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{title}: the page is {overflow}px wider than the window"
        for sel in ("#hist-table th .header", "#models-table th .header", "#models-files th .header",
                    "#models-tiers th .header", "#mask-keys th .header"):
            for text, lines in page.evaluate(LINES_JS, sel):
                assert lines <= 1, f"{title}: header {text!r} wraps onto {lines} lines"
        for sel in ("#hist-table", "#models-table", "#models-files"):
            if page.locator(sel).count() and page.locator(sel).first.is_visible():
                frame = page.locator(sel).first.bounding_box()
                last = page.locator(f"{sel} th").last.bounding_box()
                assert last["x"] + last["width"] <= frame["x"] + frame["width"] + 2, f"{sel}: last column cut"
        for text, lines in page.evaluate(LINES_JS, ".job-progress:not(.bad) .label"):
            assert lines <= 1, f"{title}: progress line {text!r} wraps"
        for text, lines in page.evaluate(LINES_JS, ".backends-table li"):
            assert lines <= 6, f"{title}: {text!r} breaks into {lines} lines"
        for sel in ("#union-ic-upload", "#mask-upload", "#tracks-lora-upload", "#tracks-import"):
            btn = page.locator(sel)
            if btn.count() and btn.first.is_visible():
                whole = btn.first.evaluate("el => el.scrollHeight <= el.clientHeight + 1 && "
                                           "el.scrollWidth <= el.clientWidth + 1")
                assert whole, f"{title}: {sel} is clipped"
