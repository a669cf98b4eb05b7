"""Dataset report, reference choice and `python -m pipelines dataset check`, on tiny synthetic clips.

The installed OpenCV may have no Haar cascades (OpenCV 5 moved them out), and Haar does not fire on drawn
patterns anyway, so the face plumbing is tested with a stand-in detector that finds a magenta "face" patch
drawn into the clips; the real-detector path is tested for what it must say on either kind of OpenCV.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.training.dataset import (
    Bucket, Face, HaarFaceDetector, choose_bucket, phash, scan_dataset, valid_frame_count,
)
from pipelines.training.references import (
    ReferenceStrategy, assign_references, crop_box, load_reference, pick_reference, still_to_video,
)
from tests.helpers import synthetic_video, textured_frames

W, H = 96, 64


# --------------------------------------------------------------------------------------------- fixtures


def magenta_detector(rgb: np.ndarray) -> list[Face]:
    """Stand-in face detector: the bounding box of the magenta patch; wider than tall = frontal, else profile."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    mask = ((r > 190) & (b > 190) & (g < 60)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < 20:
        return []
    x, y, w, h = (int(v) for v in stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), :4])
    return [Face(x, y, w, h, "frontal" if w >= h * 0.9 else "profile")]


def face_clip(path: Path, frames: int, seed: int, box_hw: tuple[int, int], start: tuple[int, int], step=(1, 0)) -> Path:
    """A textured moving background with a magenta 'face' patch moving over it."""
    from pipelines.video_io import write_video

    data = textured_frames(frames, W, H, seed).copy()
    bh, bw = box_hw
    for t in range(frames):
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        data[t, y:y + bh, x:x + bw] = (230, 20, 230)
    return write_video(path, data, 24.0)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """6 readable clips (one a re-encoded duplicate, one with 117 frames), one text file posing as a video,
    a caption, an orphan caption and a stray file."""
    d = tmp_path_factory.mktemp("ds")
    for i in range(1, 5):
        synthetic_video(d / f"clip_{i:02d}.mp4", frames=17, width=W, height=H, seed=i)
    # Same footage as clip_01, different codec: not byte-identical, perceptually the same.
    synthetic_video(d / "clip_11.mp4", frames=17, width=W, height=H, seed=1, codec="mpeg4")
    synthetic_video(d / "clip_07.mp4", frames=117, width=W, height=H, seed=7)
    (d / "clip_05.mp4").write_text("this is a text file, not a video\n")
    (d / "clip_01.txt").write_text("a person   walking\nin the park\n")
    (d / "lonely.txt").write_text("caption without a clip")
    (d / "notes.md").write_text("not part of the data")
    return d


@pytest.fixture(scope="module")
def report(dataset_dir):
    return scan_dataset(dataset_dir, trigger="sks", face_detector=None)


