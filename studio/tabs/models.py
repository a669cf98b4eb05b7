"""Models tab: what is on this machine, per component; the official files and what each is for; getting them
(a plan first, then a resumable download: the "download" job kind, studio/kinds/download.py); the predicted VRAM
of each memory tier. Layout and events only."""
from __future__ import annotations

import gradio as gr

from pipelines.models.memory import estimate
from pipelines.models.registry import BY_KEY, VARIANTS, catalog_status, discover
from pipelines.requests import MemoryTier
from studio.kinds.download import KIND as DOWNLOAD, download_request
from studio.ui import guard, progress_html

TITLE = "Models"


# ---------------------------------------------------------------------------------------------- tables

def status_rows(models_dir) -> list[list]:
    rows = []
    for spec in discover(models_dir):
        for c in spec.components:
            rows.append([spec.name, spec.kind.value, "ready" if spec.ready else "missing files", c.name, c.expected,
                         "found" if c.found else "MISSING", c.path or ""])
    return rows


def catalog_rows(models_dir) -> list[list]:
    return [[f["file"], f["repo"], f["approx_gb"], "here" if f["found"] else "—", f["purpose"]]
            for f in catalog_status(models_dir)]


def plan_rows(plan: dict | None) -> list[list]:
    if not plan:
        return []
    return [[f["repo"], f["file"], round(f["size"] / 1e9, 2), f["dest"],
             "done" if f["complete"] else (f"{f['present'] / max(f['size'], 1):.0%} there" if f["present"]
                                           else "to download")] for f in plan["files"]]


def tier_table(width: int, height: int, frames: int, refs: int) -> list[list]:
    return [[t.value, round(e.peak_gb, 1), round(e.weights_gb, 1), round(e.activations_gb, 2)]
            for t in MemoryTier if t != MemoryTier.AUTO
            for e in [estimate(t, int(width), int(height), int(frames), refs=int(refs), downscale=1)]]


# ---------------------------------------------------------------------------------------------- layout

def build(ctx):
    models_dir = ctx.models_dir
    gr.Markdown(f"Models folder: `{models_dir or '(none: pass --models-dir or set ICLORA_MODELS_DIR)'}`")
    table = gr.Dataframe(headers=["model", "kind", "status", "component", "expected", "found", "path"],
                         value=status_rows(models_dir), interactive=False, wrap=True, label="Model status",
                         column_widths=["15%", "11%", "11%", "11%", "30%", "8%", "14%"], elem_id="models-table")
    files = gr.Dataframe(headers=["file", "repository", "~GB", "here", "what it is for"],
                         value=catalog_rows(models_dir), interactive=False, wrap=True,
                         label="Official LTX-2.3 files (Lightricks' MODELS-LTX-2.3.md)",
                         column_widths=["30%", "16%", "7%", "7%", "40%"], elem_id="models-files")
    refresh = gr.Button("Rescan models folder", size="sm")
    refresh.click(guard(lambda: (status_rows(models_dir), catalog_rows(models_dir))), outputs=[table, files],
                  api_visibility="private")

    with gr.Accordion("Get the weights (Hugging Face Hub)", open=not any(f["found"] for f in
                                                                           catalog_status(models_dir))):
        gr.Markdown("Downloads go into the models folder and continue where they stopped. The Gemma 3 text encoder "
                    "is gated on the Hub: accept Google's licence on its page while logged in, then paste a token "
                    "(read access) here, or set `HF_TOKEN` / run `hf auth login` on the server. "
                    + ("" if models_dir else "**Start the studio with `--models-dir` to download.**"))
        with gr.Row():
            variant = gr.Radio(list(VARIANTS), value="distilled", label="set",
                               info="; ".join(f"{k}: {', '.join(v)}" for k, v in VARIANTS.items()))
            extra = gr.CheckboxGroup([k for k in BY_KEY], label="also get", value=[])
            token = gr.Textbox(label="Hugging Face token (for the gated Gemma repo)", type="password",
                               placeholder="hf_... (optional when HF_TOKEN or a stored login exists)")
        with gr.Row():
            plan_btn = gr.Button("Show plan", size="sm")
            go = gr.Button("Download", variant="primary", interactive=bool(models_dir))
            cancel = gr.Button("Cancel", size="sm")
        plan_table = gr.Dataframe(headers=["repository", "file", "GB", "destination", "status"], value=[],
                                  interactive=False, wrap=True, label="Plan")
        progress = gr.HTML(progress_html(0, "no download yet", "idle"), elem_id="download-progress")
        note = gr.Markdown(elem_id="download-status")
    job_id = ctx.job_state("download")
    timer = gr.Timer(1.0)

    def submit(plan_only: bool):
        def handler(v, x, t, request: gr.Request):
            jid = ctx.submit(ctx.owner(request), DOWNLOAD, download_request(v, x, t, plan_only))
            return jid, progress_html(0, "queued", "queued"), ""
        return guard(handler)

    plan_btn.click(submit(True), [variant, extra, token], [job_id, progress, token], api_visibility="private")
    go.click(submit(False), [variant, extra, token], [job_id, progress, token], api_visibility="private")

    def view(jid, request: gr.Request):
        from studio.jobs import JobNotFound

        if not jid:
            return progress_html(0, "no download yet", "idle"), gr.skip(), ""
        try:
            job = ctx.jobs.get(jid, ctx.owner(request))
        except JobNotFound:
            return progress_html(0, "job not found", "idle"), gr.skip(), ""
        plan = (job.result or {}).get("plan")
        text = f"**{job.status.value}:** {job.error}" if job.error else ""
        return (progress_html(job.progress, job.message or "", job.status.value),
                plan_rows(plan) if plan else gr.skip(), text)

    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return view(jid, request)

    timer.tick(guard(view), job_id, [progress, plan_table, note], api_visibility="private", show_progress="hidden")
    cancel.click(guard(do_cancel), job_id, [progress, plan_table, note], api_visibility="private")

    gr.Markdown("### Memory tiers (predicted peak VRAM for real LTX-2.3, 22B)")
    with gr.Row():
        w = gr.Number(768, label="width", precision=0)
        h = gr.Number(512, label="height", precision=0)
        f = gr.Number(121, label="frames", precision=0)
        r = gr.Number(1, label="references", precision=0)
    tiers = gr.Dataframe(headers=["tier", "peak GB", "weights GB", "activations GB"], value=tier_table(768, 512, 121, 1),
                         interactive=False, elem_id="models-tiers")
    gr.Markdown("**peak GB**: the most GPU memory the run is predicted to hold at once: the weights kept on the GPU "
                "in that tier plus the largest activation set (the transformer at this many tokens, or the VAE "
                "decode) plus a fixed CUDA margin, or the text encoder's visit if that is larger. **weights GB**: the "
                "weights resident on the GPU (fp8 halves them; offload tiers keep most in CPU memory). "
                "**activations GB**: the working memory of one step at this size. Pick a tier whose peak fits your "
                "GPU's free memory; `auto` does that at run time.", elem_classes=["demo-note"])
    for comp in (w, h, f, r):
        comp.change(guard(tier_table), [w, h, f, r], tiers, api_visibility="private")
