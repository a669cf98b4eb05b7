"""Generate tab: text-to-video and first-frame image-to-video through the engine, as a server-side job.

The job id lives in gr.BrowserState, so a reloaded or reopened page picks the job up again; a gr.Timer polls it
(GRADIO.md: streaming events die with the tab, jobs do not).
"""
from __future__ import annotations

import os

import gradio as gr

from pipelines.fit import size_hint
from pipelines.requests import OFFICIAL_NEGATIVE_PROMPT, GenerateRequest, MemoryTier, Schedule
from studio.ui import BAD, guard, panel_guard, progress_html, readable, refused
from studio.sampling import SamplingExtras

TITLE = "Generate"


def model_choices(ctx) -> list[str]:
    from pipelines.models.registry import discover

    return [s.name for s in discover(ctx.models_dir) if s.ready]


def job_view(ctx, job_id: str | None, request: gr.Request):
    """(progress html, preview, video, settings file, status markdown) for a job id."""
    from studio.jobs import JobNotFound

    if not job_id:  # nothing to show (or a refused request's reason is on the line): leave the panel as it is
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    try:
        job = ctx.jobs.get(job_id, ctx.owner(request))
    except JobNotFound:
        return progress_html(0, "job not found", "idle"), None, None, None, ""
    status = job.status.value
    res = job.result or {}
    video = res.get("video") if status == "done" else None
    settings = res.get("settings") if status == "done" else None
    # the progress line is the panel's one place for a failure ("failed: <reason>"); the note is for notices
    message = (job.error or job.message or "") if status in BAD else (job.message or "")
    note = f"⚠️ {res['notice']}" if status == "done" and res.get("notice") else ""
    return (progress_html(job.progress, readable(message), status), job.preview, video, settings, note)


def job_ended(ctx, job_id: str | None, request) -> bool:
    """Whether the job in a panel has finished (done, failed, cancelled...) or is gone."""
    from studio.jobs import JobNotFound

    if not job_id:
        return True
    try:
        return ctx.jobs.get(job_id, ctx.owner(request)).status.terminal
    except JobNotFound:
        return True


