"""History tab: the user's jobs (running ones with their progress) and a gallery of their outputs, each with
the settings that made it; "reuse settings" gives the request back.

Everything is read from the job manager for the logged-in owner (ctx.jobs.list(owner)), so a page opened
after the tab that started a job was closed still sees it, and nobody sees anyone else's jobs. A gr.Timer
polls; the gallery is re-sent only when the set of finished outputs changes (re-sending media every tick
would reload the videos).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from studio.ui import guard, panel_guard, progress_html, readable

TITLE = "History"
POLL_S = 2.0
VIDEO_EXT = (".mp4", ".webm", ".mov")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _summary(job) -> str:
    r = job.request or {}
    if job.kind == "generate":
        size = f"{r.get('width')}x{r.get('height')}x{r.get('frames')}"
        prompt = str(r.get("prompt", ""))
        return f"{size} seed {r.get('seed')} · {prompt[:60]}{'…' if len(prompt) > 60 else ''}"
    return readable(", ".join(f"{k}={v}" for k, v in list(r.items())[:4]))[:90]  # uploads by file name


def job_rows(jobs) -> list[list]:
    """Rows for the jobs table: id, kind, status, progress %, message, created, duration, summary."""
    rows = []
    for j in jobs:
        dur = f"{j.elapsed:.1f} s" if j.elapsed is not None else ""
        rows.append([j.id, j.kind, j.status.value, round(100 * float(j.progress or 0)), readable(j.error or j.message or ""),
                     _when(j.created), dur, _summary(j)])
    return rows


def output_media(job) -> str | None:
    """The main viewable output of a finished job (its video, else its first image), or None."""
    if job.status.value != "done":
        return None
    res = job.result or {}
    cands = [res.get("video")] + list(job.outputs or [])
    for p in cands:
        if isinstance(p, str) and p.lower().endswith(VIDEO_EXT + IMAGE_EXT) and Path(p).is_file():
            return p
    return None


def gallery_items(jobs) -> list[tuple[str, str]]:
    """(path, caption) of each finished output, newest first."""
    return [(m, f"{j.kind} · {_when(j.finished)} · {j.id[:8]}") for j in jobs for m in [output_media(j)] if m]


def settings_of(job) -> dict:
    """What made this output: the sidecar settings JSON when there is one (it records the resolved settings,
    seed and notices), else the stored request."""
    side = (job.result or {}).get("settings")
    if isinstance(side, str) and side.endswith(".json") and Path(side).is_file():
        try:
            return json.loads(Path(side).read_text())
        except (OSError, ValueError):
            pass
    return {"kind": job.kind, "request": job.request}


def reuse_request(ctx, job_id: str, owner: str) -> dict:
    """The request of one of ``owner``'s jobs, as a dict its tab's request type accepts again
    (for ``generate``: ``GenerateRequest.from_dict(reuse_request(...))``). JobNotFound for others' jobs."""
    job = ctx.jobs.get(job_id, owner)
    request = dict(job.request or {})
    if job.kind == "generate":
        from pipelines.requests import GenerateRequest

        request = GenerateRequest.from_dict(request).to_dict()  # normalised, and checks it still parses
    return request


def history_view(ctx, owner: str, selected: str | None, last_sig: str | None, limit: int = 100):
    """(jobs table, gallery or gr.skip(), gallery job ids, signature, running-job progress html, choices)."""
    jobs = ctx.jobs.list(owner, limit=limit)
    rows = job_rows(jobs)
    items = gallery_items(jobs)
    ids = [j.id for j in jobs if output_media(j)]
    sig = "|".join(ids)
    gallery = items if sig != last_sig else gr.skip()
    running = [j for j in jobs if j.active]
    bars = "".join(f'<div class="hist-run" data-job="{j.id}"><code>{j.id[:8]}</code> {j.kind}'
                   f'{progress_html(j.progress, j.message or "", j.status.value)}</div>' for j in running)
    choices = [(f"{j.id[:8]} · {j.kind} · {j.status.value} · {_when(j.created)}", j.id) for j in jobs]
    value = selected if selected in {j.id for j in jobs} else (jobs[0].id if jobs else None)
    return rows, gallery, ids, sig, bars or "<i>no running jobs</i>", gr.update(choices=choices, value=value)


TAB_TITLES = {"generate": "Generate", "union": "Union control", "tracks": "Motion tracks"}


def reuse_tab(kind: str, request: dict) -> str | None:
    """The tab a job came from, read from its request: a Motion-Track control -> Motion tracks; any other control
    (Union control, and the Mask painter's runs, which Union holds whole: control, mask, LoRA) -> Union control;
    no control -> Generate. Other kinds (training, preprocessing) have no generator tab."""
    if kind != "generate":
        return None
    controls = request.get("controls") or []
    if any((c or {}).get("kind") == "motion_track" for c in controls):
        return "tracks"
    return "union" if controls else "generate"


def resumable(job) -> bool:
    """A training (or other resumable job) that stopped without finishing: it can continue where it was."""
    return bool(job.resumable) and job.status.value in ("interrupted", "failed", "cancelled")


