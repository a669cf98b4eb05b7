"""Face trainer tab: an identity IC-LoRA from a folder of clips, as a server-side job that outlives the tab.

Flow: upload clips (or a .zip) -> "Check dataset" copies them into the user's outputs folder and shows the
validation report and the chosen reference crops (any of which the user can replace) -> pick the preset and
start -> live step / s/step / ETA, loss plot, checkpoint gallery with sample videos, sample/save/stop (the
trainer's control files) -> "use in generator" hands a checkpoint and its reference image to the Union tab.

The run folder lives in the job's output folder; a stopped or interrupted run continues from its last
checkpoint ("Continue"). Tensor work stays in pipelines.training; the job kind and what submits and steers it
are in studio.kinds.train; this module holds the layout, the events and the dataset check / run view.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipelines.errors import UserError
from studio.kinds.train import (CLIP_TYPES, TINY_OVERRIDES, checkpoints, continue_run, control_file, owned_path,
                                run_dir_of, stage_dataset, train_request)
from studio.ui import guard, panel_guard, progress_html, readable, refused

TITLE = "Face trainer"


def recipe_for(preset: str, model: str = "tiny"):
    """The preset's recipe as a run on ``model`` will use it (the tiny model gets TINY_OVERRIDES)."""
    from pipelines.training.recipe import Recipe, load_preset

    recipe = load_preset(preset)
    return Recipe.from_dict(dict(recipe.to_dict(), **TINY_OVERRIDES)) if model == "tiny" else recipe


def staged_folder(data: str | Path) -> Path:
    """The folder of a staged dataset (a staged .zip sits in it; its clips are extracted beside it)."""
    data = Path(data)
    return data.parent if data.suffix == ".zip" else data


def scan(data: str | Path, trigger: str | None, recipe, **kw):
    """The dataset report for a staged dataset, as training will bucket it."""
    from pipelines.training.dataset import scan_dataset

    return scan_dataset(data, trigger=trigger or None, bucket_multiple=recipe.bucket_multiple,
                        max_frames=recipe.max_frames, target_area=recipe.target_area,
                        extract_dir=staged_folder(data) / "extracted" if Path(data).suffix == ".zip" else None, **kw)


def check_dataset(ctx, owner: str, files: list, trigger: str | None, preset: str, model: str = "tiny"):
    """Stage, scan and pick references: (data path, report markdown, reference gallery, clip names)."""
    recipe = recipe_for(preset, model)
    data = stage_dataset(ctx, owner, files)
    report = scan(data, trigger, recipe)
    text = "```\n" + report.text() + "\n```"
    gallery, names = [], [c.name for c in report.clips]
    if report.clips:
        gallery = reference_gallery(report, staged_folder(data), recipe.seed, {})
    return str(data), text, gallery, names


def reference_gallery(report, folder: Path, seed: int, overrides: dict) -> list[tuple[str, str]]:
    """(png path, caption) of the reference each clip trains with (crops written to folder/references/)."""
    from pipelines.training.references import write_reference_crops

    return write_reference_crops(report, folder / "references", seed=seed, overrides=overrides)


def replace_reference(ctx, owner: str, path: str | None, clip: str | None, img: str | None, overrides: dict | None,
                      trigger: str | None, preset: str, model: str = "tiny") -> tuple[list, dict]:
    """Use the user's image as ``clip``'s reference: (new reference gallery, new overrides)."""
    from pipelines.video_io import read_image, write_image

    if not path:
        raise UserError("check the dataset first")
    if not clip or not img:
        raise UserError("pick a clip and upload the image to use as its reference")
    folder = Path(owned_path(ctx, owner, str(staged_folder(path)), "dataset"))  # before writing in it
    # decoded first (a non-image is refused with its name), written whole or not at all
    kept = write_image(folder / "references" / f"user_{Path(clip).stem}.png", read_image(img))
    overrides = dict(overrides or {}, **{clip: str(kept)})
    recipe = recipe_for(preset, model)
    return reference_gallery(scan(path, trigger, recipe, face_detector=None), folder, recipe.seed, overrides), overrides


# ---------------------------------------------------------------------------------------------- run view

