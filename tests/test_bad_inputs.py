"""Bad inputs through the tabs' own event handlers (the functions the browser calls): a fake or empty video,
10 frames, 100001 frames, sizes off the grid, a mask of the wrong size. Each must end as a message a person can
act on in the panel's one error place, never as "internal error", never as a queued job that fails later.

The handlers are taken from the launched session studio (demo.fns), exactly as Gradio calls them.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.presets import sample_clip_path


def handler(demo, module: str, name: str):
    """The event function ``name`` defined in studio.tabs.<module>'s build()."""
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__module__", "") == f"studio.tabs.{module}"
           and getattr(f.fn, "__qualname__", "").endswith(f".{name}")]
    assert fns, f"no handler {name} in studio.tabs.{module}"
    return fns[0]


def last(out):
    """The last value a handler produced (generators: their last yield)."""
    if hasattr(out, "__next__"):
        items = list(out)
        assert items
        return items[-1]
    return out


def told(value) -> str:
    """The text of the one place the handler wrote to (an HTML/markdown string among its outputs)."""
    values = value if isinstance(value, tuple) else (value,)
    texts = [v for v in values if isinstance(v, str) and ("not started" in v or "panel-error" in v
                                                          or "failed" in v)]
    assert len(texts) == 1, values
    assert "internal error" not in texts[0] and "Traceback" not in texts[0]
    return texts[0]


@pytest.fixture(scope="module")
def bad_files(studio_server):
    _, ctx, _ = studio_server
    folder = ctx.user_dir("local", "bad-inputs")
    fake = folder / "holiday.mp4"
    fake.write_text("this is not a video")
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    return {"fake": str(fake), "empty": str(empty)}


UNION_MAKE = dict(k="canny", lo=92, hi=200, bl=0.0, inv=False, w=128, h=64, n=9, f=24.0, ic="(none)",
                  sm=0.0, dn=0, dfl=False, fm="nearest", th=0, ct=1.0)  # the last six: clean-up off


@pytest.mark.parametrize("case, change, expect", [
    ("fake video", {"clip": "fake"}, "holiday.mp4"),
    ("empty video", {"clip": "empty"}, "empty.mp4"),
    ("10 frames", {"n": 10}, "8n+1"),
    ("100001 frames", {"n": 100001}, "100001"),
    ("width off the grid", {"w": 100}, "multiple of 32"),
])
def test_union_make_control_refuses_bad_inputs_with_a_message(studio_server, bad_files, case, change, expect):
    _, ctx, demo = studio_server
    before = len(ctx.jobs.list("local", limit=1000))
    args = dict(UNION_MAKE, **{k: v for k, v in change.items() if k != "clip"})
    clip = bad_files[change["clip"]] if "clip" in change else str(sample_clip_path())
    make = handler(demo, "union", "make_control")
    text = told(last(make(clip, *args.values(), request=None)))
    assert expect in text, (case, text)
    assert len(ctx.jobs.list("local", limit=1000)) == before  # refused at submit: nothing queued


def test_union_generate_refuses_a_mask_of_another_size_before_the_queue(studio_server):
    from pipelines.models.demo_loras import DEMO_LORAS

    _, ctx, demo = studio_server
    control = ctx.user_dir("local", "bad-inputs") / "control.mp4"
    from pipelines.video_io import write_video

    write_video(control, np.zeros((9, 64, 128, 3), np.uint8), 24.0)
    mask = ctx.user_dir("local", "bad-inputs") / "mask.npy"
    np.save(mask, np.ones((9, 64, 96), np.float32))
    union = str(ctx.demo_loras[DEMO_LORAS[0].key])
    submit = handler(demo, "union", "submit")
    before = len(ctx.jobs.list("local", limit=1000))
    painted = {"path": str(mask), "width": 96, "height": 64, "frames": 9, "downscale": 1, "strength": 1.0}
    args = ["a fox", "", {"control": str(control)}, "canny", 1.0, union, 1.0, None, 1.0, True, painted, None, 1.0,
            "tiny", "distilled", 8, 1.0, 1, "auto", 0, 128, 64, 9, 24.0]
    text = told(submit(None, *args))  # Gradio passes the request first
    assert "painted for 96x64, 9 frames, D=1" in text and "128x64, 9 frames, D=2" in text
    # the same mask named in the request (as the API would) is refused by the submit check, from the file
    painted.update(width=128, downscale=2)  # a hand-off that lies about its size
    text = told(submit(None, *args[:10], painted, *args[11:]))
    assert "mask.npy is 96x64 px but this output (128x64, D=2) needs a 64x32 mask" in text
    assert len(ctx.jobs.list("local", limit=1000)) == before


