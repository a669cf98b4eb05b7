"""Benchmark the control preprocessors against the I/O floor of the same clip.

    python bench/control.py [--repeats 3] [--frames 121] [--models-dir DIR] [--gpu]

Clip: a synthetic 121-frame 768x512 h264 mp4 (a moving smooth texture with a white rectangle). Baseline (the
I/O floor): decode + conform + encode of that clip with video_io, no preprocessing. Then, for each preprocessor
that is ready here (registry status), the full `run_control` + `save_control` path, with its ratio to the floor.
Goal (issue 4): canny <= 1.5x the floor. The floor encodes with write_video's default x264 preset (medium);
save_control writes control videos with "veryfast" (see its docstring), so that floor is printed too.

Model speed without real weights:
- depth: Depth-Anything-V2-Small's real architecture (its -hf config, ~25M parameters) with random weights,
  saved to a temp folder and run through the normal loading path. CPU mode runs `--depth-frames` frames
  (default 9; a CPU needs ~1 s a frame); --gpu runs the whole clip.
- pose: real-size random YOLOX-L / DWPose-L ONNX files are not available offline (their graphs come from the
  original exports), so the pose line uses constant ONNX models with the REAL input/output shapes (640x640
  detector, 288x384 pose, SimCC 576/768 bins, 133 keypoints, 2 people). It measures our pre/post-processing,
  tracking and rendering, NOT the network compute: add the real models' time (YOLOX-L ~155 GFLOPs at 640,
  DWPose-L 384 ~ 5 GFLOPs a person) for a real figure.
Median of `--repeats`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.control import DepthOptions, PoseOptions, registry_status, run_control, save_control  # noqa: E402
from pipelines.video_io import ConformTarget, conform_file, write_video  # noqa: E402

WIDTH, HEIGHT = 768, 512


def synthetic_clip(path: Path, frames: int) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.resize(rng.integers(0, 256, (HEIGHT // 8 + 20, WIDTH // 8 + 40, 3), dtype=np.uint8),
                     (WIDTH + 320, HEIGHT + 160), interpolation=cv2.INTER_CUBIC)
    out = np.empty((frames, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(frames):
        dx, dy = 2 * t % 320, t % 160
        out[t] = big[dy:dy + HEIGHT, dx:dx + WIDTH]
        x = 100 + 3 * t
        out[t, 150:350, x:x + 160] = 255
    return write_video(path, out, 24.0)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_depth_small_random(folder: Path) -> int:
    """Depth-Anything-V2-Small's architecture (values from its -hf config.json) with random weights."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                            image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False, apply_layernorm=True,
                            layerscale_value=1.0)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384],
                                 fusion_hidden_size=64, head_hidden_size=32, patch_size=14, reassemble_factors=[4, 2, 1, 0.5],
                                 depth_estimation_type="relative")
    model = DepthAnythingForDepthEstimation(config)
    model.save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225], do_pad=False).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def make_dwpose_shaped_constant(folder: Path) -> None:
    """Constant ONNX models with DWPose's real I/O shapes (see the module docstring for what this measures)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    n = sum((640 // s) ** 2 for s in (8, 16, 32))
    det = np.zeros((1, n, 85), np.float32)
    for gx in (20, 50):  # two people, stride-8 cells on row 40 of the 80x80 grid
        det[0, 40 * 80 + gx] = [0, 0, np.log(20.0), np.log(45.0), 0.95, 0.9] + [0.0] * 79
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0), helper.make_node("Mul", ["m", "zero"], ["z"]),
         helper.make_node("Add", ["c", "z"], ["output"])], "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n, 85])],
        [numpy_helper.from_array(det, "c"), numpy_helper.from_array(np.float32(0), "zero")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "yolox_l.onnx")
    rng = np.random.default_rng(0)
    sx = rng.random((1, 133, 576), np.float32)
    sy = rng.random((1, 133, 768), np.float32)
    g = helper.make_graph(
        [helper.make_node("Shape", ["input"], ["s"]), helper.make_node("Slice", ["s", "a", "b"], ["nb"]),
         helper.make_node("Concat", ["nb", "tx"], ["shx"], axis=0), helper.make_node("Concat", ["nb", "ty"], ["shy"], axis=0),
         helper.make_node("Expand", ["sx", "shx"], ["simcc_x"]), helper.make_node("Expand", ["sy", "shy"], ["simcc_y"])],
        "pose", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 384, 288])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, ["batch", 133, 576]),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, ["batch", 133, 768])],
        [numpy_helper.from_array(sx, "sx"), numpy_helper.from_array(sy, "sy"),
         numpy_helper.from_array(np.array([0], np.int64), "a"), numpy_helper.from_array(np.array([1], np.int64), "b"),
         numpy_helper.from_array(np.array([133, 576], np.int64), "tx"), numpy_helper.from_array(np.array([133, 768], np.int64), "ty")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "dw-ll_ucoco_384.onnx")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--depth-frames", type=int, default=None, help="frames for the random-weights depth run (default: 9 on CPU, all with --gpu)")
    ap.add_argument("--models-dir", help="real weights, if you have them (depth/pose then run as 'ready')")
    ap.add_argument("--gpu", action="store_true", help="run depth on CUDA and pose with the CUDA provider")
    args = ap.parse_args()

    device = "cuda" if args.gpu else "cpu"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = synthetic_clip(tmp / "clip.mp4", args.frames)
        target = ConformTarget(width=WIDTH, height=HEIGHT, frames=args.frames)
        print(f"clip: {args.frames} frames {WIDTH}x{HEIGHT}, repeats={args.repeats}, device={device}")

        def floor(preset: str = "medium") -> None:
            frames, fps, _ = conform_file(clip, target)
            write_video(tmp / "floor.mp4", frames, fps, preset=preset)

        floor()  # warm-up (page cache, ffmpeg start)
        base = timed(floor, args.repeats)
        print(f"{'decode+encode (I/O floor, x264 medium)':<48} {base:7.2f} s   1.00x")
        fast = timed(lambda: floor("veryfast"), args.repeats)
        print(f"{'decode+encode (x264 veryfast, as save_control)':<48} {fast:7.2f} s   {fast / base:5.2f}x")
        from pipelines.control import CannyOptions
        from pipelines.control.canny import run_canny
        decoded, _, _ = conform_file(clip, target)
        sec = timed(lambda: run_canny(decoded, CannyOptions()), args.repeats)
        print(f"{'canny compute only (no I/O)':<48} {sec:7.2f} s   {sec / base:5.2f}x")
        del decoded

        ready = {s["kind"]: s["ready"] for s in registry_status(args.models_dir)}
        for kind in ("canny", "passthrough", "depth", "pose"):
            if not ready[kind]:
                print(f"{kind + ' (real weights)':<48}    skipped: not ready here (see `python -m pipelines control list`)")
                continue
            opts = {"device": device} if kind in ("depth", "pose") else None

            def run(kind=kind, opts=opts) -> None:
                frames, report = run_control(kind, clip, target, opts, models_dir=args.models_dir)
                save_control(tmp / f"{kind}.mp4", frames, report)

            run()  # warm-up: model loading is not part of the per-clip figure
            sec = timed(run, args.repeats)
            print(f"{kind:<48} {sec:7.2f} s   {sec / base:5.2f}x   ({args.frames / sec:6.1f} frames/s)")

        # model speed with random weights of the real depth architecture
        try:
            import torch  # noqa: F401
            n_depth = args.depth_frames or (args.frames if args.gpu else 9)
            depth_root = tmp / "models"
            params = make_depth_small_random(depth_root / "depth-anything-v2-small")
            from pipelines.video_io import valid_frame_count
            n_depth = valid_frame_count(min(n_depth, args.frames))
            dtarget = ConformTarget(width=WIDTH, height=HEIGHT, frames=n_depth)
            call = lambda: run_control("depth", clip, dtarget, DepthOptions(device=device), models_dir=depth_root)  # noqa: E731
            call()
            sec = timed(call, max(1, args.repeats if args.gpu else 1))
            print(f"{f'depth, random DA-V2-Small ({params / 1e6:.1f}M), {n_depth} fr':<48} {sec:7.2f} s   "
                  f"{sec / base * args.frames / n_depth:5.2f}x*  ({n_depth / sec:6.1f} frames/s)")
        except ImportError as exc:
            print(f"depth random-weights run skipped: {exc}")

        try:
            import onnxruntime  # noqa: F401
            pose_root = tmp / "pose-models"
            make_dwpose_shaped_constant(pose_root / "dwpose")
            call = lambda: run_control("pose", clip, target, PoseOptions(device=device), models_dir=pose_root)  # noqa: E731
            call()
            sec = timed(call, args.repeats)
            print(f"{'pose pipeline, constant ONNX (real shapes)':<48} {sec:7.2f} s   {sec / base:5.2f}x   "
                  f"({args.frames / sec:6.1f} frames/s; excludes network compute)")
        except ImportError as exc:
            print(f"pose pipeline run skipped: {exc}")
        print("* scaled to the full clip length for the ratio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
