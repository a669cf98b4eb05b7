"""Face trainer tab: an identity IC-LoRA from a folder of clips, as a server-side job that outlives the tab.

Flow: upload clips (or a .zip) -> "Check dataset" copies them into the user's outputs folder and shows the
validation report and the chosen reference crops (any of which the user can replace) -> pick the preset and
start -> live step / s/step / ETA, loss plot, checkpoint gallery with sample videos, sample/save/stop (the
trainer's control files) -> "use in generator" hands a checkpoint and its reference image to the Union tab.

The run folder lives in the job's output folder; a stopped or interrupted run continues from its last
checkpoint ("Continue"). Tensor work stays in pipelines.training; this module only moves paths and text.
"""
from __future__ import annotations

import html
import shutil
import time
import uuid
from pathlib import Path

import gradio as gr

from pipelines.errors import UserError
from studio.ui import guard, progress_html

TITLE = "Face trainer"
CLIP_TYPES = [".zip", ".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".txt", ".png", ".jpg", ".jpeg"]
# On the tiny test model the run is about exercising the path on a CPU in seconds, not about quality.
TINY_OVERRIDES = {"target_area": 64 * 64, "max_frames": 9, "gradient_checkpointing": False, "warmup_steps": 0,
                  "validation_width": 64, "validation_height": 64, "validation_frames": 9}


# ---------------------------------------------------------------------------------------------- the job

def _owned(ctx, owner: str, path: str | None, what: str) -> str | None:
    """``path`` resolved inside the owner's outputs (or uploads/assets) folders, else UserError."""
    if not path:
        return None
    from studio.routes import checker_for

    resolved = checker_for(ctx, owner)(what, path)
    if not Path(resolved).exists():
        raise UserError(f"{what}: {Path(path).name} does not exist")
    return resolved


def run_dir_of(job_out_dir: str | Path) -> Path:
    """The run folder a train job wrote to (a continued run writes into its predecessor's folder)."""
    marker = Path(job_out_dir) / "run_dir.txt"
    if marker.is_file():
        return Path(marker.read_text().strip())
    return Path(job_out_dir) / "run"


def run_train_job(request: dict, jc, ctx) -> dict:
    """Job kind "train" (gpu lane, resumable). ``request`` is a TrainRequest dict without ``out``; with
    ``continue_run`` (a run folder of the same owner) or when resumed by the job system, training continues
    from the last checkpoint of that run."""
    from pipelines.training.recipe import TrainRequest
    from pipelines.training.trainer import TrainCallbacks, run_training

    d = dict(request)
    cont = d.pop("continue_run", None)
    if jc.resume_from is not None:
        run = run_dir_of(jc.resume_from)
    elif cont:
        run = Path(_owned(ctx, jc.owner, cont, "continue_run"))
    else:
        run = Path(jc.out_dir) / "run"
    d["data"] = _owned(ctx, jc.owner, d.get("data"), "data")
    d["validation_reference"] = _owned(ctx, jc.owner, d.get("validation_reference"), "validation_reference")
    d["reference_overrides"] = {k: _owned(ctx, jc.owner, v, f"reference for {k}")
                                for k, v in (d.get("reference_overrides") or {}).items()}
    d["out"] = str(run)
    d["resume"] = bool(jc.resume_from is not None or cont)
    d["models_dir"] = str(ctx.models_dir) if ctx.models_dir else None
    req = TrainRequest.from_dict(d)
    (Path(jc.out_dir) / "run_dir.txt").write_text(str(run))

    def progress(step, total, loss, s_per_step):
        eta = max(0, total - step) * s_per_step
        jc.progress(step / max(total, 1), f"step {step}/{total} · loss {loss:.4f} · {s_per_step:.2f} s/step · "
                                          f"ETA {_duration(eta)}")

    def on_sample(step, path):
        jc.add_output(path)

    cb = TrainCallbacks(progress=progress, should_stop=lambda: jc.cancelled, on_sample=on_sample)
    result = run_training(req, callbacks=cb, on_status=lambda msg: jc.progress(0.0, msg))
    lora = run / "lora.safetensors"
    if lora.is_file():
        jc.add_output(lora)
    return {"run_dir": str(run), "lora": str(lora) if lora.is_file() else None, "step": result.step,
            "total": result.total, "stopped": result.stopped, "seconds_per_step": result.seconds_per_step,
            "samples": [str(p) for p in result.samples], "checkpoints": [str(p) for p in result.checkpoints]}


def train_request(fields: dict, data: str) -> dict:
    """A validated "train" job request from TrainRequest fields (no out/resume/models_dir: the job sets them)
    and a staged dataset path. On the tiny model the tiny-size overrides apply unless given."""
    from pipelines.training.recipe import TrainRequest

    d = {k: v for k, v in fields.items() if k not in ("data", "out", "resume", "models_dir", "continue_run")}
    if d.get("model", "tiny") == "tiny":
        d["overrides"] = dict(TINY_OVERRIDES, **(d.get("overrides") or {}))
    req = TrainRequest.from_dict(dict(d, data=data, out="(job folder)")).to_dict()
    for k in ("out", "resume", "models_dir"):
        req.pop(k)
    return req


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def register_jobs(ctx) -> None:
    ctx.jobs.register("train", lambda req, jc: run_train_job(req, jc, ctx), lane="gpu", resumable=True)


# ---------------------------------------------------------------------------------------------- dataset

def stage_dataset(ctx, owner: str, files: list) -> Path:
    """Copy uploaded clips (or one .zip) into ``<outputs>/<owner>/datasets/<id>/``: uploads are temporary,
    a training run must be able to read its data for hours and again on resume."""
    if not files:
        raise UserError("no clips uploaded: add 15-40 videos of the subject (or one .zip), captions as .txt")
    dest = ctx.user_dir(owner, "datasets") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True, exist_ok=False)
    paths = [Path(getattr(f, "name", f)) for f in files]
    try:
        for p in paths:
            if p.suffix.lower() not in CLIP_TYPES:
                raise UserError(f"{p.name}: not a clip, caption, image or .zip (accepted: {', '.join(CLIP_TYPES)})")
            shutil.copyfile(p, dest / p.name)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no half-staged dataset left behind
        raise
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips and len(paths) == 1:
        return dest / zips[0].name
    return dest


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
    folder = Path(_owned(ctx, owner, str(staged_folder(path)), "dataset"))  # before writing in it
    # decoded first (a non-image is refused with its name), written whole or not at all
    kept = write_image(folder / "references" / f"user_{Path(clip).stem}.png", read_image(img))
    overrides = dict(overrides or {}, **{clip: str(kept)})
    recipe = recipe_for(preset, model)
    return reference_gallery(scan(path, trigger, recipe, face_detector=None), folder, recipe.seed, overrides), overrides


