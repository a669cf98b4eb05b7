"""Job kinds: the functions the job system runs (generate, preprocess, train, ...) and the helpers that submit
them. Tabs and the named API both import these; tabs keep layout and events only.

``register_all(ctx)`` registers every kind on ``ctx.jobs`` once, whichever tabs are built (the API works on a
studio with no tab at all). Each kind lives in its own module:

    generate    the IC-LoRA generation (gpu lane)
    preprocess  a control video from a clip (light lane)
    train       an IC-LoRA training run, resumable (gpu lane)
    tracks      a track file rendered as the Motion-Track control video (light lane)
    download    the official weights from the Hugging Face Hub, in a child process (light lane)
    enhance     the loaded model's Gemma rewrites a short prompt (light lane, beside the GPU job)
    upscale     the detail / upscale pass on an existing video (spatial x2 + refine, or a Detailer IC-LoRA) (gpu)
    sweep       one request run several ways as one batch (A/B, strengths, seeds) + the grid mp4 (gpu lane)

Every kind registers a check that runs at submit (size limits from pipelines.limits, paths, inputs probed), so
a request that must not run is refused before it is queued, from any tab, the API or a resume.

No tensor math here: the work is done by pipelines; these modules move typed requests, paths and text.
"""
from __future__ import annotations


import time


def register_all(ctx) -> None:
    """Register every job kind on ``ctx.jobs`` (idempotent: a kind already registered is left as it is)."""
    from studio.kinds import download, enhance, generate, preprocess, sweep, tracks, train, upscale

    for mod in (generate, preprocess, train, tracks, download, sweep, enhance, upscale):
        mod.register(ctx)


def wait_job(ctx, job_id: str, owner: str, timeout: float = 600.0, what: str = "preprocessing"):
    """Yield the job while it runs (about 3 times a second), then the finished job. UserError if it failed."""
    from pipelines.errors import UserError

    deadline = time.monotonic() + timeout
    while True:
        job = ctx.jobs.get(job_id, owner)
        if job.status.terminal:
            if job.status.value != "done":
                raise UserError(job.error or f"{what} {job.status.value}")
            yield job
            return
        if time.monotonic() > deadline:
            raise UserError(f"{what} is taking long; it keeps running as job {job_id[:8]} (see History)")
        yield job
        time.sleep(0.3)


def wait_finished(ctx, job_id: str, owner: str, timeout: float, what: str):
    """The finished job (blocking; UserError if it failed, was cancelled or took longer than ``timeout``)."""
    from pipelines.errors import UserError

    try:
        job = ctx.jobs.wait(job_id, timeout=timeout, owner=owner)
    except TimeoutError:
        raise UserError(f"{what} is taking long; it keeps running as job {job_id[:8]} (see History)") from None
    if job.status.value != "done":
        raise UserError(job.error or f"{what} {job.status.value}")
    return job


__all__ = ["register_all", "wait_job", "wait_finished"]
