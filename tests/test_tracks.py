"""Tracks: file format and imports, spline timing, the SPEC.md 7 renderer, LK auto-tracks and the CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.tracks import (TRAIL, CanvasGeometry, Point, Track, TrackSet, age_colour, age_colour_u8,
                              age_radius, auto_tracks, catmull_rom, lk_paths, load_tracks, render_tracks,
                              sample_uniform, save_tracks, track_positions, trackset_positions,
                              write_track_video)
from pipelines.tracks.render import canvas_size, disc_offsets
from tests.helpers import textured_frames

BLACK = [0, 0, 0]


# ------------------------------------------------------------------------------------------------ spline ---

def test_catmull_rom_segment_values_by_hand():
    p0, p1, p2, p3 = (np.array(v, float) for v in ((0, 0), (10, 0), (20, 10), (30, 10)))
    assert np.allclose(catmull_rom(p0, p1, p2, p3, 0.0), (10, 0))
    assert np.allclose(catmull_rom(p0, p1, p2, p3, 1.0), (20, 10))
    # x: 0.5*(20 + 20*.5 + 0*.25 + 0*.125) = 15 ; y: 0.5*(0 + 10*.5 + 30*.25 - 20*.125) = 5
    assert np.allclose(catmull_rom(p0, p1, p2, p3, 0.5), (15, 5))


def test_uniform_sampling_with_phantom_endpoints():
    ctrl = [(0, 0), (100, 0), (100, 100)]
    got = sample_uniform(ctrl, 5)  # nSeg 2: g = 0, .5, 1, 1.5, 2
    # i=1: segment 0 (A,A,B,C) at t=.5 -> (50, -6.25); i=3: segment 1 (A,B,C,C) at t=.5 -> (106.25, 50)
    assert np.allclose(got, [(0, 0), (50, -6.25), (100, 0), (106.25, 50), (100, 100)])
    xy, present = track_positions(Track([Point(*p) for p in ctrl]), 5)
    assert present.all()
    assert xy.tolist() == [[0, 0], [50, -6], [100, 0], [106, 50], [100, 100]]  # rounded to the nearest


def test_one_point_static_two_points_linear():
    xy, present = track_positions(Track([Point(12.4, 7.6)]), 4)
    assert present.all() and xy.tolist() == [[12, 8]] * 4
    xy, _ = track_positions(Track([Point(0, 0), Point(100, 50)]), 5)
    # constant speed; ties round half to even (12.5 -> 12, 37.5 -> 38) like Python's round() in ComfyUI's
    # LTXVSparseTrackEditor, whose samples its LTXVDrawTracks draws
    assert xy.tolist() == [[0, 0], [25, 12], [50, 25], [75, 38], [100, 50]]
    xy, _ = track_positions(Track([Point(2.5, 3.5)]), 2)
    assert xy.tolist() == [[2, 4]] * 2


def test_spline_with_one_point_per_frame_hits_every_point():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 500, (9, 2)).round()
    xy, _ = track_positions(Track([Point(*p) for p in pts]), 9)
    assert np.array_equal(xy, pts)


def test_timed_points_pass_at_their_frames_and_are_absent_outside():
    track = Track([Point(0, 0, 10), Point(100, 0, 20), Point(100, 100, 40)])
    xy, present = track_positions(track, 50)
    assert not present[:10].any() and present[10:41].all() and not present[41:].any()
    assert xy[10].tolist() == [0, 0] and xy[20].tolist() == [100, 0] and xy[40].tolist() == [100, 100]
    # Hermite form, tangents per frame: m(A) = (B-A)/20 (phantom 10 frames before), m(B) = (C-A)/30,
    # m(C) = (C-B)/40 (phantom 20 frames after). f15: .5A + .125*10*m(A) + .5B - .125*10*m(B) = (52.08, -4.17)
    # f30: .5B + .125*20*m(B) + .5C - .125*20*m(C) = (108.33, 52.08)
    assert xy[15].tolist() == [52, -4] and xy[30].tolist() == [108, 52]
    # evenly timed points give exactly the untimed (SPEC) curve
    even = Track([Point(0, 0, 0), Point(100, 0, 2), Point(100, 100, 4)])
    assert track_positions(even, 5)[0].tolist() == [[0, 0], [50, -6], [100, 0], [106, 50], [100, 100]]
    # monotonic in time: collinear points with uneven timing never move backwards
    line = Track([Point(0, 0, 0), Point(100, 0, 5), Point(200, 0, 40)])
    xy, _ = track_positions(line, 41)
    assert np.all(np.diff(xy[:, 0]) >= 0) and xy[5, 0] == 100


# ------------------------------------------------------------------------------------------------ format ---

def _own(tracks, width=768, height=512, frames=121):
    return {"format": "ic-lora-studio/tracks", "version": 1, "width": width, "height": height, "fps": 24,
            "frames": frames, "tracks": tracks}


def test_save_load_roundtrip(tmp_path):
    ts = TrackSet(640, 384, 33, 25.0, [Track([Point(1.5, 2, 0), Point(30, 40, 20)], "a"),
                                      Track([Point(5, 6)])])
    path = save_tracks(ts, tmp_path / "t.json")
    back = load_tracks(path)
    assert back == ts
    assert json.loads(path.read_text())["tracks"][1] == {"points": [{"x": 5, "y": 6}]}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]  # no temp file left behind


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["tracks"][2]["points"][5].update(x="a"), "tracks[2].points[5].x is not a number"),
    (lambda d: d["tracks"][0]["points"][1].pop("y"), "tracks[0].points[1].y is missing"),
    (lambda d: d["tracks"][1]["points"][0].update(x=True), "tracks[1].points[0].x is not a number"),
    (lambda d: d["tracks"][1]["points"][0].update(y=float("nan")), "tracks[1].points[0].y is not a finite number"),
    (lambda d: d["tracks"][0]["points"][1].update(frame=3), "tracks[0].points[1].frame is set but point 0 has none"),
    (lambda d: d["tracks"][0]["points"][1].update(frame=1.5), "tracks[0].points[1].frame must be a whole number"),
    (lambda d: d["tracks"][3]["points"][1].update(frame=0), "tracks[3].points[1].frame (0) must be greater"),
    (lambda d: d["tracks"][3]["points"][1].update(frame=121), "tracks[3].points[1].frame is 121 but the clip has 121"),
    (lambda d: d["tracks"][1].update(points=[]), "tracks[1].points is empty"),
    (lambda d: d["tracks"].append([1, 2]), "tracks[4] is not a track"),
    (lambda d: d.update(version=99), "version is 99"),
    (lambda d: d.pop("width"), "width is missing"),
    (lambda d: d.update(height=-4), "height must be at least 1"),
    (lambda d: d.update(tracks="x"), "tracks is not a list"),
])
def test_malformed_own_format_names_the_path(mutate, message):
    d = _own([{"points": [{"x": 1, "y": 1} for _ in range(6)]} for _ in range(3)]
             + [{"points": [{"x": 1, "y": 1, "frame": 4}, {"x": 2, "y": 2, "frame": 9}]}])
    mutate(d)
    with pytest.raises(UserError) as err:
        load_tracks(d)
    assert message in str(err.value)


@pytest.mark.parametrize("data, message", [
    ([[{"x": 1, "y": 2}], [{"x": "a", "y": 1}]], "tracks[1][0].x is not a number"),
    ([[{"x": 1, "y": 2}], [{"x": 1}]], "tracks[1][0].y is missing"),
    ([[{"x": 1, "y": 2}], 7], "tracks[1] is not a list of points"),
    ([[[1, 2], [3]]], "tracks[0][1] must be [x, y]"),
    ([[[1, 2], None, "z"]], "tracks[0][2] is not a position"),
    ([[None, None]], "tracks[0] has no positions"),
])
def test_malformed_imports_name_the_path(data, message):
    with pytest.raises(UserError) as err:
        load_tracks(data, width=100, height=100, frames=10)
    assert message in str(err.value)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,, }')
    with pytest.raises(UserError, match="not valid JSON.*line 1"):
        load_tracks(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_tracks(tmp_path / "missing.json")
    with pytest.raises(UserError, match="pass width and height"):
        load_tracks([[{"x": 1, "y": 2}]], frames=9)
    with pytest.raises(UserError, match="pass frames"):
        load_tracks([[{"x": 1, "y": 2}]], width=9, height=9)


# ---------------------------------------------------------------------------------------------- renderer ---

@pytest.fixture(scope="module")
def streak():
    """1920x1080 canvas rendered at 1920x1080 (no resize): one timed track moving 20 px/frame to the right
    from x=100 at frame 0 to x=1300 at frame 60, then ending. Circles never overlap (diameter <= 17)."""
    ts = TrackSet(1920, 1080, 121, tracks=[Track([Point(100, 540, 0), Point(1300, 540, 60)])])
    return ts, render_tracks(ts, 1920, 1080)


def _run(row: np.ndarray, x: int) -> tuple[int, int]:
    """Extent [left, right] of the non-black run around x in a row of pixels."""
    on = row.any(axis=-1)
    left = right = x
    while on[left - 1]:
        left -= 1
    while on[right + 1]:
        right += 1
    return left, right


def test_render_newest_and_25_frames_old_circle(streak):
    _, video = streak
    assert video.shape == (121, 1080, 1920, 3) and video.dtype == np.uint8
    frame = video[60]
    # newest (age 0): r=1 -> RGB (1, 0, 0) red, stored BGR -> (0, 0, 255); radius 2 + 6 = 8
    assert frame[540, 1300].tolist() == [0, 0, 255]
    assert _run(frame[540], 1300) == (1292, 1308)
    assert _run(frame[:, 1300], 540) == (532, 548)
    assert np.all(frame[532:549, 1300] == [0, 0, 255])
    # age 25 (tau 35, x=800): r=.5 -> RGB (0.5, 1, 0) -> (128, 255, 0) -> BGR (0, 255, 128); radius 2 + 3 = 5
    assert frame[540, 800].tolist() == [0, 255, 128]
    assert _run(frame[540], 800) == (795, 805)
    # age 50 (tau 10, x=300): blue, radius 2; tau 9 (x=280) is beyond the 50-frame trail
    assert frame[540, 300].tolist() == [255, 0, 0]
    assert _run(frame[540], 300) == (298, 302)
    assert frame[540, 280].tolist() == BLACK
    # trail: exactly the 51 circles of frames 10..60 are on row 540
    centres = [x for x in range(100, 1301, 20) if frame[540, x].any()]
    assert centres == list(range(300, 1301, 20))
    # painter's order and nothing else on the frame
    assert not frame[:520].any() and not frame[561:].any()


def test_render_first_frame_and_finished_track_fade(streak):
    _, video = streak
    assert video[0, 540, 100].tolist() == [0, 0, 255] and _run(video[0, 540], 100) == (92, 108)
    # the track ends at frame 60; its trail keeps aging: at frame 100 the newest circle is 40 frames old
    f100 = video[100]
    assert [x for x in range(100, 1301, 20) if f100[540, x].any()] == list(range(1100, 1301, 20))
    assert f100[540, 1300].tolist() == list(reversed([int(np.floor(c * 255 + .5)) for c in (0, 3 * .2, 1 - .6)]))
    # frame 110: only the 50-frames-old circle is left (radius 2, blue); frame 111 onwards: black
    f110 = video[110]
    assert f110[540, 1300].tolist() == [255, 0, 0] and _run(f110[540], 1300) == (1298, 1302)
    assert np.count_nonzero(f110.any(axis=-1)) == np.count_nonzero(video[60, 535:546, 295:306].any(axis=-1))
    assert not video[111:].any()


def test_render_resizes_bilinear_from_the_1080_canvas(streak):
    """A smaller target is torch's bilinear (align_corners=False) of the float 1080 canvas, then float16 and
    rint(255 v): rebuilt here from the 1080p render (each age has its own colour) and resized by torch."""
    import torch

    ts, video = streak
    palette_u8 = np.array([age_colour_u8(a) for a in range(TRAIL + 1)])[:, ::-1]  # BGR
    assert len({tuple(c) for c in palette_u8}) == TRAIL + 1
    palette = np.array([age_colour(a) for a in range(TRAIL + 1)], np.float32)[:, ::-1]
    frames = [30, 60, 100]
    canvas = np.zeros((len(frames), 1080, 1920, 3), np.float32)
    for k, t in enumerate(frames):
        for age, (u8, f) in enumerate(zip(palette_u8, palette)):
            canvas[k][np.all(video[t] == u8, axis=-1)] = f
        assert np.array_equal(canvas[k].any(-1), video[t].any(-1))
    for w, h in ((960, 540), (768, 432), (2560, 1440)):
        want = torch.nn.functional.interpolate(torch.from_numpy(canvas).permute(0, 3, 1, 2), size=(h, w),
                                               mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        want = np.rint(want.half().float().numpy() * 255).astype(np.uint8)
        got = render_tracks(ts, w, h)[frames]
        assert got.any() and np.array_equal(got, want), (w, h)


def test_canvas_geometry():
    geo = CanvasGeometry.for_target(512, 768, 512, 768)  # portrait: short side (width) becomes 1080
    assert (geo.width, geo.height, geo.scale_x, geo.scale_y) == (1080, 1620, 1080 / 512, 1620 / 768)
    assert (geo.draw_scale, geo.offset_x, geo.offset_y) == (1, 0, 0)
    assert canvas_size(1000, 562) == (1921, 1080)  # int(1000 * 1080 / 562) = int(1921.7): truncated
    assert canvas_size(720, 720) == (1080, 1080) and canvas_size(544, 960) == (1080, 1905)
    # centres: float32(x * 1080 / 512) rounded half to even, per axis
    assert geo.map(np.array([[256, 384], [1, 0]])).tolist() == [[540, 810], [2, 0]]
    # drawing canvas of another aspect: cover + centre crop onto the target, like the video conform
    geo = CanvasGeometry.for_target(1000, 1000, 1920, 1080)
    assert geo.draw_scale == 1.92 and geo.offset_y == (1920 - 1080) / 2 and geo.offset_x == 0
    assert (geo.width, geo.height) == (1920, 1080) and geo.map(np.array([500, 500])).tolist() == [960, 540]


def test_disc_shape_is_the_float_radius_disc():
    # age 0: radius 8, dx^2 + dy^2 <= 64 -> 197 pixels (cv2.circle's radius-8 polygon is another shape)
    assert len(disc_offsets(0)) == 197 and age_radius(0) == 8
    # age 1: radius 2 + 6 * 0.98 = 7.88 (float32): 7.88^2 = 62.09 -> offsets with dx^2 + dy^2 <= 62
    d = disc_offsets(1)
    assert (d ** 2).sum(1).max() == 61 and len(d) == len([1 for y in range(-8, 9) for x in range(-8, 9)
                                                           if x * x + y * y <= 62])
    assert len(disc_offsets(TRAIL)) == 13 and age_radius(TRAIL) == 2  # radius 2: the 13-pixel diamond-ish disc


def test_render_static_and_frames_override():
    ts = TrackSet(768, 512, 9, tracks=[Track([Point(384, 256)]), Track([Point(0, 0), Point(700, 500)])])
    video = render_tracks(ts, 768, 512, frames=17)
    assert video.shape == (17, 512, 768, 3)
    # the static track sits at the centre, newest on top -> red there on every frame
    assert np.all(video[:, 256, 384] == [0, 0, 255])
    xy, _ = trackset_positions(ts, 17)
    assert xy[1, -1].tolist() == [700, 500]  # untimed tracks stretch over the new length


def _random_tracks(rng, n=6, w=768, h=512):
    return [[{"x": float(rng.uniform(0, w)), "y": float(rng.uniform(0, h))} for _ in range(rng.integers(1, 6))]
            for _ in range(n)]


def test_comfyui_editor_data_renders_like_own_format(tmp_path):
    splines = _random_tracks(np.random.default_rng(3))
    own = _own([{"points": s} for s in splines], frames=49)
    comfy_file = tmp_path / "comfy.json"
    comfy_file.write_text(json.dumps(json.dumps(splines)))  # the editor widget's JSON string, saved as JSON
    ts_comfy = load_tracks(comfy_file, width=768, height=512, frames=49)
    ts_own = load_tracks(json.dumps(own))
    assert np.array_equal(trackset_positions(ts_comfy)[0], trackset_positions(ts_own)[0])
    a, b = render_tracks(ts_comfy, 768, 512), render_tracks(ts_own, 768, 512)
    assert a.any() and np.array_equal(a, b)
    # per-frame coordinate lists of the same positions render the same too
    xy, _ = trackset_positions(ts_own)
    ts_pf = load_tracks(xy.tolist(), width=768, height=512)
    assert ts_pf.frames == 49 and all(t.timed for t in ts_pf.tracks)
    assert np.array_equal(render_tracks(ts_pf, 768, 512), b)
    # a bare list of {x, y} is one spline
    assert len(load_tracks(splines[0], width=768, height=512, frames=49).tracks) == 1


# ----------------------------------------------------------------------------------------------- auto LK ---

def _truth(start: np.ndarray, motion, t: int) -> np.ndarray:
    """textured_frames translates content by -motion px per frame (warpAffine samples at x + pad + dx)."""
    return start - np.asarray(motion) * t


def test_lk_auto_tracks_sub_pixel_accuracy():
    motion = (0.63, -0.37)
    frames = textured_frames(frames=17, width=192, height=128, seed=5, motion=motion)
    ts = auto_tracks(frames, max_tracks=12)
    assert (ts.width, ts.height, ts.frames) == (192, 128, 17) and len(ts.tracks) == 12
    errors = []
    for track in ts.tracks:
        dense = track.dense
        alive = np.flatnonzero(np.isfinite(dense[:, 0]))
        assert alive[0] == 0 and np.all(np.diff(alive) == 1)
        errors += [np.linalg.norm(dense[t] - _truth(dense[0], motion, t)) for t in alive[1:]]
        # the editable control points reproduce the measured path (fit tolerance 1 px + integer rounding)
        xy, present = track_positions(track, ts.frames)
        assert np.array_equal(np.flatnonzero(present), alive)
        assert np.max(np.linalg.norm(xy[alive] - dense[alive], axis=1)) <= 1.0 + 0.71
        assert all(p.frame is not None for p in track.points) and len(track.points) <= 16
    assert len(errors) > 100 and np.median(errors) < 0.5
    # the result is a valid, saveable track file
    ts.validate()


def test_fit_keyframes_follows_a_curved_path():
    from pipelines.tracks import fit_keyframes

    t = np.arange(61) / 60 * np.pi
    path = np.stack([300 + 100 * np.cos(t), 200 + 80 * np.sin(2 * t)], axis=1)
    points = fit_keyframes(path, start_frame=5, tolerance=1.5, max_points=16)
    assert 3 <= len(points) < 16 and points[0].frame == 5 and points[-1].frame == 65
    xy, present = track_positions(Track(points), 70)
    assert np.array_equal(np.flatnonzero(present), np.arange(5, 66))
    assert np.max(np.linalg.norm(xy[5:66] - path, axis=1)) <= 1.5 + 0.71


def test_lk_region_mask_grid_seeds_and_lost_points():
    frames = textured_frames(frames=9, width=128, height=96, seed=2, motion=(2.0, 0.0))
    mask = np.zeros((96, 128), np.uint8)
    mask[:, 64:] = 255
    ts = auto_tracks(frames, max_tracks=5, region_mask=mask, seeds="grid")
    assert all(t.points[0].x >= 64 for t in ts.tracks)
    # content moves 2 px/frame to the left: a point seeded at x=3 leaves the frame and its track ends
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    paths = lk_paths(gray, np.float32([[3, 48], [100, 48]]))
    assert np.isnan(paths[0, 3:]).all() and np.isfinite(paths[1]).all()
    # a cut to unrelated content fails the forward-backward check: every track ends before the cut
    cut = np.concatenate([frames[:5], textured_frames(frames=4, width=128, height=96, seed=99, motion=(0, 0))])
    paths = lk_paths([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in cut], np.float32([[40, 40], [80, 60], [60, 30]]))
    assert np.isfinite(paths[:, :5]).all() and np.isnan(paths[:, 5:]).all()
    with pytest.raises(UserError, match="region mask is empty"):
        auto_tracks(frames, region_mask=np.zeros((96, 128), bool))


# --------------------------------------------------------------------------------------------------- CLI ---

def _cli(argv):
    from pipelines.cli import main

    return main(argv)


def test_cli_render_npy_matches_api_and_comfy(tmp_path, capsys):
    splines = _random_tracks(np.random.default_rng(7), n=3)
    own = tmp_path / "own.json"
    own.write_text(json.dumps(_own([{"points": s} for s in splines], frames=17)))
    comfy = tmp_path / "comfy.json"
    comfy.write_text(json.dumps(splines))
    assert _cli(["tracks", "render", str(own), "--width", "384", "--height", "256", "--out",
                 str(tmp_path / "a.npy")]) == 0
    assert _cli(["tracks", "render", str(comfy), "--width", "384", "--height", "256", "--frames", "17",
                 "--canvas", "768x512", "--out", str(tmp_path / "b.npy")]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (17, 256, 384, 3) and np.array_equal(a, b)
    assert np.array_equal(a, render_tracks(load_tracks(own), 384, 256))
    assert json.loads(capsys.readouterr().out.split("}\n")[0] + "}")["channel_order"] == "BGR"


def test_cli_exit_2_on_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_own([{"points": [{"x": 1, "y": 2}, {"x": "oops", "y": 2}]}])))
    out = tmp_path / "o.npy"
    for path in (bad, tmp_path / "missing.json"):
        assert _cli(["tracks", "render", str(path), "--width", "64", "--height", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: tracks[0].points[1].x is not a number" in err and "does not exist" in err
    assert "Traceback" not in err and not out.exists()
    comfy = tmp_path / "c.json"
    comfy.write_text("[[{\"x\": 1, \"y\": 2}]]")
    assert _cli(["tracks", "render", str(comfy), "--width", "64", "--height", "64", "--out", str(out)]) == 2
    assert "pass frames" in capsys.readouterr().err
    good = tmp_path / "g.json"
    good.write_text(json.dumps(_own([{"points": [{"x": 1, "y": 2}]}])))
    assert _cli(["tracks", "render", str(good), "--width", "64", "--height", "64", "--out",
                 str(tmp_path / "o.gif")]) == 2
    assert ".mp4" in capsys.readouterr().err


def test_cli_auto_and_mp4_render(tmp_path, make_video, capsys):
    pytest.importorskip("pipelines.video_io")
    clip = make_video("clip.mp4", frames=17, width=160, height=96)
    mask = np.zeros((96, 160), np.uint8)
    mask[:, :80] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    out = tmp_path / "auto.json"
    assert _cli(["tracks", "auto", str(clip), "--out", str(out), "--max-tracks", "4",
                 "--region", str(tmp_path / "mask.png")]) == 0
    ts = load_tracks(out)
    assert (ts.width, ts.height, ts.frames) == (160, 96, 17) and 1 <= len(ts.tracks) <= 4
    assert all(t.points[0].x < 80 and t.points[0].frame == 0 for t in ts.tracks)
    video = tmp_path / "tracks.mp4"
    assert _cli(["tracks", "render", str(out), "--width", "160", "--height", "96", "--out", str(video)]) == 0
    from pipelines.video_io import read_video

    frames, fps = read_video(video)
    assert frames.shape == (17, 96, 160, 3) and abs(fps - 24) < 0.1
    assert _cli(["tracks", "auto", str(tmp_path / "nope.mp4"), "--out", str(out)]) == 2


# ------------------------------------------------------------------------------------- lossless control ---

def test_lossless_video_roundtrip_is_exact(tmp_path):
    from pipelines.video_io import probe, read_comment, read_video, write_video_lossless

    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (9, 65, 97, 3), dtype=np.uint8)  # odd sizes: no chroma subsampling here
    out = write_video_lossless(tmp_path / "x.mkv", frames, 12.0, comment='{"kind": "test"}')
    back, fps = read_video(out)
    assert np.array_equal(back, frames) and fps == 12.0 and probe(out).codec == "ffv1"
    assert read_comment(out) == '{"kind": "test"}'
    assert [p.name for p in tmp_path.iterdir()] == ["x.mkv"]  # no temp file left behind
    with pytest.raises(UserError, match=".mkv"):
        write_video_lossless(tmp_path / "x.mp4", frames, 12.0)


def _control_trackset():
    return TrackSet(256, 192, 17, 12.0, [Track([Point(20, 30), Point(230, 160), Point(120, 20)]),
                                         Track([Point(200, 100, 3), Point(40, 150, 12)]), Track([Point(128, 96)])])


def test_track_control_reaches_the_engine_exactly(tmp_path, tiny_engine):
    """A lossless track control (.mkv, what the tracks_render job writes) read by the engine's control reader
    gives exactly the renderer's frames, BGR as rendered; an h264 mp4 of the same render would not."""
    from pipelines.requests import ControlInput, ControlKind, GenerateRequest
    from pipelines.video_io import read_comment, write_video

    ts = _control_trackset()
    want = render_tracks(ts, 256, 192)
    assert want.any()
    control = write_track_video(ts, tmp_path / "control.mkv", 256, 192)
    req = GenerateRequest(prompt="a ball", model="tiny", width=256, height=192, frames=17, fps=12.0,
                          controls=[ControlInput(path=str(control), kind=ControlKind.MOTION_TRACK)]).validate()
    got = np.rint(tiny_engine.prepare_references(req, 1, 256, 192).conditions[0].frames * 255).astype(np.uint8)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert json.loads(read_comment(control))["channel_order"] == "BGR"
    # what the h264 path (the control before) handed the model: not the render
    req.controls[0].path = str(write_video(tmp_path / "control.mp4", want, 12.0))
    lossy = np.rint(tiny_engine.prepare_references(req, 1, 256, 192).conditions[0].frames * 255).astype(np.uint8)
    assert not np.array_equal(lossy, want)


