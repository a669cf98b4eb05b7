"""The Gradio 6 app: a shell of tabs over one context (jobs, engine service). `build_app` makes the Blocks;
`launch` serves it. Named API endpoints (gr.api) accept the same request dicts the UI builds."""
from __future__ import annotations

import importlib
import logging

import gradio as gr

from pipelines.models.tiny import TINY_MODEL_NOTICE
from studio.context import StudioConfig, StudioContext, build_context
from studio.routes import install_owner_checks, install_path_checks
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
        from studio.api import install_api

        install_api(ctx)
    return demo


def launch(config: StudioConfig, prevent_thread_lock: bool = False, quiet: bool = False):
    ctx = build_context(config)
    demo = build_app(ctx)
    install_path_checks(ctx)  # every job's paths are checked against its owner's folders (UI, API, anything)
    auth = None
    if config.auth_file:
        from studio.auth import Authenticator

        auth = Authenticator(config.auth_file)
    demo.queue(default_concurrency_limit=None)
    allowed = [str(ctx.outputs_dir)] + [r for r in ctx.allowed_roots() if r != str(ctx.outputs_dir)]
    demo.launch(server_name=config.host, server_port=config.port, prevent_thread_lock=prevent_thread_lock,
                quiet=quiet, css=CSS, auth=auth, allowed_paths=allowed, max_file_size=config.max_file_size,
                show_error=False, footer_links=["api"])
    install_owner_checks(demo, ctx)  # file routes: each user reads only their own outputs
    return demo, ctx
