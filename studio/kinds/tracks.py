"""Job kind "tracks_render" (light lane): a track file rendered as the Motion-Track control video: BGR, and
lossless (FFV1 .mkv), so the model reads exactly the renderer's frames (h264 would shift colours and blur
the dots; the tab shows people a separate mp4 preview).

A render allocates frames x width x height x 3 bytes (plus the renderer's 1080 canvas), so it never runs in
a request thread: the API's /tracks_render and the Motion tracks tab submit this job (checked against the
limits first) and wait for it.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from pipelines.errors import UserError

KIND = "tracks_render"


def check_tracks_data(limits, ts) -> None:
    """The parsed track set against the limits, before anything is drawn."""
    limits.check_count("tracks", len(ts.tracks), "max_tracks", "tracks")
    limits.check_count("tracks", sum(len(t.points) for t in ts.tracks), "max_track_points", "track points")


def run_tracks_render_job(request: dict, jc) -> dict:
    """request: {"tracks": path of a track file (studio, ComfyUI or per-frame JSON), "width", "height",
    "frames" (None: the file's), "fps" (None: the file's), "canvas": [w, h] of imported points (optional)}."""
    from pipelines.limits import active
    from pipelines.tracks import load_tracks, write_track_video

    limits = active()
    w, h = int(request["width"]), int(request["height"])
    frames = request.get("frames")
    cw, ch = request.get("canvas") or (w, h)
    jc.progress(0.05, "reading tracks")
    ts = load_tracks(request["tracks"], width=int(cw), height=int(ch), frames=frames, fps=request.get("fps"))
    n = int(frames) if frames is not None else ts.frames
    limits.check_video("track render", w, h, n)  # the file's own frame count is known only now
    check_tracks_data(limits, ts)
    jc.raise_if_cancelled()
    jc.progress(0.2, f"rendering {len(ts.tracks)} track(s) over {n} frames")
    out = write_track_video(ts, Path(jc.out_dir) / "tracks.mkv", w, h, n, request.get("fps"))
    jc.add_output(out)
    return {"video": str(out), "width": w, "height": h, "frames": n, "tracks": len(ts.tracks),
            "channel_order": "BGR"}


def check_tracks_render(ctx, owner: str, request: dict) -> dict:
    """At submit: the output size against the limits, the track file inside the owner's folders and no bigger
    than the limit (it is parsed in the job)."""
    from pipelines.limits import active
    from studio.routes import check_request_paths, checker_for

    limits = active()
    frames = request.get("frames")
    limits.check_video("track render", request.get("width"), request.get("height"),
                       1 if frames is None else frames)
    if not request.get("tracks"):
        raise UserError("no track file given")
    request = check_request_paths(request, checker_for(ctx, owner))  # the owner's folders or uploads only
    path = Path(request["tracks"])
    if not path.is_file():
        raise UserError(f"tracks: {path.name} does not exist")
    limits.check_file_size("tracks", path, "max_track_file_bytes")
    return dict(request, tracks=str(path))


def save_track_value(ctx, owner: str, value: str) -> str:
    """The Motion tracks tab's sketcher value (JSON text) as a file in the user's tracks folder, for the job;
    refused when it is bigger than a track file may be."""
    from pipelines.limits import active

    limits = active()
    data = (value or "").encode("utf-8")
    if len(data) > limits.max_track_file_bytes:
        raise limits._over("tracks", f"the track data is {len(data):,} bytes, over the limit of "
                                     f"{limits.max_track_file_bytes:,}", "max_track_file_bytes")
    folder = ctx.user_dir(owner, "tracks")
    path = folder / f"tracks-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
    from pipelines.files import atomic_write_bytes

    atomic_write_bytes(path, data)
    return str(path)


def render_now(ctx, owner: str, request: dict, timeout: float = 600.0) -> str:
    """Submit a tracks_render job and wait for it; the rendered video's path (UserError if it failed)."""
    from studio.kinds import wait_finished

    job = wait_finished(ctx, ctx.submit(owner, KIND, request), owner, timeout, "the track render")
    return job.result["video"]


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        ctx.jobs.register(KIND, run_tracks_render_job, lane="light",
                          check=lambda owner, req: check_tracks_render(ctx, owner, req))
