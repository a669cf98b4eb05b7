"""Job kind "sweep" (gpu lane): one request run several ways as ONE batch (A/B with and without the IC-LoRA, or a
list of attention strengths, control strengths or seeds), then the grid mp4 with labels (pipelines.sweeps)."""
from __future__ import annotations

KIND = "sweep"


def run_sweep_job(service, request: dict, ctx) -> dict:
    from pipelines.sweeps import run_sweep

    def progress(fraction, message, preview):
        ctx.progress(fraction, message, preview)

    result = run_sweep(service, request, ctx.out_dir, progress=progress, should_cancel=lambda: ctx.cancelled)
    for p in result["videos"] + result["settings"] + [result["grid"], result["sidecar"]]:
        ctx.add_output(p)
    return result


def check_sweep(ctx, owner: str, request: dict) -> dict:
    """At submit: the sweep's own shape (axis, values, at most pipelines.sweeps.MAX_VARIANTS generations), then
    every variant through the generate kind's checks (limits, paths, inputs, LoRA files)."""
    from pipelines.sweeps import SweepRequest
    from studio.kinds.generate import check_generate

    sweep = SweepRequest.from_dict(request)
    checked = check_generate(ctx, owner, sweep.request)
    for v in sweep.variants()[1:]:
        check_generate(ctx, owner, v.request)
    sweep.request = checked
    return sweep.to_dict()


def submit_sweep(ctx, owner: str, request: dict, axis: str, values=None, columns: int = 0) -> str:
    """Queue a sweep of ``request`` (a GenerateRequest dict, e.g. a result's settings) over ``axis``."""
    from pipelines.sweeps import SweepRequest

    sweep = SweepRequest(request=dict(request), axis=axis, values=list(values or []), columns=int(columns or 0))
    return ctx.submit(owner, KIND, sweep.validate().to_dict())


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        service = ctx.service
        ctx.jobs.register(KIND, lambda req, jc: run_sweep_job(service, req, jc), lane="gpu",
                          check=lambda owner, req: check_sweep(ctx, owner, req))