def loss_frame(run: Path):
    """The loss curve as a DataFrame (step, loss, smoothed) for gr.LinePlot."""
    import pandas as pd

    from pipelines.training.trainer import read_losses

    rows = read_losses(run)
    if not rows:  # typed columns: an empty frame would otherwise make "series" a float column
        return pd.DataFrame({"step": pd.Series([], dtype="int64"), "loss": pd.Series([], dtype="float64"),
                             "series": pd.Series([], dtype="object")})
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    ema, out = None, []
    for v in losses:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        out.append(ema)
    return pd.DataFrame({"step": steps * 2, "loss": losses + out,
                         "series": ["loss"] * len(steps) + ["smoothed"] * len(steps)})


LOSS_COLOURS = {"loss": "#94a3b8", "smoothed": "#f97316"}


def loss_svg(frame, width: int = 600, height: int = 220) -> str:
    """The loss curve drawn from its first point: every logged step is a dot, consecutive steps a line, two named
    series (loss, smoothed) in a legend, the axes labelled with their real ranges. Plain SVG in gr.HTML (no plot
    library state to go stale between a live session and a reload)."""
    import html as _html
    import math

    left, right, top, bottom = 56, 12, 28, 30
    pw, ph = width - left - right, height - top - bottom
    rows = {name: frame[frame.series == name] for name in ("loss", "smoothed")} if len(frame) else {}
    finite = [float(v) for v in frame["loss"] if math.isfinite(float(v))] if len(frame) else []
    parts = [f'<svg class="loss-svg" viewBox="0 0 {width} {height}" width="100%" style="display:block;width:100%;'
             f'height:auto" role="img" '
             f'aria-label="training loss" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#d1d5db"/>']
    if not finite:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" fill="#6b7280" '
                     'font-size="13">the loss appears here from the first step</text></svg>')
        return "".join(parts)
    steps = [int(v) for v in frame["step"]]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(finite), max(finite)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * abs(y0 or 1), y1 + 0.5 * abs(y1 or 1)

    def xy(step, val):
        x = left + (pw * (step - x0) / (x1 - x0) if x1 > x0 else pw / 2)
        y = top + ph * (1 - (val - y0) / (y1 - y0))
        return round(x, 1), round(y, 1)

    for label, val, y in ((f"{y1:.4g}", y1, top), (f"{y0:.4g}", y0, top + ph)):
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="11" fill="#6b7280">{label}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11" fill="#6b7280">step {x0}</text>')
    parts.append(f'<text x="{left + pw}" y="{height - 8}" text-anchor="end" font-size="11" fill="#6b7280">'
                 f'step {x1}</text>')
    for k, (name, sub) in enumerate(rows.items()):
        colour = LOSS_COLOURS[name]
        pts = [xy(int(s_), float(v)) for s_, v in zip(sub["step"], sub["loss"]) if math.isfinite(float(v))]
        if len(pts) > 1:
            parts.append(f'<polyline class="series-{name}" data-series="{name}" fill="none" stroke="{colour}" '
                         f'stroke-width="{2 if name == "smoothed" else 1.2}" '
                         f'points="{" ".join(f"{x},{y}" for x, y in pts)}"/>')
        r = 2.5 if len(pts) < 60 else 1.2
        parts += [f'<circle class="pt-{name}" cx="{x}" cy="{y}" r="{r}" fill="{colour}"/>' for x, y in pts]
        lx = left + 8 + k * 110
        parts.append(f'<line x1="{lx}" y1="14" x2="{lx + 18}" y2="14" stroke="{colour}" stroke-width="3"/>'
                     f'<text x="{lx + 24}" y="18" font-size="12" fill="currentColor">{_html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def final_state(job) -> tuple[str, float, str]:
    """(status, fraction, message) as the progress line shows a run: a run stopped with Stop is "stopped at step
    14/400" (its fraction stays 14/400), not "done 100%"; a failed run reads "failed: <reason>"."""
    status = job.status.value
    res = job.result or {}
    if status == "done":
        step, total = int(res.get("step") or 0), int(res.get("total") or 0)
        if res.get("stopped"):
            return "stopped", step / max(total, 1), f"stopped at step {step}/{total} (a checkpoint was saved)"
        return "done", 1.0, f"finished {step}/{total} steps · {res.get('seconds_per_step', 0):.2f} s/step"
    if status in ("failed", "cancelled", "interrupted"):
        return status, job.progress, readable(job.error or job.message or "")
    return status, job.progress, job.message or ("waiting for its turn" if status == "queued" else "")


def run_view(ctx, job_id: str | None, owner: str, shown_sig: str | None):
    """(progress html, loss plot html, gallery or skip, checkpoint choices, status md, signature)."""
    from studio.jobs import JobNotFound

    if not job_id:  # nothing to show, or a refused start's reason is on the line: leave the panel as it is
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), shown_sig
    try:
        job = ctx.jobs.get(job_id, owner)
    except JobNotFound:
        return progress_html(0, "run not found", "idle"), gr.skip(), gr.skip(), gr.skip(), "", shown_sig
    run = run_dir_of(job.out_dir)
    cks = checkpoints(run)
    sig = "|".join(f"{c['step']}:{bool(c['sample'])}" for c in cks)
    gallery = [(c["sample"], f"step {c['step']}") for c in cks if c["sample"]] if sig != shown_sig else gr.skip()
    choices = gr.update(choices=[(f"step {c['step']}", c["lora"]) for c in cks],
                        value=cks[-1]["lora"] if cks else None) if sig != shown_sig else gr.skip()
    status, fraction, message = final_state(job)
    note = f"Run `{job.id[:8]}` · {status} · folder `{run.name}`"
    res = job.result or {}
    if job.status.value == "done":
        note += (f"\n\nFinished at step {res.get('step')}/{res.get('total')}"
                 + (" (stopped)" if res.get("stopped") else "")
                 + f" · {res.get('seconds_per_step', 0):.2f} s/step · exported `lora.safetensors`")
    if status in ("interrupted", "failed", "cancelled", "stopped") and cks:
        note += "\n\nPress **Continue** to resume from the last checkpoint."
    return (progress_html(fraction, message, status), loss_svg(loss_frame(run)), gallery, choices, note, sig)


