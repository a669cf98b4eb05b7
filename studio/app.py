"""The Gradio 6 app: a shell of tabs over one context (jobs, engine service). `build_app` makes the Blocks;
`launch` serves it. Named API endpoints (gr.api) accept the same request dicts the UI builds."""
from __future__ import annotations

import importlib
import logging

import gradio as gr

from pipelines.models.tiny import TINY_MODEL_NOTICE
from studio.context import StudioConfig, StudioContext, build_context
from studio.tabs import TABS
from studio.ui import CSS, guard

log = logging.getLogger("studio")


def _notice(ctx: StudioContext) -> str:
    from pipelines.models.registry import discover

    ready = [s for s in discover(ctx.models_dir) if s.ready and not s.is_tiny]
    if ctx.config.model == "tiny" or not ready:
        return f'<div class="tiny-notice" id="tiny-notice">⚠️ {TINY_MODEL_NOTICE}</div>'
    return ""


def build_app(ctx: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="IC-LoRA Studio") as demo:
        gr.Markdown("# IC-LoRA Studio · LTX-2.3")
        note = _notice(ctx)
        if note:
            gr.HTML(note)
        # Cross-tab hand-offs ("use this mask", "send result to ..."): per-session states any tab may read/write.
        ctx.shared.update(mask=gr.State(None), control_video=gr.State(None), lora=gr.State(None),
                          reference_image=gr.State(None), clip=gr.State(None))
        for name in TABS:
            try:
                mod = importlib.import_module(f"studio.tabs.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"studio.tabs.{name}":
                    raise
                continue
            if hasattr(mod, "register_jobs") and name not in ctx.registered:
                mod.register_jobs(ctx)
                ctx.registered.add(name)
            with gr.Tab(mod.TITLE, id=name):
                ctx.tabs.append((name, mod.build(ctx)))
        _api(ctx)
    return demo


def _api(ctx: StudioContext) -> None:
    """Named endpoints for gradio_client: submit / status / cancel / wait, same request dicts as the UI."""
    from pipelines.requests import GenerateRequest

    @guard
    def generate(request: dict, req: gr.Request) -> str:
        """Submit a generation (a GenerateRequest dict); returns the job id."""
        body = GenerateRequest.from_dict(request).validate()
        return ctx.jobs.submit(ctx.owner(req), "generate", body.to_dict())

    @guard
    def job(job_id: str, req: gr.Request) -> dict:
        """A job's status, progress, result and error."""
        return ctx.jobs.get(job_id, ctx.owner(req)).to_dict()

    @guard
    def wait(job_id: str, timeout: float, req: gr.Request) -> dict:
        """Block until the job ends (or timeout seconds) and return it."""
        owner = ctx.owner(req)
        ctx.jobs.get(job_id, owner)
        return ctx.jobs.wait(job_id, timeout=float(timeout), owner=owner).to_dict()

    @guard
    def cancel(job_id: str, req: gr.Request) -> bool:
        """Cancel a job you own."""
        return ctx.jobs.cancel(job_id, ctx.owner(req))

    @guard
    def jobs(limit: int, req: gr.Request) -> list:
        """Your jobs, newest first."""
        return [j.to_dict() for j in ctx.jobs.list(ctx.owner(req), limit=int(limit))]

    @guard
    def models() -> list:
        """Model registry status."""
        from pipelines.models.registry import discover

        return [s.to_dict() for s in discover(ctx.models_dir)]

    for fn in (generate, job, wait, cancel, jobs, models):
        gr.api(fn, api_name=fn.__name__)


def launch(config: StudioConfig, prevent_thread_lock: bool = False, quiet: bool = False):
    ctx = build_context(config)
    demo = build_app(ctx)
    auth = None
    if config.auth_file:
        from studio.auth import Authenticator

        auth = Authenticator(config.auth_file)
    demo.queue(default_concurrency_limit=None)
    allowed = [str(ctx.outputs_dir)] + [r for r in ctx.allowed_roots() if r != str(ctx.outputs_dir)]
    demo.launch(server_name=config.host, server_port=config.port, prevent_thread_lock=prevent_thread_lock,
                quiet=quiet, css=CSS, auth=auth, allowed_paths=allowed, max_file_size=config.max_file_size,
                show_error=False, footer_links=["api"])
    return demo, ctx
