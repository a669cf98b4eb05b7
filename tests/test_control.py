"""Control preprocessors: registry, canny, depth (tiny random Depth-Anything), pose (tiny ONNX), passthrough, CLI.

Everything runs offline on small synthetic clips. The depth and pose models are built here from code (random or
constant weights of the right shapes), saved to a temp folder, and found/loaded through the same paths a user's
real weights take.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.control import (CannyOptions, ControlKind, DepthOptions, PassthroughOptions, PoseOptions,
                               options_from_dict, registry_status, run_control)
from pipelines.errors import UserError
from pipelines.video_io import ConformTarget, probe


@pytest.fixture(autouse=True)
def _no_env_dirs(monkeypatch):
    for var in ("ICLORA_MODELS_DIR", "ICLORA_DEPTH_DIR", "ICLORA_POSE_DIR", "ICLORA_ANNOTATORS_DIR"):
        monkeypatch.delenv(var, raising=False)


def moving_rectangle(frames=9, width=128, height=96, x0=20, y0=30, w=40, h=30, step=4) -> tuple[np.ndarray, list]:
    """White rectangle on black moving right by `step` px per frame; returns frames and the boxes."""
    out = np.zeros((frames, height, width, 3), np.uint8)
    boxes = []
    for t in range(frames):
        x = x0 + step * t
        out[t, y0:y0 + h, x:x + w] = 255
        boxes.append((x, y0, x + w, y0 + h))
    return out, boxes


# ----------------------------------------------------------------------------------------------- registry
def test_registry_lists_all_four_and_where_weights_go(tmp_path):
    status = {s["kind"]: s for s in registry_status(tmp_path)}
    assert list(status) == ["canny", "depth", "pose", "passthrough"]
    assert status["canny"]["status"] == "ready" and status["passthrough"]["status"] == "ready"
    assert status["depth"]["status"] == "missing weights"
    assert status["depth"]["searched"] == [str(tmp_path / "depth-anything-v2-small")]
    assert status["depth"]["source"] == "depth-anything/Depth-Anything-V2-Small-hf"
    assert status["pose"]["searched"] == [str(tmp_path / "dwpose")]
    assert {w["name"] for w in status["pose"]["weights"]} == {"yolox_l.onnx", "dw-ll_ucoco_384.onnx"}
    assert status["pose"]["status"] in ("missing weights", "missing package")
    alt = status["pose"]["alternatives"][0]
    assert alt["backend"] == "controlnet-aux"
    try:
        import controlnet_aux  # noqa: F401
    except ImportError:
        assert alt["status"] == "missing package"


def test_env_var_is_searched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("ICLORA_DEPTH_DIR", str(tmp_path / "mine"))
    status = next(s for s in registry_status(tmp_path / "models") if s["kind"] == "depth")
    assert status["searched"] == [str(tmp_path / "mine"), str(tmp_path / "models" / "depth-anything-v2-small")]


def test_depth_missing_weights_error_lists_paths(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "config.json").write_text("{}")
    monkeypatch.setenv("ICLORA_DEPTH_DIR", str(tmp_path / "env"))
    frames, _ = moving_rectangle()
    with pytest.raises(UserError) as err:
        run_control("depth", frames, ConformTarget(), models_dir=tmp_path / "models")
    text = str(err.value)
    assert str(tmp_path / "env") in text and "missing model.safetensors, preprocessor_config.json" in text
    assert str(tmp_path / "models" / "depth-anything-v2-small") + " (no such folder)" in text
    assert "depth-anything/Depth-Anything-V2-Small-hf" in text and "ICLORA_DEPTH_DIR" in text


def test_pose_missing_weights_error_lists_paths(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(UserError) as err:
        run_control("pose", moving_rectangle()[0], ConformTarget(), models_dir=tmp_path)
    text = str(err.value)
    assert str(tmp_path / "dwpose") in text and "yolox_l.onnx" in text and "dw-ll_ucoco_384.onnx" in text
    assert "yzd-v/DWPose" in text


def test_options_are_checked():
    assert options_from_dict("canny", {"low_threshold": "50"}).low_threshold == 50
    with pytest.raises(UserError, match="unknown canny option"):
        options_from_dict("canny", {"threshold": 3})
    with pytest.raises(UserError, match="low <= high"):
        options_from_dict("canny", {"low_threshold": 300, "high_threshold": 200})
    with pytest.raises(UserError, match="unknown control kind"):
        ControlKind.parse("normals")
    with pytest.raises(UserError, match="not one of"):
        options_from_dict("depth", {"model": "huge"})


# ------------------------------------------------------------------------------------------------- canny
def test_canny_edges_at_known_positions():
    frames, boxes = moving_rectangle()
    out, report = run_control("canny", frames, ConformTarget(width=128, height=96, frames=9), fps=24)
    assert out.shape == (9, 96, 128, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    assert set(np.unique(out)) <= {0, 255}
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        edge = out[t, ..., 0] > 0
        ys, xs = np.nonzero(edge)
        # every edge pixel lies on the rectangle's border (within 1 px), and each side is found
        on_border = (np.minimum(abs(xs - x0), abs(xs - (x1 - 1))) <= 1) | (np.minimum(abs(ys - y0), abs(ys - (y1 - 1))) <= 1)
        assert on_border.all()
        mid = (y0 + y1) // 2
        row = np.nonzero(edge[mid])[0]
        assert any(abs(x - x0) <= 1 for x in row) and any(abs(x - (x1 - 1)) <= 1 for x in row)
        assert len(row) == 2, f"frame {t}: edges must be 1 px wide, got columns {row}"
    assert report.kind == "canny" and report.frames == 9 and report.width == 128


def test_canny_dilate_thickens_uniformly():
    frames, boxes = moving_rectangle()
    out, _ = run_control("canny", frames, ConformTarget(), CannyOptions(dilate=1), fps=24)
    widths = []
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        row = out[t, (y0 + y1) // 2, :, 0] > 0
        widths.append(int(row[: (x0 + x1) // 2].sum()))
    assert len(set(widths)) == 1 and widths[0] == 3


def test_canny_from_file_conforms_exactly(make_video):
    path = make_video("src.mp4", frames=30, width=100, height=70, fps=30.0)
    out, report = run_control("canny", path, ConformTarget(width=64, height=64, frames=17, fps=24.0))
    assert out.shape == (17, 64, 64, 3)
    assert (report.frames, report.width, report.height, report.fps) == (17, 64, 64, 24.0)
    assert out.max() == 255  # the textured clip has edges
    assert report.conform["changes"]


# ------------------------------------------------------------------------------------------- passthrough
def test_passthrough_invert_gray_and_size():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    out, _ = run_control("passthrough", frames, ConformTarget(), PassthroughOptions(invert=True), fps=24)
    assert out.shape == (9, 64, 96, 3)
    np.testing.assert_array_equal(out, 255 - frames)
    gray, _ = run_control("passthrough", frames, ConformTarget(), {"gray": True}, fps=24)
    assert (gray[..., 0] == gray[..., 2]).all() and not (frames[..., 0] == frames[..., 2]).all()
    resized, rep = run_control("passthrough", frames, ConformTarget(width=64, height=32, frames=9), fps=24)
    assert resized.shape == (9, 32, 64, 3) and rep.width == 64


# ------------------------------------------------------------------------------------------------- depth
@pytest.fixture(scope="module")
def tiny_depth_dir(tmp_path_factory):
    """A tiny random Depth-Anything (Dinov2 backbone) saved like the -hf repos: config, weights, processor."""
    torch = pytest.importorskip("torch")
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                                 reassemble_factors=[4, 2, 1, 0.5], depth_estimation_type="relative")
    model = DepthAnythingForDepthEstimation(config).eval()
    root = tmp_path_factory.mktemp("models")
    folder = root / "depth-anything-v2-small"
    model.save_pretrained(folder)
    # same numbers as depth-anything/Depth-Anything-V2-Small-hf, at a small size to keep the test fast
    DPTImageProcessor(do_resize=True, size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(folder)
    return root


def test_depth_tiny_model_finds_loads_batches_normalises(tiny_depth_dir):
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from tests.helpers import textured_frames

    frames = textured_frames(9, 96, 64, seed=3, motion=(2.0, 1.0))
    status = next(s for s in registry_status(tiny_depth_dir) if s["kind"] == "depth")
    assert status["status"] == "ready" and status["found"] == str(tiny_depth_dir / "depth-anything-v2-small")

    opts = DepthOptions(normalize="minmax", batch_size=4, device="cpu")
    out, report = run_control("depth", frames, ConformTarget(), opts, models_dir=tiny_depth_dir, fps=24)
    assert out.shape == (9, 64, 96, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all()
    # normalised over the whole clip: the clip spans 0..255 ...
    assert out.min() == 0 and out.max() == 255

    # ... and matches a reference: the transformers processor + model per frame, then ONE global min/max
    processor = AutoImageProcessor.from_pretrained(tiny_depth_dir / "depth-anything-v2-small", local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(tiny_depth_dir / "depth-anything-v2-small", local_files_only=True).eval()
    with torch.no_grad():
        pix = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        assert list(pix.shape[2:]) == report.details["model_input"]  # our torch resize follows DPT's rule
        pred = model(pixel_values=pix).predicted_depth
        pred = torch.nn.functional.interpolate(pred[:, None], size=(64, 96), mode="bilinear", align_corners=False)[:, 0]
    ref = ((pred - pred.min()) / (pred.max() - pred.min()) * 255).numpy()
    assert np.abs(ref - out[..., 0].astype(np.float32)).mean() < 6.0

    # per-frame normalisation would put 0 and 255 in every frame; global normalisation does not have to
    per_frame_full = [(f.min() == 0 and f.max() == 255) for f in out[..., 0]]
    assert not all(per_frame_full)

    # batching does not change the result; invert is 255 - x
    out_b1, _ = run_control("depth", frames, ConformTarget(), {**{"normalize": "minmax", "device": "cpu"}, "batch_size": 1},
                            models_dir=tiny_depth_dir, fps=24)
    assert np.abs(out_b1.astype(int) - out.astype(int)).max() <= 1
    out_inv, _ = run_control("depth", frames, ConformTarget(), DepthOptions(normalize="minmax", invert=True, device="cpu"),
                             models_dir=tiny_depth_dir, fps=24)
    assert np.abs(out_inv.astype(int) - (255 - out.astype(int))).max() <= 1


def test_depth_conforms_and_smooths(tiny_depth_dir, make_video):
    path = make_video("d.mp4", frames=20, width=80, height=48)
    out, rep = run_control("depth", path, ConformTarget(width=64, height=32, frames=9),
                           DepthOptions(smoothing=0.5, device="cpu"), models_dir=tiny_depth_dir)
    assert out.shape == (9, 32, 64, 3) and rep.frames == 9 and rep.options["smoothing"] == 0.5


# -------------------------------------------------------------------------------------------------- pose
POSE_W, POSE_H = 24, 32           # tiny pose input (w, h), same 3:4 aspect as DWPose's 288x384
DET_HW = (64, 64)                 # tiny detector input
SPLIT = 2                         # SimCC bins per pixel
# crop-space (pose input pixels) positions of the 17 COCO body keypoints: a standing figure
COCO_CROP = {0: (12, 5), 1: (13, 4), 2: (11, 4), 3: (14, 5), 4: (10, 5), 5: (15, 9), 6: (9, 9), 7: (17, 13), 8: (7, 13),
             9: (18, 17), 10: (6, 17), 11: (14, 17), 12: (10, 17), 13: (14, 22), 14: (10, 22), 15: (14, 27), 16: (10, 27)}


def _make_pose_models(folder, anchors):
    """Detector: constant YOLOX-style output [1, A, 6] (sigmoid scores already applied) with persons at `anchors`
    (list of (anchor index, raw dx, dy, log w/stride, log h/stride)). Pose: SimCC outputs [N,133,W*2]/[N,133,H*2]
    with peaks at COCO_CROP, expanded to the input's batch size. Both depend on the input only through its shape."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    n_anchors = sum((DET_HW[0] // s) * (DET_HW[1] // s) for s in (8, 16, 32))
    det = np.zeros((1, n_anchors, 6), np.float32)
    for idx, dx, dy, lw, lh in anchors:
        det[0, idx] = [dx, dy, lw, lh, 0.95, 0.9]
    # output = const + 0 * mean(input): a real dependency on the input tensor, constant values
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["det_const", "z"], ["output"])]
    graph = helper.make_graph(nodes, "tiny_yolox",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *DET_HW])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_anchors, 6])],
                              [numpy_helper.from_array(det, "det_const"), numpy_helper.from_array(np.float32(0), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "yolox_l.onnx")

    sx = np.zeros((1, 133, POSE_W * SPLIT), np.float32)
    sy = np.zeros((1, 133, POSE_H * SPLIT), np.float32)
    for k, (x, y) in COCO_CROP.items():
        sx[0, k, x * SPLIT] = 0.9
        sy[0, k, y * SPLIT] = 0.8
    nodes = [helper.make_node("Shape", ["input"], ["shape"]),
             helper.make_node("Slice", ["shape", "s0", "s1"], ["n"]),
             helper.make_node("Concat", ["n", "tail_x"], ["shape_x"], axis=0),
             helper.make_node("Concat", ["n", "tail_y"], ["shape_y"], axis=0),
             helper.make_node("Expand", ["sx", "shape_x"], ["simcc_x"]),
             helper.make_node("Expand", ["sy", "shape_y"], ["simcc_y"])]
    inits = [numpy_helper.from_array(sx, "sx"), numpy_helper.from_array(sy, "sy"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([1], np.int64), "s1"),
             numpy_helper.from_array(np.array([133, POSE_W * SPLIT], np.int64), "tail_x"),
             numpy_helper.from_array(np.array([133, POSE_H * SPLIT], np.int64), "tail_y")]
    graph = helper.make_graph(nodes, "tiny_dwpose",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, POSE_H, POSE_W])],
                              [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["batch", 133, POSE_W * SPLIT]),
                               helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["batch", 133, POSE_H * SPLIT])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "dw-ll_ucoco_384.onnx")
    return folder


