"""The job panel's one line (studio.ui.progress_html via generate.job_view): the stage a job reports with a
fraction that moves, "failed: <reason>" instead of a stale "queued", no HTML loss, upload paths by name."""
from __future__ import annotations

import threading
import time

import pytest

from pipelines.errors import UserError
from studio.ui import error_md, progress_html, readable


def test_progress_line_texts():
    assert "running · denoise step 3/8 · 40%" in progress_html(0.4, "denoise step 3/8", "running")
    assert ">done · 100%<" in progress_html(1, "done", "done")  # not "done · done"
    bad = progress_html(0.3, "model missing in <models_dir>/ltx", "failed")
    assert "failed: model missing in &lt;models_dir&gt;/ltx" in bad and 'data-status="failed"' in bad
    assert "not started: frames=10 must be 8n+1" in progress_html(0, "frames=10 must be 8n+1", "refused")
    assert "&lt;models_dir&gt;" in error_md("<models_dir> is empty")


def test_upload_paths_are_shown_by_file_name():
    from studio.routes import upload_dir

    msg = f"clip {upload_dir()}/0a1b2c3d4e/my holiday.mp4 has 10 frames; and {upload_dir()}/ff/x.png"
    assert readable(msg) == "clip my holiday.mp4 has 10 frames; and x.png"


def test_panel_shows_each_stage_the_job_reports_then_done(studio_server):
    """The engine names its stages through the progress callback (load, encode prompt, denoise step i/n,
    upsample, decode, write); the panel shows each message with its fraction."""
    from studio.tabs.generate import job_view

    _, ctx, _ = studio_server
    gate = {"a": threading.Event()}
    stages = [(0.02, "loading model"), (0.05, "encoding the prompt"), (0.4, "denoise step 3/8"),
              (0.9, "decoding the video"), (0.97, "writing the mp4")]
    seen = []

    def staged(request, jc):
        for fraction, message in stages:
            jc.progress(fraction, message)
            time.sleep(0.15)
        gate["a"].wait(10)
        return {}

    ctx.jobs.register("staged-test", staged, lane="light")
    jid = ctx.jobs.submit("local", "staged-test", {})
    deadline = time.time() + 20
    while time.time() < deadline and not (seen and stages[-1][1] in seen[-1]):
        line = job_view(ctx, jid, None)[0]
        if not seen or seen[-1] != line:
            seen.append(line)
        time.sleep(0.03)
    gate["a"].set()
    ctx.jobs.wait(jid, timeout=10)
    shown = " ".join(seen)
    for fraction, message in stages:
        assert f"{message} · {round(fraction * 100)}%" in shown, (message, seen)
    assert 'data-status="done"' in job_view(ctx, jid, None)[0]


def test_a_failed_preprocess_leaves_failed_and_its_reason_not_queued(studio_server):
    """Union's Make control: a preprocess that fails while running ends the line as 'failed: <reason>'."""
    from pipelines.presets import sample_clip_path
    from tests.test_bad_inputs import UNION_MAKE, handler, last

    _, ctx, demo = studio_server
    spec = ctx.jobs.kinds["preprocess"]

    def broken(request, jc):
        raise UserError("the canny preprocessor ran out of patience")

    ctx.jobs.register("preprocess", broken, lane=spec.lane)
    try:
        out = last(handler(demo, "union", "make_control")(str(sample_clip_path()), *UNION_MAKE.values(),
                                                          request=None))
    finally:
        ctx.jobs.register("preprocess", spec.fn, lane=spec.lane, resumable=spec.resumable, check=spec.check)
    line = out[0]
    assert 'data-status="failed"' in line and "failed: the canny preprocessor ran out of patience" in line
    assert "queued" not in line and all(v.__class__.__name__ == "dict" or v is not None for v in out[1:])


@pytest.mark.parametrize("status", ["failed", "cancelled", "interrupted"])
def test_bad_states_wrap_and_are_red(status):
    html = progress_html(0.5, "x" * 300, status)
    assert 'class="job-progress bad"' in html and f"{status}: " in html
