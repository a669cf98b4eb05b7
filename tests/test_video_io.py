"""video_io: probe / read / write / conform on real files made with the bundled ffmpeg."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import video_io as vio
from pipelines.errors import UserError
from pipelines.video_io import ConformTarget, conform, conform_file, probe, read_video, write_video
from tests.helpers import synthetic_video, textured_frames

REPO = Path(__file__).resolve().parents[1]


def ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run([vio.ffmpeg_exe(), "-y", "-v", "error", *args], input=stdin, check=True)


def index_frames(n: int, h: int = 32, w: int = 32) -> np.ndarray:
    """Frames whose pixel value is their index: which source frame ended up where is readable."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------------------------------
# frame counts
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, valid, nxt", [(1, 1, 1), (8, 1, 9), (9, 9, 9), (10, 9, 17), (117, 113, 121),
                                           (121, 121, 121)])
def test_valid_frame_counts(n, valid, nxt):
    assert vio.valid_frame_count(n) == valid
    assert vio.next_valid_frame_count(n) == nxt


def test_trim_117_to_113_keeps_the_first_frames():
    frames = index_frames(117)
    out, report = conform(frames, 24.0, ConformTarget())
    assert out.shape[0] == 113 and report.frames == 113
    assert np.array_equal(out[:, 0, 0, 0], np.arange(113))
    assert report.changes == ["trimmed 117 frames to 113 (LTX needs 8n+1 frames)"]
    assert report.source["frames"] == 117
    json.dumps(report.to_dict())  # JSON-able


def test_one_frame_is_left_alone():
    out, report = conform(index_frames(1, 64, 64), 24.0, ConformTarget())
    assert out.shape == (1, 64, 64, 3)
    assert report.changes == []
    assert report.text().startswith("no changes needed")


def test_eight_frames_trim_to_one_or_pad_to_nine():
    frames = index_frames(8)
    out, report = conform(frames, 24.0, ConformTarget())
    assert out.shape[0] == 1 and "trimmed 8 frames to 1" in report.text()
    out, report = conform(frames, 24.0, ConformTarget(pad=True))
    assert out.shape[0] == 9
    assert list(out[:, 0, 0, 0]) == [0, 1, 2, 3, 4, 5, 6, 7, 7]  # last frame held
    assert "padded 8 frames to 9" in report.text()


def test_requested_frame_count_longer_than_clip():
    frames = index_frames(100)
    out, report = conform(frames, 24.0, ConformTarget(frames=121))
    assert out.shape[0] == 97  # largest 8n+1 available, and said so
    assert "only 100" in report.text() and "used 97" in report.text()
    out, report = conform(frames, 24.0, ConformTarget(frames=121, pad=True))
    assert out.shape[0] == 121 and (out[100:, 0, 0, 0] == 99).all()
    out, report = conform(frames, 24.0, ConformTarget(frames=33))
    assert out.shape[0] == 33 and "trimmed 100 frames to 33" in report.text()


def test_invalid_targets_are_user_errors():
    frames = index_frames(9, 64, 64)
    with pytest.raises(UserError, match=r"8n\+1.*113 or 121"):
        conform(frames, 24.0, ConformTarget(frames=120))
    with pytest.raises(UserError, match=r"width 700 is not a multiple of 32.*672 or 704"):
        conform(frames, 24.0, ConformTarget(width=700, height=512))
    with pytest.raises(UserError, match=r"height 96 is not a multiple of 64"):
        conform(frames, 24.0, ConformTarget(width=128, height=96, multiple=64))
    with pytest.raises(UserError, match="no frames"):
        conform(np.zeros((0, 64, 64, 3), np.uint8), 24.0, ConformTarget())