# ---------------------------------------------------------------------------------------------- run view

def checkpoints(run: Path) -> list[dict]:
    """[{step, lora, sample}] of a run folder, oldest first."""
    out = []
    for d in sorted((run / "checkpoints").glob("step_*")):
        lora = d / "lora.safetensors"
        if not lora.is_file():
            continue  # being written
        sample = d / "sample.mp4"
        try:
            step = int(d.name.split("_")[1])
        except (IndexError, ValueError):
            continue
        out.append({"step": step, "lora": str(lora), "sample": str(sample) if sample.is_file() else None})
    return out


def loss_frame(run: Path):
    """The loss curve as a DataFrame (step, loss, smoothed) for gr.LinePlot."""
    import pandas as pd

    from pipelines.training.trainer import read_losses

    rows = read_losses(run)
    if not rows:
        return pd.DataFrame({"step": [], "loss": [], "series": []})
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    ema, out = None, []
    for v in losses:
        ema = v if ema is None else 0.9 * ema + 0.1 * v
        out.append(ema)
    return pd.DataFrame({"step": steps * 2, "loss": losses + out,
                         "series": ["loss"] * len(steps) + ["smoothed"] * len(steps)})


def run_view(ctx, job_id: str | None, owner: str, shown_sig: str | None):
    """(progress html, loss frame, gallery or skip, checkpoint choices, status md, signature)."""
    from studio.jobs import JobNotFound

    if not job_id:
        return progress_html(0, "no training run yet", "idle"), gr.skip(), gr.skip(), gr.skip(), "", shown_sig
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
    status = job.status.value
    note = f"Run `{job.id[:8]}` · {status} · folder `{run.name}`"
    if job.error:
        note += f"\n\n**{html.escape(job.error)}**"
    res = job.result or {}
    if status == "done":
        note += (f"\n\nFinished at step {res.get('step')}/{res.get('total')}"
                 + (" (stopped)" if res.get("stopped") else "")
                 + f" · {res.get('seconds_per_step', 0):.2f} s/step · exported `lora.safetensors`")
    if status in ("interrupted", "failed", "cancelled") and cks:
        note += "\n\nPress **Continue** to resume from the last checkpoint."
    return (progress_html(job.progress, job.message or "", status), loss_frame(run), gallery, choices, note, sig)


