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


def generate_work(request: dict, jc, env) -> dict:
    """The same job on any worker (studio.executors): ``env.service`` is that worker's engine service."""
    return run_generate_job(env.service, request, jc)


def gpus_per_job(ctx, owner: str) -> int:
    """GPUs one of ``owner``'s generations takes when its request does not say: their Workers-tab setting, else
    the server's default (``python app.py --sp K``)."""
    prefs = getattr(ctx, "prefs", None) or {}
    return int((prefs.get(owner) or {}).get("gpus") or getattr(ctx.config, "gpus_per_job", 1) or 1)


def check_gpus(ctx, gpus: int) -> None:
    """Refuse now, plainly, a split this studio cannot run: in this process (no --ray) the GPUs must be visible
    here (pipelines.parallel.check_devices; without CUDA they are CPU processes). With Ray the cluster decides when
    the job is dispatched (the largest host's free GPUs)."""
    jobs = getattr(ctx, "jobs", None)
    if gpus > 1 and (jobs is None or jobs.executor is jobs.local_executor):
        from pipelines.parallel import check_devices

        check_devices(gpus)


def model_key(request: dict) -> str:
    """What a generation loads (model and memory tier): a worker already holding it is preferred."""
    return f"{request.get('model') or 'tiny'}/{request.get('tier') or 'auto'}"


def check_generate(ctx, owner: str, request: dict) -> dict:
    """At submit: the request's own sizes and counts against the limits first (nothing is read before), then
    its paths must lie in the owner's folders, then every input file is probed (exists, decodes, what decoding
    it costs) and the LoRA files are read (NaN/Inf, mixed reference factors), and the pieces must fit together (the
size for the IC-LoRA's D, the mask for the reference size: pipelines.fit). Returns the checked request."""
    from pipelines.limits import active, check_generate_inputs
    from pipelines.requests import GenerateRequest
    from studio.routes import check_request_paths, checker_for

    limits = active()
    limits.check_generate(request)
    if request.get("gpus") is None:  # not stated: the owner's "GPUs per generation" (Workers tab), else --sp
        gpus = gpus_per_job(ctx, owner)
        if gpus > 1:
            request = dict(request, gpus=gpus)
    request = check_request_paths(request, checker_for(ctx, owner))
    req = GenerateRequest.from_dict(request).validate()
    check_gpus(ctx, req.gpus or 1)
    check_generate_inputs(request, limits)
    loras = [lo["path"] for lo in request.get("loras") or [] if isinstance(lo, dict) and lo.get("path")]
    if loras:
        from pipelines.models.lora import precheck_loras

        precheck_loras(loras)
    from pipelines.fit import check_request

    check_request(request)  # sizes for the IC-LoRA's D, the mask's shape: refused now, not after the queue
    return request


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        from studio.executors import WorkFn

        service = ctx.service
        fn = WorkFn("studio.kinds.generate:generate_work", local=lambda req, jc: run_generate_job(service, req, jc),
                    model=model_key, gpus=lambda req: int(req.get("gpus") or 1))
        ctx.jobs.register(KIND, fn, lane="gpu", check=lambda owner, req: check_generate(ctx, owner, req))
