"""Limits in one place (pipelines.limits): every kind of work bounded on frames, frame size and frames x
pixels, checked at submit from the UI, the API and the CLI, with a message that names the bound and the flag
that changes it; inputs probed at submit; the per-user queue cap; clean CLI errors for bad files."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.limits import Limits, probe_image_input, probe_mask_input, using, zero_gpu


def test_every_bound_names_itself_and_the_flag_that_changes_it():
    lim = Limits()
    with pytest.raises(UserError, match=r"^x: 258 frames is over the limit of 257 frames \(the server's owner can "
                                        r"raise it: `python app\.py --max-frames N`\)$"):
        lim.check_video("x", 64, 64, 258)
    with pytest.raises(UserError, match=r"4,194,304 .*--max-pixels"):
        lim.check_video("x", 2048, 2080, 1)
    with pytest.raises(UserError, match=r"\(frames x width x height; e\.g\. 64 frames at 2048x2048\).*--max-volume"):
        lim.check_video("x", 2048, 2048, 65)
    with pytest.raises(UserError, match="wider than 8:1"):
        lim.check_video("x", 1024, 64, 1)
    with pytest.raises(UserError, match=r"pass `python -m pipelines --max-frames N \.\.\.`"):
        Limits(how="cli").check_video("x", 64, 64, 300)
    with pytest.raises(UserError, match="ZeroGPU"):
        zero_gpu().check_video("x", 64, 64, 129)
    lim.check_video("ok", 2048, 2048, 64)  # 257 frames at 1024x1024 = 64 at 2048x2048: inside
    with pytest.raises(UserError, match="must be a whole number"):
        lim.check_video("x", "wide", 64, 1)


def test_generate_request_counts_and_text():
    lim = Limits()
    base = {"prompt": "x", "width": 96, "height": 64, "frames": 9}
    lim.check_generate(base)
    for extra, match in (({"prompt": "p" * 20_001}, "prompt: 20,001 characters"),
                         ({"negative_prompt": "n" * 30_000}, "negative prompt"),
                         ({"controls": [{"path": "a.mp4"}] * 9}, "9 control videos .* limit of 8"),
                         ({"loras": [{"path": "a"}] * 17}, "17 LoRAs"),
                         ({"schedule": "full", "steps": 201}, "steps: 201"),
                         ({"frames": 100001}, "100001 frames")):
        with pytest.raises(UserError, match=match):
            lim.check_generate(dict(base, **extra))


def test_training_recipe_bounds():
    lim = Limits()
    ok = {"target_area": 512 * 512, "max_frames": 49, "validation_width": 256, "validation_height": 256,
          "validation_frames": 9, "steps": 1000}
    lim.check_train(ok)
    with pytest.raises(UserError, match="training buckets: max_frames=1001"):
        lim.check_train(dict(ok, max_frames=1001))
    with pytest.raises(UserError, match="target_area=16,777,216"):
        lim.check_train(dict(ok, target_area=4096 * 4096))
    with pytest.raises(UserError, match="validation sample: 513 frames"):
        lim.check_train(dict(ok, validation_frames=513))
    with pytest.raises(UserError, match="steps=1,000,000"):
        lim.check_train(dict(ok, steps=1_000_000))


def test_server_flags_set_the_limits():
    import app
    from studio.context import StudioConfig

    args = app.parse_args(["--max-frames", "33", "--max-pixels", "262144", "--max-volume", "1000000",
                           "--max-queued-jobs", "3"])
    cfg = StudioConfig(max_frames=args.max_frames, max_pixels=args.max_pixels, max_volume=args.max_volume,
                       max_queued_jobs=args.max_queued_jobs)
    lim = cfg.limits()
    assert (lim.max_frames, lim.max_pixels, lim.max_volume, lim.max_queued_jobs) == (33, 262144, 1000000, 3)
    assert StudioConfig().limits() == Limits()
    with pytest.raises(UserError, match="--max-frames must be a positive number"):
        StudioConfig(max_frames=0).limits()


def test_queued_jobs_per_user_are_capped(tmp_path):
    from studio.jobs import JobManager

    gate = threading.Event()
    m = JobManager(tmp_path / "out", max_queued_per_user=2)
    try:
        m.register("slow", lambda r, jc: gate.wait(30) and {})
        first = m.submit("alice", "slow", {})  # runs (not waiting)
        while m.get(first, "alice").status.value != "running":
            pass
        m.submit("alice", "slow", {})
        m.submit("alice", "slow", {})
        with pytest.raises(UserError, match=r"already have 2 job\(s\) waiting .*\(2\).*--max-queued-jobs"):
            m.submit("alice", "slow", {})
        m.submit("bob", "slow", {})  # another user is not affected
    finally:
        gate.set()
        m.shutdown(timeout=10)


def test_a_check_survives_re_registering_the_kind(tmp_path):
    """studio.routes wraps job functions by registering the kind again: the submit check must stay."""
    from studio.jobs import JobManager

    m = JobManager(tmp_path / "out", start=False)
    try:
        def refuse(owner, req):
            raise UserError("refused at submit")

        m.register("k", lambda r, jc: {}, check=refuse)
        m.register("k", lambda r, jc: {"wrapped": True})
        with pytest.raises(UserError, match="refused at submit"):
            m.submit("alice", "k", {})
        m.register("k", lambda r, jc: {}, check=None)
        m.submit("alice", "k", {})
    finally:
        m.shutdown(timeout=5)


# ---------------------------------------------------------------------------------------------- inputs probed

def test_inputs_are_probed_headers_first(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"mask: empty\.npy is empty \(0 bytes\)"):
        probe_mask_input(empty)
    text = tmp_path / "spec.npy"
    text.write_text('{"not": "a mask"}')
    with pytest.raises(UserError, match="not a readable .npy mask"):
        probe_mask_input(text)
    huge = tmp_path / "huge.npy"
    np.lib.format.open_memmap(huge, mode="w+", dtype=np.float32, shape=(300, 64, 64))  # header + sparse data
    with pytest.raises(UserError, match="300 frames is over the limit"):
        probe_mask_input(huge)
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((9, 32, 48), np.float32))
    assert probe_mask_input(ok) == (9, 32, 48)

    import cv2

    big = tmp_path / "big.png"  # a small file whose header says 5000x5000: refused before decoding
    cv2.imwrite(str(big), np.zeros((5000, 5000), np.uint8))
    with using(Limits(max_pixels=1024 * 1024)):
        with pytest.raises(UserError, match="5000x5000"):
            probe_image_input(big, "image")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="image: bad.png is not a readable image"):
        probe_image_input(bad, "image")


def test_generation_inputs_refused_at_submit_not_after_the_queue(studio_server, tmp_path):
    """The studio's submit path (UI and API share it): an empty mask, a broken control video, a missing image
    fail at once with the file named, before the job is recorded."""
    from pipelines.presets import sample_clip_path

    _, ctx, _ = studio_server
    mine = Path(ctx.outputs_dir) / "local" / "limits-test"
    mine.mkdir(parents=True, exist_ok=True)
    clip = str(sample_clip_path())
    (mine / "empty.npy").write_bytes(b"")
    (mine / "broken.mp4").write_bytes(b"\x00" * 4096)
    base = {"prompt": "x", "width": 96, "height": 64, "frames": 9}
    before = len(ctx.jobs.list("local", limit=10_000))
    cases = [
        (dict(base, controls=[{"path": clip}], mask=str(mine / "empty.npy")), r"mask: empty\.npy is empty"),
        (dict(base, controls=[{"path": str(mine / "broken.mp4")}]), r"controls\[0\]: .*broken\.mp4 is not a readable"),
        (dict(base, image=str(mine / "nope.png")), "image: image not found"),
        (dict(base, width=2048, height=2048, frames=1001), "1001 frames is over the limit"),
    ]
    for request, match in cases:
        with pytest.raises(UserError, match=match):
            ctx.submit("local", "generate", request)
    assert len(ctx.jobs.list("local", limit=10_000)) == before  # nothing was queued


# ---------------------------------------------------------------------------------------------- the CLI

def _cli(capsys, *argv):
    from pipelines.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_bad_files_give_one_error_line(capsys, tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    code, err = _cli(capsys, "mask", "latent", str(empty), "--out", str(tmp_path / "l.npy"))
    assert code == 2 and err == ["error: mask: empty.npy is empty (0 bytes); save the mask again"]

    spec = tmp_path / "spec.json"
    spec.write_bytes(b'{"width": 64, "height": 64, "frames": 9, "mask": "\xff\xfe"}')
    code, err = _cli(capsys, "mask", "build", str(spec), "--out", str(tmp_path / "m.npy"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: mask spec") and "not UTF-8" in err[0]

    code, err = _cli(capsys, "generate", "--prompt", "x", "--width", "64", "--height", "64", "--frames", "9",
                     "--control", str(Path(__file__).resolve().parent.parent / "assets" / "sample_motion.mp4"),
                     "--mask", str(empty), "--out", str(tmp_path / "g.mp4"))
    assert code == 2 and err == ["error: mask: empty.npy is empty (0 bytes); save the mask again"]
    assert not (tmp_path / "g.mp4").exists()


def test_cli_unwritable_output_gives_one_error_line(capsys, tmp_path):
    from pipelines.presets import sample_clip_path

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is expected")
    code, err = _cli(capsys, "conform", str(sample_clip_path()), "--frames", "9", "--out", str(blocker / "x.mp4"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write x.mp4: ")
    assert str(blocker) in err[0]


def test_cli_limits_flags(capsys, tmp_path):
    tracks = tmp_path / "t.json"
    tracks.write_text(json.dumps([[{"x": 1, "y": 2}, {"x": 30, "y": 20}]]))
    code, err = _cli(capsys, "tracks", "render", str(tracks), "--width", "64", "--height", "64", "--frames", "1000",
                     "--out", str(tmp_path / "t.mp4"))
    assert code == 2 and err == ["error: track render: 1000 frames is over the limit of 257 frames "
                                 "(pass `python -m pipelines --max-frames N ...` to change it)"]
    code, err = _cli(capsys, "--max-frames", "9", "tracks", "render", str(tracks), "--width", "64", "--height", "64",
                     "--frames", "17", "--out", str(tmp_path / "t.mp4"))
    assert code == 2 and "17 frames is over the limit of 9" in err[0]
    code, _ = _cli(capsys, "--max-frames", "17", "tracks", "render", str(tracks), "--width", "64", "--height", "64",
                   "--frames", "17", "--out", str(tmp_path / "t.mp4"))
    assert code == 0 and (tmp_path / "t.mp4").is_file()
    from pipelines.limits import active

    assert active().how == "studio"  # the CLI's limits applied to its command only, then were restored
