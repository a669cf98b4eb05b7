"""The Gradio 6 app: a shell of tabs over one context (jobs, engine service). `build_app` makes the Blocks;
`launch` serves it. Named API endpoints (gr.api) accept the same request dicts the UI builds."""
from __future__ import annotations

import importlib
import logging

import gradio as gr

from pipelines.models.tiny import TINY_MODEL_NOTICE
from studio.context import StudioConfig, StudioContext, build_context
from studio.routes import install_path_checks
from studio.tabs import TABS
from studio.ui import CSS

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
        # Cross-tab hand-offs (the studio clip / control, the painter's mask, a trained LoRA): studio.handoff
        from studio.handoff import make_shared

        ctx.shared.update(make_shared())
        with gr.Tabs(elem_id="studio-tabs") as tabs:
            ctx.shared["tabs"] = tabs  # History's "Reuse settings" opens the tab a job came from
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
        from studio.api import install_api

        install_api(ctx)
    return demo


def launch(config: StudioConfig, prevent_thread_lock: bool = False, quiet: bool = False):
    """Build and serve the studio. Every check is in place before the first request is answered: the front
    door (studio.guard: file-route allow-list, cache-file ownership, login back-off, session revocation) is
    part of the server app from its creation, and the path checks wrap every job kind before serving."""
    from starlette.middleware import Middleware

    from studio.guard import StudioGuard

    ctx = build_context(config)
    demo = build_app(ctx)
    install_path_checks(ctx)  # every job's paths are checked against its owner's folders (UI, API, anything)
    auth = None
    if ctx.guard.authenticator is not None:
        authenticator = ctx.guard.authenticator

        async def auth(username: str, password: str) -> bool:  # a coroutine function: Gradio awaits it
            return await authenticator.check_async(username, password)

    demo.queue(default_concurrency_limit=None)
    allowed = [str(ctx.outputs_dir)] + [r for r in ctx.allowed_roots() if r != str(ctx.outputs_dir)]
    demo.launch(server_name=config.host, server_port=config.port, prevent_thread_lock=True,
                quiet=quiet, css=CSS, auth=auth, allowed_paths=allowed, max_file_size=config.max_file_size,
                show_error=False, footer_links=["api"],
                app_kwargs={"middleware": [Middleware(StudioGuard, state=ctx.guard)]})
    app = getattr(demo, "server_app", None) or demo.app
    if not any(m.cls is StudioGuard for m in getattr(app, "user_middleware", [])):
        demo.close()
        raise RuntimeError("the studio's front door (studio.guard.StudioGuard) is not installed; refusing to serve")
    if not prevent_thread_lock:
        demo.block_thread()
    return demo, ctx
