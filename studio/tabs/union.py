"""Union control tab: a clip in, a control video (canny / depth / pose / your own) made from it, then a new video
generated with the Union IC-LoRA following that structure.

Two jobs (studio.kinds): "preprocess" (light lane: conform the clip, run the preprocessor, write the control
mp4 and small preview frames for the scrubber) and "generate" (gpu lane). The preprocess wait is a short
generator that polls the job; the generation is polled by a gr.Timer with its id in gr.BrowserState, like the
Generate tab, so a reloaded page picks it up again. No tensor math here: pipelines.control does the work.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import gradio as gr
import numpy as np

from pipelines.errors import UserError
from pipelines.requests import (OFFICIAL_NEGATIVE_PROMPT, ControlInput, ControlKind, GenerateRequest, LoraSpec,
                                MemoryTier, Schedule)
from pipelines.video_io import IMAGE_EXTS
from studio.kinds import wait_job  # noqa: F401  (re-exported: tests and the API wait on preprocess jobs)
from studio.kinds.preprocess import submit_preprocess
from studio.sampling import SamplingExtras
from studio.ui import error_md, guard, panel_guard, progress_html, refused

TITLE = "Union control"
KINDS = ["canny", "depth", "pose", "passthrough"]
LORA_HEADERS = ["LoRA file (name in models/loras or a path)", "weight"]


# ---------------------------------------------------------------------------------------------- pure helpers

def lora_files(ctx) -> list[str]:
    from pipelines.models.registry import LORA_DIR

    if not ctx.models_dir:
        return []
    return sorted(str(p) for p in (Path(ctx.models_dir) / LORA_DIR).glob("*.safetensors"))


def resolve_lora(ctx, name: str) -> str:
    """A LoRA given by file name (looked up in <models_dir>/loras) or by path; UserError when missing."""
    from pipelines.models.registry import LORA_DIR

    name = str(name).strip()
    p = Path(name).expanduser()
    if p.is_file():
        return str(p)
    if ctx.models_dir:
        q = Path(ctx.models_dir) / LORA_DIR / name
        for cand in (q, q.with_suffix(".safetensors")):
            if cand.is_file():
                return str(cand)
    where = f"{Path(ctx.models_dir) / LORA_DIR}" if ctx.models_dir else "no models folder"
    raise UserError(f"LoRA {name!r} not found (looked for it as a path and in {where})")


def lora_stack(ctx, table) -> list[LoraSpec]:
    """The extra LoRA rows [[file, weight], ...] (a dataframe value) as LoraSpecs; empty rows are skipped."""
    rows = []
    if table is None:
        return []
    values = table.values.tolist() if hasattr(table, "values") else list(table)
    for i, row in enumerate(values):
        if not row or not str(row[0] or "").strip():
            continue
        try:
            w = float(row[1]) if len(row) > 1 and str(row[1]).strip() != "" else 1.0
        except (TypeError, ValueError):
            raise UserError(f"LoRA row {i + 1}: weight {row[1]!r} is not a number") from None
        rows.append(LoraSpec(path=resolve_lora(ctx, row[0]), weight=w))
    return rows


def status_markdown(models_dir) -> str:
    """One line per control backend (a list, not a table: the notes hold long paths that a narrow table column
    would break letter by letter)."""
    from pipelines.control import registry_status

    lines = []
    for s in registry_status(models_dir):
        if s["ready"]:
            lines.append(f"- **{s['kind']}**: ✓ ready")
            continue
        if s["status"] == "missing package":
            note = f"pip install {' '.join(s['pip'] or s['missing_packages'])}"
        else:
            where = ", ".join(f"`{p}`" for p in s["searched"]) or "a models folder (start with --models-dir)"
            names = ", ".join(f"`{w['name']}`" for w in s["weights"])
            note = f"put {names} in {where} (from `{s['source']}`)"
        lines.append(f"- **{s['kind']}**: ⚠ {s['status']}: {note}")
    return "\n".join(lines)


def kind_notice(models_dir, kind: str) -> str:
    """One line under the control choice: empty when ready, else what is missing and where it goes."""
    from pipelines.control import registry_status

    for s in registry_status(models_dir):
        if s["kind"] == kind and not s["ready"]:
            if s["status"] == "missing package":
                return f"⚠️ **{kind}: missing package** `{', '.join(s['missing_packages'])}`: pip install {' '.join(s['pip'])}"
            where = ", ".join(f"`{p}`" for p in s["searched"]) or "a models folder (start with --models-dir)"
            names = ", ".join(w["name"] for w in s["weights"])
            return (f"⚠️ **{kind}: missing weights.** Put {names} in {where}"
                    + (f" or point `{s['env_var']}` at them" if s["env_var"] else "") + f" (from `{s['source']}`).")
    return ""


def scrub_frames(result: dict | None, index) -> tuple:
    """(input frame, control frame) at `index` from a finished preprocess result."""
    if not result or "scrub_input" not in result:
        return gr.skip(), gr.skip()
    a = np.load(result["scrub_input"], mmap_mode="r")
    b = np.load(result["scrub_control"], mmap_mode="r")
    i = int(min(max(int(index or 0), 0), len(a) - 1))
    return np.array(a[i]), np.array(b[i])


def cleanup_options(kind: str, smooth, denoise, deflicker, fps_mode, thickness, contrast) -> dict | None:
    """The clean-up fields as pipelines.control.cleanup options (None when every step is off); the edge steps only
    for canny / passthrough controls."""
    opts = {"temporal_smooth": float(smooth or 0), "denoise": int(denoise or 0), "deflicker": bool(deflicker),
            "fps_mode": fps_mode or "nearest"}
    if kind in ("canny", "passthrough"):
        opts.update(edge_thickness=int(thickness or 0), edge_contrast=float(contrast or 1.0))
    off = {"temporal_smooth": 0.0, "denoise": 0, "deflicker": False, "fps_mode": "nearest", "edge_thickness": 0,
           "edge_contrast": 1.0}
    return None if all(opts[k] == off[k] for k in opts) else opts


def raw_frame_view(result: dict | None, index):
    """The control frame before its clean-up at `index` (hidden when the control had none)."""
    if not result or not result.get("scrub_control_raw"):
        return gr.update(value=None, visible=False)
    a = np.load(result["scrub_control_raw"], mmap_mode="r")
    i = int(min(max(int(index or 0), 0), len(a) - 1))
    return gr.update(value=np.array(a[i]), visible=True)


# ---------------------------------------------------------------------------------------------- handlers

def build_request(ctx, *, prompt, negative, control_path, control_kind, control_strength, ic_choice, ic_upload,
                  ic_strength, lora_table, attention, use_mask, mask_path, image, image_strength, model, schedule,
                  steps, cfg, stages, tier, seed, width, height, frames, fps, extra: dict | None = None) -> GenerateRequest:
    if not control_path:
        raise UserError("make the control video first ('Make control')")
    loras: list[LoraSpec] = []
    ic = ic_upload or (ic_choice if ic_choice and ic_choice != "(none)" else None)
    if ic:
        loras.append(LoraSpec(path=resolve_lora(ctx, ic), weight=float(ic_strength)))
    loras += lora_stack(ctx, lora_table)
    sched = Schedule(schedule)
    kind = control_kind if control_kind in {k.value for k in ControlKind} else None
    return GenerateRequest(
        prompt=prompt or "", negative_prompt=negative or "", model=model, width=int(width), height=int(height),
        frames=int(frames), fps=float(fps), seed=int(seed), schedule=sched,
        steps=int(steps) if sched == Schedule.FULL else 8,
        guidance_scale=float(cfg) if sched == Schedule.FULL else 1.0, stages=int(stages), tier=MemoryTier(tier),
        image=image or None, image_strength=float(image_strength),
        controls=[ControlInput(path=str(control_path), strength=float(control_strength),
                               kind=ControlKind(kind) if kind else None)],
        mask=(mask_path if use_mask and mask_path else None), attention_strength=float(attention), loras=loras,
        **(extra or {}),
    ).validate()


def ic_note(path: str | None) -> str:
    """One line under the IC-LoRA choice: what the file is, and plainly what happens without one."""
    from studio.handoff import NONE, lora_label

    if not path or path == NONE:
        return ("⚠️ **No IC-LoRA: the control is ignored.** The base model was never trained on control videos, so "
                "the video will not follow it. Pick the Union IC-LoRA (or its demo) to follow the structure.")
    label = lora_label(path)
    if label.startswith("demo"):
        return (f"Using **{html.escape(label)}**: a demo file built for the tiny test model so the whole path runs; "
                "put a real IC-LoRA in models/loras to use it instead.")
    return f"Using **{html.escape(label)}**."


# ---------------------------------------------------------------------------------------------- the tab

def build(ctx):
    from pipelines.presets import list_presets, load_preset, sample_clip_path
    from studio import handoff
    from studio.tabs import generate as generate_tab
    from studio.tabs.generate import job_view, model_choices

    choices = model_choices(ctx)
    default_model = ctx.config.model if ctx.config.model in choices else (choices[0] if choices else "tiny")
    tiny = default_model == "tiny"
    loras = lora_files(ctx)
    ic_options, default_ic = handoff.lora_choices(ctx, "union")
    ic_options = [(handoff.NONE, handoff.NONE)] + ic_options
    default_ic = default_ic or handoff.NONE
    size = handoff.default_size(ctx)
    sample = sample_clip_path()

    gr.Markdown("Make a control video from your clip (edges, depth, pose, or your own), check it frame by frame, "
                "then generate a new video that follows its structure with the Union IC-LoRA.")
    with gr.Row():
        preset = gr.Dropdown(["(none)"] + list_presets(), value="(none)", label="Preset", scale=1,
                             elem_id="union-preset")
        preset_note = gr.Markdown(elem_id="union-preset-note")
    # ---- 1. clip and control
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            clip = gr.Video(label="Clip", sources=["upload"], elem_id="union-clip", height=220)
            sample_btn = gr.Button("Use sample clip", size="sm", elem_id="union-sample", visible=sample is not None)
            size_md = gr.Markdown(handoff.size_note(handoff.downscale_of(default_ic)) +
                                  " The control video is made at this size.", elem_id="union-size-note")
            with gr.Row():
                width = gr.Number(size.width, label="Width", precision=0, minimum=32, step=32,
                                  elem_id="union-width", min_width=100)
                height = gr.Number(size.height, label="Height", precision=0, minimum=32, step=32,
                                   elem_id="union-height", min_width=100)
            with gr.Row():
                frames = gr.Number(size.frames, label="Frames (8n+1)", precision=0, minimum=1, step=8,
                                   elem_id="union-frames", min_width=100)
                fps = gr.Number(size.fps, label="FPS", minimum=1, maximum=120, min_width=100)
            kind = gr.Radio(KINDS, value="canny", label="Control", elem_id="union-kind")
            kind_note = gr.Markdown(kind_notice(ctx.models_dir, "canny"), elem_id="union-kind-note")
            with gr.Column(visible=True) as canny_row:  # stacked: three sliders do not fit beside each other
                with gr.Row():
                    low = gr.Slider(0, 255, value=92, step=1, label="Canny low", min_width=120)
                    high = gr.Slider(0, 255, value=200, step=1, label="Canny high", min_width=120)
                blur = gr.Slider(0, 5, value=0, step=0.5, label="Pre-blur (px)")
            invert = gr.Checkbox(False, label="Invert (near = white ↔ far = white)", visible=False)
            with gr.Accordion("Clean up the control (flicker, noise, edges, fps)", open=False):
                with gr.Row():
                    cu_smooth = gr.Slider(0, 4, value=0, step=0.25, label="Temporal smoothing (sigma, frames)",
                                          elem_id="union-cu-smooth", min_width=160)
                    cu_denoise = gr.Slider(0, 3, value=0, step=1, label="Denoise (median radius, px)",
                                           min_width=160)
                with gr.Row():
                    cu_deflicker = gr.Checkbox(False, label="Deflicker (even out frame brightness)")
                    cu_fps = gr.Radio([("nearest frame", "nearest"), ("blend frames", "blend")], value="nearest",
                                      label="FPS match", min_width=160)
                with gr.Row(visible=True) as cu_edges:
                    cu_thick = gr.Slider(0, 5, value=0, step=1, label="Edge thickness (px)", min_width=160)
                    cu_contrast = gr.Slider(1, 4, value=1, step=0.25, label="Edge contrast", min_width=160)
                gr.Markdown("Each step is measured (frame-to-frame change before → after) and recorded in the "
                            "control's report and in the output's metadata.", elem_classes=["demo-note"])
            with gr.Accordion("Control backends on this machine", open=False):
                gr.Markdown(status_markdown(ctx.models_dir), elem_classes=["backends-table"])
        with gr.Column(scale=2):
            with gr.Row():
                in_frame = gr.Image(label="Input frame", interactive=False, format="png", height=220,
                                    elem_id="union-in-frame")
                ctl_frame = gr.Image(label="Control frame", interactive=False, format="png", height=220,
                                     elem_id="union-ctl-frame")
                raw_frame = gr.Image(label="Control before clean-up", interactive=False, format="png", height=220,
                                     elem_id="union-raw-frame", visible=False)
            scrub = gr.Slider(0, 8, value=0, step=1, label="Frame", elem_id="union-scrub")
            with gr.Row():
                make = gr.Button("Make control", variant="secondary", elem_id="union-make")
            pre_progress = gr.HTML(progress_html(0, "no control yet", "idle"), elem_id="union-pre-progress")
            pre_report = gr.Markdown(elem_id="union-pre-report")
            control_video = gr.Video(label="Control video", interactive=False, elem_id="union-control-video",
                                     height=180)
    # ---- 2. generation settings
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="union-prompt",
                                value="a cinematic shot, soft evening light, detailed textures")
            enhance_slot = gr.Column()  # the "Enhance prompt" button (studio.enhance_ui), wired below
            negative = gr.Textbox(label="Negative prompt (Full schedule)", lines=1, max_lines=2,
                                  value=OFFICIAL_NEGATIVE_PROMPT)
            with gr.Row(equal_height=True):
                ic_choice = gr.Dropdown(ic_options, value=default_ic, label="IC-LoRA (models/loras, then demos)",
                                        scale=3, elem_id="union-ic")
                ic_strength = gr.Slider(0, 2, value=1.0, step=0.05, label="IC-LoRA strength", scale=2)
            with gr.Row(equal_height=False):
                ic_note_md = gr.Markdown(ic_note(default_ic), elem_id="union-ic-note", elem_classes=["demo-note"])
                ic_upload = gr.UploadButton("Upload an IC-LoRA (.safetensors)", file_types=[".safetensors"],
                                            size="sm", elem_id="union-ic-upload", scale=0, min_width=240)
            with gr.Row():
                control_strength = gr.Slider(0, 1, value=1.0, step=0.05, label="Control strength")
                attention = gr.Slider(0, 1, value=1.0, step=0.05, label="Attention strength")
            with gr.Row():
                use_mask = gr.Checkbox(False, label="Use painter mask", interactive=True, elem_id="union-use-mask",
                                       scale=1)
                mask_note = gr.Markdown(handoff.mask_text(None), elem_id="union-mask-note")
            with gr.Accordion("Extra LoRAs (style, distilled, …)", open=False):
                lora_table = gr.Dataframe(headers=LORA_HEADERS, datatype=["str", "number"], value=[["", 1.0]],
                                          row_count=(1, "dynamic"), column_count=(2, "fixed"), interactive=True,
                                          label="LoRA stack")
                if loras:
                    gr.Markdown("Available: " + ", ".join(f"`{Path(p).name}`" for p in loras))
            with gr.Accordion("First frame image (optional)", open=False):
                image = gr.Image(label="First frame", type="filepath", sources=["upload"], height=160)
                image_strength = gr.Slider(0, 1, value=1.0, step=0.05, label="First-frame strength")
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    model = gr.Dropdown(choices or ["tiny"], value=default_model, label="Model")
                    tier = gr.Dropdown([t.value for t in MemoryTier], value="auto", label="Memory tier")
                    schedule = gr.Radio([s.value for s in Schedule], value="distilled", label="Schedule")
                    stages = gr.Radio([1, 2], value=1, label="Stages")
                with gr.Row():
                    steps = gr.Slider(1, 60, value=30, step=1, label="Steps (full schedule)")
                    cfg = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="CFG (full schedule)")
                    seed = gr.Number(42, label="Seed", precision=0, minimum=0, elem_id="union-seed")
            extras = SamplingExtras(prefix="union")  # guidance, soundtrack, keyframes (one builder for every tab)
            vram_fn = getattr(generate_tab, "vram_text", None)  # predicted VRAM (one reference at D=2)
            vram = gr.Markdown(vram_fn(default_model, "auto", width.value, height.value, frames.value, refs=1,
                                       downscale=2) if vram_fn else "", elem_id="union-vram")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="union-go")
                cancel = gr.Button("Cancel", elem_id="union-cancel")
        with gr.Column(scale=2):
            progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="union-progress")
            status = gr.Markdown(elem_id="union-status")
            preview = gr.Image(label="Latent preview", interactive=False, height=120, format="png")
            with gr.Row():
                video = gr.Video(label="Result", interactive=False, elem_id="union-video")
                used_control = gr.Video(label="Its control", interactive=False, elem_id="union-used-control")
            settings = gr.File(label="Settings (JSON)", interactive=False, elem_id="union-settings", height=80,
                               visible=False)  # shown with a result
            send_clip = gr.Button("Use the result as the studio clip (Mask painter, Motion tracks)", size="sm",
                                  elem_id="union-send-clip")
            sent = gr.Markdown(elem_id="union-sent")
            actions_slot = gr.Column()  # A/B, sweep, upscale of the result (studio.result_actions)

    pre_result = gr.State(None)  # the finished preprocess job's result dict
    job_id = ctx.job_state("union")
    shown = gr.State(None)  # job id whose result is already on screen (the timer then leaves it alone)
    timer = gr.Timer(1.0)
    shared = ctx.shared
    clip_state, mask_state, lora_state = shared.get("clip"), shared.get("mask"), shared.get("lora")
    priv = {"api_visibility": "private"}

    if vram_fn:
        def vram_update(m, t, w, h, n):
            return vram_fn(m, t, w, h, n, refs=1, downscale=2)

        for comp in (model, tier, width, height, frames):
            comp.change(guard(vram_update), [model, tier, width, height, frames], vram, show_progress="hidden", **priv)

    # ---- presets
    form = [prompt, negative, kind, low, high, blur, invert, control_strength, ic_choice, ic_strength, attention,
            width, height, frames, fps, schedule, steps, cfg, stages, tier, seed]

    def apply_preset(name):
        if not name or name == "(none)":
            return [gr.skip()] * len(form) + [""]
        p = load_preset(name)
        r = p.request
        o = p.control_options
        ic = p.find_ic_lora(loras)
        keep_size = tiny
        vals = [r.prompt, r.negative_prompt, p.control_kind, o.get("low_threshold", 92), o.get("high_threshold", 200),
                o.get("blur_sigma", 0.0), bool(o.get("invert", False)), p.control_strength,
                ic if ic else gr.skip(), p.ic_lora_strength, r.attention_strength,
                gr.skip() if keep_size else r.width, gr.skip() if keep_size else r.height,
                gr.skip() if keep_size else r.frames, r.fps, r.schedule.value, r.steps, r.guidance_scale, r.stages,
                r.tier.value, r.seed]
        note = f"**{p.title}**: {p.description}"
        if keep_size:
            note += (f" · tiny model: kept the small test size (preset: {r.width}x{r.height}, {r.frames} frames)")
        if p.ic_lora_match and not ic:
            note += (f" · no file matching `{p.ic_lora_match}` in models/loras: "
                     + ("kept the demo IC-LoRA" if tiny else "upload the IC-LoRA or pick one"))
        return vals + [note]

    preset.change(guard(apply_preset), preset, form + [preset_note], **priv)

    # ---- IC-LoRA choice: its D sets the size rule shown
    def on_ic(path):
        d = handoff.downscale_of(path)
        return ic_note(path), handoff.size_note(d) + " The control video is made at this size."

    ic_choice.change(guard(on_ic), ic_choice, [ic_note_md, size_md], show_progress="hidden", **priv)

    def on_ic_upload(path):
        from pipelines.models.lora import precheck_loras

        precheck_loras([path])  # a broken or NaN file is refused here, by name
        return gr.update(choices=handoff.with_choice(ic_options, path), value=path), ic_note(path)

    ic_upload.upload(panel_guard(on_ic_upload, 2, 1), ic_upload, [ic_choice, ic_note_md], **priv)

    # ---- clip and control
    sample_btn.click(lambda: str(sample) if sample else None, None, clip, **priv)

    def on_kind(k):
        return (kind_notice(ctx.models_dir, k), gr.update(visible=k == "canny"),
                gr.update(visible=k in ("depth", "passthrough")))

    kind.change(guard(on_kind), kind, [kind_note, canny_row, invert], **priv)
    kind.change(lambda k: gr.update(visible=k in ("canny", "passthrough")), kind, cu_edges, **priv)

    def make_control(clip_path, k, lo, hi, bl, inv, w, h, n, f, ic, sm, dn, dfl, fm, th, ct, request: gr.Request):
        owner = ctx.owner(request)
        jid = submit_preprocess(ctx, clip_path, k, lo, hi, bl, inv, w, h, n, f, request,
                                cleanup=cleanup_options(k, sm, dn, dfl, fm, th, ct))
        yield (progress_html(0, "waiting for its turn", "queued"),) + (gr.skip(),) * 7
        deadline = time.monotonic() + 600
        while True:
            job = ctx.jobs.get(jid, owner)
            if job.status.value == "done":
                break
            if job.status.terminal:  # failed / cancelled: the reason stays on the line, "queued" is gone
                yield (progress_html(job.progress, job.error or job.status.value, job.status.value),) + \
                    (gr.skip(),) * 7
                return
            if time.monotonic() > deadline:
                raise UserError("preprocessing is taking long; it keeps running, press 'Make control' again later")
            yield (progress_html(job.progress, job.message or "waiting for its turn", job.status.value),) + \
                (gr.skip(),) * 7
            time.sleep(0.3)
        res = job.result
        a, b = scrub_frames(res, 0)
        studio_clip = {"clip": res["input"], "control": res["control"], "kind": k, "width": res["width"],
                       "height": res["height"], "frames": res["frames"], "fps": res["fps"],
                       "downscale": handoff.downscale_of(ic), "source": TITLE}
        yield (progress_html(1.0, "control ready (the Mask painter and Motion tracks can use it now)", "done"), res,
               f"{res['report']}", handoff.playable(res["control"]), a, b,
               gr.update(maximum=max(1, res["frames"] - 1), value=0),
               studio_clip)

    make_outputs = [pre_progress, pre_result, pre_report, control_video, in_frame, ctl_frame, scrub,
                    clip_state if clip_state is not None else gr.State()]
    make.click(panel_guard(make_control, len(make_outputs), 0, refused),
               [clip, kind, low, high, blur, invert, width, height, frames, fps, ic_choice, cu_smooth, cu_denoise,
                cu_deflicker, cu_fps, cu_thick, cu_contrast], make_outputs, **priv)
    scrub.change(guard(scrub_frames), [pre_result, scrub], [in_frame, ctl_frame], show_progress="hidden", **priv)
    # the control before its clean-up, on the same scrubber (shown only when a clean-up ran)
    pre_result.change(guard(raw_frame_view), [pre_result, scrub], raw_frame, show_progress="hidden", **priv)
    scrub.change(guard(raw_frame_view), [pre_result, scrub], raw_frame, show_progress="hidden", **priv)

    # ---- the painter's mask: checked against this tab's size and IC-LoRA when it arrives
    def on_mask(m, w, h, n, ic):
        if not m:
            return handoff.mask_text(None), False
        try:
            handoff.check_mask_for(m, w, h, n, handoff.downscale_of(ic))
        except UserError as exc:
            return handoff.mask_text(m) + "\n\n" + error_md(str(exc)), False
        return handoff.mask_text(m), True

    if mask_state is not None:
        mask_state.change(guard(on_mask), [mask_state, width, height, frames, ic_choice], [mask_note, use_mask],
                          **priv)

    # ---- generate
    def submit(request: gr.Request, prompt_, negative_, res, k, cs, icc, ics, table, att, um, mask, img, imgs, model_,
               sched_, steps_, cfg_, stages_, tier_, seed_, w, h, n, f, *x):
        ic = icc if icc and icc != handoff.NONE else None
        if um:
            if not mask:
                raise UserError("'Use painter mask' is on but no mask came from the Mask painter yet")
            handoff.check_mask_for(mask, w, h, n, handoff.downscale_of(ic))
        req = build_request(ctx, prompt=prompt_, negative=negative_, control_path=(res or {}).get("control"),
                            control_kind=k, control_strength=cs, ic_choice=ic, ic_upload=None, ic_strength=ics,
                            lora_table=table, attention=att, use_mask=um, mask_path=(mask or {}).get("path"),
                            image=img, image_strength=imgs, model=model_, schedule=sched_, steps=steps_, cfg=cfg_,
                            stages=stages_, tier=tier_, seed=seed_, width=w, height=h, frames=n, fps=f,
                            extra=extras.fields(list(x)))
        jid = ctx.submit(ctx.owner(request), "generate", req.to_dict())
        note = "" if ic else "⚠️ Generating without an IC-LoRA: the control is ignored."
        return (jid, progress_html(0, "waiting for its turn", "queued"), None, None, gr.update(value=None, visible=False),
                None, note)

    mask_in = mask_state if mask_state is not None else gr.State(None)
    go.click(panel_guard(submit, 7, 1, refused, {0: None}),
             [prompt, negative, pre_result, kind, control_strength, ic_choice, ic_strength, lora_table, attention,
              use_mask, mask_in, image, image_strength, model, schedule, steps, cfg, stages, tier, seed, width,
              height, frames, fps, *extras.components],
             [job_id, progress, video, used_control, settings, shown, status], **priv)

    def poll(jid, already, request: gr.Request):
        if not jid or already == jid:  # no job, or its result is on screen: leave the panel alone
            return (gr.skip(),) * 6 + (already,)
        prog, prev, vid, sett, note = job_view(ctx, jid, request)
        if vid is None:
            return prog, prev, gr.skip(), gr.skip(), gr.skip(), note or gr.skip(), already
        if already == jid:  # result on screen: leave the panel alone (no player reloads; a refusal stays)
            return (gr.skip(),) * 6 + (already,)
        job = ctx.jobs.get(jid, ctx.owner(request))
        ctl = ((job.request or {}).get("controls") or [{}])[0].get("path")
        if ctl and Path(ctl).suffix.lower() in IMAGE_EXTS:
            ctl = None  # a still reference (trained face LoRA): it is on screen as the control frame already
        if not (job.request or {}).get("loras"):
            note = (note + "\n\n" if note else "") + "⚠️ Made without an IC-LoRA: the control was ignored."
        return prog, prev, vid, handoff.playable(ctl), gr.update(value=sett, visible=True), note, jid

    timer.tick(guard(poll), [job_id, shown], [progress, preview, video, used_control, settings, status, shown],
               show_progress="hidden", **priv)

    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return job_view(ctx, jid, request)[0]

    cancel.click(guard(do_cancel), job_id, progress, **priv)

    # ---- hand-offs: the result becomes the studio clip; a trained LoRA arrives from the Face trainer
    def send(path, jid, request: gr.Request):
        if not path or not jid:
            raise UserError("no result video yet: generate first")
        r = (ctx.jobs.get(jid, ctx.owner(request)).request or {})
        studio_clip = {"clip": path, "control": None, "kind": None, "width": r.get("width"),
                       "height": r.get("height"), "frames": r.get("frames"), "fps": r.get("fps", 24.0),
                       "downscale": 1, "source": f"{TITLE} result"}
        return studio_clip, (f"{Path(path).name} is now the studio clip: the Mask painter and Motion tracks tabs "
                             "use it with their 'Use the studio clip' buttons.")

    if clip_state is not None:
        send_clip.click(panel_guard(send, 2, 1), [video, job_id], [clip_state, sent], **priv)

    if lora_state is not None:  # "Use in generator" from the Face trainer: its checkpoint + reference still
        def take_lora(d):
            if not d:
                return (gr.skip(),) * 7
            res = {"control": d["reference_image"], "reference_still": True}
            note = (f"Using trained IC-LoRA **{html.escape(d.get('name', Path(d['path']).name))}** with its reference "
                    "image as the control (a still: one latent frame). Write a prompt and generate.")
            return (gr.update(choices=handoff.with_choice(ic_options, d["path"]), value=d["path"]), res, note,
                    d["reference_image"], progress_html(1, "reference image ready", "done"), "passthrough",
                    ic_note(d["path"]))

        lora_state.change(guard(take_lora), lora_state, [ic_choice, pre_result, pre_report, ctl_frame, pre_progress,
                                                         kind, ic_note_md], **priv)

    # ---- the enhancer beside the prompt (looks at the control frame when there is one); result actions
    from studio.enhance_ui import add_enhance_button
    from studio.result_actions import add_result_actions

    with enhance_slot:
        add_enhance_button(ctx, prompt, "union", model=model, image=pre_result)
    with actions_slot:
        add_result_actions(ctx, job_id, "union")

    # ---- History's "Reuse settings": every field of a past Union job, its control, LoRAs and mask included
    reuse_outputs = [prompt, negative, pre_result, pre_report, control_video, pre_progress, kind, control_strength,
                     ic_choice, ic_strength, lora_table, attention, use_mask, image, image_strength, model, schedule,
                     steps, cfg, stages, tier, seed, width, height, frames, fps, ic_note_md,
                     mask_state if mask_state is not None else gr.State(), *extras.components]

    def apply_request(d: dict) -> list:
        r = GenerateRequest.from_dict(d)
        c = r.controls[0] if r.controls else None
        from pipelines.fit import is_ic_lora

        # build_request puts the IC-LoRA first and the extra stack after it
        ic_lo = r.loras[0] if r.loras and is_ic_lora(r.loras[0].path) else None
        ic_path = ic_lo.path if ic_lo else None
        extra = [[lo.path, lo.weight] for lo in r.loras if lo is not ic_lo] or [["", 1.0]]
        d_ = handoff.downscale_of(ic_path)
        mask = ({"path": r.mask, "width": r.width, "height": r.height, "frames": r.frames, "downscale": d_,
                 "strength": r.attention_strength} if r.mask else None)
        kind_v = c.kind.value if c and c.kind and c.kind.value in KINDS else "passthrough"
        res = {"control": c.path} if c else None
        return [r.prompt, r.negative_prompt, res,
                f"Control from the reused job: {Path(c.path).name}" if c else "", handoff.playable(c.path) if c else None,
                progress_html(1, "control from History", "done") if c else progress_html(0, "no control yet", "idle"),
                kind_v, c.strength if c else 1.0,
                gr.update(choices=handoff.with_choice(ic_options, ic_path), value=ic_path or handoff.NONE),
                ic_lo.weight if ic_lo else 1.0, extra, r.attention_strength, bool(r.mask),
                r.image if r.image and Path(r.image).is_file() else None, r.image_strength,
                r.model if r.model in (choices or ["tiny"]) else gr.skip(), r.schedule.value, r.steps,
                r.guidance_scale, r.stages, r.tier.value, r.seed, r.width, r.height, r.frames, r.fps,
                ic_note(ic_path), mask, *extras.values_from(r)]

    return {"clip": clip, "kind": kind, "make": make, "prompt": prompt, "settings_json": json,
            "reuse": {"outputs": reuse_outputs, "apply": apply_request}}