def hand_off(ctx, job_id: str | None, owner: str, lora: str | None) -> dict:
    """What "use in generator" passes to the Union tab: the checkpoint and the run's reference image."""
    if not lora:
        raise UserError("pick a checkpoint first")
    job = ctx.jobs.get(job_id, owner) if job_id else None
    run = run_dir_of(job.out_dir) if job else Path(lora).parents[2]
    lora_path = Path(owned_path(ctx, owner, lora, "checkpoint"))
    ref = run / "validation" / "reference.png"
    if not ref.is_file():
        raise UserError("this run has no reference image yet (it is written before the first step)")
    step = lora_path.parent.name.removeprefix("step_").lstrip("0") or "0"
    from pipelines.fit import lora_downscale

    return {"path": str(lora_path), "reference_image": str(ref), "name": f"run {run.parent.name[:8]} · step {step}",
            "downscale": lora_downscale([str(lora_path)])}


# ---------------------------------------------------------------------------------------------- the tab

TINY_STEPS, TINY_EVERY = 20, 10  # the tiny model's first run: a CPU smoke test of the whole path


def recipe_text(model: str) -> str:
    """The recipe as the fields show it: the real face recipe, and on the tiny model what is overridden and why."""
    from pipelines.training.recipe import load_preset

    face = load_preset("face")
    real = (f"Face recipe (LTX-2.3): rank {face.rank}, alpha {face.alpha:g}, lr {face.lr:g}, {face.steps} steps with a "
            f"checkpoint + sample every {face.checkpoint_every} "
            f"({'/'.join(str(s) for s in face.recommended_steps)}); 500 is the usual pick, 750-1000 sharpen at the "
            "risk of overfitting.")
    if model != "tiny":
        return real
    o = TINY_OVERRIDES
    return (real + f" **On the tiny test model** the fields start at {TINY_STEPS} steps with a checkpoint every "
            f"{TINY_EVERY}, and clips train at {int(o['target_area'] ** 0.5)}x{int(o['target_area'] ** 0.5)}, "
            f"{o['max_frames']} frames: a few-minute CPU run of the same path (its samples are noise).")


