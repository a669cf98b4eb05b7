"""Compare & upscale tab: from any finished result, one click runs it with and without its IC-LoRA (A/B), over a list
of strengths or seeds (a sweep), or through the detail / upscale pass; the results play side by side with ONE
synced scrubber and labels (studio.player), the grid exports as one mp4.

The result arrives from the other tabs' result buttons (studio.result_actions: the shared "compare" state) or is
picked here from the user's finished generations. Jobs: "sweep" and "upscale" (gpu lane, studio.kinds); the job id
lives in gr.BrowserState and a gr.Timer polls it, like every job panel. No tensor math here.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr

from pipelines.errors import UserError
from studio.player import player, player_value
from studio.ui import guard, panel_guard, progress_html, readable, refused

TITLE = "Compare & upscale"
AXES = [("A/B: with and without the IC-LoRA", "ab"), ("Attention strength", "attention_strength"),
        ("Control strength", "control_strength"), ("Seed", "seed")]
DEFAULT_VALUES = {"ab": "", "attention_strength": "0.5, 0.8, 1.0", "control_strength": "0.5, 0.8, 1.0",
                  "seed": "1, 2, 3"}


# ---------------------------------------------------------------------------------------------- plain helpers

def result_choices(ctx, owner: str, limit: int = 50) -> list[tuple[str, str]]:
    """(label, job id) of the owner's finished generations and upscales, newest first."""
    out = []
    for j in ctx.jobs.list(owner, limit=limit):
        if j.kind not in ("generate", "upscale") or j.status.value != "done":
            continue
        r = j.request or {}
        src = r.get("request", r) if j.kind == "upscale" else r
        prompt = str(src.get("prompt", "") or Path(str(r.get("video", ""))).name)
        out.append((f"{j.id[:8]} · {j.kind} · {prompt[:48]}", j.id))
    return out


def source_request(ctx, owner: str, job_id: str) -> dict:
    """The GenerateRequest dict behind a finished result (its settings sidecar when it has one)."""
    from pipelines.requests import GenerateRequest

    if not job_id:
        raise UserError("pick a result first (or press a result's Compare button in Generate, Union or History)")
    job = ctx.jobs.get(job_id, owner)
    if job.kind != "generate":
        raise UserError(f"job {job_id[:8]} is a {job.kind}; A/B and sweeps start from a generation")
    if job.status.value != "done":
        raise UserError(f"job {job_id[:8]} has not finished ({job.status.value})")
    return GenerateRequest.from_dict(dict(job.request or {})).to_dict()


def parse_values(text: str) -> list[str]:
    return [v.strip() for v in str(text or "").replace(";", ",").split(",") if v.strip()]


def submit_sweep(ctx, owner: str, job_id: str, axis: str, values_text: str) -> str:
    from studio.kinds.sweep import submit_sweep as submit

    req = source_request(ctx, owner, job_id)
    return submit(ctx, owner, req, axis, [] if axis == "ab" else parse_values(values_text))


def video_frames(path: str) -> int:
    from pipelines.video_io import probe

    return probe(path).frames


def differences_md(labels: list[str], diffs: list[list[float]]) -> str:
    """The pairwise mean absolute differences as a small Markdown table."""
    if not diffs:
        return ""
    head = "| | " + " | ".join(html.escape(s) for s in labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    rows = "".join(f"| **{html.escape(a)}** | " + " | ".join(f"{d:.2f}" for d in row) + " |\n"
                   for a, row in zip(labels, diffs))
    return ("Mean absolute difference between the results (0-255 per pixel; larger = the setting changes more):\n\n"
            + head + rows)


def job_panel(ctx, owner: str, job_id: str | None):
    """(progress html, player value or skip, grid file, differences markdown, status markdown, finished?) for a
    sweep or upscale job."""
    from studio.jobs import JobNotFound

    if not job_id:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), True
    try:
        job = ctx.jobs.get(job_id, owner)
    except JobNotFound:
        return progress_html(0, "job not found", "idle"), gr.skip(), None, "", "", True
    status = job.status.value
    message = (job.error or job.message or "") if status in ("failed", "cancelled", "interrupted") else (job.message or "")
    prog = progress_html(job.progress, readable(message), status)
    if status != "done":
        return prog, gr.skip(), gr.skip(), gr.skip(), gr.skip(), job.status.terminal
    res = job.result or {}
    notice = f"⚠️ {res['notice']}" if res.get("notice") else ""
    if job.kind == "sweep":
        videos, labels = res["videos"], res["labels"]
        fps = float((job.request or {}).get("request", {}).get("fps") or 24.0)
        value = player_value(videos, labels, fps, video_frames(videos[0]))
        notes = [f"*{html.escape(lab)}*: {html.escape(n)}" for lab, n in zip(labels, res.get("notes") or []) if n]
        status_md = "\n\n".join(x for x in [notice, *notes] if x)
        return prog, value, res.get("grid"), differences_md(labels, res.get("differences") or []), status_md, True
    if job.kind == "upscale":
        videos = [res["source"], res["video"]]
        labels = [f"original {res['source_width']}x{res['source_height']}", f"{res['mode']} {res['width']}x{res['height']}"]
        value = player_value(videos, labels, float(res.get("fps") or 24.0), int(res["frames"]))
        plan = res.get("plan") or {}
        status_md = "\n\n".join(x for x in [notice, f"Tile plan: {html.escape(plan.get('text', ''))}" if plan else ""] if x)
        return prog, value, res.get("video"), "", status_md, True
    return prog, gr.skip(), None, "", f"a {job.kind} job", True


