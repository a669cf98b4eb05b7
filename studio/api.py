"""Named API endpoints (gr.api) for gradio_client: the same request dicts the UI builds, the same job system.

    generate(request)                  -> job id      (a GenerateRequest dict; paths from `upload` or the assets)
    preprocess(clip, kind, w, h, n, fps, options) -> job id   (control video: canny / depth / pose / passthrough)
    tracks_render(tracks, w, h, frames) -> file       (the Motion-Track control video: a light job, waited for)
    enhance(request)                   -> result      (the model's Gemma rewrites a prompt: a light job, waited for)
    upscale(request)                   -> job id      (detail / upscale pass on a video or a finished job, x2)
    sweep(request, axis, values, columns) -> job id   (A/B with / without the IC-LoRA, strengths, seeds + grid mp4)
    train(dataset, request)            -> job id      (a .zip of clips + TrainRequest fields without data/out)
    train_control(job_id, action)      -> message     (sample_now / save_now / stop a running training)
    upload(file)                       -> server path (for the path fields of a request)
    job / wait / cancel / resume / jobs / models      (status, blocking wait, cancel, resume, list, registry)

Every endpoint works on the caller's own jobs and files only (the logged-in user with --auth).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import gradio as gr
from gradio import FileData

from pipelines.errors import UserError
from studio.ui import guard


def _path(f) -> str:
    p = f.get("path") if isinstance(f, dict) else getattr(f, "path", None)
    if not p:
        raise UserError("no file was sent (use gradio_client.handle_file(path))")
    return str(p)


API_CONCURRENCY = {"generate": 8, "sweep": 4, "enhance": 2, "upscale": 4, "upload": 4, "preprocess": 8, "tracks_render": 4, "train": 2, "resume": 4,
                   "train_control": 8}
MAX_OPEN_WAITS = 8        # /wait calls one user may hold open at once
MAX_WAIT_SECONDS = 3600.0  # the longest one /wait call blocks


class OpenCalls:
    """Per-user count of open blocking calls, refused past a cap (one user cannot hold the server's handlers)."""

    def __init__(self, cap: int):
        import threading

        self.cap, self._open, self._lock = cap, {}, threading.Lock()

    def __call__(self, owner: str):
        import contextlib

        @contextlib.contextmanager
        def held():
            with self._lock:
                if self._open.get(owner, 0) >= self.cap:
                    raise UserError(f"you already have {self.cap} /wait calls open; wait for one to return "
                                    "(or poll /job) before opening another")
                self._open[owner] = self._open.get(owner, 0) + 1
            try:
                yield
            finally:
                with self._lock:
                    self._open[owner] -= 1

        return held()


def install_api(ctx) -> None:
    from pipelines.requests import GenerateRequest
    from studio.routes import check_request_paths, checker_for

    waits = OpenCalls(MAX_OPEN_WAITS)

    @guard
    def generate(request: dict, req: gr.Request) -> str:
        """Submit a generation (a GenerateRequest dict); returns the job id."""
        owner = ctx.owner(req)
        ctx.limits.check_generate(request)  # sizes and counts first: 1000 controls are refused before any path
        body = GenerateRequest.from_dict(check_request_paths(request, checker_for(ctx, owner))).validate()
        return ctx.submit(owner, "generate", body.to_dict())

    @guard
    def sweep(request: dict, axis: str, values: list, columns: int, req: gr.Request) -> str:
        """Run a GenerateRequest several ways as one batch: axis "ab" (with and without its IC-LoRA, no values),
        "attention_strength" / "control_strength" (values in [0, 1]) or "seed"; returns the job id. The result
        holds every video, grid.mp4 (side by side, labelled) and the pairwise differences."""
        from studio.kinds.sweep import submit_sweep

        owner = ctx.owner(req)
        ctx.limits.check_generate(request)
        request = check_request_paths(request, checker_for(ctx, owner))
        return submit_sweep(ctx, owner, request, axis, values, columns)

    @guard
    def enhance(request: dict, req: gr.Request) -> dict:
        """Rewrite a short prompt with the loaded model's Gemma 3, in the style LTX-2.3 was trained on: request
        {"prompt", "model", "image" (optional: a frame to look at, path from /upload), "frame", "seed",
        "max_new_tokens", "temperature"}. Runs as a light job (never behind the GPU queue) and returns
        {"text", "raw", "seconds", "tokens", "used_image", "notice"}; on the tiny model the words are noise."""
        from studio.kinds.enhance import enhance_now

        owner = ctx.owner(req)
        request = check_request_paths(dict(request or {}), checker_for(ctx, owner))
        return enhance_now(ctx, owner, request)

    @guard
    def upscale(request: dict, req: gr.Request) -> str:
        """The detail / upscale pass (x2) on a video: request {"video" (a path from /upload or an output) or
        "source_job" (one of your finished generations), "mode": "spatial" | "detailer", "lora" (detailer),
        "prompt", "seed", "noise", "tile_width", "tile_height", "tile_frames", "overlap", "overlap_frames"};
        returns the job id. The result holds the upscaled video and the tile plan it ran."""
        owner = ctx.owner(req)
        request = check_request_paths(dict(request or {}), checker_for(ctx, owner))
        return ctx.submit(owner, "upscale", request)

    @guard
    def upload(file: FileData, req: gr.Request) -> str:
        """Keep an uploaded file in your uploads folder; returns the server path to put in a request."""
        from pipelines.files import atomic_copy

        src = Path(_path(file))
        dest = ctx.user_dir(ctx.owner(req), "uploads") / f"{uuid.uuid4().hex[:8]}-{src.name}"
        return str(atomic_copy(src, dest))  # whole or not at all (a full disk leaves no 0-byte file)

    @guard
    def preprocess(clip: FileData, kind: str, width: int, height: int, frames: int, fps: float, options: dict,
                   req: gr.Request) -> str:
        """Make a control video from a clip (a light job); returns the job id. options: canny low/high/blur,
        depth/passthrough invert, and "cleanup": {fps_mode, denoise, deflicker, temporal_smooth, edge_thickness,
        edge_contrast} (pipelines.control.cleanup)."""
        from studio.kinds.preprocess import submit_preprocess

        o = dict(options or {})
        return submit_preprocess(ctx, _path(clip), kind, o.get("low", 92), o.get("high", 200), o.get("blur", 0.0),
                                 o.get("invert", False), width, height, frames, fps, req, cleanup=o.get("cleanup"))

    @guard
    def tracks_render(tracks: FileData, width: int, height: int, frames: int, req: gr.Request) -> FileData:
        """Render a tracks JSON (ours, ComfyUI's splines or per-frame lists) to the Motion-Track control video, a
        lossless .mkv (FFV1, BGR as the LoRA expects) that a generate request's control reads exactly.
        Checked against the size limits first; rendered by a light job (never in this request thread)."""
        from studio.kinds.tracks import render_now

        return FileData(path=render_now(ctx, ctx.owner(req), {"tracks": _path(tracks), "width": width,
                                                               "height": height, "frames": frames}))

    @guard
    def train(dataset: FileData, request: dict, req: gr.Request) -> str:
        """Start an IC-LoRA training from a .zip of clips; request: TrainRequest fields (preset, model, trigger,
        overrides, ...) without data/out. Returns the job id; the result holds the exported LoRA's path."""
        from studio.spaces import training_available
        from studio.kinds.train import submit_training

        ok, why = training_available()
        if not ok:
            raise UserError(why)
        owner = ctx.owner(req)
        request = check_request_paths(dict(request or {}), checker_for(ctx, owner))  # before anything is read
        return submit_training(ctx, owner, [_path(dataset)], request)

    @guard
    def train_control(job_id: str, action: str, req: gr.Request) -> str:
        """Ask a running training to sample_now, save_now or stop after its current step."""
        from studio.kinds.train import control_file

        if action not in ("sample_now", "save_now", "stop"):
            raise UserError("action must be sample_now, save_now or stop")
        return control_file(ctx, job_id, ctx.owner(req), action)

    @guard
    def job(job_id: str, req: gr.Request) -> dict:
        """A job's status, progress, result and error."""
        return ctx.jobs.get(job_id, ctx.owner(req)).to_dict()

    @guard
    async def wait(job_id: str, timeout: float, req: gr.Request) -> dict:
        """Block until the job ends (or timeout seconds, at most an hour) and return it."""
        import asyncio

        owner = ctx.owner(req)
        deadline = time.monotonic() + min(max(0.0, float(timeout)), MAX_WAIT_SECONDS)
        with waits(owner):  # a coroutine: an open wait holds no server thread, and one user holds few
            while True:
                job = ctx.jobs.get(job_id, owner)
                if job.status.terminal:
                    return job.to_dict()
                if time.monotonic() >= deadline:
                    raise UserError(f"job {job_id} still {job.status.value} after {float(timeout):g} s")
                await asyncio.sleep(0.25)

    @guard
    def cancel(job_id: str, req: gr.Request) -> bool:
        """Cancel a job you own."""
        return ctx.jobs.cancel(job_id, ctx.owner(req))

    @guard
    def resume(job_id: str, req: gr.Request) -> str:
        """Resume an interrupted / failed / cancelled training from its last checkpoint; returns the new job id."""
        return ctx.jobs.resume(job_id, ctx.owner(req))

    @guard
    def jobs(limit: int, req: gr.Request) -> list:
        """Your jobs, newest first."""
        return [j.to_dict() for j in ctx.jobs.list(ctx.owner(req), limit=int(limit))]

    @guard
    def workers(req: gr.Request) -> list:
        """Where jobs run: each worker (this process, or each Ray actor) with its host, GPUs, state, model,
        memory, and its job (yours by id; another user's only by kind)."""
        return ctx.jobs.workers(viewer=ctx.owner(req))

    @guard
    def models() -> list:
        """Model registry status."""
        from pipelines.models.registry import discover

        return [s.to_dict() for s in discover(ctx.models_dir)]

    # Handlers that read or write files or probe inputs run at most a few at once (Gradio runs plain functions
    # on a 40-thread pool shared by everyone); status calls and the coroutine /wait are unlimited.
    for fn in (generate, sweep, enhance, upscale, upload, preprocess, tracks_render, train, train_control, job, wait,
               cancel, resume, jobs, models, workers):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=API_CONCURRENCY.get(fn.__name__),
               concurrency_id=f"api-{fn.__name__}")