def control_file(ctx, job_id: str | None, owner: str, name: str) -> str:
    """Ask the running trainer to sample / save / stop at the end of its current step."""
    if not job_id:
        raise UserError("no training run yet")
    job = ctx.jobs.get(job_id, owner)
    if not job.active:
        raise UserError(f"the run is {job.status.value}, not running")
    ctrl = run_dir_of(job.out_dir) / "control"
    ctrl.mkdir(parents=True, exist_ok=True)
    (ctrl / name).write_text(str(time.time()))
    return {"sample_now": "A sample will be made after the current step.",
            "save_now": "A checkpoint will be saved after the current step.",
            "stop": "Stopping after the current step (a checkpoint is saved)."}[name]


def continue_run(ctx, job_id: str | None, owner: str) -> str:
    """A new train job continuing the run of ``job_id`` from its last checkpoint."""
    if not job_id:
        raise UserError("no training run to continue")
    job = ctx.jobs.get(job_id, owner)
    if job.active:
        raise UserError("the run is still going")
    if not checkpoints(run_dir_of(job.out_dir)):
        raise UserError("this run has no checkpoint yet: start it again instead")
    if job.status.value in ("interrupted", "failed", "cancelled"):
        return ctx.jobs.resume(job_id, owner)
    req = dict(job.request or {})
    req["continue_run"] = str(run_dir_of(job.out_dir))
    return ctx.jobs.submit(owner, "train", req)


def hand_off(ctx, job_id: str | None, owner: str, lora: str | None) -> dict:
    """What "use in generator" passes to the Union tab: the checkpoint and the run's reference image."""
    if not lora:
        raise UserError("pick a checkpoint first")
    job = ctx.jobs.get(job_id, owner) if job_id else None
    run = run_dir_of(job.out_dir) if job else Path(lora).parents[2]
    lora_path = Path(_owned(ctx, owner, lora, "checkpoint"))
    ref = run / "validation" / "reference.png"
    if not ref.is_file():
        raise UserError("this run has no reference image yet (it is written before the first step)")
    step = lora_path.parent.name.removeprefix("step_").lstrip("0") or "0"
    return {"path": str(lora_path), "reference_image": str(ref), "name": f"run {run.parent.name[:8]} · step {step}"}


# ---------------------------------------------------------------------------------------------- the tab