def detailer_choices(ctx) -> tuple[list[tuple[str, str]], str | None]:
    from studio.handoff import lora_choices

    return lora_choices(ctx, "detailer")


def upscale_request(source, mode, lora, tile_w, tile_h, tile_f, overlap, overlap_f) -> dict:
    """The upscale request for a result (by job id) from the tab's fields (0 = no tiling on that axis)."""
    if not source:
        raise UserError("pick a result first (or press a result's Upscale button in Generate, Union or History)")
    req = {"source_job": source, "mode": mode or "spatial", "overlap": int(overlap or 0),
           "overlap_frames": int(overlap_f or 0)}
    for k, v in (("tile_width", tile_w), ("tile_height", tile_h), ("tile_frames", tile_f)):
        if v and int(v) > 0:
            req[k] = int(v)
    if mode == "detailer":
        if not lora:
            raise UserError("pick a Detailer IC-LoRA (put one in models/loras)")
        req["lora"] = str(lora)
    return req


def plan_markdown(ctx, owner: str, request: dict) -> str:
    """The tile plan of an upscale request, with the predicted peak memory per tile, as Markdown."""
    from pipelines.fit import lora_downscale
    from pipelines.sampler.upscale import SCALE, UpscaleRequest, plan_for
    from pipelines.video_io import probe
    from studio.kinds.upscale import resolve_source

    r = UpscaleRequest.from_dict(resolve_source(ctx, owner, request))
    info = probe(r.video)
    w, h, f = info.width // 32 * 32, info.height // 32 * 32, (info.frames - 1) // 8 * 8 + 1
    d = lora_downscale([r.lora]) if r.lora else 1
    plan = plan_for(r, w * SCALE, h * SCALE, f, d)
    rows = "".join(f"| {t.index + 1} | {t.window.pixels()['x'][0]}-{t.window.pixels()['x'][1]} | "
                   f"{t.window.pixels()['y'][0]}-{t.window.pixels()['y'][1]} | "
                   f"{t.window.pixels()['frames'][0]}-{t.window.pixels()['frames'][1] - 1} | {t.tokens} | "
                   f"{t.predicted_peak_gb:.1f} GB |\n" for t in plan.tiles[:24])
    more = f"\n… and {plan.count - 24} more tiles" if plan.count > 24 else ""
    note = (" On the tiny test model the real figures are megabytes; the prediction is for LTX-2.3 at this size."
            if ctx.config.model == "tiny" else "")
    return (f"**{html.escape(plan.text())}**.{note}\n\n| tile | x (px) | y (px) | frames | tokens | predicted peak |\n"
            f"|---|---|---|---|---|---|\n{rows}{more}")


# ---------------------------------------------------------------------------------------------- the tab