def detail_view(ctx, owner: str, job_id: str | None):
    """(video, settings JSON, status markdown, resume button update) for one job."""
    if not job_id:
        return None, None, "", gr.update(visible=False)
    job = ctx.jobs.get(job_id, owner)
    media = output_media(job)
    video = media if media and media.lower().endswith(VIDEO_EXT) else None
    note = f"**{job.status.value}** · {job.kind} · `{job.id}`"
    if job.error:
        note += f"\n\n{job.error}"
    if resumable(job):
        note += "\n\nThis run stopped before it finished: **Resume** continues it from its last checkpoint."
    return video, settings_of(job), note, gr.update(visible=resumable(job))


def build(ctx):
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id="hist-refresh")
    running = gr.HTML("<i>no running jobs</i>", elem_id="hist-running")
    table = gr.Dataframe(headers=["id", "kind", "status", "progress", "message", "created", "time", "settings"],
                         value=[], interactive=False, wrap=True, label="Your jobs (progress in %)",
                         elem_id="hist-table",
                         column_widths=["13%", "8%", "8%", "8%", "22%", "12%", "7%", "22%"])
    gallery = gr.Gallery(label="Your outputs", columns=4, height=320, elem_id="hist-gallery", allow_preview=True)
    with gr.Row():
        with gr.Column(scale=2):
            pick = gr.Dropdown(choices=[], label="Job", elem_id="hist-pick")
            video = gr.Video(label="Output", interactive=False, elem_id="hist-video")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="hist-status")
            settings = gr.JSON(label="Settings", elem_id="hist-settings")
            with gr.Row():
                reuse = gr.Button("Reuse settings", elem_id="hist-reuse")
                resume = gr.Button("Resume", variant="primary", visible=False, elem_id="hist-resume")
            from studio.result_actions import add_result_actions

            add_result_actions(ctx, pick, "hist")  # A/B, sweep, upscale of the picked generation
            request_json = gr.Code(label="Request (paste into the API, or reuse in its tab)", language="json",
                                   elem_id="hist-request")
    ids = gr.State([])
    sig = gr.State(None)
    timer = gr.Timer(POLL_S)

    def poll(selected, last_sig, request: gr.Request):
        return history_view(ctx, ctx.owner(request), selected, last_sig)

    outs = [table, gallery, ids, sig, running, pick]
    timer.tick(guard(poll), [pick, sig], outs, api_visibility="private", show_progress="hidden")
    def force(selected, request: gr.Request):
        return history_view(ctx, ctx.owner(request), selected, None)

    refresh.click(guard(force), [pick], outs, api_visibility="private")

    def show(job_id, request: gr.Request):
        return detail_view(ctx, ctx.owner(request), job_id)

    pick.change(guard(show), pick, [video, settings, status, resume], api_visibility="private")

    def do_resume(job_id, request: gr.Request):
        if not job_id:
            return gr.skip(), gr.skip()
        new = ctx.jobs.resume(job_id, ctx.owner(request))
        return (f"Resumed as `{new}`: it is in the list above with its progress.", gr.update(visible=False))

    resume.click(guard(do_resume), pick, [status, resume], api_visibility="private")

    def select(evt: gr.SelectData, id_list):
        i = evt.index if isinstance(evt.index, int) else (evt.index or [0])[0]
        return id_list[i] if 0 <= i < len(id_list) else gr.skip()

    gallery.select(guard(select), ids, pick, api_visibility="private")

    # "Reuse settings" opens the tab the job came from with every field of it filled (controls, LoRAs, mask,
    # tracks included): each tab's build() returns {"reuse": {"outputs": [...], "apply": fn(request) -> list}}.
    tabs = ctx.shared.get("tabs")
    reusers = {name: out["reuse"] for name, out in ctx.tabs
               if isinstance(out, dict) and isinstance(out.get("reuse"), dict)}
    gen = dict(ctx.tabs).get("generate") or {}
    if "generate" not in reusers and isinstance(gen, dict) and gen.get("request_inputs"):
        reusers["generate"] = {"outputs": gen["request_inputs"], "apply": gen["apply_request"]}
    targets = [t for t in reusers]
    outputs = [request_json, status] + ([tabs] if tabs is not None else [])
    for t in targets:
        outputs += list(reusers[t]["outputs"])

    def do_reuse(job_id, request: gr.Request):
        n_fixed = 3 if tabs is not None else 2
        if not job_id:
            return [gr.skip()] * (len(outputs))
        job = ctx.jobs.get(job_id, ctx.owner(request))
        req = reuse_request(ctx, job_id, ctx.owner(request))
        target = reuse_tab(job.kind, req)
        if target not in reusers:
            vals = [json.dumps(req, indent=2), f"A **{job.kind}** job: its request is below (use it with the API)."]
            return vals + ([gr.skip()] if tabs is not None else []) + [gr.skip()] * (len(outputs) - n_fixed)
        title = TAB_TITLES.get(target, target)
        vals = [json.dumps(req, indent=2), f"Settings of `{job_id[:8]}` are back in **{title}**: press Generate there."]
        if tabs is not None:
            vals.append(gr.Tabs(selected=target))
        for t in targets:
            n = len(reusers[t]["outputs"])
            vals += list(reusers[t]["apply"](req)) if t == target else [gr.skip()] * n
        return vals

    reuse.click(panel_guard(do_reuse, len(outputs), 1), pick, outputs, api_visibility="private")
    return {"table": table, "gallery": gallery, "pick": pick, "reuse": reuse, "request_json": request_json}