def build(ctx):
    from pipelines.training.recipe import load_preset
    from studio.spaces import training_available

    available, why = training_available()
    face = load_preset("face")
    tiny = ctx.config.model == "tiny"
    if not available:
        gr.Markdown(f"⚠️ {why}", elem_id="train-unavailable")
    gr.Markdown("Train an identity IC-LoRA from 15-40 clips of one subject (a face, a pet, a product). "
                "The reference for each clip comes from another clip, so the LoRA learns the identity, not a copy."
                + (" **Tiny test model: random weights; the run exercises the whole path, samples are noise.**"
                   if tiny else ""))
    with gr.Row():
        with gr.Column(scale=3):
            files = gr.File(label="Clips (videos with optional caption .txt of the same name, or one .zip)",
                            file_count="multiple", file_types=CLIP_TYPES, elem_id="train-files")
            trigger = gr.Textbox(label="Trigger word (optional)", placeholder="e.g. sks person", elem_id="train-trigger")
            check = gr.Button("Check dataset", elem_id="train-check")
            report = gr.Markdown(elem_id="train-report")
            refs = gr.Gallery(label="References (target ← source clip)", columns=5, height=220,
                              elem_id="train-refs", object_fit="contain")
            with gr.Row():
                ref_clip = gr.Dropdown([], label="Replace the reference of clip", scale=2)
                ref_image = gr.Image(label="with this image", type="filepath", sources=["upload"], height=120,
                                     scale=2)
                ref_apply = gr.Button("Replace", size="sm", scale=1)
        with gr.Column(scale=3):
            with gr.Row():
                preset = gr.Dropdown(["face"], value="face", label="Preset")
                model = gr.Dropdown(_models(ctx), value=_models(ctx)[0], label="Base model")
            with gr.Row():
                steps = gr.Number(face.steps if not tiny else 40, label="Steps", precision=0, minimum=1,
                                  elem_id="train-steps")
                every = gr.Number(face.checkpoint_every if not tiny else 20, label="Checkpoint + sample every",
                                  precision=0, minimum=0, elem_id="train-every")
                rank = gr.Number(face.rank, label="Rank", precision=0, minimum=1)
                lr = gr.Number(face.lr, label="Learning rate", minimum=0)
            gr.Markdown(f"Face recipe: rank {face.rank}, alpha {face.alpha:g}, lr {face.lr:g}, checkpoints "
                        f"{'/'.join(str(s) for s in face.recommended_steps)}; 500 is the usual pick, 750-1000 "
                        "sharpen at the risk of overfitting.")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=available, elem_id="train-start")
                cont = gr.Button("Continue", interactive=available, elem_id="train-continue")
            with gr.Row():
                sample_now = gr.Button("Sample now", size="sm", elem_id="train-sample")
                save_now = gr.Button("Save now", size="sm", elem_id="train-save")
                stop = gr.Button("Stop", size="sm", variant="stop", elem_id="train-stop")
            progress = gr.HTML(progress_html(0, "no training run yet", "idle"), elem_id="train-progress")
            status = gr.Markdown(elem_id="train-status")
            plot = gr.LinePlot(x="step", y="loss", color="series", label="Loss", height=220, elem_id="train-loss")
            samples = gr.Gallery(label="Checkpoint samples (reference | sample)", columns=2, height=260,
                                 elem_id="train-samples")
            with gr.Row():
                ckpt = gr.Dropdown([], label="Checkpoint", elem_id="train-ckpt", scale=2)
                use = gr.Button("Use in generator", elem_id="train-use", scale=1)
            ckpt_file = gr.File(label="Checkpoint LoRA (ComfyUI-compatible .safetensors)", interactive=False)
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

    check.click(guard(do_check), [files, trigger, preset, model], [data, report, refs, ref_clip, overrides], **priv)

    def do_replace(path, clip, img, ov, trig, pre, model_, request: gr.Request):
        return replace_reference(ctx, ctx.owner(request), path, clip, img, ov, trig, pre, model_)

    ref_apply.click(guard(do_replace), [data, ref_clip, ref_image, overrides, trigger, preset, model], [refs, overrides],
                    **priv)

    def do_start(path, ov, trig, pre, model_, steps_, every_, rank_, lr_, request: gr.Request):
        if not available:
            raise UserError(why)
        if not path:
            raise UserError("check the dataset first (upload clips, then 'Check dataset')")
        overrides_ = {"steps": int(steps_), "checkpoint_every": int(every_), "sample_every": int(every_),
                      "rank": int(rank_), "alpha": float(rank_), "lr": float(lr_)}
        req = train_request({"preset": pre, "model": model_, "trigger": trig or None, "overrides": overrides_,
                             "reference_overrides": dict(ov or {})}, path)
        jid = ctx.jobs.submit(ctx.owner(request), "train", req)
        return jid, progress_html(0, "queued", "queued"), None

    start.click(guard(do_start), [data, overrides, trigger, preset, model, steps, every, rank, lr],
                [job_id, progress, sig], **priv)

    def do_continue(jid, request: gr.Request):
        return continue_run(ctx, jid, ctx.owner(request)), None

    cont.click(guard(do_continue), job_id, [job_id, sig], **priv)

    def poll(jid, s, request: gr.Request):
        return run_view(ctx, jid, ctx.owner(request), s)

    timer.tick(guard(poll), [job_id, sig], [progress, plot, samples, ckpt, status, sig], show_progress="hidden",
               **priv)
    def control(name):
        def fn(jid, request: gr.Request):
            return control_file(ctx, jid, ctx.owner(request), name)
        return guard(fn)

    for btn, name in ((sample_now, "sample_now"), (save_now, "save_now"), (stop, "stop")):
        btn.click(control(name), job_id, note, **priv)

    ckpt.change(lambda p: p or None, ckpt, ckpt_file, **priv)
    lora_state = ctx.shared.get("lora")

    def do_use(jid, lora, request: gr.Request):
        d = hand_off(ctx, jid, ctx.owner(request), lora)
        return d, f"Sent `{d['name']}` with its reference image to the Union tab: open it and generate."

    if lora_state is not None:
        use.click(guard(do_use), [job_id, ckpt], [lora_state, note], **priv)
    return {"files": files, "start": start, "job_id": job_id, "ckpt": ckpt}


def _models(ctx) -> list[str]:
    from pipelines.models.registry import discover

    names = [s.name for s in discover(ctx.models_dir) if s.ready]
    return names or ["tiny"]


__all__ = ["run_train_job", "register_jobs", "stage_dataset", "check_dataset", "replace_reference", "run_view", "checkpoints",
           "continue_run", "control_file", "hand_off", "loss_frame"]
