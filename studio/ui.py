"""Small UI pieces the tabs share: the job panel (progress bar, latent preview, status), the model notice.
Gradio only; no tensor math."""
from __future__ import annotations

import html
import logging
import re
import secrets

import gradio as gr

from pipelines.errors import UserError

log = logging.getLogger("studio")


BAD = ("failed", "cancelled", "interrupted", "refused")


def progress_html(fraction: float, message: str, status: str) -> str:
    """The job panel's one line: status, what the job is doing (the stage it reports: "loading model", "encode
    prompt", "denoise step 3/8", "decode", "write", ...) and a bar that moves. A job that ended badly reads
    "failed: <reason>" (the reason in full, wrapped); "refused" is a request turned down before it was queued."""
    pct = max(0.0, min(1.0, float(fraction or 0))) * 100
    cls = "ok" if status == "done" else ("bad" if status in BAD else "")
    message = readable(message or "")
    if status in BAD:
        head = "not started" if status == "refused" else status
        label = f"{head}: {message}" if message else head
    else:
        label = f"{status} · {message} · {pct:.0f}%" if message and message != status else f"{status} · {pct:.0f}%"
    text = html.escape(label)
    return (f'<div class="job-progress {cls}" role="progressbar" aria-valuenow="{pct:.0f}" '
            f'data-status="{html.escape(status)}" title="{text}"><div class="bar" style="width:{pct:.1f}%"></div>'
            f'<span class="label">{text}</span></div>')


def readable(text: str) -> str:
    """A message as a person reads it: files in Gradio's upload cache (/tmp/gradio/<hash>/name.mp4) by name."""
    if not text:
        return text or ""
    from studio.routes import upload_dir

    root = re.escape(str(upload_dir()))
    return re.sub(root + r"/(?:[^\s'\"`,;()]*/)?([^/\s'\"`,;()]+)", r"\1", str(text))


def error_text(exc: Exception, fn=None) -> str:
    """What a person is told about an exception: a UserError's message (temp paths as file names); for anything
    else a short line with a log id, the traceback going to the server log."""
    if isinstance(exc, gr.Error):
        return readable(str(exc.message if hasattr(exc, "message") else exc))
    if isinstance(exc, UserError):
        return readable(str(exc))
    log_id = secrets.token_hex(4)
    log.error("internal error (log id %s) in %s", log_id, getattr(fn, "__name__", "handler"), exc_info=exc)
    return f"internal error (log id {log_id}); see the server log"


def error_md(message: str) -> str:
    """An error as the panel's markdown line (escaped: `<models_dir>` stays text, it is not an HTML tag)."""
    return f'<div class="panel-error">❌ {html.escape(message)}</div>'


def _shown(exc: Exception, fn) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    return gr.Error(html.escape(error_text(exc, fn)))  # toasts render HTML: escape, or "<dir>" eats the rest


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


def panel_guard(fn, n_outputs: int, at: int, render=None, on_error: dict | None = None):
    """Like ``guard``, but an error lands in ONE place of the panel instead of a toast plus a red badge on every
    output: output ``at`` gets ``render(message)`` (default: ``error_md``; pass ``refused`` for a job panel's
    progress line), every other output is left as it was, or set to ``on_error[index]`` (e.g. a job id cleared,
    so the panel's poll does not paint the previous job over the refusal). Plain and generator handlers."""
    import functools
    import inspect

    render = render or error_md

    def failed(exc):
        out = [gr.skip()] * n_outputs
        for i, v in (on_error or {}).items():
            out[i] = v
        out[at] = render(error_text(exc, fn))
        return out[0] if n_outputs == 1 else tuple(out)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                yield failed(exc)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            return failed(exc)

    return wrapper


def refused(message: str) -> str:
    """A job panel's progress line for a request refused before it was queued."""
    return progress_html(0, message, "refused")


CSS = """
.job-progress{position:relative;min-height:26px;border-radius:6px;background:var(--neutral-200,#e5e7eb);overflow:hidden}
.job-progress .bar{position:absolute;left:0;top:0;bottom:0;background:var(--color-accent,#f97316);transition:width .3s}
.job-progress.ok .bar{background:#16a34a}
.job-progress.bad{background:#fee2e2}.job-progress.bad .bar{background:#fca5a5}
.job-progress .label{position:relative;display:block;padding:0 8px;line-height:26px;font-size:13px;
  color:var(--body-text-color);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.job-progress.bad .label{white-space:normal;line-height:18px;padding:4px 8px;color:#7f1d1d}
.panel-error{border-left:3px solid #dc2626;background:#fef2f2;color:#7f1d1d;padding:6px 10px;border-radius:4px;
  font-size:14px}
.tiny-notice{border:1px solid #f59e0b;background:#fffbeb;color:#92400e;padding:8px 12px;border-radius:6px}
.demo-note{font-size:13px;color:var(--body-text-color-subdued,#6b7280)}
#train-report pre,#train-report code{white-space:pre-wrap !important;word-break:break-word}
.backends-table code{word-break:break-all}
"""
