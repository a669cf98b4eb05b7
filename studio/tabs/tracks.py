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
from studio.ui import guard, guard_gen, progress_html

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
    for old in Path(out_dir).glob("preview-*.mp4"):  # keep the folder small: only the newest previews stay
        if time.time() - old.stat().st_mtime > 120:
            old.unlink(missing_ok=True)
    return str(write_video(out, rgb, ts.fps))


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
    if not lora:
        raise UserError("choose the Motion-Track IC-LoRA file (models_dir/loras) or upload it")
    if not Path(lora).is_file():
        raise UserError(f"LoRA file {lora} does not exist")
    w, h, n = int(width), int(height), int(frames)
    req = GenerateRequest(
        prompt=prompt, model=model, width=w, height=h, frames=n, fps=float(fps), seed=int(seed),
        schedule=Schedule.DISTILLED, image=image or None,
        controls=[ControlInput(path=str(control or ""), strength=float(strength), kind=ControlKind.MOTION_TRACK)],
        loras=[LoraSpec(path=str(lora), weight=1.0)]).validate()
    active().check_generate(req.to_dict())  # the size limits, before anything is rendered
    return req


def render_control(ctx, owner: str, value: str | None, width, height, frames, fps) -> str:
    """The tracks rendered as the Motion-Track control video by a light job (never in the request thread);
    its path: a lossless .mkv, so the model reads exactly the rendered frames (people see render_preview's
    h264 mp4)."""
    from studio.kinds.tracks import render_now, save_track_value

    path = save_track_value(ctx, owner, value or "")
    return render_now(ctx, owner, {"tracks": path, "width": int(width), "height": int(height),
                                   "frames": int(frames), "fps": float(fps)})


# ------------------------------------------------------------------------------------------------ the tab ---

