"""Mask painter tab: paint (or shape) an attention mask over a frame of the clip, keyframe it in time, see it at
pixel resolution AND as the model sees it (one weight per latent token), and hand it to the generators.

The painting is the alpha of the ImageMask's layer (GRADIO.md); keyframes are target-size masks kept in a
gr.State; pipelines.mask_ui / pipelines.masks do all the math. "Use this mask" writes the REFERENCE-size mask
(F, H/D, W/D) float32 .npy into the user's outputs folder and puts its path in the shared "mask" state.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np

from pipelines import mask_ui, masks
from pipelines.errors import UserError
from studio.ui import guard, panel_guard, progress_html, refused

TITLE = "Mask painter"
IMAGE_SUFFIXES = masks.IMAGE_SUFFIXES  # what the mask importer reads as images
KEY_HEADERS = ["frame", "painted", "mean"]


# ----------------------------------------------------------------------------------------------- plain handlers
# Module-level and gradio-free in their arguments, so tests call them directly.

def _target(width, height, frames, downscale=1) -> tuple[int, int, int, int]:
    try:
        w, h, f, d = int(width), int(height), int(frames), int(downscale)
    except (TypeError, ValueError):
        raise UserError("width, height, frames and D must be whole numbers") from None
    masks.reference_pixel_size(h, w, d)  # multiples of 32*D, with a clear message
    if f < 1 or (f - 1) % 8:
        raise UserError(f"frames is {f}; it must be 8n+1 (9, 17, ..., 121) so the mask maps onto latent frames")
    from pipelines.limits import active

    active().check_video("mask", w, h, f)  # every handler sizes its arrays from these: check them first
    return w, h, f, d


def source_frame_count(source: str | None) -> int:
    if not source:
        return 1
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        return 1
    from pipelines.video_io import probe

    return probe(source).frames


def read_frame(source: str | None, t: int, width: int, height: int) -> np.ndarray:
    """Frame t of the clip (or the image, or a blank checker) fitted to the target size, uint8 RGB."""
    if not source:
        return mask_ui.blank_frame(width, height)
    from pipelines.limits import probe_image_input, probe_video_input

    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        from pipelines.video_io import read_image

        probe_image_input(source, "image", decode=False)
        return mask_ui.fit_frame(read_image(source), width, height)
    from pipelines.video_io import read_video

    info = probe_video_input(source, "clip", frames=int(t) + 1)  # what decoding up to frame t costs
    # each frame fitted as it is decoded: frame t of a 4K clip never holds t full-size frames in memory
    frames, _ = read_video(source, max_frames=int(t) + 1, info=info,
                           frame_fn=lambda f: mask_ui.fit_frame(f, width, height))
    return frames[min(int(t), len(frames) - 1)]


def read_frames(source: str | None, frames: int, width: int, height: int) -> np.ndarray:
    """(frames, H, W, 3) of the clip at the target size, the last frame held when the clip is shorter."""
    if not source or Path(source).suffix.lower() in IMAGE_SUFFIXES:
        one = read_frame(source, 0, width, height)
        return np.repeat(one[None], frames, axis=0)
    from pipelines.limits import probe_video_input
    from pipelines.video_io import read_video, resize_cover_crop

    info = probe_video_input(source, "clip", frames=frames)
    # each frame resized as it is decoded (the same cv2 call resize_cover_crop makes for the whole clip)
    clip, _ = read_video(source, max_frames=frames, info=info,
                         frame_fn=lambda f: resize_cover_crop(f[None], width, height)[0][0])
    idx = np.minimum(np.arange(frames), len(clip) - 1)
    return np.ascontiguousarray(clip[idx])


def load_frame(source, t, width, height, keys, editor) -> dict:
    """The editor value for frame t: its keyframe mask if one is set there, else the current painting."""
    w, h = int(width), int(height)
    frame = read_frame(source, int(t), w, h)
    keys = keys or {}
    alpha = keys[int(t)] if int(t) in keys else mask_ui.alpha_from_editor(editor, w, h)
    return mask_ui.editor_value(frame, alpha, mask_ui.editor_scale(w, h))


def _background(editor, width, height) -> np.ndarray:
    """The editor's background back at the target size (for re-showing it with a new layer)."""
    bg = (editor or {}).get("background")
    if bg is None:
        return mask_ui.blank_frame(width, height)
    bg = np.asarray(bg)
    return mask_ui.fit_frame(bg[..., :3], width, height)