# ---------------------------------------------------------------------------------------------------------
# fps resample and size
# ---------------------------------------------------------------------------------------------------------
def test_fps_resample_by_nearest_frame_then_trim():
    frames = index_frames(117)
    out, report = conform(frames, 30.0, ConformTarget(fps=24))
    # 117 frames at 30 fps span 116/30 s; at 24 fps that is floor(116*0.8)+1 = 93 frames, trimmed to 89
    assert out.shape[0] == 89 and report.fps == 24.0
    src = out[:, 0, 0, 0].astype(int)
    assert list(src[:9]) == [0, 1, 3, 4, 5, 6, 8, 9, 10]  # round(i * 1.25)
    assert np.all(np.abs(src - np.arange(89) * 1.25) <= 0.5)
    assert report.changes[0].startswith("resampled 30 fps to 24 fps")
    assert report.changes[1] == "trimmed 93 frames to 89 (LTX needs 8n+1 frames)"


def test_fps_upsample_repeats_frames():
    out, _ = conform(index_frames(9), 12.0, ConformTarget(fps=24))
    assert out.shape[0] == 17
    assert list(out[:5, 0, 0, 0]) == [0, 1, 1, 2, 2]


def test_odd_size_snaps_down_to_the_grid_with_cover_and_center_crop():
    frames = textured_frames(9, 721, 403)
    out, report = conform(frames, 24.0, ConformTarget())
    assert out.shape == (9, 384, 704, 3)
    assert (report.width, report.height) == (704, 384)
    assert "resized 721x403 to 704x393, then center-cropped to 704x384" in report.text()


def test_cover_crop_is_centered_and_keeps_aspect():
    # a white disc in the middle of a 640x360 frame must stay a centred disc in 512x512 (no squashing)
    import cv2

    frame = np.zeros((360, 640, 3), np.uint8)
    cv2.circle(frame, (320, 180), 60, (255, 255, 255), -1)
    out, report = conform(frame[None], 24.0, ConformTarget(width=512, height=512))
    mask = out[0, :, :, 0] > 127
    ys, xs = np.nonzero(mask)
    assert abs(ys.mean() - 255.5) < 2 and abs(xs.mean() - 255.5) < 2
    assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 2  # still round
    # cover scale = 512/360: the radius grows from 60 to about 85
    assert 80 < (xs.max() - xs.min()) / 2 < 90
    assert "center-cropped to 512x512" in report.text()


def test_portrait_clip_and_width_only_target():
    frames = textured_frames(9, 403, 721)
    out, report = conform(frames, 24.0, ConformTarget())
    assert out.shape == (9, 704, 384, 3)
    out, report = conform(frames, 24.0, ConformTarget(width=256))
    # height follows the aspect, snapped to the grid: 721 * 256/403 = 458 -> 448
    assert out.shape == (9, 448, 256, 3)


# ---------------------------------------------------------------------------------------------------------
# probe / read on real files
# ---------------------------------------------------------------------------------------------------------
def test_probe_and_read_117_frame_clip(make_video):
    path = make_video("c117.mp4", frames=117, width=96, height=64, fps=30)
    info = probe(path)
    assert (info.width, info.height, info.frames) == (96, 64, 117)
    assert info.fps == 30.0 and abs(info.duration - 3.9) < 1e-6
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.rotation == 0 and not info.has_audio and not info.variable_fps
    frames, fps = read_video(path)
    assert frames.shape == (117, 64, 96, 3) and frames.dtype == np.uint8 and fps == 30.0
    assert mae(frames, textured_frames(117, 96, 64)) < 12  # 4:2:0 chroma on a random colour texture
    assert mae(frames, textured_frames(117, 96, 64, seed=1)) > 30  # ... which is far from another texture
    first, _ = read_video(path, max_frames=10)
    assert np.array_equal(first, frames[:10])