def build(ctx):
    from studio.tabs.generate import model_choices, wire_job_panel

    tiny = ctx.config.model == "tiny"
    shared = getattr(ctx, "shared", {}) or {}

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
                    use_ref = gr.Button("Use the shared reference image", size="sm",
                                        visible="reference_image" in shared)
                    extract_btn = gr.Button("Extract tracks from this video", size="sm", elem_id="tracks-extract")
            sketcher = gr.HTML(
                value=blank_value(128 if tiny else 768, 64 if tiny else 512, 9 if tiny else 121, 24.0),
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
                lora_pick = gr.Dropdown(lora_choices(ctx.models_dir), value=None, allow_custom_value=True,
                                        label="Motion-Track IC-LoRA (models_dir/loras)", elem_id="tracks-lora")
                lora_upload = gr.UploadButton("…or upload a .safetensors", file_types=[".safetensors"], size="sm")
            first = gr.Image(label="First frame (filled from the background)", type="filepath", height=150,
                             elem_id="tracks-first")
            prompt = gr.Textbox(label="Prompt", lines=2, value="a red ball rolling across a wooden table",
                                elem_id="tracks-prompt")
            with gr.Row():
                width = gr.Number(128 if tiny else 768, label="Width", precision=0, minimum=64, step=64)
                height = gr.Number(64 if tiny else 512, label="Height", precision=0, minimum=64, step=64)
                frames = gr.Number(9 if tiny else 121, label="Frames (8n+1)", precision=0, minimum=1, step=8,
                                   elem_id="tracks-frames")
                fps = gr.Number(24, label="FPS", minimum=1, maximum=120)
            with gr.Row():
                strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Track strength")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0)
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

    # ---------------------------------------------------------------- background
    def set_background(rgb: np.ndarray, value, request):
        h, w = rgb.shape[:2]
        path = user_dir(request) / f"background-{time.time_ns()}.png"
        write_image(path, rgb)
        new_value = with_canvas(value, w, h)
        return gr.HTML(value=new_value, background=data_url(rgb)), str(path), str(path), f"Background {w}×{h} px."

    bg_outputs = [sketcher, bg_path, first, status]

    @guard
    def on_image(path, value, request: gr.Request):
        if not path:
            return gr.HTML(background=""), None, None, ""
        from pipelines.limits import probe_image_input

        probe_image_input(path, "background image", decode=False)  # its size before it is decoded
        return set_background(read_image(path), value, request)

    @guard
    def on_video(path, value, request: gr.Request):
        if not path:
            return (gr.Slider(maximum=1, value=0),) + (gr.HTML(), None, None, "")
        from pipelines.video_io import probe

        info = probe(path)
        return (gr.Slider(maximum=max(1, info.frames - 1), value=0),) + set_background(video_frame(path, 0), value, request)

    @guard
    def on_frame(path, idx, value, request: gr.Request):
        if not path:
            return gr.HTML(), None, None, ""
        return set_background(video_frame(path, idx), value, request)

    def rerender(value, request: gr.Request):
        return render_preview(value, user_dir(request))

    rerender = guard(rerender)
    prev_kw = dict(api_visibility="private", trigger_mode="always_last", show_progress="minimal")

    bg_image.upload(on_image, [bg_image, sketcher], bg_outputs, **priv).then(rerender, sketcher, preview, **prev_kw)
    bg_image.clear(on_image, [bg_image, sketcher], bg_outputs, **priv)
    bg_video.upload(on_video, [bg_video, sketcher], [frame_idx] + bg_outputs, **priv).then(
        rerender, sketcher, preview, **prev_kw)
    frame_idx.release(on_frame, [bg_video, frame_idx, sketcher], bg_outputs, **priv)
    if "reference_image" in shared:
        use_ref.click(on_image, [shared["reference_image"], sketcher], bg_outputs, **priv).then(rerender, sketcher, preview, **prev_kw)

    # ---------------------------------------------------------------- tracks in and out
    sketcher.change(rerender, sketcher, preview, **prev_kw)

    @guard
    def on_import(path, value, bg):
        new = import_value(path, value, keep_canvas=bool(bg))
        n = len(json.loads(new)["tracks"])
        return new, f"Imported {n} track{'s' if n != 1 else ''} from {Path(path).name}."

    import_file.upload(on_import, [import_file, sketcher, bg_path], [sketcher, status], **priv).then(
        rerender, sketcher, preview, **prev_kw)

    @guard
    def on_export(value, request: gr.Request):
        return export_file(value, user_dir(request))

    export_btn.click(on_export, sketcher, export_out, **priv)

    @guard
    def on_extract(path, value, k):
        new = extract_value(path, value, k)
        n = len(json.loads(new)["tracks"])
        return new, f"Extracted {n} track{'s' if n != 1 else ''} from the video (timed points; edit them freely)."

    extract_btn.click(on_extract, [bg_video, sketcher, max_tracks], [sketcher, status], **priv).then(
        rerender, sketcher, preview, **prev_kw)

    @guard
    def on_timing(value, n, f):
        if not n or not f or int(n) < 1 or float(f) <= 0:
            return gr.HTML()
        return with_timing(value, int(n), float(f))

    frames.blur(on_timing, [sketcher, frames, fps], sketcher, **priv).then(rerender, sketcher, preview, **prev_kw)
    fps.blur(on_timing, [sketcher, frames, fps], sketcher, **priv).then(rerender, sketcher, preview, **prev_kw)

    # ---------------------------------------------------------------- generate
    @guard_gen
    def submit(value, lora, image, prompt, width, height, frames, fps, strength, seed, request: gr.Request):
        models = model_choices(ctx)
        model = ctx.config.model if ctx.config.model in models else models[0]
        args = (value, lora, image, prompt, width, height, frames, fps, strength, seed, model)
        build_request(*args)  # refused here, before the render, when something is wrong
        yield gr.skip(), progress_html(0.05, "rendering the track video", "running")
        owner = ctx.owner(request)
        control = render_control(ctx, owner, value, width, height, frames, fps)
        jid = ctx.submit(owner, "generate", build_request(*args, control=control).to_dict())
        yield jid, progress_html(0, "queued", "queued")

    def on_lora_upload(path):
        return gr.Dropdown(choices=sorted(set(lora_choices(ctx.models_dir)) | {path}), value=path)

    lora_upload.upload(guard(on_lora_upload), lora_upload, lora_pick, **priv)

    go.click(submit, [sketcher, lora_pick, first, prompt, width, height, frames, fps, strength, seed],
             [job_id, progress], **priv)

    wire_job_panel(ctx, timer, cancel, job_id, [progress, latent, video, settings, job_status])
    return {"sketcher": sketcher, "preview": preview}
