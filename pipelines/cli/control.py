"""`python -m pipelines control {canny,depth,pose,passthrough} VIDEO --out OUT.mp4` and `control list`."""
from __future__ import annotations

import argparse

_KINDS = ("canny", "depth", "pose", "passthrough")


def _common(p: argparse.ArgumentParser, edges: bool = False) -> None:
    p.add_argument("video", help="input video (for passthrough: your own control video)")
    p.add_argument("--out", required=True, help="output .mp4 (h264); a .json report is written beside it")
    p.add_argument("--width", type=int, help="target width (multiple of 32; default: the source's, made valid)")
    p.add_argument("--height", type=int, help="target height (multiple of 32)")
    p.add_argument("--frames", type=int, help="target frame count (8n+1)")
    p.add_argument("--fps", type=float, help="target frame rate (default: the source's)")
    p.add_argument("--pad", action="store_true", help="hold the last frame to reach --frames instead of refusing")
    p.add_argument("--models-dir", help="folder with preprocessor weights (default $ICLORA_MODELS_DIR)")
    g = p.add_argument_group("clean-up (pipelines.control.cleanup; each step is measured in the report)")
    g.add_argument("--fps-mode", choices=("nearest", "blend"), default="nearest",
                   help="match --fps by the nearest frame (crisp edges) or by blending neighbours (smooth depth)")
    g.add_argument("--denoise", type=int, default=0, help="median filter radius in px (0 = off)")
    g.add_argument("--deflicker", action="store_true", help="even out per-frame brightness flicker")
    g.add_argument("--smooth", dest="temporal_smooth", type=float, default=0.0,
                   help="temporal smoothing: Gaussian sigma in frames, centred, no lag (0 = off)")
    if edges:
        g.add_argument("--edge-thickness", type=int, default=0, help="thicken edges by this many px after clean-up")
        g.add_argument("--edge-contrast", type=float, default=1.0, help="gain around mid-gray (1 = off)")


def _cleanup(args) -> dict:
    keys = ("fps_mode", "denoise", "deflicker", "temporal_smooth", "edge_thickness", "edge_contrast")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def register(subparsers) -> None:
    parser = subparsers.add_parser("control", help="make control videos (canny, depth, pose, passthrough)",
                                   description="Make the control video the Union IC-LoRA follows.")
    sub = parser.add_subparsers(dest="control_command", metavar="KIND")
    sub.required = True

    p = sub.add_parser("list", help="registry status as JSON: ready / missing package / missing weights")
    p.add_argument("--models-dir", help="folder with preprocessor weights (default $ICLORA_MODELS_DIR)")
    p.set_defaults(handler=_list)

    p = sub.add_parser("canny", help="Canny edges (OpenCV, 92/200 by default)")
    _common(p, edges=True)
    p.add_argument("--low", dest="low_threshold", type=int, default=92)
    p.add_argument("--high", dest="high_threshold", type=int, default=200)
    p.add_argument("--blur", dest="blur_sigma", type=float, default=0.0, help="Gaussian pre-blur sigma in px")
    p.add_argument("--dilate", type=int, default=0, help="thicken edges by this many px")
    p.set_defaults(handler=_run, kind="canny", option_names=("low_threshold", "high_threshold", "blur_sigma", "dilate"))

    p = sub.add_parser("depth", help="gray depth (Depth-Anything-V2, local weights)")
    _common(p)
    p.add_argument("--model", choices=("small", "base", "large"), default="small")
    p.add_argument("--invert", action="store_true", help="near = black instead of white")
    p.add_argument("--normalize", choices=("percentile", "minmax"), default="percentile")
    p.add_argument("--smoothing", type=float, default=0.0, help="EMA weight of the previous frame (0..0.99)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.set_defaults(handler=_run, kind="depth", option_names=("model", "invert", "normalize", "smoothing", "batch_size", "device"))

    p = sub.add_parser("pose", help="OpenPose skeletons from DWPose (onnxruntime, local weights)")
    _common(p)
    p.add_argument("--backend", choices=("dwpose", "controlnet-aux"), default="dwpose")
    p.add_argument("--detect-every", type=int, default=4, help="run the person detector every k frames")
    p.add_argument("--max-people", type=int, default=8)
    p.add_argument("--max-gap", type=int, default=8, help="interpolate keypoints missing for up to this many frames")
    p.add_argument("--smoothing", type=float, default=0.0, help="EMA weight on keypoint positions (0..0.99)")
    p.add_argument("--stick-width", type=int, help="limb half-width in px (default 4 at 512 px)")
    p.add_argument("--device", help="cpu / cuda (default: CUDA provider when onnxruntime has it)")
    p.set_defaults(handler=_run, kind="pose",
                   option_names=("backend", "detect_every", "max_people", "max_gap", "smoothing", "stick_width", "device"))

    p = sub.add_parser("passthrough", help="your own control video (Blender depth, LiDAR), conformed")
    _common(p, edges=True)
    p.add_argument("--invert", action="store_true")
    p.add_argument("--gray", action="store_true", help="convert to gray 3-channel")
    p.add_argument("--smoothing", type=float, default=0.0, help="EMA weight of the previous frame (0..0.99)")
    p.set_defaults(handler=_run, kind="passthrough", option_names=("invert", "gray", "smoothing"))


def check_conform_sizes(video: str, target, what: str) -> None:
    """The source clip probed and the output size checked against the limits, before anything is decoded."""
    from pipelines.limits import active, probe_video_input

    info = probe_video_input(video, "video", frames=target.frames, fps=target.fps)
    n = target.frames or info.frames
    active().check_video(what, target.width or info.width, target.height or info.height, n)


def _list(args) -> int:
    from pipelines.cli import print_json
    from pipelines.control import registry_status

    print_json(registry_status(args.models_dir))
    return 0


def _run(args) -> int:
    import sys

    from pipelines.cli import print_json
    from pipelines.control import options_from_dict, run_control, save_control
    from pipelines.video_io import ConformTarget

    options = options_from_dict(args.kind, {k: getattr(args, k) for k in args.option_names if getattr(args, k) is not None})
    target = ConformTarget(width=args.width, height=args.height, frames=args.frames, fps=args.fps, pad=args.pad)
    target.validate()
    check_conform_sizes(args.video, target, "control video")

    last = [-1]

    def progress(fraction: float, text: str) -> None:
        pct = int(fraction * 100)
        if sys.stderr.isatty() and pct != last[0]:
            last[0] = pct
            print(f"\r{pct:3d}% {text:<40}", end="", file=sys.stderr, flush=True)

    frames, report = run_control(args.kind, args.video, target, options, models_dir=args.models_dir, progress=progress,
                                 cleanup=_cleanup(args))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    out = save_control(args.out, frames, report)
    print_json({"out": str(out), **report.to_dict()})
    return 0
