"""Video commands: `probe` (what is in a clip) and `conform` (make it valid for LTX and say what changed)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("probe", help="print what a video file holds (size, frames, fps, rotation...) as JSON",
                              description="Print a video's display size, frame count, fps, rotation, codec, pixel "
                                          "format, audio and variable-frame-rate flag as JSON.")
    p.add_argument("video", help="video file")
    p.set_defaults(handler=_probe)

    p = subparsers.add_parser("conform", help="make a clip valid for LTX (8n+1 frames, size on the grid, fps)",
                              description="Resample fps, trim (or pad) to 8n+1 frames and resize + center-crop to "
                                          "multiples of --multiple; writes an h264 mp4 and prints the report JSON.")
    p.add_argument("video", help="input video file")
    p.add_argument("--out", required=True, help="output .mp4 file")
    p.add_argument("--width", type=int, default=None, help="target width (a multiple of --multiple)")
    p.add_argument("--height", type=int, default=None, help="target height (a multiple of --multiple)")
    p.add_argument("--frames", type=int, default=None, help="target frame count (8n+1)")
    p.add_argument("--fps", type=float, default=None, help="target frame rate")
    p.add_argument("--multiple", type=int, default=32, help="size grid (32; 64 for two-stage; 32*D for IC-LoRA "
                                                             "reference downscale D)")
    p.add_argument("--pad", action="store_true", help="hold the last frame to reach the frame count instead of "
                                                       "trimming")
    p.add_argument("--crf", type=int, default=17, help="x264 quality (lower is better, 17 is near lossless)")
    p.set_defaults(handler=_conform)


def _probe(args: argparse.Namespace) -> int:
    from pipelines.cli import print_json
    from pipelines.video_io import probe

    print_json(probe(args.video).to_dict())
    return 0


def _conform(args: argparse.Namespace) -> int:
    from pipelines.cli import print_json
    from pipelines.video_io import ConformTarget, conform_file, write_video

    from pipelines.cli.control import check_conform_sizes

    target = ConformTarget(width=args.width, height=args.height, frames=args.frames, fps=args.fps,
                           multiple=args.multiple, pad=args.pad)
    check_conform_sizes(args.video, target, "conformed video")
    frames, fps, report = conform_file(args.video, target)
    out = write_video(args.out, frames, fps, comment=f"conformed by IC-LoRA Studio: {report.text()}", crf=args.crf)
    print_json({"out": str(out), **report.to_dict(), "text": report.text()})
    return 0
