"""Job kind "preprocess" (light lane): conform a clip, run a control preprocessor (canny / depth / pose /
passthrough), write the control mp4, the conformed input and small scrubber frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import UserError

KIND = "preprocess"
PREVIEW_MAX_SIDE = 384  # scrubber frames are stored at most this big (input and control, same size)
PREVIEW_MIN_SIDE = 256  # ...and at least this big (tiny test sizes are upscaled, nearest, to stay visible)


def run_preprocess_job(request: dict, jobctx, models_dir=None) -> dict:
    """Job 'preprocess' (light lane): make the control video for one clip.

    request: {"clip", "kind", "options", "width", "height", "frames", "fps", "cleanup"}. Checks the backend first
    (a missing weight fails before decoding), conforms the clip once, writes the conformed input and the control
    video (exact target frames and size: the control losslessly as .mkv, which the model reads, and as an h264
    .mp4 preview people watch; the input as h264 mp4) and the scrubber frames (.npy, downscaled). With a
    clean-up, the control before it is kept as scrubber frames too (scrub-control-raw.npy: the before/after view)
    and the clean-up, measured, goes into the control's report."""
    from pipelines.control import run_control, save_control, spec_for
    from pipelines.control.cleanup import CleanupOptions, check_kind, clean_control, record, summary
    from pipelines.control.run import conform_source
    from pipelines.control.types import ControlKind as CK
    from pipelines.control.types import resolve_options
    from pipelines.masks import save_npy
    from pipelines.video_io import ConformTarget, write_video

    kind = CK.parse(request["kind"])
    opts = resolve_options(kind, dict(request.get("options") or {}))
    clean = CleanupOptions.from_dict(request.get("cleanup"))
    check_kind(clean, kind.value)
    spec_for(kind, opts).require(models_dir)
    target = ConformTarget(width=request.get("width"), height=request.get("height"), frames=request.get("frames"),
                           fps=request.get("fps"), pad=bool(request.get("pad", True)))
    out = Path(jobctx.out_dir)
    jobctx.progress(0.02, "reading clip")
    frames, conform_rep, fps_note = conform_source(request["clip"], target, fps_mode=clean.fps_mode)
    jobctx.raise_if_cancelled()
    input_mp4 = write_video(out / "input.mp4", np.ascontiguousarray(frames), conform_rep.fps, preset="veryfast")

    def progress(f: float, text: str) -> None:
        jobctx.raise_if_cancelled()
        jobctx.progress(0.1 + 0.85 * f, text)

    # conformed frames + the same target: run_control's own conform is then a no-op
    control, report = run_control(kind, frames, target, opts, models_dir, progress, fps=conform_rep.fps)
    report.notes = list(conform_rep.changes) + [n for n in report.notes if n not in conform_rep.changes]
    report.conform = conform_rep.to_dict()
    raw = control
    steps = []
    if clean.active:
        jobctx.progress(0.95, "cleaning the control")
        control, steps = clean_control(control, clean, kind.value)
        report.notes.append(summary(steps))
    if steps or fps_note or clean.fps_mode != "nearest":
        report.cleanup = record(clean, steps, fps_note)
    control_mkv = save_control(out / f"control-{kind.value}.mkv", control, report)  # what the model reads
    preview_mp4 = write_video(out / f"control-{kind.value}.mp4", control, report.fps, preset="veryfast")
    save_npy(thumbs(frames), out / "scrub-input.npy")  # whole or not at all, like every output
    save_npy(thumbs(control), out / "scrub-control.npy")
    result = {"control": str(control_mkv), "preview": str(preview_mp4), "input": str(input_mp4),
              "frames": int(control.shape[0]), "width": int(control.shape[2]), "height": int(control.shape[1]),
              "fps": float(report.fps), "report": report.text(), "scrub_input": str(out / "scrub-input.npy"),
              "scrub_control": str(out / "scrub-control.npy"), "cleanup": report.cleanup}
    if steps:
        save_npy(thumbs(raw), out / "scrub-control-raw.npy")
        result["scrub_control_raw"] = str(out / "scrub-control-raw.npy")
    jobctx.add_output(control_mkv)
    jobctx.add_output(preview_mp4)
    jobctx.progress(1.0, "control ready")
    return result