def add_shape(editor, kind, x, y, w, h, value, width, height) -> dict:
    W, H = int(width), int(height)
    shape = mask_ui.shape_from_box(kind, float(x), float(y), float(w), float(h), float(value))
    alpha = mask_ui.paint_shapes(mask_ui.alpha_from_editor(editor, W, H), [shape])
    return mask_ui.editor_value(_background(editor, W, H), alpha, mask_ui.editor_scale(W, H))


def clear_paint(editor, width, height) -> dict:
    W, H = int(width), int(height)
    return mask_ui.editor_value(_background(editor, W, H), np.zeros((H, W), np.float32), mask_ui.editor_scale(W, H))


def set_keyframe(editor, keys, t, width, height, frames) -> tuple[dict, list]:
    W, H, F, _ = _target(width, height, frames)
    t = int(t)
    if not 0 <= t < F:
        raise UserError(f"frame {t} is outside the mask's {F} frames (0..{F - 1})")
    keys = dict(keys or {})
    keys[t] = mask_ui.alpha_from_editor(editor, W, H)
    return keys, keyframe_table(keys)


def remove_keyframe(keys, t) -> tuple[dict, list]:
    keys = dict(keys or {})
    if int(t) not in keys:
        raise UserError(f"there is no keyframe at frame {int(t)}; keyframes: "
                        f"{', '.join(str(k) for k in sorted(keys)) or 'none'}")
    del keys[int(t)]
    return keys, keyframe_table(keys)


def keyframe_table(keys) -> list:
    return [r.as_list() for r in mask_ui.keyframe_rows(keys or {})]


def compute(editor, keys, width, height, frames, downscale, strength, fade_in, fade_out, invert, feather):
    """(spec, pixel mask at target (F,H,W), reference mask (F,H/D,W/D), latent weights x strength (f,h,w))."""
    W, H, F, D = _target(width, height, frames, downscale)
    spec = mask_ui.build_spec(W, H, F, keys, mask_ui.alpha_from_editor(editor, W, H), strength=float(strength),
                              fade_in=int(fade_in or 0), fade_out=int(fade_out or 0), invert=bool(invert),
                              feather=float(feather or 0))
    pixels, reference = mask_ui.reference_mask(spec, D)
    weights = masks.latent_weights(reference) * np.float32(spec.strength)
    return spec, pixels, reference, weights


def preview(source, editor, keys, t, width, height, frames, downscale, strength, fade_in, fade_out, invert, feather):
    """(pixel overlay, latent overlay, latent weights table, summary markdown) at frame t."""
    spec, pixels, reference, weights = compute(editor, keys, width, height, frames, downscale, strength, fade_in,
                                               fade_out, invert, feather)
    t = min(max(int(t), 0), spec.frames - 1)
    frame = read_frame(source, t, spec.width, spec.height)
    scale = mask_ui.editor_scale(spec.width, spec.height, min_long_side=384)
    lt = mask_ui.latent_frame_index(t)
    pix = mask_ui.pixel_overlay(frame, pixels[t], scale)
    lat = mask_ui.latent_overlay(frame, weights[lt], scale)
    f, lh, lw = weights.shape
    note = (f"Frame {t} → latent frame {lt} of {f}. Reference {reference.shape[2]}x{reference.shape[1]} px "
            f"(D={int(downscale)}) → {lw}x{lh} tokens per latent frame. Weights = strength {spec.strength:g} × "
            f"area average; mean {float(weights.mean()):.3f}. "
            + ("Keyframes: " + ", ".join(str(k) for k in sorted(keys)) if keys else
               "No keyframes: the current painting is used for every frame."))
    return pix, lat, mask_ui.weights_table(weights[lt]), note