def build(ctx):
    shared = ctx.shared
    handed = shared.setdefault("compare", gr.State(None))  # {"job": id, "source": id} from a result button
    priv = {"api_visibility": "private"}

    gr.Markdown("Start from a result: run it **with and without its IC-LoRA** (A/B), over a few **strengths or "
                "seeds** (a sweep), or through the **detail / upscale pass**. The results play side by side with "
                "one scrubber; the grid downloads as one mp4.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            with gr.Row():
                source = gr.Dropdown(choices=[], label="Result", elem_id="cmp-source", scale=4)
                refresh = gr.Button("↻", size="sm", scale=0, min_width=40, elem_id="cmp-refresh")
            with gr.Group():
                axis = gr.Radio(AXES, value="ab", label="Compare", elem_id="cmp-axis")
                values = gr.Textbox("", label="Values (comma-separated)", elem_id="cmp-values", visible=False)
                run = gr.Button("Run the comparison", variant="primary", elem_id="cmp-run")
            with gr.Accordion("Detail / upscale pass (x2)", open=True):
                up_mode = gr.Radio([("Spatial upscaler x2 + refine", "spatial"), ("Detailer IC-LoRA", "detailer")],
                                   value="spatial", label="Pass", elem_id="cmp-up-mode")
                det_choices, det_default = detailer_choices(ctx)
                up_lora = gr.Dropdown(det_choices, value=det_default, label="Detailer IC-LoRA", visible=False,
                                      elem_id="cmp-up-lora")
                with gr.Row():
                    tile_w = gr.Number(0, label="Tile width (px, 0 = whole)", precision=0, minimum=0, step=32,
                                       elem_id="cmp-tile-w", min_width=100)
                    tile_h = gr.Number(0, label="Tile height (px)", precision=0, minimum=0, step=32,
                                       elem_id="cmp-tile-h", min_width=100)
                    tile_f = gr.Number(0, label="Tile frames (8n+1, 0 = all)", precision=0, minimum=0, step=8,
                                       min_width=100)
                with gr.Row():
                    overlap = gr.Number(64, label="Overlap (px)", precision=0, minimum=0, step=32, min_width=100)
                    overlap_f = gr.Number(8, label="Overlap (frames)", precision=0, minimum=0, step=8, min_width=100)
                with gr.Row():
                    plan_btn = gr.Button("Show the tile plan", size="sm", elem_id="cmp-plan-btn")
                    up_btn = gr.Button("Upscale", variant="primary", elem_id="cmp-upscale")
                plan_md = gr.Markdown(elem_id="cmp-plan")
            upscale_box = gr.Column()
        with gr.Column(scale=3):
            progress = gr.HTML(progress_html(0, "no comparison yet", "idle"), elem_id="cmp-progress")
            view = player("cmp-player")
            diffs = gr.Markdown(elem_id="cmp-diffs")
            status = gr.Markdown(elem_id="cmp-status")
            grid_file = gr.File(label="Grid / result (mp4)", interactive=False, elem_id="cmp-grid", height=80)
            cancel = gr.Button("Cancel", size="sm", elem_id="cmp-cancel")
    job_id = ctx.job_state("compare")
    shown = gr.State(None)
    timer = gr.Timer(1.0)

    choices_sig = gr.State(None)

    def refresh_choices(current, sig, request: gr.Request):
        """The result list, re-sent only when it changed (an open dropdown is not reset every tick)."""
        choices = result_choices(ctx, ctx.owner(request))
        ids = [c[1] for c in choices]
        new_sig = "|".join(ids)
        if new_sig == sig:
            return gr.skip(), sig
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None)), new_sig

    def refresh_now(current, request: gr.Request):
        """The ↻ button: the list as it is now, whatever was last sent."""
        return refresh_choices(current, None, request)

    refresh.click(guard(refresh_now), source, [source, choices_sig], **priv)
    list_timer = gr.Timer(2.0)
    list_timer.tick(guard(refresh_choices), [source, choices_sig], [source, choices_sig], show_progress="hidden",
                    **priv)

    def on_axis(a):
        return gr.update(visible=a != "ab", value=DEFAULT_VALUES.get(a, ""))

    axis.change(on_axis, axis, values, **priv)

    def do_run(src, a, vals, request: gr.Request):
        jid = submit_sweep(ctx, ctx.owner(request), src, a, vals)
        return jid, progress_html(0, "waiting for its turn", "queued"), None, "", ""

    run.click(panel_guard(do_run, 5, 1, refused, {0: None}), [source, axis, values],
              [job_id, progress, shown, diffs, status], **priv)

    # a result button in another tab handed over a job to show (it was submitted there) and its source result
    def on_handed(h, request: gr.Request):
        if not h:
            return gr.skip(), gr.skip(), gr.skip()
        choices = result_choices(ctx, ctx.owner(request))
        return (h.get("job") or gr.skip(), gr.update(choices=choices, value=h.get("source")),
                progress_html(0, "waiting for its turn", "queued") if h.get("job") else gr.skip())

    handed.change(guard(on_handed), handed, [job_id, source, progress], **priv)

    def poll(jid, already, request: gr.Request):
        if not jid or already == jid:
            return (gr.skip(),) * 5 + (already,)
        prog, value, gfile, dmd, smd, ended = job_panel(ctx, ctx.owner(request), jid)
        return prog, value, gfile, dmd, smd, (jid if ended else None)

    timer.tick(guard(poll), [job_id, shown], [progress, view, grid_file, diffs, status, shown],
               show_progress="hidden", **priv)

    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return job_panel(ctx, ctx.owner(request), jid)[0]

    cancel.click(guard(do_cancel), job_id, progress, **priv)

    # ---- the upscale pass: the tile plan first (shown before anything runs), then the job
    up_mode.change(lambda m: gr.update(visible=m == "detailer"), up_mode, up_lora, **priv)
    up_inputs = [source, up_mode, up_lora, tile_w, tile_h, tile_f, overlap, overlap_f]

    def show_plan(src, mode, lora, tw, th, tf, ov, ovf, request: gr.Request):
        return plan_markdown(ctx, ctx.owner(request), upscale_request(src, mode, lora, tw, th, tf, ov, ovf))

    plan_btn.click(panel_guard(show_plan, 1, 0), up_inputs, plan_md, **priv)

    def do_upscale(src, mode, lora, tw, th, tf, ov, ovf, request: gr.Request):
        owner = ctx.owner(request)
        req = upscale_request(src, mode, lora, tw, th, tf, ov, ovf)
        md = plan_markdown(ctx, owner, req)
        jid = ctx.submit(owner, "upscale", req)
        return jid, progress_html(0, "waiting for its turn", "queued"), None, md

    up_btn.click(panel_guard(do_upscale, 4, 1, refused, {0: None}), up_inputs, [job_id, progress, shown, plan_md],
                 **priv)
    return {"source": source, "job_id": job_id, "player": view, "upscale_box": upscale_box, "progress": progress,
            "status": status, "shown": shown, "timer": timer}