def test_conform_file_odd_size_mpeg4(make_video):
    path = make_video("odd.mp4", frames=117, width=721, height=403, fps=30, codec="mpeg4")
    info = probe(path)
    assert (info.width, info.height, info.codec) == (721, 403, "mpeg4")
    frames, fps, report = conform_file(path, ConformTarget())
    assert frames.shape == (113, 384, 704, 3) and fps == 30.0
    assert report.changes == ["trimmed 117 frames to 113 (LTX needs 8n+1 frames)",
                              "resized 721x403 to 704x393, then center-cropped to 704x384 (LTX needs multiples of 32)"]
    assert report.source["path"] == str(path)


def test_conform_file_reads_only_what_it_needs_and_says_so(make_video):
    path = make_video("long.mp4", frames=60, width=96, height=64, fps=24)
    frames, fps, report = conform_file(path, ConformTarget(frames=17, width=64, height=64))
    assert frames.shape == (17, 64, 64, 3)
    assert report.source["frames_read"] == 17
    assert "trimmed 60 frames to 17" in report.text()


@pytest.mark.parametrize("w, h, fps, target", [
    (722, 406, 30, ConformTarget()),                                     # off the grid: resize + crop, 8n+1
    (320, 240, 60, ConformTarget(width=128, height=64, frames=17, fps=24)),  # fps resample, trim, aspect crop
    (320, 240, 24, ConformTarget(width=96, height=96, frames=33, pad=True)),  # short clip held to 33
])
def test_conform_file_resizes_while_decoding_with_the_same_result(make_video, w, h, fps, target):
    """conform_file shrinks each frame as it is decoded (a 4K clip never sits in memory at 4K) and gives what
    decoding everything, then conforming, gives: the same pixels, the same report."""
    import tracemalloc

    path = make_video(f"src{w}x{h}x{fps}.mp4", frames=29, width=w, height=h, fps=fps)
    full, full_fps = read_video(path)
    want, want_report = conform(full, full_fps, target)
    del full
    tracemalloc.start()
    try:
        got, got_fps, report = conform_file(path, target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, want) and got_fps == want_report.fps
    assert report.changes[-len(want_report.changes):] == want_report.changes
    # what stayed in memory: the output and one source frame, not every decoded frame at the source size
    assert peak < got.nbytes * 2 + w * h * 3 * 3, (peak, got.nbytes)


def test_upscaling_is_not_done_while_decoding(make_video):
    """Growing frames while decoding would hold more than the source: small clips conform as before."""
    from pipelines.video_io import presize

    path = make_video("small.mp4", frames=9, width=64, height=32)
    assert presize(probe(path), ConformTarget(width=128, height=64)) is None
    assert presize(probe(path), ConformTarget(width=32, height=32)) is not None


def test_odd_size_yuv444(make_video):
    path = make_video("odd444.mp4", frames=9, width=721, height=403, pix_fmt="yuv444p")
    info = probe(path)
    assert (info.width, info.height, info.pix_fmt) == (721, 403, "yuv444p")
    frames, _ = read_video(path)
    assert frames.shape == (9, 403, 721, 3)


def test_portrait_clip(make_video):
    path = make_video("portrait.mp4", frames=9, width=64, height=96)
    info = probe(path)
    assert (info.width, info.height) == (64, 96)
    frames, _ = read_video(path)
    assert frames.shape == (9, 96, 64, 3)


