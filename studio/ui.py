"""Small UI pieces the tabs share: the job panel (progress bar, latent preview, status), the model notice.
Gradio only; no tensor math."""
from __future__ import annotations

import html
import logging
import secrets

import gradio as gr

from pipelines.errors import UserError

log = logging.getLogger("studio")


def progress_html(fraction: float, message: str, status: str) -> str:
    pct = max(0.0, min(1.0, float(fraction or 0))) * 100
    cls = {"done": "ok", "failed": "bad", "cancelled": "bad", "interrupted": "bad"}.get(status, "")
    return (f'<div class="job-progress {cls}" role="progressbar" aria-valuenow="{pct:.0f}" '
            f'data-status="{html.escape(status)}"><div class="bar" style="width:{pct:.1f}%"></div>'
            f'<span class="label">{html.escape(status)} · {html.escape(message or "")} · {pct:.0f}%</span></div>')


def _shown(exc: Exception, fn) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, UserError):
        return gr.Error(str(exc))
    log_id = secrets.token_hex(4)
    log.error("internal error (log id %s) in %s", log_id, getattr(fn, "__name__", "handler"), exc_info=exc)
    return gr.Error(f"internal error (log id {log_id}); see the server log")


def guard(fn):
    """Wrap an event handler (plain or async): UserError -> gr.Error with its message; anything else ->
    logged, short message with a log id (never a traceback in the UI)."""
    import functools
    import inspect

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise _shown(exc, fn) from None

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _shown(exc, fn) from None

    return wrapper


def guard_gen(fn):
    """``guard`` for generator handlers: errors raised while iterating become gr.Error too (guard only sees
    the call, which for a generator does nothing). Gradio must still see a generator function."""
    import functools

    end = object()
    step = guard(lambda gen: next(gen, end))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gen = fn(*args, **kwargs)
        while (item := step(gen)) is not end:
            yield item

    return wrapper


CSS = """
.job-progress{position:relative;height:26px;border-radius:6px;background:var(--neutral-200,#e5e7eb);overflow:hidden}
.job-progress .bar{position:absolute;left:0;top:0;bottom:0;background:var(--color-accent,#f97316);transition:width .3s}
.job-progress.ok .bar{background:#16a34a}.job-progress.bad .bar{background:#dc2626}
.job-progress .label{position:relative;padding-left:8px;line-height:26px;font-size:13px;color:var(--body-text-color)}
.tiny-notice{border:1px solid #f59e0b;background:#fffbeb;color:#92400e;padding:8px 12px;border-radius:6px}
"""
