"""run_control: one call that conforms a clip and turns it into a control video.

Order of work: check the backend is ready (before decoding anything, so a missing weight fails in
milliseconds), conform the input to the target (frames 8n+1, size, fps), then run the preprocessor on the
conformed frames. Running after conforming means the output has exactly the target frame count and size, and
pixel-sized things (edge width, skeleton sticks) are the same on every frame.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from pipelines.control.registry import spec_for
from pipelines.control.types import (CannyOptions, ControlKind, ControlOptions, ControlReport, DepthOptions,
                                     PassthroughOptions, PoseBackend, PoseOptions, ProgressFn, options_to_dict,
                                     resolve_options)
from pipelines.errors import UserError

DEFAULT_FPS = 24.0
_CONFORM_SHARE = 0.1  # share of the progress bar given to decoding + conforming


def _scaled(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda f, text: progress(start + (end - start) * min(max(f, 0.0), 1.0), text)


def _as_frames(array) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3:  # [T,H,W] gray
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1:
        raise UserError(f"control input must be frames shaped [T,H,W,3]; got {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise UserError(f"control input frames must be uint8 0..255; got {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


def run_control(kind: ControlKind | str, frames_or_path, target=None, options: ControlOptions | dict | None = None,
                models_dir: str | os.PathLike | None = None, progress: ProgressFn | None = None, *,
                fps: float | None = None, cleanup=None) -> tuple[np.ndarray, ControlReport]:
    """Make the control video for `kind` from a file path or uint8 frames [T,H,W,3] (then `fps` is the source
    rate; default the target's, else 24). Returns (frames uint8 [T,H,W,3] at exactly the target frames/size,
    report). Raises UserError for bad input, missing packages or missing weights (listing the paths searched).

    ``cleanup`` (pipelines.control.cleanup.CleanupOptions or its dict) runs after the preprocessor; its fps mode
    "blend" resamples the source to the target frame rate before conforming. What it did is in ``report.cleanup``.
    """
    from pipelines.control.cleanup import CleanupOptions, check_kind, clean_control, record, summary
    from pipelines.video_io import ConformTarget

    kind = ControlKind.parse(kind)
    opts = resolve_options(kind, options)
    clean = CleanupOptions.from_dict(cleanup)
    check_kind(clean, kind.value)
    spec = spec_for(kind, opts)
    weights_dir = spec.require(models_dir)
    target = target if target is not None else ConformTarget()
    started = time.perf_counter()

    if progress is not None:
        progress(0.0, "reading video")
    frames, conform_report, fps_note = conform_source(frames_or_path, target, fps=fps, fps_mode=clean.fps_mode)
    frames = np.ascontiguousarray(frames)
    sub = _scaled(progress, _CONFORM_SHARE, 0.95 if clean.active else 1.0)

    details: dict = {}
    if kind is ControlKind.CANNY:
        from pipelines.control.canny import run_canny

        assert isinstance(opts, CannyOptions)
        out = run_canny(frames, opts, sub)
    elif kind is ControlKind.DEPTH:
        from pipelines.control.depth import run_depth

        assert isinstance(opts, DepthOptions)
        out, details = run_depth(frames, opts, weights_dir, sub)
    elif kind is ControlKind.POSE:
        from pipelines.control import pose

        assert isinstance(opts, PoseOptions)
        if PoseBackend(opts.backend) is PoseBackend.CONTROLNET_AUX:
            out, details = pose.run_controlnet_aux_openpose(frames, opts, weights_dir, sub)
        else:
            out, details = pose.run_pose(frames, opts, weights_dir, sub)
    else:
        from pipelines.control.passthrough import run_passthrough

        assert isinstance(opts, PassthroughOptions)
        out = run_passthrough(frames, opts, sub)

    want = (conform_report.frames, conform_report.height, conform_report.width, 3)
    if out.shape != want or out.dtype != np.uint8:  # a bug, not a user error
        raise RuntimeError(f"{kind.value} produced {out.shape} {out.dtype}; expected {want} uint8")
    steps = []
    if clean.active:
        out, steps = clean_control(out, clean, kind.value, _scaled(progress, 0.95, 1.0))

    notes = list(conform_report.changes)
    if steps:
        notes.append(summary(steps))
    if kind is ControlKind.CANNY and (opts.low_threshold, opts.high_threshold) != (92, 200):
        notes.append(f"thresholds {opts.low_threshold}/{opts.high_threshold} differ from the Union LoRA's 92/200")
    report = ControlReport(
        kind=kind.value, backend=spec.backend, width=conform_report.width, height=conform_report.height,
        frames=conform_report.frames, fps=float(conform_report.fps), options=options_to_dict(opts),
        conform=conform_report.to_dict(), seconds=round(time.perf_counter() - started, 3), notes=notes,
        weights=str(weights_dir) if weights_dir else None,
        device=details.get("device") or details.get("provider"), details=details,
        cleanup=record(clean, steps, fps_note) if (steps or fps_note or clean.fps_mode != "nearest") else None)
    return out, report


def conform_source(frames_or_path, target, *, fps: float | None = None,
                   fps_mode: str = "nearest") -> tuple[np.ndarray, "object", str | None]:
    """Conform a clip (path or uint8 frames at `fps`) to the target: (frames, ConformReport, fps note or None).

    fps_mode "nearest" is video_io.conform's own resample (the frame shown at each instant); "blend" first
    resamples the source to the target rate by blending neighbouring frames (pipelines.control.cleanup), then
    conforms. The note says how the rates were matched, for the control's report."""
    from pipelines.control.cleanup import match_fps
    from pipelines.video_io import conform, conform_file

    fps_note = None
    if fps_mode == "blend" and target.fps is not None:
        src, src_fps, pre = _read_source(frames_or_path, fps, target)
        if abs(src_fps - target.fps) > 1e-3 * src_fps:
            n0 = len(src)
            src = match_fps(src, src_fps, float(target.fps), "blend")
            fps_note = (f"fps matched {src_fps:.3f} -> {float(target.fps):.3f} by blending neighbouring frames "
                        f"({n0} frames became {len(src)})")
        frames, rep = conform(src, float(target.fps) if fps_note else src_fps, target)
        rep.changes[:0] = pre + ([fps_note] if fps_note else [])
        return frames, rep, fps_note
    if isinstance(frames_or_path, (str, os.PathLike)):
        frames, _src_fps, rep = conform_file(Path(frames_or_path), target)
    else:
        frames, rep = conform(_as_frames(frames_or_path), float(fps or target.fps or DEFAULT_FPS), target)
    src_fps = rep.source.get("fps")
    if src_fps and target.fps is not None and abs(float(src_fps) - float(target.fps)) > 1e-3 * float(target.fps):
        fps_note = f"fps matched {float(src_fps):.3f} -> {float(target.fps):.3f} by the nearest frame in time"
    return frames, rep, fps_note