@pytest.mark.parametrize("ccw, clockwise", [(90, 270), (-90, 90), (180, 180)])
def test_rotation_tag_gives_display_size_and_rotated_pixels(make_video, tmp_path, ccw, clockwise):
    src = make_video("landscape.mp4", frames=9, width=96, height=64)
    rotated = tmp_path / f"rot{ccw}.mp4"
    ffmpeg("-display_rotation", str(ccw), "-i", str(src), "-c", "copy", str(rotated))
    info = probe(rotated)
    assert info.rotation == clockwise
    expected_size = (96, 64) if clockwise == 180 else (64, 96)
    assert (info.width, info.height) == expected_size
    plain, _ = read_video(src)
    frames, _ = read_video(rotated)
    assert frames.shape == (9, info.height, info.width, 3)
    # np.rot90 turns counter-clockwise, like the display matrix angle
    assert mae(frames, np.rot90(plain, k=ccw // 90, axes=(1, 2))) < 1.0


def test_ten_bit_input(tmp_path):
    data = textured_frames(9, 96, 64)
    path = tmp_path / "ten.mp4"
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x64", "-r", "24", "-i", "-",
           "-c:v", "libx264", "-crf", "10", "-pix_fmt", "yuv420p10le", str(path), stdin=data.tobytes())
    info = probe(path)
    assert info.pix_fmt == "yuv420p10le" and info.frames == 9
    frames, _ = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape == (9, 64, 96, 3)
    assert mae(frames, data) < 8


def test_variable_frame_rate_is_detected_and_retimed(tmp_path):
    # 20 frames: the first 10 at 1/30 s spacing, the last 10 at 3/30 s (a stall, as phones do)
    data = index_frames(20, 64, 64) * 12
    path = tmp_path / "vfr.mp4"
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x64", "-r", "30", "-i", "-",
           "-vf", "setpts='if(lt(N,10),N,10+(N-10)*3)/30/TB'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path), stdin=data.tobytes())
    info = probe(path)
    assert info.variable_fps
    assert info.frames == 20
    assert 1.2 < info.duration < 1.4  # last pts 37/30 s + one frame
    assert abs(info.fps - info.frames / info.duration) < 0.1
    frames, fps = read_video(path)
    assert fps == pytest.approx(info.fps, rel=1e-3)
    assert abs(frames.shape[0] - info.frames) <= 1
    values = frames[:, 32, 32, 0].astype(int)
    assert np.all(np.diff(values) >= 0)  # time still runs forward
    assert np.sum(np.diff(values) == 0) >= 4  # the slow part is held (duplicates) at a constant rate
    assert np.any(np.diff(values) >= 24)  # the fast part is thinned (frames skipped)
    # a constant-rate clip is not flagged
    assert not probe(synthetic_video(tmp_path / "cfr.mp4", frames=9)).variable_fps


def test_audio_track_is_reported(make_video, tmp_path):
    src = make_video("v.mp4", frames=24, width=64, height=64)
    path = tmp_path / "av.mp4"
    ffmpeg("-i", str(src), "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:v", "copy",
           "-c:a", "aac", "-shortest", str(path))
    assert probe(path).has_audio


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(UserError, match=r"notes\.mp4 is not a readable video"):
        probe(path)
    with pytest.raises(UserError, match=r"notes\.mp4"):
        read_video(path)


def test_empty_missing_folder_and_audio_only(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.*empty\.mp4"):
        probe(empty)
    with pytest.raises(UserError, match=r"not found.*nope\.mp4"):
        probe(tmp_path / "nope.mp4")
    with pytest.raises(UserError, match="folder"):
        probe(tmp_path)
    audio = tmp_path / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(audio))
    with pytest.raises(UserError, match=r"tone\.m4a has no video stream"):
        probe(audio)


def test_truncated_file(make_video, tmp_path):
    src = make_video("whole.mp4", frames=17)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut\.mp4"):
        probe(cut)


# ---------------------------------------------------------------------------------------------------------
# write
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps", [24.0, 30000 / 1001])
def test_write_probe_round_trip(tmp_path, fps):
    data = textured_frames(17, 128, 96)
    comment = json.dumps({"prompt": "a cat; on a mat = fine", "seed": 7, "note": "line1\nline2 \\ end"})
    out = write_video(tmp_path / "sub" / "out.mp4", data, fps, comment=comment)
    assert out == tmp_path / "sub" / "out.mp4" and out.exists()
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    info = probe(out)
    assert (info.width, info.height, info.frames) == (128, 96, 17)
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert vio.read_comment(out) == comment
    back, back_fps = read_video(out)
    assert back.shape == data.shape and back_fps == pytest.approx(fps, abs=1e-6)
    assert mae(back, data) < 12  # 4:2:0 chroma on a random colour texture
    assert [p.name for p in out.parent.iterdir()] == ["out.mp4"]  # no temp file left behind


def test_write_faststart_puts_moov_first(tmp_path):
    out = write_video(tmp_path / "fs.mp4", textured_frames(9, 64, 64), 24)
    head = out.read_bytes()[:4096]
    assert 0 <= head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head


def test_write_rejects_odd_size_and_bad_names(tmp_path):
    with pytest.raises(UserError, match="721x403 must be even"):
        write_video(tmp_path / "odd.mp4", np.zeros((1, 403, 721, 3), np.uint8), 24)
    with pytest.raises(UserError, match=r"\.mp4"):
        write_video(tmp_path / "x.gif", np.zeros((1, 64, 64, 3), np.uint8), 24)
    with pytest.raises(UserError, match="fps"):
        write_video(tmp_path / "x.mp4", np.zeros((1, 64, 64, 3), np.uint8), 0)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous good video")
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    # writes half a file to its output argument, reads some input, then dies like a full disk would
    fake.write_text('#!/bin/sh\nfor a; do last="$a"; done\nhead -c 1000 > /dev/null\n'
                    'printf partial > "$last"\necho "No space left on device" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setattr(vio, "ffmpeg_exe", lambda: str(fake))
    with pytest.raises(UserError, match="No space left on device"):
        write_video(out, textured_frames(9, 64, 64), 24)
    assert out.read_bytes() == b"previous good video"
    with pytest.raises(UserError):
        write_video(tmp_path / "new.mp4", textured_frames(9, 64, 64), 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "keep.mp4"]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_memoryview = memoryview

    def exploding_memoryview(obj):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_memoryview(obj)

    monkeypatch.setattr(vio, "memoryview", exploding_memoryview, raising=False)
    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "int.mp4", textured_frames(9, 64, 64), 24)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_probe_and_conform(make_video, tmp_path):
    path = make_video("cli.mp4", frames=20, width=100, height=70, fps=25, pix_fmt="yuv444p")
    res = run_cli("probe", str(path))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["width"], info["height"], info["frames"], info["fps"]) == (100, 70, 20, 25.0)

    out = tmp_path / "conformed.mp4"
    res = run_cli("conform", str(path), "--out", str(out), "--pad")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["width"], report["height"], report["frames"]) == (96, 64, 25)
    assert "padded 20 frames to 25" in report["text"]
    info = probe(out)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 25, 25.0)
    assert "padded 20 frames to 25" in vio.read_comment(out)


