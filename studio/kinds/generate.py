"""Job kind "generate" (gpu lane): a GenerateRequest dict through the engine service into the job's folder."""
from __future__ import annotations

from pathlib import Path

KIND = "generate"


def run_generate_job(service, request: dict, ctx) -> dict:
    """Job function for kind 'generate' (gpu lane)."""
    from pipelines.requests import GenerateRequest

    req = GenerateRequest.from_dict(request)
    out = Path(ctx.out_dir) / "output.mp4"

    def progress(fraction, message, preview):
        ctx.progress(fraction, message, preview)

    result = service.generate(req, out, progress=progress, should_cancel=lambda: ctx.cancelled,
                              preview_dir=Path(ctx.out_dir) / "preview")
    ctx.add_output(result["video"])
    ctx.add_output(result["settings"])
    return {"video": result["video"], "settings": result["settings"], "notice": result["metadata"].get("notice", "")}


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        service = ctx.service
        ctx.jobs.register(KIND, lambda req, jc: run_generate_job(service, req, jc), lane="gpu")
