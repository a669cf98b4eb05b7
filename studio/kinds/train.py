"""Job kind "train" (gpu lane, resumable): an identity IC-LoRA training run in the job's folder, plus what
submits and steers it: staging uploaded clips, the validated request, the trainer's control files, continuing
a run from its last checkpoint."""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from pipelines.errors import UserError

KIND = "train"
CLIP_TYPES = [".zip", ".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".txt", ".png", ".jpg", ".jpeg"]
# On the tiny test model the run is about exercising the path on a CPU in seconds, not about quality.
TINY_OVERRIDES = {"target_area": 64 * 64, "max_frames": 9, "gradient_checkpointing": False, "warmup_steps": 0,
                  "validation_width": 64, "validation_height": 64, "validation_frames": 9}


def owned_path(ctx, owner: str, path: str | None, what: str) -> str | None:
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
    from the last checkpoint of that run. ``gpus`` (default 1): train on that many GPUs of one host (torchrun,
    one process per GPU)."""
    return train_work(prepare_train(request, jc, ctx), jc)


def train_gpus(request: dict) -> int:
    """GPUs one training job takes (all on one host): the request's ``gpus``, at least 1."""
    try:
        return max(1, int(request.get("gpus") or 1))
    except (TypeError, ValueError):
        raise UserError(f"gpus must be a whole number, not {request.get('gpus')!r}") from None


def prepare_train(request: dict, jc, ctx) -> dict:
    """In the studio's process (it knows the owner's folders): the run folder and every path resolved, the
    TrainRequest checked. Returns what the training itself needs, on whichever worker runs it."""
    from pipelines.training.recipe import TrainRequest

    d = dict(request)
    gpus = train_gpus(d)
    d.pop("gpus", None)
    cont = d.pop("continue_run", None)
    if jc.resume_from is not None:
        run = run_dir_of(jc.resume_from)
    elif cont:
        run = Path(owned_path(ctx, jc.owner, cont, "continue_run"))
    else:
        run = Path(jc.out_dir) / "run"
    d["data"] = owned_path(ctx, jc.owner, d.get("data"), "data")
    d["validation_reference"] = owned_path(ctx, jc.owner, d.get("validation_reference"), "validation_reference")
    d["reference_overrides"] = {k: owned_path(ctx, jc.owner, v, f"reference for {k}")
                                for k, v in (d.get("reference_overrides") or {}).items()}
    d["out"] = str(run)
    d["resume"] = bool(jc.resume_from is not None or cont)
    d["models_dir"] = str(ctx.models_dir) if ctx.models_dir else None
    req = TrainRequest.from_dict(d)
    (Path(jc.out_dir) / "run_dir.txt").write_text(str(run))
    return {"train": req.to_dict(), "run": str(run), "gpus": gpus, "model": req.model}


def train_work(prepared: dict, jc, env=None) -> dict:
    """The training itself (any worker that sees the run folder). A second try after a lost worker continues
    from the run's last checkpoint."""
    from pipelines.training.recipe import TrainRequest
    from pipelines.training.trainer import TrainCallbacks, run_training

    run = Path(prepared["run"])
    d = dict(prepared["train"])
    if getattr(jc, "attempt", 1) > 1 and checkpoints(run):
        d["resume"] = True
    req = TrainRequest.from_dict(d)
    if int(prepared.get("gpus") or 1) > 1:
        return train_torchrun(req, int(prepared["gpus"]), jc)

    def progress(step, total, loss, s_per_step):
        eta = max(0, total - step) * s_per_step
        jc.progress(step / max(total, 1), f"step {step}/{total} · loss {loss:.4f} · {s_per_step:.2f} s/step · "
                                          f"ETA {duration(eta)}")

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


def train_torchrun(req, gpus: int, jc) -> dict:
    """Train on ``gpus`` GPUs of this host: ``torchrun --nproc_per_node gpus -m pipelines train --request FILE``
    (the accelerate path of the trainer; rank 0 writes every file). Progress comes from its step lines, a cancel
    becomes the run's ``control/stop`` file (a checkpoint is saved), the result is its JSON line."""
    import json
    import os
    import re
    import socket
    import subprocess
    import sys

    from pipelines.config import PROJECT_ROOT

    run = Path(req.out)
    run.mkdir(parents=True, exist_ok=True)
    request_file = run / "request-torchrun.json"
    request_file.write_text(json.dumps(req.to_dict()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback: they are on this host
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "pipelines", "train", "--request", str(request_file),
           "--json"]
    step_re = re.compile(r"step (\d+)/(\d+) loss ([0-9.naif]+) ([0-9.]+) s/step")
    jc.progress(0.0, f"starting {gpus} training processes (torchrun)")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(PROJECT_ROOT))
    tail: list[str] = []

    def read_stderr():
        for line in proc.stderr:
            tail.append(line)
            del tail[:-40]
            m = step_re.search(line)
            if m:
                step, total, sps = int(m.group(1)), int(m.group(2)), float(m.group(4))
                jc.progress(step / max(total, 1), f"step {step}/{total} · {gpus} GPUs · {sps:.2f} s/step · "
                                                  f"ETA {duration(max(0, total - step) * sps)}")
            elif line.startswith(("dataset:", "cache ")):
                jc.progress(jc.fraction, line.strip())

    import threading

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stop_sent = False
    while proc.poll() is None:
        if jc.cancelled and not stop_sent:
            (run / "control").mkdir(parents=True, exist_ok=True)
            (run / "control" / "stop").write_text("stop")  # the trainer stops after its step and saves
            stop_sent = True
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    out = proc.stdout.read()
    reader.join(timeout=5)
    if proc.returncode != 0:
        errors = [line.strip() for line in tail if line.startswith("error:")]
        if errors:
            raise UserError(errors[-1][len("error:"):].strip())
        raise RuntimeError(f"torchrun training exited with {proc.returncode}:\n{''.join(tail)}")
    res = _first_result(out)
    lora = run / "lora.safetensors"
    for sample in res.get("samples") or []:
        jc.add_output(sample)
    if lora.is_file():
        jc.add_output(lora)
    return {"run_dir": str(run), "lora": str(lora) if lora.is_file() else None, "step": res["step"],
            "total": res["total"], "stopped": res["stopped"], "seconds_per_step": res["seconds_per_step"],
            "samples": res.get("samples") or [], "checkpoints": res.get("checkpoints") or [], "gpus": gpus}


def _first_result(text: str) -> dict:
    """The first JSON object with a ``run_dir`` in the training processes' output (every rank prints one)."""
    import json

    dec = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict) and "run_dir" in obj:
            return obj
        i = text.find("{", end)
    raise RuntimeError(f"the training processes printed no result:\n{text[-2000:]}")