def wire_job_panel(ctx, timer, cancel, job_id, outputs) -> None:
    """The standard job panel: every tick show the job in ``job_id`` on ``outputs`` (progress html, latent
    preview, video, settings file, status markdown: job_view's order); Cancel cancels it (its owner only).
    A finished job is painted once and then left alone (the players do not reload every second, and a refusal
    written on the progress line afterwards stays there)."""
    shown = gr.State(None)

    def poll(jid, already, request: gr.Request):
        if jid and already == jid:
            return (gr.skip(),) * 5 + (already,)
        view = job_view(ctx, jid, request)
        return tuple(view) + ((jid if jid and job_ended(ctx, jid, request) else None),)

    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return tuple(job_view(ctx, jid, request)) + (None,)

    timer.tick(guard(poll), [job_id, shown], list(outputs) + [shown], api_visibility="private",
               show_progress="hidden")
    cancel.click(guard(do_cancel), job_id, list(outputs) + [shown], api_visibility="private")


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
    from studio.handoff import default_size

    choices = model_choices(ctx)
    default_model = ctx.config.model if ctx.config.model in choices else choices[0]
    size = default_size(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value="a woman walking in a city street at night, cinematic",
                                elem_id="gen-prompt")
            enhance_slot = gr.Column()  # the "Enhance prompt" button (studio.enhance_ui), wired below
            negative = gr.Textbox(label="Negative prompt (Full schedule)", lines=1, max_lines=2,
                                  value=OFFICIAL_NEGATIVE_PROMPT)
            image = gr.Image(label="First frame (optional)", type="filepath", sources=["upload"], height=180)
            with gr.Row():
                width = gr.Number(size.width, label="Width", precision=0, minimum=32, step=32, elem_id="gen-width")
                height = gr.Number(size.height, label="Height", precision=0, minimum=32, step=32, elem_id="gen-height")
                frames = gr.Number(size.frames, label="Frames (8n+1)", precision=0, minimum=1, step=8,
                                   elem_id="gen-frames")
                fps = gr.Number(size.fps, label="FPS", minimum=1, maximum=120)
            gr.Markdown(f"Size: {size_hint(1)}.", elem_classes=["demo-note"])
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    model = gr.Dropdown(choices, value=default_model, label="Model")
                    tier = gr.Dropdown([t.value for t in MemoryTier], value="auto", label="Memory tier")
                    schedule = gr.Radio([s.value for s in Schedule], value="distilled", label="Schedule")
                with gr.Row():
                    steps = gr.Slider(1, 60, value=30, step=1, label="Steps (full schedule)")
                    cfg = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="CFG (full schedule)")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="gen-seed")
            extras = SamplingExtras(prefix="gen")  # guidance, soundtrack, keyframes (one builder for every tab)
            vram = gr.Markdown(vram_text(default_model, "auto", size.width, size.height, size.frames), elem_id="gen-vram")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                cancel = gr.Button("Cancel", elem_id="gen-cancel")
        with gr.Column(scale=2):
            progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="gen-progress")
            preview = gr.Image(label="Latent preview", interactive=False, height=120, format="png")
            video = gr.Video(label="Result", interactive=False, elem_id="gen-video")
            settings = gr.File(label="Settings (JSON)", interactive=False)
            status = gr.Markdown(elem_id="gen-status")
            actions_slot = gr.Column()  # A/B, sweep, upscale of the result (studio.result_actions)
    for comp in (model, tier, width, height, frames):
        comp.change(guard(vram_text), [model, tier, width, height, frames], vram, api_visibility="private",
                    show_progress="hidden")
    job_id = ctx.job_state("generate")
    timer = gr.Timer(1.0)

    def submit(request: gr.Request, prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps,
               cfg, seed, *x):
        sched = Schedule(schedule)
        req = GenerateRequest(
            prompt=prompt, negative_prompt=negative or "", model=model, width=int(width), height=int(height),
            frames=int(frames), fps=float(fps), seed=int(seed), schedule=sched, steps=int(steps) if sched == Schedule.FULL else 8,
            guidance_scale=float(cfg) if sched == Schedule.FULL else 1.0, tier=MemoryTier(tier), image=image or None,
            **extras.fields(list(x)),
        ).validate()
        jid = ctx.submit(ctx.owner(request), "generate", req.to_dict())
        return jid, progress_html(0, "waiting for its turn", "queued")

    go.click(panel_guard(submit, 2, 1, refused, {0: None}),
             [prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps, cfg, seed,
              *extras.components],
             [job_id, progress], api_visibility="private")

    wire_job_panel(ctx, timer, cancel, job_id, [progress, preview, video, settings, status])
    from studio.enhance_ui import add_enhance_button
    from studio.result_actions import add_result_actions

    with enhance_slot:
        add_enhance_button(ctx, prompt, "gen", model=model, image=image)
    with actions_slot:
        add_result_actions(ctx, job_id, "gen")

    def apply_request(d: dict) -> list:
        """Values for request_inputs from a past GenerateRequest dict (History's "Reuse settings")."""
        r = GenerateRequest.from_dict(d)
        return [r.prompt, r.negative_prompt, r.image if r.image and os.path.isfile(r.image) else None,
                r.width, r.height, r.frames, r.fps, r.model if r.model in model_choices(ctx) else gr.skip(),
                r.tier.value, r.schedule.value, r.steps, r.guidance_scale, r.seed, *extras.values_from(r)]

    # History's "Reuse settings" fills these with apply_request(a past request) and opens this tab
    inputs = [prompt, negative, image, width, height, frames, fps, model, tier, schedule, steps, cfg, seed,
              *extras.components]
    return {"request_inputs": inputs, "apply_request": apply_request,
            "reuse": {"outputs": inputs, "apply": apply_request}}
