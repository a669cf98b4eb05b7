"""Motion tracks tab: sketch, import or extract sparse point tracks over a first frame, preview their render, then
generate with the Motion-Track IC-LoRA (SPEC.md 7, issue 5).

The sketcher is Gradio 6's own gr.HTML (html_template + css_template + js_on_load, assets/tracks_sketcher.*):
its value, a JSON string in the studio track format (pipelines.tracks), IS the state. The JS edits it, sets
props.value and triggers 'change'; Python pushes a new value (import / extract / frame count) and the background
as the `background` prop (a data URL of the display copy). Coordinates are pixels of the background image.
Rendering and tracking are pipelines.tracks functions; this module only wires them.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from pipelines.config import ASSETS_DIR
from pipelines.errors import UserError
from pipelines.tracks import Point, Track, TrackSet, load_tracks, render_tracks, save_tracks
from pipelines.video_io import read_image, write_image
from studio.ui import guard, panel_guard, progress_html, refused

TITLE = "Motion tracks"

PREVIEW_SHORT_SIDE = 256  # the human preview; the control video is rendered at the target size
DISPLAY_LONG_SIDE = 1280  # the background shown in the browser (points stay in full image pixels)

HTML_TEMPLATE = """
<div class="tk-wrap">
  <div class="tk-toolbar">
    <button type="button" data-act="new" title="Start a new track; clicks add points to it">+ New track</button>
    <button type="button" data-act="static" title="Each click makes a 1-point track: something that holds still">● Static points</button>
    <button type="button" data-act="subdivide" title="Insert a point in the middle of every segment of the current track">Subdivide</button>
    <span class="tk-sep"></span>
    <button type="button" data-act="del-point" title="Delete the selected point (or right-click a point, or press Delete)">Delete point</button>
    <button type="button" data-act="del-track" title="Delete the current track">Delete track</button>
    <button type="button" data-act="clear" title="Delete every track">Clear all</button>
  </div>
  <div class="tk-chips"></div>
  <div class="tk-stage"><canvas class="tk-canvas" tabindex="0" width="640" height="426"></canvas></div>
  <div class="tk-timing">
    <label><input type="checkbox" class="tk-timed"> Timed track</label>
    <input type="range" class="tk-frame" min="0" max="120" value="0" step="1" disabled>
    <span class="tk-frame-label"></span>
  </div>
  <div class="tk-info"></div>
  <div class="tk-hint">Click to add a point to the current track · drag a point to move it · right-click or Delete removes it ·
  a timed track passes each point at its frame (select a point, then move the frame slider).</div>
