"""Generate tab: text-to-video and first-frame image-to-video through the engine, as a server-side job.

The job id lives in gr.BrowserState, so a reloaded or reopened page picks the job up again; a gr.Timer polls it
(GRADIO.md: streaming events die with the tab, jobs do not).
"""
from __future__ import annotations

import os

import gradio as gr

from pipelines.requests import GenerateRequest, MemoryTier, Schedule
from studio.ui import guard, progress_html

TITLE = "Generate"


def model_choices(ctx) -> list[str]:
    from pipelines.models.registry import discover

    return [s.name for s in discover(ctx.models_dir) if s.ready]


def job_view(ctx, job_id: str | None, request: gr.Request):
    """(progress html, preview, video, settings file, status markdown) for a job id."""
    from studio.jobs import JobNotFound

    if not job_id:
        return progress_html(0, "no job yet", "idle"), None, None, None, ""
    try:
        job = ctx.jobs.get(job_id, ctx.owner(request))
    except JobNotFound:
        return progress_html(0, "job not found", "idle"), None, None, None, ""
    status = job.status.value
    res = job.result or {}
    video = res.get("video") if status == "done" else None
    settings = res.get("settings") if status == "done" else None
    note = ""
    if job.error:
        note = f"**{status}:** {job.error}"
    elif status == "done" and res.get("notice"):
        note = f"⚠️ {res['notice']}"
    return (progress_html(job.progress, job.message or "", status), job.preview, video, settings, note)


def wire_job_panel(ctx, timer, cancel, job_id, outputs) -> None:
    """The standard job panel: every tick show the job in ``job_id`` on ``outputs`` (progress html, latent
    preview, video, settings file, status markdown: job_view's order); Cancel cancels it (its owner only)."""

    def poll(jid, request: gr.Request):
        return job_view(ctx, jid, request)

    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return job_view(ctx, jid, request)

    timer.tick(guard(poll), job_id, outputs, api_visibility="private", show_progress="hidden")
    cancel.click(guard(do_cancel), job_id, outputs, api_visibility="private")


def vram_text(model: str, tier: str, width, height, frames, refs: int = 0, downscale: int = 1) -> str:
    """The predicted peak VRAM shown before a run (pipelines.models.memory; real LTX-2.3 sizes)."""
    from pipelines.models.memory import choose_tier, estimate, free_vram_gb

    try:
        w, h, f = int(width), int(height), int(frames)
    except (TypeError, ValueError):
        return ""
    if model == "tiny":
        return "Memory: tiny test model (a few MB on any device)."
    t = MemoryTier(tier)
    if t == MemoryTier.AUTO:
        if free_vram_gb() is None:
            parts = [f"{x.value} {estimate(x, w, h, f, refs=refs, downscale=downscale).peak_gb:.0f} GB"
                     for x in (MemoryTier.BF16, MemoryTier.FP8, MemoryTier.OFFLOAD, MemoryTier.GROUP_OFFLOAD)]
            return ("Memory: auto picks the fastest tier that fits the GPU's free memory at run time; no CUDA GPU is "
                    "visible to this server. Predicted peaks: " + ", ".join(parts) + ".")
        t = choose_tier(None, "cuda", w, h, f)
    return "Memory: " + estimate(t, w, h, f, refs=refs, downscale=downscale).text()


def build(ctx):
    choices = model_choices(ctx)
    default_model = ctx.config.model if ctx.config.model in choices else choices[0]
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value="a woman walking in a city street at night, cinematic",
                                elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1, value="")
            image = gr.Image(label="First frame (optional)", type="filepath", sources=["upload"], height=180)
            with gr.Row():
                width = gr.Number(768 if default_model != "tiny" else 96, label="Width", precision=0, minimum=32, step=32)
                height = gr.Number(512 if default_model != "tiny" else 64, label="Height", precision=0, minimum=32, step=32)
                frames = gr.Number(121 if default_model != "tiny" else 9, label="Frames (8n+1)", precision=0, minimum=1, step=8)
                fps = gr.Number(24, label="FPS", minimum=1, maximum=120)
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    model = gr.Dropdown(choices, value=default_model, label="Model")
                    tier = gr.Dropdown([t.value for t in MemoryTier], value="auto", label="Memory tier")
                    schedule = gr.Radio([s.value for s in Schedule], value="distilled", label="Schedule")
                with gr.Row():
                    steps = gr.Slider(1, 60, value=30, step=1, label="Steps (full schedule)")
                    cfg = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="CFG (full schedule)")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="gen-seed")
            vram = gr.Markdown(vram_text(default_model, "auto", 96, 64, 9), elem_id="gen-vram")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                cancel = gr.Button("Cancel", elem_id="gen-cancel")
        with gr.Column(scale=2):
            progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="gen-progress")
            preview = gr.Image(label="Latent preview", interactive=False, height=120, format="png")
            video = gr.Video(label="Result", interactive=False, elem_id="gen-video")
            settings = gr.File(label="Settings (JSON)", interactive=False)
            status = gr.Markdown(elem_id="gen-status")
    for comp in (model, tier, width, height, frames):
        comp.change(guard(vram_text), [model, tier, width, height, frames], vram, api_visibility="private",
                    show_progress="hidden")
    job_id = ctx.job_state("generate")
    timer = gr.Timer(1.0)

    @guard
    def submit(prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps, cfg, seed,
               request: gr.Request):
        sched = Schedule(schedule)
        req = GenerateRequest(
            prompt=prompt, negative_prompt=negative or "", model=model, width=int(width), height=int(height),
            frames=int(frames), fps=float(fps), seed=int(seed), schedule=sched, steps=int(steps) if sched == Schedule.FULL else 8,
            guidance_scale=float(cfg) if sched == Schedule.FULL else 1.0, tier=MemoryTier(tier), image=image or None,
        ).validate()
        jid = ctx.submit(ctx.owner(request), "generate", req.to_dict())
        return jid, progress_html(0, "queued", "queued")

    go.click(submit, [prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps, cfg, seed],
             [job_id, progress], api_visibility="private")

    wire_job_panel(ctx, timer, cancel, job_id, [progress, preview, video, settings, status])

    def apply_request(d: dict) -> list:
        """Values for request_inputs from a past GenerateRequest dict (History's "Reuse settings")."""
        r = GenerateRequest.from_dict(d)
        return [r.prompt, r.negative_prompt, r.image if r.image and os.path.isfile(r.image) else None,
                r.width, r.height, r.frames, r.fps, r.model if r.model in model_choices(ctx) else gr.skip(),
                r.tier.value, r.schedule.value, r.steps, r.guidance_scale, r.seed]

    # History's "Reuse settings" fills request_inputs with apply_request(a past request)
    return {"request_inputs": [prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps,
                               cfg, seed],
            "apply_request": apply_request}