def save_mask(editor, keys, width, height, frames, downscale, strength, fade_in, fade_out, invert, feather,
              out_dir: str | Path) -> tuple[str, str]:
    """Write the REFERENCE-size mask (F,H/D,W/D) float32 .npy into out_dir; (path, summary markdown)."""
    spec, _, reference, weights = compute(editor, keys, width, height, frames, downscale, strength, fade_in,
                                          fade_out, invert, feather)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"mask-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}.npy"
    masks.save_npy(np.ascontiguousarray(reference, dtype=np.float32), path)
    s = masks.summary(reference)
    md = (f"Saved **{path.name}**: {s['shape'][0]} frames × {s['shape'][1]}×{s['shape'][2]} px (reference size, "
          f"D={int(downscale)}), mean {s['mean']:.3f}. Attention strength {spec.strength:g} goes with the request. "
          f"The generators use it now.")
    return str(path), md


def control_clip(source, frames, width, height, downscale, out_dir) -> str:
    """The control (reference) clip for a quick generation: the user's video as is (the engine conforms it), or
    the image / blank frame held for `frames` frames at the reference size."""
    if source and Path(source).suffix.lower() not in IMAGE_SUFFIXES:
        return str(source)
    from pipelines.video_io import write_video

    rh, rw = masks.reference_pixel_size(int(height), int(width), int(downscale))
    clip = read_frames(source, int(frames), rw, rh)
    path = Path(out_dir) / f"control-{time.time_ns()}.mp4"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_video(path, clip, 24.0)
    return str(path)