def build(ctx):
    from pipelines.training.recipe import load_preset
    from studio.spaces import training_available

    available, why = training_available()
    face = load_preset("face")
    models = _models(ctx)
    tiny = models[0] == "tiny"
    if not available:
        gr.Markdown(f"⚠️ {why}", elem_id="train-unavailable")
    gr.Markdown("Train an identity IC-LoRA from 15-40 clips of one subject (a face, a pet, a product). "
                "The reference for each clip comes from another clip, so the LoRA learns the identity, not a copy."
                + (" **Tiny test model: random weights; the run exercises the whole path, samples are noise.**"
                   if tiny else ""))
    with gr.Row():
        with gr.Column(scale=3):
            files = gr.File(label="Clips (videos with optional caption .txt of the same name, or one .zip)",
                            file_count="multiple", file_types=CLIP_TYPES, elem_id="train-files", height=160)
            with gr.Row():
                sample_btn = gr.Button("Use the sample clips (4 short clips, to try the path)", size="sm",
                                       elem_id="train-sample-clips")
            trigger = gr.Textbox(label="Trigger word (optional)", placeholder="e.g. sks person", elem_id="train-trigger")
            check = gr.Button("Check dataset", elem_id="train-check")
            report = gr.Markdown(elem_id="train-report")
            refs = gr.Gallery(label="References (target ← source clip)", columns=5, height=220,
                              elem_id="train-refs", object_fit="contain")
            with gr.Accordion("Replace a reference with your own image", open=False):
                with gr.Row(equal_height=False):
                    ref_clip = gr.Dropdown([], label="Replace the reference of clip", scale=3, min_width=160)
                    ref_apply = gr.Button("Replace", size="sm", scale=1, min_width=90)
                ref_image = gr.Image(label="with this image", type="filepath", sources=["upload"], height=160)
        with gr.Column(scale=3):
            with gr.Row():
                preset = gr.Dropdown(["face"], value="face", label="Preset")
                model = gr.Dropdown(models, value=models[0], label="Base model", elem_id="train-model")
            with gr.Row():
                steps = gr.Number(face.steps if not tiny else TINY_STEPS, label="Steps", precision=0, minimum=1,
                                  elem_id="train-steps")
                every = gr.Number(face.checkpoint_every if not tiny else TINY_EVERY, label="Checkpoint + sample every",
                                  precision=0, minimum=0, elem_id="train-every")
                rank = gr.Number(face.rank, label="Rank", precision=0, minimum=1)
                lr = gr.Number(face.lr, label="Learning rate", minimum=0)
            recipe_md = gr.Markdown(recipe_text(models[0]), elem_id="train-recipe")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=available, elem_id="train-start")
                cont = gr.Button("Continue", interactive=available, elem_id="train-continue")
            with gr.Row():
                sample_now = gr.Button("Sample now", size="sm", elem_id="train-sample")
                save_now = gr.Button("Save now", size="sm", elem_id="train-save")
                stop = gr.Button("Stop", size="sm", variant="stop", elem_id="train-stop")
            progress = gr.HTML(progress_html(0, "no training run yet", "idle"), elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
            plot = gr.HTML(loss_svg(loss_frame(Path("/nonexistent"))), label="Loss", elem_id="train-loss")
            samples = gr.Gallery(label="Checkpoint samples (reference | sample)", columns=2, height=260,
                                 elem_id="train-samples")
            with gr.Row(equal_height=True):
                ckpt = gr.Dropdown([], label="Checkpoint", elem_id="train-ckpt", scale=2)
                use = gr.Button("Use in generator", elem_id="train-use", scale=1)
            ckpt_file = gr.File(label="Checkpoint LoRA (ComfyUI-compatible .safetensors)", interactive=False,
                                height=80, visible=False)  # shown with the first checkpoint
            note = gr.Markdown(elem_id="train-note")

    data = gr.State(None)
    overrides = gr.State({})
    job_id = ctx.job_state("train")
    sig = gr.State(None)
    timer = gr.Timer(2.0)
    priv = {"api_visibility": "private"}

    def do_check(fs, trig, pre, model_, request: gr.Request):
        path, text, gallery, names = check_dataset(ctx, ctx.owner(request), fs, trig, pre, model_)
        return path, text, gallery, gr.update(choices=names, value=names[0] if names else None), {}

    check_outputs = [data, report, refs, ref_clip, overrides]
    check.click(panel_guard(do_check, 5, 1), [files, trigger, preset, model], check_outputs, **priv)

    def do_sample(trig, pre, model_, request: gr.Request):
        """The bundled sample clips, made in the user's folder and checked like an upload (no file to find)."""
        from pipelines.training.sample import make_sample_dataset

        owner = ctx.owner(request)
        clips = make_sample_dataset(ctx.user_dir(owner, "samples") / "face-clips")
        path, text, gallery, names = check_dataset(ctx, owner, [str(p) for p in clips], trig or "subj", pre, model_)
        text = ("Sample clips (cut from the bundled sample video; not a face: a smoke test of the path).\n\n" + text)
        return path, text, gallery, gr.update(choices=names, value=names[0] if names else None), {}, trig or "subj"

    sample_btn.click(panel_guard(do_sample, 6, 1), [trigger, preset, model], check_outputs + [trigger], **priv)

    def do_replace(path, clip, img, ov, trig, pre, model_, request: gr.Request):
        gallery, ov2 = replace_reference(ctx, ctx.owner(request), path, clip, img, ov, trig, pre, model_)
        return gallery, ov2, ""

    ref_apply.click(panel_guard(do_replace, 3, 2), [data, ref_clip, ref_image, overrides, trigger, preset, model],
                    [refs, overrides, report], **priv)

    def on_model(m):
        t = m == "tiny"
        return (recipe_text(m), TINY_STEPS if t else face.steps, TINY_EVERY if t else face.checkpoint_every)

    model.change(guard(on_model), model, [recipe_md, steps, every], **priv)

    def do_start(path, ov, trig, pre, model_, steps_, every_, rank_, lr_, request: gr.Request):
        if not available:
            raise UserError(why)
        if not path:
            raise UserError("check the dataset first (upload clips or use the sample clips, then 'Check dataset')")
        overrides_ = {"steps": int(steps_), "checkpoint_every": int(every_), "sample_every": int(every_),
                      "rank": int(rank_), "alpha": float(rank_), "lr": float(lr_)}
        req = train_request({"preset": pre, "model": model_, "trigger": trig or None, "overrides": overrides_,
                             "reference_overrides": dict(ov or {})}, path)
        jid = ctx.submit(ctx.owner(request), "train", req)
        return jid, progress_html(0, "waiting for its turn", "queued"), None

    start.click(panel_guard(do_start, 3, 1, refused, {0: None}), [data, overrides, trigger, preset, model, steps, every, rank,
                                                       lr], [job_id, progress, sig], **priv)

    def do_continue(jid, request: gr.Request):
        return (continue_run(ctx, jid, ctx.owner(request)), None, progress_html(0, "waiting for its turn", "queued"),
                "")

    # a refusal goes to the note: the progress line keeps showing the run it refers to
    cont.click(panel_guard(do_continue, 4, 3), job_id, [job_id, sig, progress, note], **priv)

    def poll(jid, s, request: gr.Request):
        return run_view(ctx, jid, ctx.owner(request), s)

    timer.tick(guard(poll), [job_id, sig], [progress, plot, samples, ckpt, status, sig], show_progress="hidden",
               **priv)

    def control(name):
        def fn(jid, request: gr.Request):
            return control_file(ctx, jid, ctx.owner(request), name)
        fn.__name__ = f"control_{name}"
        return panel_guard(fn, 1, 0)

    for btn, name in ((sample_now, "sample_now"), (save_now, "save_now"), (stop, "stop")):
        btn.click(control(name), job_id, note, **priv)

    ckpt.change(lambda p: gr.update(value=p or None, visible=bool(p)), ckpt, ckpt_file, **priv)
    lora_state = ctx.shared.get("lora")

    def do_use(jid, lora, request: gr.Request):
        d = hand_off(ctx, jid, ctx.owner(request), lora)
        return d, (f"Sent `{d['name']}` with its reference image to **Union control** (and the Mask painter): "
                   "open Union control and press Generate.")

    if lora_state is not None:
        use.click(panel_guard(do_use, 2, 1), [job_id, ckpt], [lora_state, note], **priv)
    return {"files": files, "start": start, "job_id": job_id, "ckpt": ckpt}


def _models(ctx) -> list[str]:
    from pipelines.models.registry import discover

    names = [s.name for s in discover(ctx.models_dir) if s.ready]
    return names or ["tiny"]


__all__ = ["check_dataset", "replace_reference", "run_view", "hand_off", "loss_frame", "recipe_for", "scan",
           "staged_folder"]