</div>
"""


def _asset(name: str) -> str:
    return (Path(ASSETS_DIR) / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ pure handlers ---

def blank_value(width: int = 768, height: int = 512, frames: int = 121, fps: float = 24.0) -> str:
    return TrackSet(int(width), int(height), int(frames), float(fps), []).to_json(indent=None)


def parse_value(value: str | None) -> TrackSet:
    """The sketcher's value -> TrackSet (empty canvas for no value). UserError names the bad path; a value
    bigger than a track file may be, or with more tracks or points than the limits allow, is refused before
    anything is built from it."""
    from pipelines.limits import active
    from studio.kinds.tracks import check_tracks_data

    if not value:
        return TrackSet(768, 512, 121, 24.0, [])
    limits = active()
    if len(value) > limits.max_track_file_bytes:
        raise limits._over("tracks", f"the track data is {len(value):,} characters, over the limit of "
                                     f"{limits.max_track_file_bytes:,}", "max_track_file_bytes")
    ts = load_tracks(value, kind="own")
    check_tracks_data(limits, ts)
    return ts


def rescale(ts: TrackSet, width: int, height: int) -> TrackSet:
    """The same tracks on a canvas of another size (points scaled per axis)."""
    if (ts.width, ts.height) == (width, height):
        return ts
    sx, sy = width / ts.width, height / ts.height
    tracks = [Track([Point(round(p.x * sx, 2), round(p.y * sy, 2), p.frame) for p in t.points], t.name)
              for t in ts.tracks]
    return TrackSet(int(width), int(height), ts.frames, ts.fps, tracks)


def import_value(path: str | None, current: str | None, keep_canvas: bool) -> str:
    """A track file (studio format, ComfyUI editor JSON, per-frame lists) -> sketcher value.

    ComfyUI data has no canvas size or frame count: it was drawn on the current canvas over the current frames.
    A studio file keeps its own canvas unless a background is loaded (keep_canvas), then it is scaled onto it."""
    if not path:
        raise UserError("choose a track file (.json) to import first")
    cur = parse_value(current)
    ts = load_tracks(path, width=cur.width, height=cur.height, frames=cur.frames, fps=cur.fps)
    if keep_canvas:
        ts = rescale(ts, cur.width, cur.height)
    return ts.to_json(indent=None)


def export_file(value: str | None, out_dir: Path) -> str:
    ts = parse_value(value)
    if not ts.tracks:
        raise UserError("there are no tracks to export; click on the canvas to draw one")
    return str(save_tracks(ts, Path(out_dir) / f"tracks-{time.strftime('%Y%m%d-%H%M%S')}.json"))


def preview_size(width: int, height: int, short: int = PREVIEW_SHORT_SIDE) -> tuple[int, int]:
    s = short / min(width, height)
    return max(2, int(round(width * s / 2)) * 2), max(2, int(round(height * s / 2)) * 2)


def render_preview(value: str | None, out_dir: Path) -> str | None:
    """Human preview mp4 of the track render, converted back to RGB (the control video itself is BGR)."""
    from pipelines.video_io import write_video

    from pipelines.limits import active

    ts = parse_value(value)
    if not ts.tracks:
        return None
    w, h = preview_size(ts.width, ts.height)
    active().check_video("track preview", w, h, ts.frames)  # before the frames are allocated
    rgb = np.ascontiguousarray(render_tracks(ts, w, h)[..., ::-1])
    out = Path(out_dir) / f"preview-{time.time_ns()}.mp4"
    prune_previews(Path(out_dir))
    return str(write_video(out, rgb, ts.fps))


def prune_previews(folder: Path, max_age_s: float = 120.0) -> None:
    """Keep the folder small: only the newest previews stay. Several renders run at once (trigger_mode
    "always_last" per page, several pages), so a file may vanish between listing it and reading its time stamp."""
    now = time.time()
    for old in folder.glob("preview-*.mp4"):
        try:
            if now - old.stat().st_mtime > max_age_s:
                old.unlink(missing_ok=True)
        except FileNotFoundError:
            continue


def data_url(rgb: np.ndarray) -> str:
    h, w = rgb.shape[:2]
    s = min(1.0, DISPLAY_LONG_SIDE / max(h, w))
    img = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise UserError("could not encode the background image")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def with_canvas(value: str | None, width: int, height: int) -> str:
    """Move the current tracks onto a background of a new size."""
    return rescale(parse_value(value), width, height).to_json(indent=None)


def with_timing(value: str | None, frames: int, fps: float) -> str:
    from pipelines.limits import active

    active().check_video("tracks", 32, 32, int(frames))  # the frame count alone (the preview renders them)
    ts = parse_value(value)
    return TrackSet(ts.width, ts.height, int(frames), float(fps), ts.tracks).to_json(indent=None)


def video_frame(path: str, index: int) -> np.ndarray:
    from pipelines.limits import probe_video_input
    from pipelines.video_io import read_video

    info = probe_video_input(path, "video", frames=int(index) + 1)  # what decoding up to that frame costs
    frames, _ = read_video(path, max_frames=int(index) + 1, info=info)
    return frames[min(int(index), len(frames) - 1)]


def extract_value(video: str | None, current: str | None, max_tracks: int) -> str:
    """auto_tracks on the clip (first `frames` frames of the canvas), mapped onto the current canvas."""
    from pipelines.limits import probe_video_input
    from pipelines.tracks import auto_tracks
    from pipelines.video_io import read_video

    if not video:
        raise UserError("upload a video first: tracks are extracted from the uploaded clip")
    cur = parse_value(current)
    info = probe_video_input(video, "video", frames=cur.frames)
    frames, fps = read_video(video, max_frames=cur.frames, info=info)
    ts = auto_tracks(frames, max_tracks=int(max_tracks), fps=fps)
    ts = TrackSet(ts.width, ts.height, cur.frames, cur.fps, [Track(t.points, t.name) for t in ts.tracks])
    return rescale(ts, cur.width, cur.height).to_json(indent=None)


def lora_choices(models_dir) -> list[str]:
    if not models_dir:
        return []
    root = Path(models_dir) / "loras"
    return sorted(str(p) for p in root.rglob("*.safetensors")) if root.is_dir() else []


def tracks_file_of(control: str | Path) -> Path:
    """Where the tracks a control video was rendered from are kept (History's "Reuse settings" reads them)."""
    return Path(control).with_suffix(".tracks.json")


def aspect_note(src_w: int, src_h: int, width, height, downscale: int) -> tuple[int, int, str]:
    """The output size for a background of src_w x src_h: (width, height, note). The size follows the background's
    aspect on the IC-LoRA's grid (the tracks are drawn on the background, the first frame is the background), so
    nothing is stretched; the note says what changed."""
    from pipelines.fit import fit_aspect, size_multiple

    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        w, h = 768, 512
    nw, nh = fit_aspect(src_w, src_h, w, h, size_multiple(downscale))
    if (nw, nh) == (w, h):
        return w, h, ""
    exact = abs(nw / nh - src_w / src_h) < 0.01
    return nw, nh, (f"Output size set to {nw}x{nh} to match the background's aspect ({src_w}x{src_h}); it was {w}x{h}."
                    + ("" if exact else " (The nearest size on the model's grid: the background is cropped a little.)"))


def build_request(value: str | None, lora: str | None, image: str | None, prompt: str, width, height, frames, fps,
                  strength, seed, model: str, control: str | None = None):
    """The 'generate' request: first-frame image + the Motion-Track IC-LoRA (its D comes from the file's
    metadata) + the control video rendered from the tracks (BGR, at the target size and length, as the LoRA
    was trained: ``render_control``). With ``control`` None the request is checked with an empty control path,
    so a bad request is refused before anything is rendered."""
    from pipelines.limits import active
    from pipelines.requests import ControlInput, ControlKind, GenerateRequest, LoraSpec, Schedule

    ts = parse_value(value)
    if not ts.tracks:
        raise UserError("draw at least one track before generating")
    if not lora or lora == "(none)":
        raise UserError("choose the Motion-Track IC-LoRA (models/loras, or the demo for the tiny model) or upload it")
    if not Path(lora).is_file():
        raise UserError(f"LoRA file {Path(str(lora)).name} does not exist")
    w, h, n = int(width), int(height), int(frames)
    req = GenerateRequest(
        prompt=prompt, model=model, width=w, height=h, frames=n, fps=float(fps), seed=int(seed),
        schedule=Schedule.DISTILLED, image=image or None,
        controls=[ControlInput(path=str(control or ""), strength=float(strength), kind=ControlKind.MOTION_TRACK)],
        loras=[LoraSpec(path=str(lora), weight=1.0)]).validate()
    active().check_generate(req.to_dict())  # the size limits, before anything is rendered
    from pipelines.fit import check_request

    check_request(req.to_dict())  # the size for the IC-LoRA's D (64 for a D=2 Motion-Track file), before the render
    return req


def render_control(ctx, owner: str, value: str | None, width, height, frames, fps) -> str:
    """The tracks rendered as the Motion-Track control video by a light job (never in the request thread);
    its path: a lossless .mkv, so the model reads exactly the rendered frames (people see render_preview's
    h264 mp4)."""
    from studio.kinds.tracks import render_now, save_track_value

    path = save_track_value(ctx, owner, value or "")
    control = render_now(ctx, owner, {"tracks": path, "width": int(width), "height": int(height),
                                      "frames": int(frames), "fps": float(fps)})
    save_tracks(parse_value(value), tracks_file_of(control))  # the drawing beside its control: "Reuse settings"
    return control


# ------------------------------------------------------------------------------------------------ the tab ---

def build(ctx):
    from studio import handoff
    from studio.tabs.generate import model_choices, wire_job_panel

    shared = getattr(ctx, "shared", {}) or {}
    clip_state = shared.get("clip")
    size = handoff.default_size(ctx)
    lora_opts, default_lora = handoff.lora_choices(ctx, "motion_track")
    d0 = handoff.downscale_of(default_lora)

    def user_dir(request: gr.Request) -> Path:
        return ctx.user_dir(ctx.owner(request), "tracks")

    gr.Markdown("Draw where things should move: each track is a path over the first frame. The Motion-Track "
                "IC-LoRA turns the rendered track video (newest point red, 50-frame trail fading to blue) into motion.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Accordion("Background: the first frame you draw on", open=True):
                with gr.Row():
                    bg_image = gr.Image(label="Image", type="filepath", sources=["upload"], height=150,
                                        elem_id="tracks-bg-image")
                    bg_video = gr.Video(label="Video (pick a frame; extract tracks from it)", sources=["upload"],
                                        height=150, elem_id="tracks-bg-video")
                with gr.Row():
                    frame_idx = gr.Slider(0, 1, value=0, step=1, label="Video frame", interactive=True,
                                          elem_id="tracks-frame-idx")
                    max_tracks = gr.Slider(1, 32, value=8, step=1, label="Tracks to extract")
                with gr.Row():
                    use_clip = gr.Button("Use the studio clip (from Union control)", size="sm",
                                         visible=clip_state is not None, elem_id="tracks-use-clip")
                    extract_btn = gr.Button("Extract tracks from this video", size="sm", elem_id="tracks-extract")
            sketcher = gr.HTML(
                value=blank_value(size.width, size.height, size.frames, size.fps),
                html_template=HTML_TEMPLATE, css_template=_asset("tracks_sketcher.css"),
                js_on_load=_asset("tracks_sketcher.js"), background="", elem_id="tracks-canvas",
                apply_default_css=False)
            status = gr.Markdown(elem_id="tracks-status")
            with gr.Row():
                import_file = gr.UploadButton("Import JSON (studio or ComfyUI editor)", file_types=[".json"],
                                              size="sm", elem_id="tracks-import")
                export_btn = gr.Button("Export JSON", size="sm", elem_id="tracks-export-btn")
            export_out = gr.File(label="Exported tracks", interactive=False, height=80, elem_id="tracks-export")
        with gr.Column(scale=2):
            preview = gr.Video(label="Track render preview (as RGB; the model gets the same video in BGR order)",
                               interactive=False, autoplay=True, loop=True, height=260, elem_id="tracks-preview")
            with gr.Group():
                lora_pick = gr.Dropdown(lora_opts, value=default_lora, label="Motion-Track IC-LoRA (models/loras, "
                                        "then demos)", elem_id="tracks-lora")
                lora_upload = gr.UploadButton("…or upload a .safetensors", file_types=[".safetensors"], size="sm",
                                              elem_id="tracks-lora-upload")
            lora_note = gr.Markdown(_lora_note(default_lora), elem_id="tracks-lora-note", elem_classes=["demo-note"])
            first = gr.Image(label="First frame (filled from the background)", type="filepath", height=150,
                             elem_id="tracks-first")
            prompt = gr.Textbox(label="Prompt", lines=2, value="a red ball rolling across a wooden table",
                                elem_id="tracks-prompt")
            size_md = gr.Markdown(handoff.size_note(d0), elem_id="tracks-size-note")
            with gr.Row():
                width = gr.Number(size.width, label="Width", precision=0, minimum=32, step=32, elem_id="tracks-width")
                height = gr.Number(size.height, label="Height", precision=0, minimum=32, step=32,
                                   elem_id="tracks-height")
                frames = gr.Number(size.frames, label="Frames (8n+1)", precision=0, minimum=1, step=8,
                                   elem_id="tracks-frames")
                fps = gr.Number(size.fps, label="FPS", minimum=1, maximum=120)
            with gr.Row():
                strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Track strength")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="tracks-seed")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="tracks-go")
                cancel = gr.Button("Cancel")
            progress = gr.HTML(progress_html(0, "no job yet", "idle"), elem_id="tracks-progress")
            job_status = gr.Markdown()
            video = gr.Video(label="Result", interactive=False, height=240, elem_id="tracks-video")
            with gr.Accordion("Latent preview and settings", open=False):
                latent = gr.Image(label="Latent preview", interactive=False, height=110, format="png")
                settings = gr.File(label="Settings (JSON)", interactive=False)
    bg_path = gr.State(None)  # the background as a PNG in the user's folder (the default first frame)
    job_id = ctx.job_state("tracks")
    timer = gr.Timer(1.0)
    priv = dict(api_visibility="private")

    # ---------------------------------------------------------------- background (and the output size with it)
    def set_background(rgb: np.ndarray, value, lora, w_, h_, request):
        h, w = rgb.shape[:2]
        path = user_dir(request) / f"background-{time.time_ns()}.png"
        write_image(path, rgb)
        new_value = with_canvas(value, w, h)
        nw, nh, note = aspect_note(w, h, w_, h_, handoff.downscale_of(lora))
        return (gr.HTML(value=new_value, background=data_url(rgb)), str(path), str(path),
                f"Background {w}×{h} px." + (f" {note}" if note else ""), nw, nh)

    bg_outputs = [sketcher, bg_path, first, status, width, height]
    bg_inputs = [sketcher, lora_pick, width, height]
    n_bg = len(bg_outputs)

    def on_image(path, value, lora, w_, h_, request: gr.Request):
        if not path:
            return gr.HTML(background=""), None, None, "", gr.skip(), gr.skip()
        from pipelines.limits import probe_image_input

        probe_image_input(path, "background image", decode=False)  # its size before it is decoded
        return set_background(read_image(path), value, lora, w_, h_, request)

    def on_video(path, value, lora, w_, h_, request: gr.Request):
        if not path:
            return (gr.Slider(maximum=1, value=0),) + (gr.HTML(), None, None, "", gr.skip(), gr.skip())
        from pipelines.video_io import probe

        info = probe(path)
        return (gr.Slider(maximum=max(1, info.frames - 1), value=0),) + set_background(
            video_frame(path, 0), value, lora, w_, h_, request)

    def on_frame(path, idx, value, lora, w_, h_, request: gr.Request):
        if not path:
            return gr.HTML(), None, None, "", gr.skip(), gr.skip()
        return set_background(video_frame(path, idx), value, lora, w_, h_, request)

    def rerender(value, request: gr.Request):
        return render_preview(value, user_dir(request)), gr.skip()

    rerender = panel_guard(rerender, 2, 1)
    prev_kw = dict(api_visibility="private", trigger_mode="always_last", show_progress="minimal")
    prev_out = [preview, status]

    bg_image.upload(panel_guard(on_image, n_bg, 3), [bg_image] + bg_inputs, bg_outputs, **priv).then(
        rerender, sketcher, prev_out, **prev_kw)
    bg_image.clear(panel_guard(on_image, n_bg, 3), [bg_image] + bg_inputs, bg_outputs, **priv)
    bg_video.upload(panel_guard(on_video, n_bg + 1, 4), [bg_video] + bg_inputs, [frame_idx] + bg_outputs,
                    **priv).then(rerender, sketcher, prev_out, **prev_kw)
    frame_idx.release(panel_guard(on_frame, n_bg, 3), [bg_video, frame_idx] + bg_inputs, bg_outputs, **priv)

    def on_use_clip(clip, value, request: gr.Request):
        """The studio clip as the background video, at its size, frames and fps (it is conformed already)."""
        if not clip:
            raise UserError("no studio clip yet: make a control in the Union control tab first")
        from pipelines.video_io import probe

        info = probe(clip["clip"])
        value = with_timing(value, int(clip["frames"]), float(clip["fps"]))
        bg = set_background(video_frame(clip["clip"], 0), value, None, clip["width"], clip["height"], request)
        return ((clip["clip"], gr.Slider(maximum=max(1, info.frames - 1), value=0)) + bg[:3] +
                (handoff.clip_text(clip), clip["width"], clip["height"], clip["frames"], clip["fps"]))

    if clip_state is not None:
        use_clip.click(panel_guard(on_use_clip, 10, 5), [clip_state, sketcher],
                       [bg_video, frame_idx, sketcher, bg_path, first, status, width, height, frames, fps],
                       **priv).then(rerender, sketcher, prev_out, **prev_kw)

    # ---------------------------------------------------------------- tracks in and out
    sketcher.change(rerender, sketcher, prev_out, **prev_kw)

    def on_import(path, value, bg):
        new = import_value(path, value, keep_canvas=bool(bg))
        n = len(json.loads(new)["tracks"])
        return new, f"Imported {n} track{'s' if n != 1 else ''} from {Path(path).name}."

    import_file.upload(panel_guard(on_import, 2, 1), [import_file, sketcher, bg_path], [sketcher, status],
                       **priv).then(rerender, sketcher, prev_out, **prev_kw)

    def on_export(value, request: gr.Request):
        return export_file(value, user_dir(request)), ""

    export_btn.click(panel_guard(on_export, 2, 1), sketcher, [export_out, status], **priv)

    def on_extract(path, value, k):
        new = extract_value(path, value, k)
        n = len(json.loads(new)["tracks"])
        return new, f"Extracted {n} track{'s' if n != 1 else ''} from the video (timed points; edit them freely)."

    extract_btn.click(panel_guard(on_extract, 2, 1), [bg_video, sketcher, max_tracks], [sketcher, status],
                      **priv).then(rerender, sketcher, prev_out, **prev_kw)

    def on_timing(value, n, f):
        if not n or not f or int(n) < 1 or float(f) <= 0:
            return gr.HTML(), gr.skip()
        return with_timing(value, int(n), float(f)), gr.skip()

    frames.blur(panel_guard(on_timing, 2, 1), [sketcher, frames, fps], [sketcher, status], **priv).then(
        rerender, sketcher, prev_out, **prev_kw)
    fps.blur(panel_guard(on_timing, 2, 1), [sketcher, frames, fps], [sketcher, status], **priv).then(
        rerender, sketcher, prev_out, **prev_kw)

    # ---------------------------------------------------------------- generate
    def submit(value, lora, image, prompt, width, height, frames, fps, strength, seed, request: gr.Request):
        models = model_choices(ctx)
        model = ctx.config.model if ctx.config.model in models else models[0]
        args = (value, lora, image, prompt, width, height, frames, fps, strength, seed, model)
        build_request(*args)  # refused here, before the render, when something is wrong
        yield gr.skip(), progress_html(0.05, "rendering the track video", "running")
        owner = ctx.owner(request)
        control = render_control(ctx, owner, value, width, height, frames, fps)
        jid = ctx.submit(owner, "generate", build_request(*args, control=control).to_dict())
        yield jid, progress_html(0, "waiting for its turn", "queued")

    def on_lora(path):
        return _lora_note(path), handoff.size_note(handoff.downscale_of(path))

    lora_pick.change(guard(on_lora), lora_pick, [lora_note, size_md], show_progress="hidden", **priv)

    def on_lora_upload(path):
        from pipelines.models.lora import precheck_loras

        precheck_loras([path])
        return gr.update(choices=handoff.with_choice(lora_opts, path), value=path), _lora_note(path)

    lora_upload.upload(panel_guard(on_lora_upload, 2, 1), lora_upload, [lora_pick, lora_note], **priv)

    go.click(panel_guard(submit, 2, 1, refused, {0: None}),
             [sketcher, lora_pick, first, prompt, width, height, frames, fps, strength, seed], [job_id, progress],
             **priv)

    wire_job_panel(ctx, timer, cancel, job_id, [progress, latent, video, settings, job_status])

    # ---------------------------------------------------------------- History's "Reuse settings"
    reuse_outputs = [sketcher, lora_pick, lora_note, first, prompt, width, height, frames, fps, strength, seed,
                     status]

    def apply_request(d: dict) -> list:
        from pipelines.requests import GenerateRequest

        r = GenerateRequest.from_dict(d)
        control = r.controls[0].path if r.controls else None
        saved = tracks_file_of(control) if control else None
        if saved is not None and saved.is_file():
            value = load_tracks(str(saved), kind="own").to_json(indent=None)
            note = f"Tracks and settings of the reused job ({saved.name})."
        else:
            value = gr.skip()
            note = "The reused job's tracks were not kept (older job): its settings are back, draw the tracks again."
        lora = r.loras[0].path if r.loras else None
        image = r.image if r.image and Path(r.image).is_file() else None
        return [value, gr.update(choices=handoff.with_choice(lora_opts, lora), value=lora), _lora_note(lora),
                image, r.prompt, r.width, r.height, r.frames, r.fps,
                r.controls[0].strength if r.controls else 1.0, r.seed, note]

    return {"sketcher": sketcher, "preview": preview, "reuse": {"outputs": reuse_outputs, "apply": apply_request}}


def _lora_note(path: str | None) -> str:
    from studio.handoff import lora_label

    if not path:
        return "No Motion-Track IC-LoRA: put one in models/loras or upload it."
    label = lora_label(path)
    if label.startswith("demo"):
        return (f"**{label}**: a demo file built for the tiny test model so the whole path runs; a real "
                "Motion-Track IC-LoRA in models/loras takes over.")
    return f"Using **{label}**."
