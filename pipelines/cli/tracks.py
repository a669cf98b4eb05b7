"""`python -m pipelines tracks render|auto`: render a track file as the Motion-Track control video, or extract
editable tracks from a video."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("tracks", help="motion tracks: render a track file, extract tracks from a video",
                              description=__doc__)
    sub = p.add_subparsers(dest="tracks_command", metavar="ACTION")
    sub.required = True

    r = sub.add_parser("render", help="render tracks to the control video the Motion-Track IC-LoRA expects (BGR)")
    r.add_argument("tracks", metavar="TRACKS.json",
                   help="studio track file, ComfyUI spline-editor data or per-frame coordinate lists")
    r.add_argument("--width", type=int, required=True, help="output width in pixels")
    r.add_argument("--height", type=int, required=True, help="output height in pixels")
    r.add_argument("--frames", type=int, default=None,
                   help="frame count (default: the file's; required for ComfyUI data, which has none)")
    r.add_argument("--canvas", default=None, metavar="WxH",
                   help="size of the image imported points were drawn on (default: --width x --height)")
    r.add_argument("--fps", type=float, default=None, help="mp4 frame rate (default: the file's, else 24)")
    r.add_argument("--out", required=True, metavar="OUT.mkv|OUT.mp4|OUT.npy",
                   help="output: .mkv lossless control video (give this to the model), .mp4 h264 preview, "
                        "or raw uint8 .npy")
    r.set_defaults(handler=cmd_render)

    a = sub.add_parser("auto", help="extract editable tracks from a video (Lucas-Kanade, forward-backward)")
    a.add_argument("video", metavar="VIDEO")
    a.add_argument("--out", required=True, metavar="TRACKS.json")
    a.add_argument("--max-tracks", type=int, default=8, help="keep at most K tracks (default 8)")
    a.add_argument("--region", default=None, metavar="MASK.png", help="only seed points where the mask is white")
    a.add_argument("--seeds", choices=["corners", "grid"], default="corners", help="seed placement (default corners)")
    a.add_argument("--max-frames", type=int, default=None, help="read at most N frames of the video")
    a.set_defaults(handler=cmd_auto)


def _parse_size(text: str) -> tuple[int, int]:
    from pipelines.errors import UserError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--canvas must look like 768x512 (got {text!r})") from None
    return w, h


def cmd_render(args: argparse.Namespace) -> int:
    from pipelines.cli import print_json
    from pipelines.tracks import load_tracks, write_track_video

    from pipelines.limits import active

    limits = active()
    limits.check_video("track render", args.width, args.height, args.frames or 1)
    cw, ch = _parse_size(args.canvas) if args.canvas else (args.width, args.height)
    if Path(args.tracks).is_file():
        limits.check_file_size("tracks", args.tracks, "max_track_file_bytes")
    ts = load_tracks(args.tracks, width=cw, height=ch, frames=args.frames, fps=args.fps)
    limits.check_video("track render", args.width, args.height, args.frames or ts.frames)
    limits.check_count("tracks", len(ts.tracks), "max_tracks", "tracks")
    limits.check_count("tracks", sum(len(t.points) for t in ts.tracks), "max_track_points", "track points")
    out = write_track_video(ts, args.out, args.width, args.height, frames=args.frames, fps=args.fps)
    print_json({"out": str(out), "width": args.width, "height": args.height,
                "frames": args.frames or ts.frames, "tracks": len(ts.tracks), "channel_order": "BGR"})
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    import cv2

    from pipelines.cli import print_json
    from pipelines.errors import UserError
    from pipelines.tracks import auto_tracks, save_tracks
    from pipelines.video_io import read_video

    from pipelines.limits import active, probe_video_input

    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be at least 1 (got {args.max_frames})")
    info = probe_video_input(args.video, "video", frames=args.max_frames)
    active().check_video("tracked clip", info.width, info.height, min(info.frames, args.max_frames or info.frames))
    frames, fps = read_video(args.video, max_frames=args.max_frames, info=info)
    mask = None
    if args.region:
        mask = cv2.imread(args.region, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise UserError(f"cannot read region mask {args.region} (expected a PNG/JPG image)")
    ts = auto_tracks(frames, max_tracks=args.max_tracks, region_mask=mask, seeds=args.seeds, fps=fps)
    save_tracks(ts, args.out)
    print_json({"out": args.out, "width": ts.width, "height": ts.height, "frames": ts.frames,
                "tracks": [{"name": t.name, "points": len(t.points),
                            "frames": [t.points[0].frame, t.points[-1].frame]} for t in ts.tracks]})
    return 0
