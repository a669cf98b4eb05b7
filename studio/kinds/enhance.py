"""Job kind "enhance" (light lane): the loaded model's Gemma rewrites a short prompt (pipelines.sampler.enhance).

Why the light lane and not the GPU queue: an enhancement is a few seconds of text generation the person waits for
before generating; queued behind a render it would wait minutes. It runs beside the GPU job on the SAME loaded
text encoder (no second copy of a 12B model), one forward pass at a time under the model's text-encoder lock,
which the engine also takes around its prompt encoding: a generation waits at most one token step for it. On the
resident tiers the encoder sits in CPU memory between encodings, so that is where an enhancement runs (slower
than on the GPU, but it never takes GPU memory from a running generation)."""
from __future__ import annotations

KIND = "enhance"


def loaded_model(service, model: str):
    """The model the generation would use (from the shared model cache; loaded now if it is not yet)."""
    from pipelines.models.loader import default_cache
    from pipelines.models.registry import get_spec
    from pipelines.requests import MemoryTier

    return default_cache().get(get_spec(model, service.models_dir), MemoryTier.AUTO)


def run_enhance_job(service, request: dict, ctx) -> dict:
    from pipelines.sampler.enhance import EnhanceRequest, enhance_prompt

    req = EnhanceRequest.from_dict(request)
    ctx.progress(0.02, "loading the text encoder")
    loaded = loaded_model(service, req.model)
    res = enhance_prompt(loaded, req, should_cancel=lambda: ctx.cancelled,
                         progress=lambda f, m: ctx.progress(0.05 + 0.9 * f, m))
    ctx.progress(1.0, "done")
    return {**res.to_dict(), "prompt": req.prompt}


def check_enhance(ctx, owner: str, request: dict) -> dict:
    from pipelines.limits import active, probe_image_input, probe_video_input
    from pipelines.sampler.enhance import EnhanceRequest
    from pipelines.video_io import IMAGE_EXTS
    from studio.routes import check_request_paths, checker_for

    req = EnhanceRequest.from_dict(request)
    active().check_text("prompt", req.prompt)
    request = check_request_paths(req.to_dict(), checker_for(ctx, owner))
    if request.get("image"):
        from pathlib import Path

        if Path(request["image"]).suffix.lower() in IMAGE_EXTS:
            probe_image_input(request["image"], "image")
        else:
            probe_video_input(request["image"], "clip", frames=int(request.get("frame") or 0) + 1)
    return request


def enhance_now(ctx, owner: str, request: dict, timeout: float = 600.0) -> dict:
    """Submit an enhance job and wait for it; its result (text, notice, seconds). UserError if it failed."""
    from studio.kinds import wait_finished

    return wait_finished(ctx, ctx.submit(owner, KIND, request), owner, timeout, "the prompt enhancer").result


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        service = ctx.service
        ctx.jobs.register(KIND, lambda req, jc: run_enhance_job(service, req, jc), lane="light",
                          check=lambda owner, req: check_enhance(ctx, owner, req))