def generate_request(prompt, mask_path, control, width, height, frames, strength, model="tiny", lora=None,
                     seed=0) -> dict:
    """The "generate" job request for a painted mask: control clip + mask + attention strength."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    if isinstance(lora, dict):  # the shared "lora" hand-off (Face trainer) carries the path and its reference
        lora = lora.get("path")
    req = GenerateRequest(prompt=prompt or "", model=model, width=int(width), height=int(height),
                          frames=int(frames), fps=24.0, seed=int(seed), controls=[ControlInput(path=str(control))],
                          mask=str(mask_path), attention_strength=float(strength),
                          loras=[LoraSpec(path=str(lora))] if lora else [])
    return req.validate().to_dict()


# ----------------------------------------------------------------------------------------------- the tab

def _user_dir(ctx, request, sub: str) -> Path:
    return ctx.user_dir(ctx.owner(request), sub)


def build(ctx):
    from studio import handoff

    shared = getattr(ctx, "shared", {}) or {}
    clip_state = shared.get("clip")
    mask_state = shared.get("mask")
    lora_state = shared.get("lora")
    size = handoff.default_size(ctx)
    w0, h0, f0 = size.width, size.height, size.frames
    ic_options, default_ic = handoff.lora_choices(ctx, "union")
    ic_options = [(handoff.NONE, handoff.NONE)] + ic_options
    default_ic = default_ic or handoff.NONE
    d0 = handoff.downscale_of(default_ic)  # the mask is painted for the generator's IC-LoRA: same D by default

    source = gr.State(None)
    studio_control = gr.State(None)  # the studio clip's control video, when the source is the studio clip
    keys = gr.State({})
    priv = {"api_visibility": "private"}
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                upload = gr.UploadButton("Upload a clip or image to paint on (optional)", file_types=["image", "video"],
                                         size="sm", elem_id="mask-upload", scale=1)
                use_clip = gr.Button("Use the studio clip (size, frames and control from Union)", size="sm",
                                     elem_id="mask-use-clip", scale=1)
            src_note = gr.Markdown("No clip: painting on a blank frame.", elem_id="mask-src-note")
            with gr.Row():
                frame = gr.Slider(0, f0 - 1, value=0, step=1, label="Frame", elem_id="mask-frame", scale=4)
                load = gr.Button("Load frame", elem_id="mask-load", scale=1)
            editor = gr.ImageMask(type="numpy", layers=False, format="png", label="Paint the mask (painted = control "
                                  "applies). The brush's shade is its value: brightest 1, then 0.75, 0.5, 0.25 "
                                  "(different strengths in different regions); eraser = 0; feather softens it.",
                                  image_mode="RGBA", sources=["upload"], transforms=(), elem_id="mask-editor",
                                  brush=gr.Brush(colors=[mask_ui.paint_hex(v) for v in mask_ui.PAINT_LEVELS],
                                                 default_color=mask_ui.paint_hex(1.0), color_mode="fixed",
                                                 default_size=24),
                                  eraser=gr.Eraser(default_size=24), canvas_size=(576, 384), height=460)
            paint_msg = gr.Markdown(elem_id="mask-paint-msg")
            with gr.Accordion("Shapes (by numbers, target pixels)", open=False):
                with gr.Row():
                    kind = gr.Radio(["rect", "ellipse"], value="rect", label="Shape")
                    sx = gr.Number(0, label="x", precision=1)
                    sy = gr.Number(0, label="y", precision=1)
                    sw = gr.Number(w0 // 2, label="width", precision=1)
                    sh = gr.Number(h0 // 2, label="height", precision=1)
                    sval = gr.Slider(0, 1, value=1, step=0.05, label="Value (0 cuts a hole)")
                with gr.Row():
                    add = gr.Button("Add shape", size="sm")
                    clear = gr.Button("Clear painting", size="sm")
            with gr.Row():
                set_key = gr.Button("Set keyframe at this frame", variant="secondary", elem_id="mask-setkey")
                del_key = gr.Button("Remove keyframe at this frame", elem_id="mask-delkey")
            key_table = gr.Dataframe(headers=KEY_HEADERS, value=[], interactive=False, label="Keyframes "
                                     "(interpolated linearly; held before the first and after the last)",
                                     elem_id="mask-keys", max_height=160)
        with gr.Column(scale=2):
            size_md = gr.Markdown(handoff.size_note(d0), elem_id="mask-size-note")
            with gr.Row():
                width = gr.Number(w0, label="Target width", precision=0, minimum=32, step=32, elem_id="mask-width")
                height = gr.Number(h0, label="Target height", precision=0, minimum=32, step=32, elem_id="mask-height")
                frames = gr.Number(f0, label="Frames (8n+1)", precision=0, minimum=1, step=8, elem_id="mask-frames")
                down = gr.Dropdown([1, 2], value=d0, label="D (reference downscale)", elem_id="mask-d")
            with gr.Row():
                fade_in = gr.Number(0, label="Fade in (frames)", precision=0, minimum=0)
                fade_out = gr.Number(0, label="Fade out (frames)", precision=0, minimum=0)
                feather = gr.Slider(0, 32, value=0, step=0.5, label="Feather (px)")
            with gr.Row():
                strength = gr.Slider(0, 1, value=1, step=0.05, label="Attention strength", elem_id="mask-strength")
                invert = gr.Checkbox(False, label="Invert")
            show = gr.Button("Update preview", elem_id="mask-preview-btn")
            with gr.Row():
                pix_img = gr.Image(label="Mask over the frame (pixels)", format="png", interactive=False,
                                   elem_id="mask-pix", height=200)
                lat_img = gr.Image(label="What the model sees (one weight per latent token)", format="png",
                                   interactive=False, elem_id="mask-lat", height=200)
            weights_df = gr.Dataframe(label="Latent weights, this frame (rows × columns of tokens)",
                                      interactive=False, elem_id="mask-weights", max_height=180)
            note = gr.Markdown(elem_id="mask-note")
            with gr.Row():
                render = gr.Button("Play preview (video)", size="sm")
                use = gr.Button("Use this mask", variant="primary", elem_id="mask-use")
            saved = gr.Markdown(elem_id="mask-saved")
            play = gr.Video(label="Preview: pixels | latent tokens", interactive=False, height=180,
                            elem_id="mask-play")
            npy_file = gr.File(label="Download mask (.npy)", interactive=False, elem_id="mask-file", height=80,
                               visible=False)  # shown with the first saved mask (an empty drop box says nothing)
            with gr.Accordion("Generate with this mask", open=False):
                prompt = gr.Textbox("a person dancing on a stage, spotlight", label="Prompt", lines=2,
                                    elem_id="mask-prompt")
                ic = gr.Dropdown(ic_options, value=default_ic, label="IC-LoRA (its D sets the mask's D)",
                                 elem_id="mask-ic")
                gen = gr.Button("Generate with this mask", variant="primary", elem_id="mask-gen")
                progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="mask-progress")
                gen_video = gr.Video(label="Result", interactive=False, elem_id="mask-gen-video")
                gen_status = gr.Markdown()
    job_id = ctx.job_state("masks")
    timer = gr.Timer(1.0)

    params = [editor, keys, width, height, frames, down, strength, fade_in, fade_out, invert, feather]

    # ---- source ----
    def on_upload(path):
        n = source_frame_count(path)
        name = Path(path).name if path else None
        md = (f"Painting on **{name}** ({n} frame{'s' if n != 1 else ''}; frames past its end hold the last one)."
              if path else "No clip: painting on a blank frame.")
        return path, md, None

    upload.upload(panel_guard(on_upload, 3, 1), upload, [source, src_note, studio_control], **priv)

    def on_frames(f):
        try:
            n = max(int(f), 2)
        except (TypeError, ValueError):
            return gr.update()
        return gr.update(maximum=n - 1)

    frames.change(on_frames, frames, frame, show_progress="hidden", **priv)

    def on_use_clip(clip, editor_, keys_):
        """The studio clip, with its size, frames and D: the mask then fits the control it goes with."""
        if not clip:
            raise UserError("no studio clip yet: make a control in the Union control tab (or upload a clip here)")
        w, h, n, d = int(clip["width"]), int(clip["height"]), int(clip["frames"]), int(clip.get("downscale", 1))
        ed = load_frame(clip["clip"], 0, w, h, {}, None)
        return (clip["clip"], handoff.clip_text(clip) + " The mask is painted at this size.", clip.get("control"),
                w, h, n, d, ed, {}, [], gr.update(maximum=max(1, n - 1), value=0))

    if clip_state is not None:
        use_clip.click(panel_guard(on_use_clip, 11, 1),
                       [clip_state, editor, keys],
                       [source, src_note, studio_control, width, height, frames, down, editor, keys, key_table, frame],
                       **priv)
    else:
        use_clip.visible = False

    def on_down(d):
        return handoff.size_note(int(d))

    down.change(guard(on_down), down, size_md, show_progress="hidden", **priv)
    ic.change(lambda p: handoff.downscale_of(p), ic, down, **priv)

    load.click(panel_guard(lambda *a: (load_frame(*a), ""), 2, 1), [source, frame, width, height, keys, editor],
               [editor, paint_msg], **priv)

    # ---- painting ----
    add.click(panel_guard(lambda *a: (add_shape(*a), ""), 2, 1), [editor, kind, sx, sy, sw, sh, sval, width, height],
              [editor, paint_msg], **priv)
    clear.click(panel_guard(lambda *a: (clear_paint(*a), ""), 2, 1), [editor, width, height], [editor, paint_msg],
                **priv)
    set_key.click(panel_guard(lambda *a: set_keyframe(*a) + ("",), 3, 2),
                  [editor, keys, frame, width, height, frames], [keys, key_table, paint_msg], **priv)
    del_key.click(panel_guard(lambda *a: remove_keyframe(*a) + ("",), 3, 2), [keys, frame],
                  [keys, key_table, paint_msg], **priv)

    # ---- preview ----
    pv_inputs = [source, editor, keys, frame, width, height, frames, down, strength, fade_in, fade_out, invert, feather]
    pv_outputs = [pix_img, lat_img, weights_df, note]
    show.click(panel_guard(preview, 4, 3), pv_inputs, pv_outputs, **priv)
    for comp in (strength, invert, fade_in, fade_out, down):
        comp.change(panel_guard(preview, 4, 3), pv_inputs, pv_outputs, show_progress="hidden", **priv)
    set_key.click(panel_guard(preview, 4, 3), pv_inputs, pv_outputs, show_progress="hidden", **priv)

    def on_render(src, editor_, keys_, width_, height_, frames_, down_, strength_, fade_in_, fade_out_, invert_,
                  feather_, request: gr.Request):
        spec, pixels, _, weights = compute(editor_, keys_, width_, height_, frames_, down_, strength_, fade_in_,
                                           fade_out_, invert_, feather_)
        from pipelines.video_io import write_video

        strip = mask_ui.preview_strip(read_frames(src, spec.frames, spec.width, spec.height), pixels, weights)
        out = _user_dir(ctx, request, "masks") / f"preview-{time.time_ns()}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_video(out, strip, 12.0)
        return str(out), ""

    render.click(panel_guard(on_render, 2, 1), [source] + params, [play, note], **priv)

    # ---- hand-off: the mask goes with its size, frames and D, checked against the studio clip ----
    def handed(path, width_, height_, frames_, down_, strength_):
        return {"path": path, "width": int(width_), "height": int(height_), "frames": int(frames_),
                "downscale": int(down_), "strength": float(strength_)}

    def on_use(clip, editor_, keys_, width_, height_, frames_, down_, strength_, fade_in_, fade_out_, invert_,
               feather_, request: gr.Request):
        handoff.check_clip_for_mask(clip, width_, height_, frames_, down_)
        path, md = save_mask(editor_, keys_, width_, height_, frames_, down_, strength_, fade_in_, fade_out_, invert_,
                             feather_, out_dir=_user_dir(ctx, request, "masks"))
        return (handed(path, width_, height_, frames_, down_, strength_), gr.update(value=path, visible=True),
                md + " Open **Union control**: 'Use painter mask' is on there.")

    clip_in = clip_state if clip_state is not None else gr.State(None)
    use.click(panel_guard(on_use, 3, 2), [clip_in] + params,
              [mask_state if mask_state is not None else gr.State(), npy_file, saved], **priv)

    def on_generate(prompt, src, ctl, lora, ic_path, editor_, keys_, width_, height_, frames_, down_, strength_,
                    fade_in_, fade_out_, invert_, feather_, request: gr.Request):
        out_dir = _user_dir(ctx, request, "masks")
        lora_path = (lora or {}).get("path") if isinstance(lora, dict) else lora
        lora_path = lora_path or (ic_path if ic_path and ic_path != handoff.NONE else None)
        d_lora = handoff.downscale_of(lora_path)
        if int(down_) != d_lora:
            raise UserError(f"D is {int(down_)} but the IC-LoRA {handoff.lora_label(lora_path)} has D={d_lora}: set D "
                            f"to {d_lora} (the mask is painted at the reference size W/D x H/D)")
        path, md = save_mask(editor_, keys_, width_, height_, frames_, down_, strength_, fade_in_, fade_out_, invert_,
                             feather_, out_dir=out_dir)
        control = ctl or control_clip(src, frames_, width_, height_, down_, out_dir)
        req = generate_request(prompt, path, control, width_, height_, frames_, strength_, model=ctx.config.model,
                               lora=lora_path)
        jid = ctx.submit(ctx.owner(request), "generate", req)
        return (jid, handed(path, width_, height_, frames_, down_, strength_), gr.update(value=path, visible=True), md,
                progress_html(0, "waiting for its turn", "queued"))

    gen.click(panel_guard(on_generate, 5, 4, refused, {0: None}),
              [prompt, source, studio_control, lora_state if lora_state is not None else gr.State(), ic] + params,
              [job_id, mask_state if mask_state is not None else gr.State(), npy_file, saved, progress], **priv)

    shown = gr.State(None)  # a finished job painted once is left alone (see generate.wire_job_panel)

    def poll(jid, already, request: gr.Request):
        from studio.tabs.generate import job_ended, job_view

        if jid and already == jid:
            return gr.skip(), gr.skip(), gr.skip(), already
        prog, _, video, _, status = job_view(ctx, jid, request)
        return prog, video, status, (jid if jid and job_ended(ctx, jid, request) else None)

    timer.tick(guard(poll), [job_id, shown], [progress, gen_video, gen_status, shown], show_progress="hidden", **priv)
    return {"editor": editor}