def train_request(fields: dict, data: str) -> dict:
    """A validated "train" job request from TrainRequest fields (no out/resume/models_dir: the job sets them)
    and a staged dataset path. On the tiny model the tiny-size overrides apply unless given."""
    from pipelines.training.recipe import TrainRequest

    d = {k: v for k, v in fields.items() if k not in ("data", "out", "resume", "models_dir", "continue_run", "gpus")}
    if d.get("model", "tiny") == "tiny":
        d["overrides"] = dict(TINY_OVERRIDES, **(d.get("overrides") or {}))
    req = TrainRequest.from_dict(dict(d, data=data, out="(job folder)")).to_dict()
    for k in ("out", "resume", "models_dir"):
        req.pop(k)
    if train_gpus(fields) > 1:  # several GPUs of one host (torchrun); one is the default and is not written
        req["gpus"] = train_gpus(fields)
    return req


def duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def stage_dataset(ctx, owner: str, files: list) -> Path:
    """Copy uploaded clips (or one .zip) into ``<outputs>/<owner>/datasets/<id>/``: uploads are temporary,
    a training run must be able to read its data for hours and again on resume."""
    from pipelines.files import atomic_copy
    from pipelines.training.dataset import check_zip

    if not files:
        raise UserError("no clips uploaded: add 15-40 videos of the subject (or one .zip), captions as .txt")
    paths = [Path(getattr(f, "name", f)) for f in files]
    for p in paths:
        if p.suffix.lower() not in CLIP_TYPES:
            raise UserError(f"{p.name}: not a clip, caption, image or .zip (accepted: {', '.join(CLIP_TYPES)})")
        if p.suffix.lower() == ".zip":
            check_zip(p)  # entries, sizes, ratio, links, names: refused before anything is copied
    dest = ctx.user_dir(owner, "datasets") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True, exist_ok=False)
    try:
        for p in paths:
            atomic_copy(p, dest / p.name)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # no half-staged dataset left behind
        raise
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips and len(paths) == 1:
        return dest / zips[0].name
    return dest


def submit_training(ctx, owner: str, files: list, fields: dict) -> str:
    """Stage the uploaded clips (or .zip) and submit a "train" job with ``fields`` (TrainRequest fields without
    data/out); a refused request leaves no staged copy behind."""
    data = stage_dataset(ctx, owner, files)
    try:
        return ctx.submit(owner, KIND, train_request(fields, str(data)))
    except BaseException:
        shutil.rmtree(staged_root(data), ignore_errors=True)
        raise


def staged_root(data: str | Path) -> Path:
    """The staging folder of a staged dataset (a staged .zip sits in it)."""
    data = Path(data)
    return data.parent if data.suffix.lower() == ".zip" else data


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
    return ctx.submit(owner, KIND, req)


def check_train(ctx, owner: str, request: dict) -> None:
    """At submit (and resume): the recipe's buckets, validation size and steps against the limits, and the
    dataset inside the owner's folders."""
    from pipelines.limits import active
    from pipelines.training.recipe import TrainRequest

    d = {k: v for k, v in request.items() if k not in ("continue_run", "gpus")}
    train_gpus(request)
    d["data"] = owned_path(ctx, owner, d.get("data"), "data")
    recipe = TrainRequest.from_dict(dict(d, out="(job folder)")).recipe()
    active().check_train(recipe)


def register(ctx) -> None:
    if KIND not in ctx.jobs.kinds:
        from studio.executors import WorkFn

        # the run folder is read and written while it trains (control files, checkpoints, samples): a remote
        # worker must see the outputs folder itself (same host, or --shared-dir)
        fn = WorkFn("studio.kinds.train:train_work", local=lambda prepared, jc: train_work(prepared, jc),
                    prepare=lambda req, jc: prepare_train(req, jc, ctx), gpus=lambda p: int(p.get("gpus") or 1),
                    model=lambda p: f"{p.get('model') or 'tiny'}/auto", needs_shared=True)
        ctx.jobs.register(KIND, fn, lane="gpu", resumable=True, check=lambda owner, req: check_train(ctx, owner, req))