@pytest.fixture(scope="module")
def face_dataset(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faces")
    face_clip(d / "big.mp4", 17, 1, (32, 36), (10, 10))        # frontal, 50% of frame height
    face_clip(d / "small.mp4", 17, 2, (12, 14), (40, 30))       # frontal, ~19%
    face_clip(d / "side.mp4", 17, 3, (24, 14), (60, 20), (0, 1))  # narrow: "profile"
    synthetic_video(d / "noface.mp4", frames=17, width=W, height=H, seed=4)
    return d


# --------------------------------------------------------------------------------------------- buckets


def test_buckets_are_on_the_grid_and_keep_aspect():
    for (w, h, f) in [(1920, 1080, 300), (1080, 1920, 97), (640, 640, 117), (96, 64, 17), (720, 480, 5)]:
        b = choose_bucket(w, h, f, multiple=32, max_frames=121)
        assert b.width % 32 == 0 and b.height % 32 == 0
        assert (b.frames - 1) % 8 == 0 and b.frames <= min(f, 121)
        assert abs(np.log((b.width / b.height) / (w / h))) < 0.15, (w, h, b)
        assert 0.8 * 512 * 512 <= b.width * b.height <= 1.2 * 512 * 512
    assert choose_bucket(1920, 1080, 300).frames == 121
    assert choose_bucket(640, 640, 117) == Bucket(512, 512, 113)
    assert choose_bucket(1080, 1920, 97, multiple=64, target_area=256 * 256).width % 64 == 0
    assert valid_frame_count(117) == 113 and valid_frame_count(9) == 9 and valid_frame_count(8) == 1


def test_phash_tells_same_from_different_content():
    a = textured_frames(1, 128, 96, seed=0)[0]
    b = textured_frames(1, 128, 96, seed=1)[0]
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    assert bin(phash(a) ^ phash(cv2.resize(noisy, (64, 48)))).count("1") <= 6
    assert bin(phash(a) ^ phash(b)).count("1") >= 16


# --------------------------------------------------------------------------------------------- report


def test_report_clips_trim_duplicates_and_unreadable(report):
    names = [c.name for c in report.clips]
    assert names == ["clip_01.mp4", "clip_02.mp4", "clip_03.mp4", "clip_04.mp4", "clip_07.mp4", "clip_11.mp4"]
    assert report.ok and not report.errors

    long = report.clip("clip_07.mp4")
    assert (long.frames, long.width, long.height) == (117, W, H)
    assert long.fps == pytest.approx(24.0, abs=0.01) and long.duration == pytest.approx(117 / 24, abs=0.05)
    assert long.bucket.frames == 113 and long.bucket.width % 32 == 0 and long.bucket.height % 32 == 0
    assert "clip_07.mp4 has 117 frames; it will be trimmed to 113 (8n+1)" in report.warnings
    assert any(ch.startswith("trim 117 -> 113") for ch in long.conform)
    assert report.clip("clip_02.mp4").bucket.frames == 17
    assert not any("trim" in ch for ch in report.clip("clip_02.mp4").conform)

    # The duplicate is named, pairwise, and it is the only pair.
    assert [(d.a, d.b) for d in report.duplicates] == [("clip_01.mp4", "clip_11.mp4")]
    assert report.duplicates[0].distance <= 4
    assert any(w.startswith("clip_01.mp4 and clip_11.mp4 look like the same footage (hash distance") for w in report.warnings)

    # A text file posing as a video: listed with a reason, the scan goes on.
    assert [u.name for u in report.unreadable] == ["clip_05.mp4"]
    assert "not a readable video" in report.unreadable[0].reason
    assert str(report.root) not in report.unreadable[0].reason  # names, not absolute paths
    assert any(w.startswith("clip_05.mp4 cannot be read") for w in report.warnings)

    assert report.ignored == ["notes.md"]
    assert any("lonely.txt has no clip" in w for w in report.warnings)
    assert any(w.startswith("only 6 readable clip(s); 15-40") for w in report.warnings)
    assert report.face_check.startswith("face check skipped")


def test_report_captions_and_trigger(report):
    assert report.clip("clip_01.mp4").caption == "sks a person walking in the park"
    assert report.clip("clip_01.mp4").caption_file == "clip_01.txt"
    assert report.clip("clip_02.mp4").caption == "sks" and report.clip("clip_02.mp4").caption_file is None
    assert any("5 clip(s) have no caption file" in w and "'sks'" in w for w in report.warnings)


def test_report_text_and_json(report):
    data = json.loads(json.dumps(report.to_dict()))
    assert data["clip_count"] == 6 and data["ok"] is True
    assert data["recommended_clips"] == [15, 40]
    assert data["unreadable"][0]["name"] == "clip_05.mp4"
    assert data["duplicates"][0]["a"] == "clip_01.mp4"
    clip = next(c for c in data["clips"] if c["name"] == "clip_07.mp4")
    assert clip["bucket"]["frames"] == 113 and len(clip["phash"]) == len(clip["sampled_frames"]) >= 2
    assert 60 < data["coverage"]["brightness"]["mean"] < 200
    text = report.text()
    for needle in ("clip_07.mp4 has 117 frames; it will be trimmed to 113 (8n+1)", "Unreadable:",
                   "clip_05.mp4:", "look like the same footage", "guidance 15-40", "bucket "):
        assert needle in text


def test_zip_input_matches_folder(dataset_dir, report, tmp_path):
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(dataset_dir.iterdir()):
            zf.write(f, f"mydata/{f.name}")
        zf.writestr("__MACOSX/mydata/._clip_01.mp4", b"junk")
    out = tmp_path / "extracted"
    z = scan_dataset(zpath, trigger="sks", face_detector=None, extract_dir=out)
    assert [c.name for c in z.clips] == [f"mydata/{c.name}" for c in report.clips]
    assert [u.name for u in z.unreadable] == ["mydata/clip_05.mp4"]
    assert [(d.a, d.b) for d in z.duplicates] == [("mydata/clip_01.mp4", "mydata/clip_11.mp4")]
    assert z.clip("mydata/clip_07.mp4").bucket.frames == 113
    assert Path(z.clips[0].path).is_file() and Path(z.root) == out.resolve()
    assert not (out / "__MACOSX").exists()


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(UserError, match="dataset not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(UserError, match="not a readable zip"):
        scan_dataset(tmp_path / "bad.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.mov").write_bytes(b"")
    r = scan_dataset(empty, face_detector=None)
    assert not r.ok and r.errors[0].startswith("no readable clips")
    assert r.unreadable[0].name == "a.mov" and "empty" in r.unreadable[0].reason


# --------------------------------------------------------------------------------------------- faces


def test_face_stats_and_warnings_with_a_detector(face_dataset):
    r = scan_dataset(face_dataset, face_detector=magenta_detector, samples=4)
    big, small, side, none = (r.clip(n) for n in ("big.mp4", "small.mp4", "side.mp4", "noface.mp4"))
    assert big.face.frames_with_face == big.face.sampled == 4
    assert big.face.median_height == pytest.approx(32 / H, abs=0.05)
    assert small.face.median_height == pytest.approx(12 / H, abs=0.05)
    assert side.face.profile == 4 and side.face.frontal == 0
    assert not none.face.found
    assert "no face found in noface.mp4 (subject may be too small or turned away)" in r.warnings
    assert not any("no face found in big.mp4" in w for w in r.warnings)
    f = r.coverage["faces"]
    assert f["clips_with_face"] == 3 and f["clips_checked"] == 4
    assert f["frontal_share"] == pytest.approx(8 / 12, abs=1e-3)
    assert f["height"]["min"] < f["height"]["max"]
    assert f["center_spread"]["x"] > 0.05
    assert "face: frontal, 50% of height" in r.text()
    assert r.ok  # face findings are warnings, never errors


def test_default_face_check_is_honest(dataset_dir):
    r = scan_dataset(dataset_dir, samples=2)
    if hasattr(cv2, "CascadeClassifier"):
        assert any(w.startswith("no face found in clip_02.mp4") for w in r.warnings)
        assert HaarFaceDetector()(np.full((120, 160, 3), 128, np.uint8)) == []
    else:  # it must not claim "no face" when it could not look
        assert r.face_check.startswith("face check skipped") and "OpenCV" in r.face_check
        assert not any(w.startswith("no face found") for w in r.warnings)
        assert any(w.startswith("face check skipped") for w in r.warnings)
        assert all(c.face is None for c in r.clips)


# --------------------------------------------------------------------------------------------- references


def test_pick_reference_prefers_sharp_face_frames():
    base = textured_frames(1, 128, 96, seed=3)[0]
    blurred = cv2.GaussianBlur(base, (0, 0), 3)
    dark = (base * 0.15).astype(np.uint8)
    with_face = base.copy()
    with_face[30:60, 50:80] = (230, 20, 230)
    blurred_face = cv2.GaussianBlur(with_face, (0, 0), 3)
    choice = pick_reference([blurred, dark, base, blurred_face, with_face], detector=magenta_detector)
    assert choice.frame_index == 4 and choice.face is not None
    x0, y0, x1, y1 = choice.box
    assert (x1 - x0) == (y1 - y0) == 54  # 1.8 x 30 face, square
    assert abs((x0 + x1) / 2 - 65) <= 1 and abs((y0 + y1) / 2 - 45) <= 1
    assert any("frontal face" in r for r in choice.reasons)

    no_face = pick_reference([blurred, dark, base], detector=None)
    assert no_face.frame_index == 2 and no_face.face is None
    assert no_face.box == (16, 0, 112, 96)  # centre square crop
    assert any("centre crop" in r for r in no_face.reasons)


def test_crop_box_stays_inside_the_frame():
    box = crop_box(100, 80, Face(85, 2, 20, 20), margin=1.8, aspect=1.0)
    assert box == (64, 0, 100, 36)
    box = crop_box(100, 80, Face(0, 0, 90, 78), margin=1.8, aspect=16 / 9)
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 100 and box[3] <= 80


def test_references_come_from_another_clip_by_default(face_dataset):
    r = scan_dataset(face_dataset, face_detector=magenta_detector, samples=3)
    refs = assign_references(r, seed=1, detector=magenta_detector, samples=4)
    assert set(refs) == {c.name for c in r.clips}
    for target, ref in refs.items():
        assert ref.kind == "clip" and ref.source != target
        assert ref.source in {"big.mp4", "small.mp4", "side.mp4"}  # clips with a face are preferred
        assert 0 <= ref.frame < 17
        assert any("another clip" in x for x in ref.reasons)
    again = assign_references(r, seed=1, detector=magenta_detector, samples=4)
    assert {k: v.to_dict() for k, v in again.items()} == {k: v.to_dict() for k, v in refs.items()}

    same = assign_references(r, strategy="same_clip", detector=magenta_detector, samples=4)
    assert all(ref.source == t for t, ref in same.items())
    big = same["big.mp4"]
    x0, y0, x1, y1 = big.box
    assert x1 - x0 == y1 - y0 and (x1 - x0) >= 50  # square around a 32x36 patch, grown

    ref = load_reference(refs["noface.mp4"], frames=9, size=(64, 64))
    assert ref.shape == (9, 64, 64, 3) and ref.dtype == np.uint8
    assert np.array_equal(ref[0], ref[8])
    # the crop is centred on the face patch of the source clip
    own = load_reference(big)[0]
    assert own.shape[0] == own.shape[1] and magenta_detector(own)
    cy, cx = own.shape[0] // 2, own.shape[1] // 2
    assert own[cy, cx, 0] > 170 and own[cy, cx, 1] < 90 and own[cy, cx, 2] > 170


def test_reference_overrides_and_errors(face_dataset, report, tmp_path):
    img = tmp_path / "me.png"
    cv2.imwrite(str(img), np.full((40, 60, 3), 200, np.uint8))
    r = scan_dataset(face_dataset, face_detector=magenta_detector, samples=2)
    refs = assign_references(r, strategy=ReferenceStrategy.OTHER_CLIP, overrides={"small.mp4": img},
                             detector=magenta_detector, samples=2)
    assert refs["small.mp4"].kind == "image" and refs["small.mp4"].source == "me.png"
    assert load_reference(refs["small.mp4"]).shape == (1, 40, 60, 3)
    assert load_reference(refs["small.mp4"], size=(32, 32)).shape == (1, 32, 32, 3)
    with pytest.raises(UserError, match="unknown clip"):
        assign_references(r, overrides={"nope.mp4": img}, detector=None)
    (tmp_path / "bad.png").write_text("no")
    with pytest.raises(UserError, match="not a readable image"):
        assign_references(r, overrides={"big.mp4": tmp_path / "bad.png"}, detector=None)
    with pytest.raises(UserError, match="unknown reference strategy"):
        assign_references(r, strategy="random", detector=None)
    # A near-duplicate of the target is not "another clip".
    dup_refs = assign_references(report, seed=0, detector=None, samples=2)
    assert dup_refs["clip_01.mp4"].source not in {"clip_01.mp4", "clip_11.mp4"}
    assert dup_refs["clip_11.mp4"].source not in {"clip_01.mp4", "clip_11.mp4"}


def test_single_clip_falls_back_to_itself(tmp_path):
    synthetic_video(tmp_path / "only.mp4", frames=9, width=W, height=H, seed=5)
    r = scan_dataset(tmp_path, face_detector=None)
    refs = assign_references(r, detector=None, samples=3)
    assert refs["only.mp4"].source == "only.mp4"
    assert any("only one readable clip" in x for x in refs["only.mp4"].reasons)


def test_still_to_video():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    v = still_to_video(img, 17)
    assert v.shape == (17, 20, 30, 3) and v.dtype == np.uint8 and v.flags.writeable
    assert all(np.array_equal(f, img) for f in v)
    assert still_to_video(img[None], 1).shape == (1, 20, 30, 3)
    with pytest.raises(UserError, match="8n\\+1"):
        still_to_video(img, 12)
    with pytest.raises(UserError, match="RGB image"):
        still_to_video(img[..., 0], 9)


# --------------------------------------------------------------------------------------------- CLI


def test_cli_dataset_check(dataset_dir, tmp_path, capsys):
    from pipelines.cli import main

    assert main(["dataset", "check", str(dataset_dir), "--trigger", "sks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["clip_count"] == 6 and data["trigger"] == "sks"
    assert "clip_07.mp4 has 117 frames; it will be trimmed to 113 (8n+1)" in data["warnings"]

    assert main(["dataset", "check", str(dataset_dir)]) == 0
    out = capsys.readouterr().out
    assert "look like the same footage" in out and "Unreadable:" in out

    assert main(["dataset", "check", str(tmp_path / "missing")]) == 2
    assert "error: dataset not found" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(dataset_dir / "clip_05.mp4", empty / "clip_05.mp4")
    assert main(["dataset", "check", str(empty), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is False
    assert "error: no readable clips" in captured.err