TRACK = ('{"format": "ic-lora-studio/tracks", "version": 1, "width": 128, "height": 64, "frames": 9, "fps": 24, '
         '"tracks": [{"points": [{"x": 10, "y": 10}, {"x": 100, "y": 40}]}]}')


@pytest.mark.parametrize("change, expect", [
    ({"frames": 10}, "8n+1"),
    ({"frames": 100001}, "100001"),
    ({"width": 100}, "multiple of 32"),
    ({"width": 96}, "multiples of 64"),  # on the grid for the VAE, not for the D=2 Motion-Track IC-LoRA
    ({"value": '{"tracks": "nope"}'}, "tracks"),
])
def test_tracks_generate_refuses_bad_inputs_with_a_message(studio_server, change, expect):
    from pipelines.models.demo_loras import DEMO_LORAS

    _, ctx, demo = studio_server
    before = len(ctx.jobs.list("local", limit=1000))
    args = dict(value=TRACK, lora=str(ctx.demo_loras[DEMO_LORAS[1].key]), image=None, prompt="a ball", width=128,
                height=64, frames=9, fps=24.0, strength=1.0, seed=0)
    args.update(change)
    submit = handler(demo, "tracks", "submit")
    text = told(last(submit(*args.values(), request=None)))
    assert expect in text, text
    assert len(ctx.jobs.list("local", limit=1000)) == before


@pytest.mark.parametrize("which", ["fake", "empty"])
def test_tracks_background_video_that_is_not_a_video(studio_server, bad_files, which):
    _, _, demo = studio_server
    on_video = handler(demo, "tracks", "on_video")
    text = told(on_video(bad_files[which], TRACK, None, 128, 64, request=None))
    assert f"{which if which == 'empty' else 'holiday'}.mp4" in text


@pytest.mark.parametrize("which", ["fake", "empty"])
def test_mask_painter_and_face_trainer_name_a_file_that_is_not_a_video(studio_server, bad_files, which):
    _, _, demo = studio_server
    on_upload = handler(demo, "masks", "on_upload")
    name = "holiday.mp4" if which == "fake" else "empty.mp4"
    assert name in told(on_upload(bad_files[which]))
    # the Face trainer's dataset check reports it (the report is its place for problems with clips)
    do_check = handler(demo, "train", "do_check")
    report = do_check([bad_files[which]], "", "face", "tiny", request=None)[1]
    assert f"{name}: " in report and "no readable clips" in report
    assert "internal error" not in report


@pytest.mark.parametrize("width, frames, expect", [(96, 9, "multiple of 64"), (128, 10, "8n+1"),
                                                   (128, 100001, "100001")])
def test_mask_painter_use_refuses_sizes_that_do_not_fit(studio_server, width, frames, expect):
    _, _, demo = studio_server
    on_use = handler(demo, "masks", "on_use")
    text = told(on_use(None, None, {}, width, 64, frames, 2, 1.0, 0, 0, False, 0.0, request=None))
    assert expect in text, text


def test_generate_tab_refuses_100001_frames_before_the_queue(studio_server):
    _, ctx, demo = studio_server
    before = len(ctx.jobs.list("local", limit=1000))
    submit = handler(demo, "generate", "submit")
    text = told(submit(None, "a fox", "", None, 128, 64, 100001, 24, "tiny", "auto", "distilled", 8, 1.0, 0))
    assert "100001" in text
    assert len(ctx.jobs.list("local", limit=1000)) == before