def test_cli_bad_file_is_one_error_line_and_exit_2(tmp_path):
    bad = tmp_path / "fake.mp4"
    bad.write_text("hello")
    for args in (["probe", str(bad)], ["conform", str(bad), "--out", str(tmp_path / "o.mp4")],
                 ["conform", str(bad), "--out", str(tmp_path / "o.mp4"), "--width", "700"]):
        res = run_cli(*args)
        assert res.returncode == 2, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_metadata_of_any_size_goes_in_without_a_command_line(tmp_path):
    """A 1 MB prompt or 1000 controls in the sidecar JSON: the comment reaches ffmpeg as an FFMETADATA file
    (on ffmpeg's argv one argument may hold 128 KB: "Argument list too long" after the whole render), and reads
    back exactly, escapes, newlines and a trailing backslash included."""
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    request = {"prompt": "é=;#\\\n" + "p" * 1_000_000, "controls": [{"path": f"/c/{i}.mp4"} for i in range(1000)]}
    for comment in (json.dumps(request), "ends in a backslash \\", "a\r\nb=c;d#e\\\\\n"):
        out = vio.write_video(tmp_path / "meta.mp4", frames, 24.0, comment=comment)
        assert vio.read_comment(out) == comment
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.mp4"]  # no metadata or partial file left
