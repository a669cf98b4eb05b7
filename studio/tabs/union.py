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
from pathlib import Path

import gradio as gr
import numpy as np

from pipelines.errors import UserError
from pipelines.requests import ControlInput, ControlKind, GenerateRequest, LoraSpec, MemoryTier, Schedule
from pipelines.video_io import IMAGE_EXTS
from studio.kinds import wait_job
from studio.kinds.preprocess import submit_preprocess
from studio.ui import guard, guard_gen, progress_html

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
    from pipelines.control import registry_status

    lines = ["| control | status | notes |", "|---|---|---|"]
    for s in registry_status(models_dir):
        if s["ready"]:
            note = "ready"
        elif s["status"] == "missing package":
            note = f"pip install {' '.join(s['pip'] or s['missing_packages'])}"
        else:
            where = ", ".join(f"`{p}`" for p in s["searched"]) or "no models folder set (--models-dir)"
            names = ", ".join(f"`{w['name']}`" for w in s["weights"])
            note = f"put {names} in {where} (from `{s['source']}`)"
        lines.append(f"| {s['kind']} | {'✅' if s['ready'] else '⚠️ ' + s['status']} | {note} |")
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


# ---------------------------------------------------------------------------------------------- handlers

def build_request(ctx, *, prompt, negative, control_path, control_kind, control_strength, ic_choice, ic_upload,
                  ic_strength, lora_table, attention, use_mask, mask_path, image, image_strength, model, schedule,
                  steps, cfg, stages, tier, seed, width, height, frames, fps) -> GenerateRequest:
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
    ).validate()


def _mask_text(mask_path) -> str:
    if not mask_path:
        return "No mask from the Mask painter yet: the control applies everywhere (scaled by attention strength)."
    return f"Mask from painter: **{html.escape(Path(str(mask_path)).name)}**"


# ---------------------------------------------------------------------------------------------- the tab

