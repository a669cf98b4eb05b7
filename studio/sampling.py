"""The request fields every generating tab shares beyond size and prompt: Lightricks' Full-schedule guidance
(LTX_2_3_PARAMS: CFG, STG, rescale, modality, and the audio guider), the soundtrack switch, and images at any
frame (keyframes). One builder, so each tab shows the same controls with the official defaults and turns them
into GenerateRequest fields the same way; History's "Reuse settings" reads them back the same way too.

Gradio only; the defaults come from pipelines.requests.GenerateRequest (no numbers repeated here).
"""
from __future__ import annotations

import os
from dataclasses import fields as dc_fields

import gradio as gr

from pipelines.requests import GenerateRequest, KeyframeInput

KEYFRAME_ROWS = 3
_DEFAULTS = {f.name: f.default for f in dc_fields(GenerateRequest) if not callable(getattr(f, "default_factory", None))}


def _stg_default() -> str:
    return ", ".join(str(b) for b in GenerateRequest(prompt="x").stg_blocks)


class SamplingExtras:
    """Build inside a layout: an accordion of guidance controls (Full schedule), the soundtrack switch and
    keyframe rows. ``components`` go into an event's inputs (and History's reuse outputs), in this order."""

    def __init__(self, *, keyframes: bool = True, prefix: str = "x"):
        d = _DEFAULTS
        with gr.Accordion("Guidance (Full schedule) and soundtrack", open=False):
            gr.Markdown("Defaults are Lightricks' LTX-2.3 settings (ltx-pipelines `LTX_2_3_PARAMS`). Distilled runs "
                        "make one model pass per step and use none of these. On the built-in tiny model the "
                        "soundtrack is noise, like its video.", elem_classes=["demo-note"])
            with gr.Row():
                self.audio = gr.Checkbox(value=bool(d["audio"]), label="Soundtrack (generated with the video, AAC)",
                                         elem_id=f"{prefix}-audio")
                self.stg = gr.Slider(0.0, 5.0, value=d["stg_scale"], step=0.1, label="STG scale")
                self.stg_blocks = gr.Textbox(_stg_default(), label="STG blocks (of 48)", max_lines=1)
            with gr.Row():
                self.rescale = gr.Slider(0.0, 1.0, value=d["guidance_rescale"], step=0.05, label="Guidance rescale")
                self.modality = gr.Slider(1.0, 10.0, value=d["modality_scale"], step=0.5,
                                          label="Modality guidance (audio <-> video)")
                self.audio_cfg = gr.Slider(1.0, 15.0, value=d["audio_guidance_scale"], step=0.5, label="Audio CFG")
        self.keyframe_rows: list[tuple] = []
        if keyframes:
            with gr.Accordion("Images at other frames (keyframes)", open=False):
                gr.Markdown("The video shows each image at its frame (the first frame has its own image field).",
                            elem_classes=["demo-note"])
                for i in range(KEYFRAME_ROWS):
                    with gr.Row():
                        img = gr.Image(label=f"Keyframe {i + 1}", type="filepath", sources=["upload"], height=110,
                                       elem_id=f"{prefix}-kf{i}", min_width=220, scale=2)
                        frame = gr.Number(8 * (i + 1), label="Frame", precision=0, minimum=0, min_width=90)
                        strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength", min_width=120)
                    self.keyframe_rows.append((img, frame, strength))

    @property
    def components(self) -> list:
        rows = [c for row in self.keyframe_rows for c in row]
        return [self.audio, self.stg, self.stg_blocks, self.rescale, self.modality, self.audio_cfg, *rows]

    def fields(self, values: list) -> dict:
        """GenerateRequest keyword arguments from the components' values (same order as ``components``)."""
        from pipelines.errors import UserError

        if not values:  # a caller that sets none of them (a handler called directly): the request's defaults
            return {}
        audio, stg, blocks, rescale, modality, audio_cfg, *rows = values
        try:
            stg_blocks = [int(b) for b in str(blocks or "").replace(";", ",").split(",") if b.strip()]
        except ValueError:
            raise UserError(f"STG blocks must be block numbers separated by commas (got {blocks!r})") from None
        keyframes = []
        for i in range(0, len(rows), 3):
            img, frame, strength = rows[i:i + 3]
            if img:
                keyframes.append(KeyframeInput(path=img, frame=int(frame or 0), strength=float(strength)))
        return {"audio": bool(audio), "stg_scale": float(stg), "stg_blocks": stg_blocks,
                "guidance_rescale": float(rescale), "modality_scale": float(modality),
                "audio_guidance_scale": float(audio_cfg), "keyframes": keyframes}

    def values_from(self, r: GenerateRequest) -> list:
        """The components' values for a past request (History's "Reuse settings")."""
        vals = [r.audio, r.stg_scale, ", ".join(str(b) for b in r.stg_blocks), r.guidance_rescale, r.modality_scale,
                r.audio_guidance_scale]
        kfs: list[KeyframeInput] = list(r.keyframes)[:len(self.keyframe_rows)]
        for i in range(len(self.keyframe_rows)):
            if i < len(kfs):
                k = kfs[i]
                vals += [k.path if os.path.isfile(k.path) else None, k.frame, k.strength]
            else:
                vals += [None, 8 * (i + 1), 1.0]
        return vals