def _expected_frame_xy(box, crop_xy):
    """Independent arithmetic for DWPose's crop: box padded 1.25, widened/heightened to 3:4, crop -> frame."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * 1.25, (y1 - y0) * 1.25
    if w > h * POSE_W / POSE_H:
        h = w * POSE_H / POSE_W
    else:
        w = h * POSE_W / POSE_H
    return crop_xy[0] / POSE_W * w + cx - w / 2, crop_xy[1] / POSE_H * h + cy - h / 2


def test_pose_tiny_onnx_two_people_rendered(tmp_path):
    pytest.importorskip("onnxruntime")
    from pipelines.control.pose import COLORS

    # frame 96x96 -> letterbox ratio 64/96. Stride-8 grid is 8x8: anchor (gx, gy) = gy*8 + gx.
    # person A: center cell (2,4) -> det (16,32) -> frame (24,48); size 3x5 strides -> det 24x40 -> frame 36x60
    # person B: center cell (6,4) -> frame (72,48), same size
    anchors = [(4 * 8 + 2, 0.0, 0.0, np.log(3.0), np.log(5.0)), (4 * 8 + 6, 0.0, 0.0, np.log(3.0), np.log(5.0))]
    _make_pose_models(tmp_path / "dwpose", anchors)
    frames = np.full((9, 96, 96, 3), 40, np.uint8)
    out, report = run_control("pose", frames, ConformTarget(), PoseOptions(detect_every=3, device="cpu", stick_width=1),
                              models_dir=tmp_path, fps=24)
    assert out.shape == (9, 96, 96, 3)
    assert report.details["people_tracks"] == 2
    assert report.details["detector_input"] == list(DET_HW) and report.details["pose_input_wh"] == [POSE_W, POSE_H]
    for box in ((24 - 18, 48 - 30, 24 + 18, 48 + 30), (72 - 18, 48 - 30, 72 + 18, 48 + 30)):
        nose = _expected_frame_xy(box, COCO_CROP[0])
        ls, rs = _expected_frame_xy(box, COCO_CROP[5]), _expected_frame_xy(box, COCO_CROP[6])
        neck = ((ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2)
        for t in (0, 4, 8):
            assert tuple(out[t, int(nose[1]), int(nose[0])]) == COLORS[0], "nose dot (OpenPose 0) in red"
            assert tuple(out[t, int(neck[1]), int(neck[0])]) == COLORS[1], "neck = mid-shoulders (OpenPose 1)"
            r_ank = _expected_frame_xy(box, COCO_CROP[16])  # COCO 16 = right ankle = OpenPose 10
            assert tuple(out[t, int(r_ank[1]), int(r_ank[0])]) == COLORS[10]
    # limbs are drawn dimmed to 60% between the joints; background stays black
    assert (out[:, :, :3] == 0).all() and (out > 0).any()
    assert np.array_equal(out[0], out[8])


def test_pose_nobody_gives_black_frames(tmp_path):
    pytest.importorskip("onnxruntime")
    _make_pose_models(tmp_path / "dwpose", anchors=[])
    out, report = run_control("pose", np.zeros((9, 64, 64, 3), np.uint8), ConformTarget(), {"device": "cpu"},
                              models_dir=tmp_path, fps=24)
    assert out.shape == (9, 64, 64, 3) and out.max() == 0 and report.details["people_tracks"] == 0


def test_openpose_conversion_and_interpolation():
    from pipelines.control.pose import interpolate_gaps, to_openpose18

    kpts = np.zeros((1, 133, 2), np.float32)
    kpts[0, :17] = np.arange(17)[:, None] * [1, 10]
    scores = np.full((1, 133), 0.9, np.float32)
    scores[0, 5] = 0.2
    xy, sc = to_openpose18(kpts, scores)
    assert xy.shape == (1, 18, 2)
    assert tuple(xy[0, 2]) == (6, 60) and tuple(xy[0, 5]) == (5, 50)     # r_shoulder = COCO 6, l_shoulder = COCO 5
    assert tuple(xy[0, 1]) == (5.5, 55) and sc[0, 1] == pytest.approx(0.2)  # neck: mid-shoulders, min score
    assert tuple(xy[0, 14]) == (2, 20) and tuple(xy[0, 17]) == (3, 30)     # r_eye = COCO 2, l_ear = COCO 3

    t = 10
    xy = np.zeros((t, 18, 2), np.float32)
    sc = np.zeros((t, 18), np.float32)
    xy[0, 0], sc[0, 0] = (0, 0), 0.9
    xy[4, 0], sc[4, 0] = (40, 8), 0.9     # gap of 3 frames: filled linearly
    xy[9, 0], sc[9, 0] = (0, 0), 0.9      # gap of 4 frames: longer than max_gap=3, left empty
    fxy, fsc = interpolate_gaps(xy, sc, thr=0.3, max_gap=3)
    np.testing.assert_allclose(fxy[1:4, 0], [[10, 2], [20, 4], [30, 6]])
    assert (fsc[1:4, 0] >= 0.3).all() and (fsc[5:9, 0] < 0.3).all()


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_list_and_canny(tmp_path, make_video, capsys):
    from pipelines.cli import main

    assert main(["control", "list", "--models-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in listed] == ["canny", "depth", "pose", "passthrough"]

    src = make_video("in.mp4", frames=20, width=96, height=64)
    out = tmp_path / "edges.mp4"
    assert main(["control", "canny", str(src), "--out", str(out), "--frames", "17", "--width", "64", "--height", "64"]) == 0
    printed = json.loads(capsys.readouterr().out)
    info = probe(out)
    assert (info.frames, info.width, info.height) == (17, 64, 64) == (printed["frames"], printed["width"], printed["height"])
    assert json.loads((tmp_path / "edges.json").read_text())["kind"] == "canny"

    assert main(["control", "depth", str(src), "--out", str(tmp_path / "d.mp4"), "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "depth-anything-v2-small") in err
    assert not (tmp_path / "d.mp4").exists()


def test_lost_person_is_picked_up_again_within_max_gap():
    from pipelines.control.pose import PersonTrack, match_tracks

    box = np.array([10, 10, 50, 90], np.float32)
    track = PersonTrack.new(40, box)
    track.active, track.last_frame = False, 5
    moved = box[None] + 3
    assert match_tracks([track], moved, frame=12, max_gap=8) == [0]
    assert match_tracks([track], moved, frame=30, max_gap=8) == [None]
    assert match_tracks([track], moved + 200, frame=12, max_gap=8) == [None]  # no overlap: someone else
