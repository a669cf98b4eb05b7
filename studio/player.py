"""The side-by-side player: several videos with labels and ONE synced scrubber (an A/B, a sweep, a result beside
its upscale). Gradio 6's own gr.HTML with a template, CSS and js_on_load (assets/compare_player.*), no custom
component (GRADIO.md). Its value is a JSON string; Python sets it with ``player_value``."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from pipelines.config import ASSETS_DIR

HTML_TEMPLATE = """
<div class="cp-wrap" data-frame="0" data-playing="0" data-count="0" data-ready="0">
  <div class="cp-empty">Nothing to compare yet: run an A/B, a sweep or an upscale.</div>
  <div class="cp-grid"></div>
  <div class="cp-ctl">
    <button type="button" class="cp-prev" title="Previous frame">◀</button>
    <button type="button" class="cp-play" title="Play / pause every video together">▶ Play</button>
    <button type="button" class="cp-next" title="Next frame">▶|</button>
    <input type="range" class="cp-scrub" min="0" max="0" step="1" value="0" aria-label="Frame (all videos)">
    <span class="cp-frame">frame 1 / 1</span>
  </div>
</div>
"""


def _asset(name: str) -> str:
    return (Path(ASSETS_DIR) / name).read_text()


def file_url(path: str) -> str:
    """A URL the page can load a file from: Gradio's file route (studio.guard serves the caller's own outputs)."""
    return "gradio_api/file=" + quote(str(Path(path).resolve()), safe="/")


def player_value(videos: list[str], labels: list[str], fps: float, frames: int, columns: int = 0) -> str:
    items = [{"url": file_url(p), "label": lab, "path": str(p)} for p, lab in zip(videos, labels)]
    return json.dumps({"items": items, "fps": float(fps), "frames": int(frames), "columns": int(columns or 0)})


def player(elem_id: str):
    import gradio as gr

    return gr.HTML(value=json.dumps({"items": []}), html_template=HTML_TEMPLATE,
                   css_template=_asset("compare_player.css"), js_on_load=_asset("compare_player.js"),
                   elem_id=elem_id, apply_default_css=False)
