"""One-click actions under a result (Generate, Union control, History): A/B with and without the IC-LoRA, a sweep
of attention strengths, the upscale pass. Each submits its batch job at once and opens the Compare & upscale tab,
which shows it with one synced scrubber. Gradio wiring only (studio.kinds does the work)."""
from __future__ import annotations

import gradio as gr

from studio.ui import panel_guard, error_md

SWEEP_DEFAULT = [0.5, 0.8, 1.0]


def compare_state(ctx):
    """The shared hand-off to the Compare tab: {"job": the submitted job id, "source": the result's job id}."""
    return ctx.shared.setdefault("compare", gr.State(None))


def add_result_actions(ctx, job_id, prefix: str, upscale: bool = True):
    """A row of buttons acting on the finished generation whose id is in `job_id`; returns the note Markdown."""
    from studio.tabs.compare import source_request

    handed = compare_state(ctx)
    tabs = ctx.shared.get("tabs")
    with gr.Row():
        ab = gr.Button("A/B: without the IC-LoRA", size="sm", elem_id=f"{prefix}-ab")
        sweep = gr.Button(f"Sweep attention {' / '.join(f'{v:g}' for v in SWEEP_DEFAULT)}", size="sm",
                          elem_id=f"{prefix}-sweep")
        up = gr.Button("Upscale x2", size="sm", elem_id=f"{prefix}-upscale", visible=upscale)
    note = gr.Markdown(elem_id=f"{prefix}-actions-note")
    outputs = [handed, note] + ([tabs] if tabs is not None else [])

    def go(kind: str):
        def handler(jid, request: gr.Request):
            owner = ctx.owner(request)
            if kind == "upscale":
                from studio.kinds.upscale import submit_upscale

                new = submit_upscale(ctx, owner, {"source_job": jid})
            else:
                from studio.kinds.sweep import submit_sweep

                req = source_request(ctx, owner, jid)
                new = submit_sweep(ctx, owner, req, "ab" if kind == "ab" else "attention_strength",
                                   [] if kind == "ab" else SWEEP_DEFAULT)
            out = [{"job": new, "source": jid}, f"Queued as `{new[:8]}`: it plays in **Compare & upscale**."]
            return out + ([gr.Tabs(selected="compare")] if tabs is not None else [])

        return panel_guard(handler, len(outputs), 1, error_md)

    for btn, kind in ((ab, "ab"), (sweep, "sweep"), (up, "upscale")):
        btn.click(go(kind), job_id, outputs, api_visibility="private")
    return note
