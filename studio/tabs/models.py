"""Models tab: what is on this machine, per component, and the predicted VRAM of each memory tier."""
from __future__ import annotations

import gradio as gr

from pipelines.models.memory import estimate
from pipelines.models.registry import discover
from pipelines.requests import MemoryTier
from studio.ui import guard

TITLE = "Models"


def status_rows(models_dir) -> list[list]:
    rows = []
    for spec in discover(models_dir):
        for c in spec.components:
            rows.append([spec.name, spec.kind.value, "ready" if spec.ready else "missing files", c.name, c.expected,
                         "found" if c.found else "MISSING", c.path or ""])
    return rows


def tier_table(width: int, height: int, frames: int, refs: int) -> list[list]:
    return [[t.value, round(e.peak_gb, 1), round(e.weights_gb, 1), round(e.activations_gb, 2)]
            for t in MemoryTier if t != MemoryTier.AUTO
            for e in [estimate(t, int(width), int(height), int(frames), refs=int(refs), downscale=1)]]


def build(ctx):
    models_dir = ctx.models_dir
    gr.Markdown(f"Models folder: `{models_dir or '(none: pass --models-dir or set ICLORA_MODELS_DIR)'}`")
    table = gr.Dataframe(headers=["model", "kind", "status", "component", "expected", "found", "path"],
                         value=status_rows(models_dir), interactive=False, wrap=True, label="Model status")
    refresh = gr.Button("Rescan models folder", size="sm")
    refresh.click(guard(lambda: status_rows(models_dir)), outputs=table, api_visibility="private")
    gr.Markdown("### Memory tiers (predicted peak VRAM for real LTX-2.3, 22B)")
    with gr.Row():
        w = gr.Number(768, label="width", precision=0)
        h = gr.Number(512, label="height", precision=0)
        f = gr.Number(121, label="frames", precision=0)
        r = gr.Number(1, label="references", precision=0)
    tiers = gr.Dataframe(headers=["tier", "peak GB", "weights GB", "activations GB"], value=tier_table(768, 512, 121, 1),
                         interactive=False)
    for comp in (w, h, f, r):
        comp.change(guard(tier_table), [w, h, f, r], tiers, api_visibility="private")