def test_write_track_video_formats(tmp_path):
    from pipelines.video_io import read_video

    ts = _control_trackset()
    want = render_tracks(ts, 128, 96)
    mkv = write_track_video(ts, tmp_path / "c.mkv", 128, 96)
    assert np.array_equal(read_video(mkv)[0], want)
    assert np.array_equal(np.load(write_track_video(ts, tmp_path / "c.npy", 128, 96)), want)
    assert read_video(write_track_video(ts, tmp_path / "c.mp4", 128, 96))[0].shape == want.shape
    with pytest.raises(UserError, match=r"\.mkv .*\.mp4"):
        write_track_video(ts, tmp_path / "c.gif", 128, 96)


# --------------------------------------------------------------------------- ComfyUI editor data formats ---

def _workflow(points_store, coordinates="[]", samples=33):
    return {"last_node_id": 2, "nodes": [
        {"id": 1, "type": "LoadImage", "widgets_values": ["x.jpg", "image"]},
        {"id": 2, "type": "LTXVSparseTrackEditor", "widgets_values": [points_store, coordinates, samples, ""]}]}


def test_comfyui_workflow_and_wrapped_strings_load(tmp_path):
    splines = _random_tracks(np.random.default_rng(4), n=3)
    ref = load_tracks(splines, width=768, height=512, frames=33)
    # a saved workflow: the editor's splines, its points_to_sample as the frame count
    wf = tmp_path / "workflow.json"
    wf.write_text(json.dumps(_workflow(json.dumps(splines))))
    ts = load_tracks(wf, width=768, height=512)
    assert ts.frames == 33 and np.array_equal(trackset_positions(ts)[0], trackset_positions(ref)[0])
    assert load_tracks(wf, width=768, height=512, frames=17).frames == 17  # the caller's count wins
    # the API prompt format
    api = {"7": {"class_type": "LTXVSparseTrackEditor",
                 "inputs": {"points_store": json.dumps(splines), "coordinates": "[]", "points_to_sample": 33}}}
    assert np.array_equal(trackset_positions(load_tracks(api, width=768, height=512))[0],
                          trackset_positions(ref)[0])
    # no splines stored: the per-frame coordinates widget (one {x, y} per frame), tracks may end early
    per_frame = [[{"x": 10 + i, "y": 20} for i in range(33)], [{"x": 5, "y": 5 + i} for i in range(20)]]
    ts = load_tracks(_workflow("[]", json.dumps(per_frame)), width=768, height=512)
    assert ts.frames == 33 and ts.tracks[1].points[-1].frame == 19
    # the editor's output as LTXVDrawTracks also accepts it: a list of JSON strings
    wrapped = load_tracks([json.dumps(per_frame[0]), json.dumps([per_frame[1]])], width=768, height=512,
                          kind="per_frame")
    assert np.array_equal(trackset_positions(wrapped)[0], trackset_positions(ts)[0])
    with pytest.raises(UserError, match="no LTXVSparseTrackEditor"):
        load_tracks({"nodes": [{"id": 1, "type": "LoadImage"}]}, width=768, height=512)
    two = _workflow(json.dumps(splines))
    two["nodes"].append(dict(two["nodes"][1], id=3))
    with pytest.raises(UserError, match="2 LTXVSparseTrackEditor nodes"):
        load_tracks(two, width=768, height=512)
    with pytest.raises(UserError, match="holds no tracks"):
        load_tracks(_workflow("[]"), width=768, height=512)