def preprocess_work(request: dict, jc, env) -> dict:
    """The same job on any worker (studio.executors): the models folder is that worker's."""
    return run_preprocess_job(request, jc, env.models_dir)


def preprocess_gpus(request: dict) -> int:
    """Depth and pose run networks (on a GPU when there is one): with a Ray cluster they go to a GPU worker.
    Canny and passthrough are plain CPU work and always run in the studio's process."""
    return 1 if str(request.get("kind", "")).lower() in ("depth", "pose") else 0


def thumbs(frames: np.ndarray) -> np.ndarray:
    """Scrubber copies of the frames: at most PREVIEW_MAX_SIDE, tiny sizes upscaled to PREVIEW_MIN_SIDE."""
    import cv2

    t, h, w, _ = frames.shape
    s = min(1.0, PREVIEW_MAX_SIDE / max(h, w))
    if max(h, w) < PREVIEW_MIN_SIDE:
        s = float(PREVIEW_MIN_SIDE // max(h, w))  # whole-number upscale keeps 1 px edges crisp
    if s == 1.0:
        return np.ascontiguousarray(frames)
    size = (max(2, round(w * s)), max(2, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def control_options(kind: str, low, high, blur, invert) -> dict:
    """The preprocessor options of the Union tab's controls (and the API's options dict)."""
    if kind == "canny":
        return {"low_threshold": int(low), "high_threshold": int(high), "blur_sigma": float(blur)}
    if kind in ("depth", "passthrough"):
        return {"invert": bool(invert)}
    return {}


def submit_preprocess(ctx, clip, kind, low, high, blur, invert, width, height, frames, fps, request,
                      cleanup: dict | None = None) -> str:
    """Check the choice (a missing weight is refused here, at once, with the paths searched) and submit the job."""
    from pipelines.control import spec_for
    from pipelines.control.types import ControlKind as CK
    from pipelines.control.types import resolve_options
    from pipelines.requests import GenerateRequest

    if not clip:
        raise UserError("no clip: upload a video or press 'Use sample clip'")
    opts = control_options(kind, low, high, blur, invert)
    k = CK.parse(kind)
    spec_for(k, resolve_options(k, dict(opts))).require(ctx.models_dir)
    req = {"clip": str(clip), "kind": k.value, "options": opts, "width": int(width), "height": int(height),
           "frames": int(frames), "fps": float(fps)}
    if cleanup:
        from pipelines.control.cleanup import CleanupOptions, check_kind

        clean = CleanupOptions.from_dict(cleanup)
        check_kind(clean, k.value)
        req["cleanup"] = clean.to_dict()
    GenerateRequest(prompt="x", width=req["width"], height=req["height"], frames=req["frames"], fps=req["fps"]).validate()
    return ctx.jobs.submit(ctx.owner(request), KIND, req)


def check_preprocess(ctx, owner: str, request: dict) -> dict:
    """At submit: the target size against the limits, the clip inside the owner's folders, then probed (a
    missing or broken clip, or one too big to decode, is refused now, not after the queue)."""
    from pipelines.limits import active, probe_video_input
    from studio.routes import check_request_paths, checker_for

    limits = active()
    w, h, n = request.get("width"), request.get("height"), request.get("frames")
    if w is not None and h is not None:
        limits.check_video("control video", w, h, n if n is not None else 1)
    elif n is not None:
        limits.check_video("control video", 32, 32, n)
    if not request.get("clip"):
        raise UserError("no clip: upload a video or press 'Use sample clip'")
    if request.get("cleanup"):
        from pipelines.control.cleanup import CleanupOptions, check_kind

        check_kind(CleanupOptions.from_dict(request["cleanup"]), str(request.get("kind")))
    request = check_request_paths(request, checker_for(ctx, owner))
    info = probe_video_input(request["clip"], "clip", frames=n, fps=request.get("fps"), limits=limits)
    if n is None:  # the whole clip becomes the control: its own length and size count
        limits.check_video("control video", w or info.width, h or info.height, info.frames)
    return request


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        from studio.executors import WorkFn

        fn = WorkFn("studio.kinds.preprocess:preprocess_work", local=lambda req, jc: run_preprocess_job(
            req, jc, ctx.models_dir), gpus=preprocess_gpus)
        ctx.jobs.register(KIND, fn, lane="light", check=lambda owner, req: check_preprocess(ctx, owner, req))
