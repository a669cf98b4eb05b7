"""Job kind "upscale" (gpu lane): the detail / upscale pass on an existing video (pipelines.sampler.upscale): the
spatial upscaler x2 + refine steps, or a Detailer IC-LoRA pass with the video as its own reference; tiled when
the request asks for tiles. The request names the video, or a finished generation of the owner's
("source_job"), whose video and prompt it takes."""
from __future__ import annotations

from pathlib import Path

KIND = "upscale"


def run_upscale_job(service, request: dict, ctx) -> dict:
    from pipelines.sampler.upscale import UpscaleRequest, upscale_video

    req = UpscaleRequest.from_dict(request)
    ctx.progress(0.0, "loading model")
    out = Path(ctx.out_dir) / "upscaled.mp4"

    def on_step(phase, message, fraction):
        ctx.progress(fraction, message)

    with service._lock:  # one GPU run at a time on the shared engine, as EngineService.generate
        engine = service.engine(req.model)
        res = upscale_video(engine, req, out, on_step=on_step, should_cancel=lambda: ctx.cancelled)
    ctx.add_output(res.path)
    ctx.add_output(res.sidecar)
    md = res.metadata
    src = md["source"]
    return {"video": str(res.path), "settings": str(res.sidecar), "source": src["path"], "mode": req.mode.value,
            "width": md["width"], "height": md["height"], "frames": md["frames"], "fps": src["fps"],
            "source_width": src["width"], "source_height": src["height"], "plan": {"text": md["plan"]["text"],
                                                                                 "count": md["plan"]["count"]},
            "notice": md.get("notice", "")}


def resolve_source(ctx, owner: str, request: dict) -> dict:
    """A request naming "source_job" (a finished generation or upscale of the owner's) gets its video, and its
    prompt and model when the request has none."""
    from pipelines.errors import UserError

    request = dict(request or {})
    jid = request.pop("source_job", None)
    if not jid:
        return request
    job = ctx.jobs.get(jid, owner)
    if job.status.value != "done" or not (job.result or {}).get("video"):
        raise UserError(f"job {str(jid)[:8]} has no finished video to upscale ({job.status.value})")
    request.setdefault("video", job.result["video"])
    r = job.request or {}
    if job.kind == "generate":
        request.setdefault("model", r.get("model", "tiny"))
        request.setdefault("prompt", r.get("prompt", ""))
        request.setdefault("seed", int(r.get("seed", 0) or 0))
    elif job.kind == "upscale":
        request.setdefault("model", r.get("model", "tiny"))
    return request


def check_upscale(ctx, owner: str, request: dict) -> dict:
    """At submit: the source video in the owner's folders and probed, the 2x output size against the limits, the
    tile plan made (a bad tile size is refused now), the Detailer LoRA read."""
    from pipelines.limits import active, probe_video_input
    from pipelines.sampler.upscale import SCALE, UpscaleMode, UpscaleRequest, plan_for
    from studio.routes import check_request_paths, checker_for

    request = resolve_source(ctx, owner, request)
    req = UpscaleRequest.from_dict(request)
    limits = active()
    limits.check_text("prompt", req.prompt)
    request = check_request_paths(req.to_dict(), checker_for(ctx, owner))
    info = probe_video_input(request["video"], "video")
    w, h, f = info.width // 32 * 32, info.height // 32 * 32, (info.frames - 1) // 8 * 8 + 1
    limits.check_video("upscaled video", w * SCALE, h * SCALE, f)
    d = 1
    if req.mode is UpscaleMode.DETAILER:
        from pipelines.fit import lora_downscale
        from pipelines.models.lora import precheck_loras

        precheck_loras([request["lora"]])
        d = lora_downscale([request["lora"]])
    plan_for(req, w * SCALE, h * SCALE, f, d)
    return request


def submit_upscale(ctx, owner: str, request: dict) -> str:
    return ctx.submit(owner, KIND, dict(request))


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        service = ctx.service
        ctx.jobs.register(KIND, lambda req, jc: run_upscale_job(service, req, jc), lane="gpu",
                          check=lambda owner, req: check_upscale(ctx, owner, req))