def _read_source(frames_or_path, fps, target) -> tuple[np.ndarray, float, list[str]]:
    """The source frames at their own rate (for an fps match that blends before conforming), only as many as
    the target needs."""
    import math

    from pipelines.video_io import probe, read_video

    if isinstance(frames_or_path, (str, os.PathLike)):
        info = probe(frames_or_path)
        need = None
        if target.frames is not None and target.fps:
            need = int(math.ceil((target.frames - 1) * info.fps / float(target.fps))) + 2
        frames, src_fps = read_video(frames_or_path, max_frames=need, info=info)
        notes = [f"rotated {info.rotation}° clockwise as the file's rotation tag says"] if info.rotation else []
        return frames, float(src_fps), notes
    return _as_frames(frames_or_path), float(fps or target.fps or DEFAULT_FPS), []


def save_control(path: str | os.PathLike, frames: np.ndarray, report: ControlReport) -> Path:
    """Write the control video (atomic) with the report as its comment, and a .json sidecar.

    A ``.mkv`` path is written losslessly (FFV1): what the model must read, exactly the frames the preprocessor
    made (h264's yuv420p blurs 1 px canny edges and shifts depth values). A ``.mp4`` path is h264 with x264's
    "veryfast" preset: for people to watch (a browser cannot play FFV1), and 1 px edge maps cost the default
    preset over twice the time of natural footage for no visible gain."""
    from pipelines.video_io import LOSSLESS_SUFFIX, write_video, write_video_lossless

    path = Path(path)
    comment = json.dumps(report.to_dict(), default=str)
    if path.suffix.lower() == LOSSLESS_SUFFIX:
        written = write_video_lossless(path, frames, report.fps, comment=comment)
    else:
        written = write_video(path, frames, report.fps, comment=comment, preset="veryfast")
    sidecar = path.with_suffix(".json")
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    os.replace(tmp, sidecar)
    return written
