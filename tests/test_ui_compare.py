"""Browser flows of issue 15 against `python app.py` on the tiny model: a result -> A/B -> the synced grid; a result
-> upscale -> the upscaled result; enhance -> edit -> generate."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import screenshot
from tests.test_newcomer import Studio, run_job, wait_done

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    s = Studio(tmp_path_factory.mktemp("compare"))
    s.start()
    try:
        yield s
    finally:
        s.stop()
    assert "internal error" not in s.log_text()


@pytest.fixture
def page_at(studio, page):
    page.set_viewport_size({"width": 1400, "height": 1000})

    def go(title: str):
        page.goto(studio.url, wait_until="load")
        page.get_by_role("tab", name=title).click()
        return page

    return go


def _player_state(page) -> dict:
    return page.evaluate("""() => {
        const root = document.querySelector('#cmp-player .cp-wrap');
        const vids = [...document.querySelectorAll('#cmp-player video')];
        return {count: Number(root.dataset.count), ready: root.dataset.ready, frame: Number(root.dataset.frame),
                playing: root.dataset.playing, times: vids.map(v => v.currentTime),
                labels: [...document.querySelectorAll('#cmp-player figcaption')].map(c => c.textContent),
                durations: vids.map(v => v.duration)};
    }""")


def test_result_ab_plays_in_one_synced_grid(studio, page_at):
    page = page_at("Union control")
    page.click("#union-sample")
    page.wait_for_selector("#union-clip video", timeout=30_000)
    run_job(page, "#union-make", "#union-pre-progress", 90_000)
    page.fill("#union-prompt textarea", "a red ball rolling past a yellow box")
    run_job(page, "#union-go", "#union-progress", studio=studio)
    # one click under the result: the A/B batch is queued and the Compare tab opens on it
    page.click("#union-ab")
    page.wait_for_selector("#cmp-player", state="visible", timeout=30_000)
    wait_done(page, "#cmp-progress", 300_000)
    page.wait_for_function("document.querySelector('#cmp-player .cp-wrap').dataset.ready === '1'", timeout=60_000)
    st = _player_state(page)
    assert st["count"] == 2 and st["labels"] == ["with IC-LoRA", "without IC-LoRA"]
    # ONE scrubber moves every video to the same frame
    page.eval_on_selector("#cmp-player .cp-scrub", "(el) => { el.value = '5'; el.dispatchEvent(new Event('input')); }")
    page.wait_for_timeout(500)
    st = _player_state(page)
    fps = 24.0
    assert st["frame"] == 5 and all(abs(t - 5.5 / fps) < 0.5 / fps for t in st["times"]), st
    # play: both advance together (the first is the clock, the other follows within half a frame)
    page.click("#cmp-player .cp-prev")
    page.eval_on_selector("#cmp-player .cp-scrub", "(el) => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    page.click("#cmp-player .cp-play")
    page.wait_for_timeout(150)
    st = _player_state(page)
    assert max(st["times"]) - min(st["times"]) <= 0.5 / fps + 1e-3, st
    page.wait_for_function("document.querySelector('#cmp-player .cp-wrap').dataset.playing === '0'", timeout=10_000)
    st = _player_state(page)
    assert st["frame"] >= 7 and max(st["times"]) - min(st["times"]) <= 0.5 / fps + 1e-3, st
    assert "with IC-LoRA" in page.inner_text("#cmp-diffs")
    assert page.query_selector("#cmp-grid a") is not None  # the grid mp4 to download
    screenshot(page, "compare-ab-grid")


def test_enhance_edit_generate(studio, page_at):
    page = page_at("Generate")
    page.fill("#gen-prompt textarea", "a dog on a street")
    page.click("#gen-enhance")
    page.wait_for_function("document.querySelector('#gen-enhance-note')?.innerText.includes('Rewritten')",
                           timeout=120_000)
    enhanced = page.input_value("#gen-prompt textarea")
    assert enhanced and enhanced != "a dog on a street"
    assert "random" in page.inner_text("#gen-enhance-note")  # the tiny model's words are noise: said so
    edited = enhanced + " at night"
    page.fill("#gen-prompt textarea", edited)
    n = len(studio.jobs())
    run_job(page, "#gen-go", "#gen-progress", studio=studio)
    assert len(studio.jobs()) == n + 1
    assert studio.jobs()[-1]["request"]["prompt"] == edited


def test_result_upscale_shows_plan_and_result(studio, page_at):
    page = page_at("Generate")
    page.fill("#gen-prompt textarea", "a blue car")
    run_job(page, "#gen-go", "#gen-progress", studio=studio)
    page.click("#gen-upscale")  # one click under the result
    page.wait_for_selector("#cmp-player", state="visible", timeout=30_000)
    wait_done(page, "#cmp-progress", 300_000)
    page.wait_for_function("document.querySelector('#cmp-player .cp-wrap').dataset.ready === '1'", timeout=60_000)
    st = _player_state(page)
    w, h = studio.jobs()[-1]["request"]["width"], studio.jobs()[-1]["request"]["height"]
    assert st["count"] == 2 and st["labels"] == [f"original {w}x{h}", f"spatial {2 * w}x{2 * h}"], st
    sizes = page.evaluate("() => [...document.querySelectorAll('#cmp-player video')].map(v => [v.videoWidth, v.videoHeight])")
    assert sizes == [[w, h], [2 * w, 2 * h]]
    # the tile plan is shown before running, from the result picked in the tab
    page.fill("#cmp-tile-w input", "128")
    page.click("#cmp-plan-btn")
    page.wait_for_function("document.querySelector('#cmp-plan')?.innerText.includes('predicted peak')", timeout=30_000)
    assert "tile" in page.inner_text("#cmp-plan")
    screenshot(page, "compare-upscale")