def build(ctx):
    from pipelines.presets import list_presets, load_preset, sample_clip_path
    from studio.tabs import generate as generate_tab
    from studio.tabs.generate import job_view, model_choices

    choices = model_choices(ctx)
    default_model = ctx.config.model if ctx.config.model in choices else (choices[0] if choices else "tiny")
    tiny = default_model == "tiny"
    loras = lora_files(ctx)
    lora_choices = ["(none)"] + loras
    default_ic = next((p for p in loras if "union" in Path(p).name.lower()), "(none)")
    sample = sample_clip_path()

    gr.Markdown("Make a control video from your clip (edges, depth, pose, or your own), check it frame by frame, "
                "then generate a new video that follows its structure with the Union IC-LoRA.")
    with gr.Row():
        preset = gr.Dropdown(["(none)"] + list_presets(), value="(none)", label="Preset", scale=1,
                             elem_id="union-preset")
        preset_note = gr.Markdown(elem_id="union-preset-note")
    # ---- 1. clip and control
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            clip = gr.Video(label="Clip", sources=["upload"], elem_id="union-clip", height=220)
            sample_btn = gr.Button("Use sample clip", size="sm", elem_id="union-sample", visible=sample is not None)
            gr.Markdown("**Output size** (the control video is made at this size; Union IC-LoRA: multiples of 64)")
            with gr.Row():
                width = gr.Number(128 if tiny else 768, label="Width", precision=0, minimum=64, step=64,
                                  elem_id="union-width", min_width=70)
                height = gr.Number(64 if tiny else 512, label="Height", precision=0, minimum=64, step=64,
                                   elem_id="union-height", min_width=70)
                frames = gr.Number(9 if tiny else 121, label="Frames (8n+1)", precision=0, minimum=1, step=8,
                                   elem_id="union-frames", min_width=70)
                fps = gr.Number(24, label="FPS", minimum=1, maximum=120, min_width=70)
            kind = gr.Radio(KINDS, value="canny", label="Control", elem_id="union-kind")
            kind_note = gr.Markdown(kind_notice(ctx.models_dir, "canny"), elem_id="union-kind-note")
            with gr.Row(visible=True) as canny_row:
                low = gr.Slider(0, 255, value=92, step=1, label="Canny low")
                high = gr.Slider(0, 255, value=200, step=1, label="Canny high")
                blur = gr.Slider(0, 5, value=0, step=0.5, label="Pre-blur (px)")
            invert = gr.Checkbox(False, label="Invert (near = white ↔ far = white)", visible=False)
            with gr.Accordion("Control backends on this machine", open=False):
                gr.Markdown(status_markdown(ctx.models_dir))
        with gr.Column(scale=2):
            with gr.Row():
                in_frame = gr.Image(label="Input frame", interactive=False, format="png", height=220,
                                    elem_id="union-in-frame")
                ctl_frame = gr.Image(label="Control frame", interactive=False, format="png", height=220,
                                     elem_id="union-ctl-frame")
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
            negative = gr.Textbox(label="Negative prompt", lines=1, value="blurry, low quality, distorted")
            with gr.Row():
                ic_choice = gr.Dropdown(lora_choices, value=default_ic, label="IC-LoRA (models/loras)", scale=3)
                ic_strength = gr.Slider(0, 2, value=1.0, step=0.05, label="IC-LoRA strength", scale=2)
            ic_upload = gr.File(label="…or upload an IC-LoRA (.safetensors)", file_types=[".safetensors"],
                                type="filepath", height=70)
            with gr.Row():
                control_strength = gr.Slider(0, 1, value=1.0, step=0.05, label="Control strength")
                attention = gr.Slider(0, 1, value=1.0, step=0.05, label="Attention strength")
            with gr.Row():
                use_mask = gr.Checkbox(False, label="Use painter mask", interactive=True)
                mask_note = gr.Markdown(_mask_text(None), elem_id="union-mask-note")
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
                    seed = gr.Number(42, label="Seed", precision=0, minimum=0)
            vram_fn = getattr(generate_tab, "vram_text", None)  # predicted VRAM (one reference at D=2)
            vram = gr.Markdown(vram_fn(default_model, "auto", width.value, height.value, frames.value, refs=1,
                                       downscale=2) if vram_fn else "", elem_id="union-vram")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="union-go")
                cancel = gr.Button("Cancel", elem_id="union-cancel")
        with gr.Column(scale=2):
            progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="union-progress")
            preview = gr.Image(label="Latent preview", interactive=False, height=120, format="png")
            with gr.Row():
                video = gr.Video(label="Result", interactive=False, elem_id="union-video")
                used_control = gr.Video(label="Its control", interactive=False, elem_id="union-used-control")
            settings = gr.File(label="Settings (JSON)", interactive=False)
            status = gr.Markdown(elem_id="union-status")
            with gr.Row():
                send_clip = gr.Button("Send result to Mask painter / Motion tracks", size="sm",
                                      elem_id="union-send-clip")
                send_control = gr.Button("Send control to other tabs", size="sm")
            sent = gr.Markdown()

    pre_result = gr.State(None)  # the finished preprocess job's result dict
    job_id = ctx.job_state("union")
    shown = gr.State(None)  # job id whose result is already on screen (the timer then leaves it alone)
    timer = gr.Timer(1.0)
    shared = ctx.shared

    if vram_fn:
        def vram_update(m, t, w, h, n):
            return vram_fn(m, t, w, h, n, refs=1, downscale=2)

        for comp in (model, tier, width, height, frames):
            comp.change(guard(vram_update), [model, tier, width, height, frames], vram, api_visibility="private",
                        show_progress="hidden")

    # ---- presets
    form = [prompt, negative, kind, low, high, blur, invert, control_strength, ic_choice, ic_strength, attention,
            width, height, frames, fps, schedule, steps, cfg, stages, tier, seed]

    @guard
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
            note += f" · no file matching `{p.ic_lora_match}` in models/loras: upload the IC-LoRA or pick one"
        return vals + [note]

    preset.change(apply_preset, preset, form + [preset_note], api_visibility="private")

    # ---- clip and control
    sample_btn.click(lambda: str(sample) if sample else None, None, clip, api_visibility="private")

    def on_kind(k):
        return (kind_notice(ctx.models_dir, k), gr.update(visible=k == "canny"),
                gr.update(visible=k in ("depth", "passthrough")))

    kind.change(guard(on_kind), kind, [kind_note, canny_row, invert], api_visibility="private")

    @guard_gen
    def make_control(clip_path, k, lo, hi, bl, inv, w, h, n, f, request: gr.Request):
        owner = ctx.owner(request)
        jid = submit_preprocess(ctx, clip_path, k, lo, hi, bl, inv, w, h, n, f, request)
        for job in wait_job(ctx, jid, owner):
            if job.status.value != "done":
                yield (progress_html(job.progress, job.message or "", job.status.value), gr.skip(), gr.skip(),
                       gr.skip(), gr.skip(), gr.skip(), gr.skip())
                continue
            res = job.result
            a, b = scrub_frames(res, 0)
            yield (progress_html(1.0, "control ready", "done"), res, f"{res['report']}", res["control"], a, b,
                   gr.update(maximum=max(1, res["frames"] - 1), value=0))

    make.click(make_control, [clip, kind, low, high, blur, invert, width, height, frames, fps],
               [pre_progress, pre_result, pre_report, control_video, in_frame, ctl_frame, scrub],
               api_visibility="private")
    scrub.change(guard(scrub_frames), [pre_result, scrub], [in_frame, ctl_frame], api_visibility="private",
                 show_progress="hidden")

    # ---- mask from the painter
    if "mask" in shared:
        shared["mask"].change(lambda m: (_mask_text(m), bool(m)), shared["mask"], [mask_note, use_mask],
                              api_visibility="private")

    # ---- generate
    @guard
    def submit(prompt_, negative_, res, k, cs, icc, icu, ics, table, att, um, mask_path, img, imgs, model_, sched_,
               steps_, cfg_, stages_, tier_, seed_, w, h, n, f, request: gr.Request):
        req = build_request(ctx, prompt=prompt_, negative=negative_, control_path=(res or {}).get("control"),
                            control_kind=k, control_strength=cs, ic_choice=icc, ic_upload=icu, ic_strength=ics,
                            lora_table=table, attention=att, use_mask=um, mask_path=mask_path, image=img,
                            image_strength=imgs, model=model_, schedule=sched_, steps=steps_, cfg=cfg_,
                            stages=stages_, tier=tier_, seed=seed_, width=w, height=h, frames=n, fps=f)
        jid = ctx.submit(ctx.owner(request), "generate", req.to_dict())
        return jid, progress_html(0, "queued", "queued"), None, None, None, None

    mask_state = shared.get("mask") or gr.State(None)
    go.click(submit, [prompt, negative, pre_result, kind, control_strength, ic_choice, ic_upload, ic_strength,
                      lora_table, attention, use_mask, mask_state, image, image_strength, model, schedule, steps, cfg,
                      stages, tier, seed, width, height, frames, fps],
             [job_id, progress, video, used_control, settings, shown], api_visibility="private")

    def poll(jid, already, request: gr.Request):
        prog, prev, vid, sett, note = job_view(ctx, jid, request)
        if vid is None:
            return prog, prev, gr.skip(), gr.skip(), gr.skip(), note, already
        if already == jid:  # result on screen: do not reload the players every second
            return prog, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), already
        job = ctx.jobs.get(jid, ctx.owner(request))
        ctl = ((job.request or {}).get("controls") or [{}])[0].get("path")
        if ctl and Path(ctl).suffix.lower() in IMAGE_EXTS:
            ctl = None  # a still reference (trained face LoRA): it is on screen as the control frame already
        return prog, prev, vid, ctl, sett, note, jid

    timer.tick(guard(poll), [job_id, shown], [progress, preview, video, used_control, settings, status, shown],
               api_visibility="private", show_progress="hidden")

    @guard
    def do_cancel(jid, request: gr.Request):
        if jid:
            ctx.jobs.cancel(jid, ctx.owner(request))
        return job_view(ctx, jid, request)[0]

    cancel.click(do_cancel, job_id, progress, api_visibility="private")

    # ---- hand-offs
    def send(path, what):
        if not path:
            raise UserError(f"no {what} yet")
        return path, f"Sent {Path(path).name}: open the Mask painter or Motion tracks tab."

    if "clip" in shared:
        send_clip.click(guard(lambda v: send(v, "result video")), video, [shared["clip"], sent],
                        api_visibility="private")
    if "control_video" in shared:
        send_control.click(guard(lambda r: send((r or {}).get("control"), "control video")), pre_result,
                           [shared["control_video"], sent], api_visibility="private")
    if "lora" in shared:  # "Use in generator" from the Face trainer: its checkpoint + reference still
        def take_lora(d):
            if not d:
                return (gr.skip(),) * 6
            res = {"control": d["reference_image"], "reference_still": True}
            note = (f"Using trained IC-LoRA **{html.escape(d.get('name', Path(d['path']).name))}** with its reference "
                    "image as the control (a still: one latent frame). Write a prompt and generate.")
            return (d["path"], res, note, d["reference_image"], progress_html(1, "reference image ready", "done"),
                    "passthrough")

        shared["lora"].change(guard(take_lora), shared["lora"], [ic_upload, pre_result, pre_report, ctl_frame,
                                                                  pre_progress, kind], api_visibility="private")
    return {"clip": clip, "kind": kind, "make": make, "prompt": prompt, "settings_json": json}
