"""The "Enhance prompt" button beside a prompt box: the loaded model's Gemma rewrites the prompt (a light job:
it never waits behind the GPU queue, studio.kinds.enhance), the text lands back in the box for the person to edit
before generating. Gradio wiring only."""
from __future__ import annotations

import gradio as gr

from studio.ui import error_md, panel_guard


def add_enhance_button(ctx, prompt, prefix: str, model=None, image=None):
    """A button + a note under `prompt`. `model` (a component holding the model name) and `image` (a component
    holding a frame path to look at: the first frame, a control) are optional."""
    with gr.Row():
        btn = gr.Button("Enhance prompt", size="sm", elem_id=f"{prefix}-enhance", scale=0, min_width=160)
        note = gr.Markdown(elem_id=f"{prefix}-enhance-note")

    def run(text, m, img, request):
        from studio.kinds.enhance import enhance_now

        if isinstance(img, dict):  # the Union tab's preprocess result: its conformed input clip (frame 0)
            img = img.get("input") or img.get("control")
        req = {"prompt": text or "", "model": m or ctx.config.model}
        if img:
            req["image"] = str(img)
        res = enhance_now(ctx, ctx.owner(request), req, timeout=900)
        parts = [f"Rewritten by the model's text encoder in {res['seconds']:.1f} s"
                 + (" (looking at the frame)" if res.get("used_image") else "") + ": edit it, then generate."]
        if res.get("notice"):
            parts.append(f"⚠️ {res['notice']}")
        return res["text"], "\n\n".join(parts)

    # Gradio passes gr.Request to a parameter annotated with it: one signature per set of inputs
    if model is not None and image is not None:
        def handler(text, m, img, request: gr.Request):
            return run(text, m, img, request)
    elif model is not None:
        def handler(text, m, request: gr.Request):
            return run(text, m, None, request)
    else:
        def handler(text, request: gr.Request):
            return run(text, None, None, request)

    inputs = [prompt] + ([model] if model is not None else []) + ([image] if image is not None else [])
    btn.click(panel_guard(handler, 2, 1, error_md), inputs, [prompt, note], api_visibility="private")
    return note
