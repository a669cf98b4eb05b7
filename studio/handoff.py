"""What the tabs hand each other, in one place: the studio's current clip / control, the painter's mask, a trained
LoRA with its reference image; the IC-LoRA choices every tab lists; the default sizes.

Three per-session gr.State values (made by ``make_shared``, kept in ``ctx.shared``), each a plain dict:

- ``clip``: the studio's current clip and control. {"clip": conformed input mp4, "control": control mp4 or None,
  "kind", "width", "height", "frames", "fps", "downscale": D of the IC-LoRA it was made for, "source": tab title}.
  Union writes it when a control is made (and "Use result as the studio clip"); the Mask painter and Motion tracks
  read it ("Use the studio clip"), size and frames included.
- ``mask``: {"path", "width", "height", "frames", "downscale", "strength"}: the Mask painter's "Use this mask".
  Checked against the studio clip when handed over; Union checks it against its own size and IC-LoRA.
- ``lora``: {"path", "reference_image", "name", "downscale"}: the Face trainer's "Use in generator".

Everything is checked when it is handed over (``check_mask_for``) and again, from the files themselves, when a
generation is submitted (pipelines.fit.check_request in StudioContext.submit). Gradio only for the states.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError
from pipelines.fit import lora_downscale, size_hint

NONE = "(none)"
DEMO_DIR = "demo-loras"  # under the cache folder (pipelines.config.cache_dir): built from code at first start
# Words in a real LoRA file name that make it the default for a tab.
PURPOSE_WORDS = {"union": ("union",), "motion_track": ("motion", "track"), "face": ("face", "identity"),
                 "detailer": ("detail",)}


@dataclass(frozen=True)
class Size:
    width: int
    height: int
    frames: int
    fps: float = 24.0


def playable(path: str | None) -> str | None:
    """What a browser can play for a control: the h264 .mp4 preview written beside a lossless .mkv control (the
    file the model reads), else the path itself."""
    if path and str(path).lower().endswith(".mkv"):
        mp4 = Path(path).with_suffix(".mp4")
        if mp4.is_file():
            return str(mp4)
    return path


def default_size(ctx) -> Size:
    """One default output size for every tab: the tiny model's small test size (multiples of 64, so a D=2 IC-LoRA
    fits), else the size Lightricks' IC-LoRA workflows use."""
    return Size(128, 64, 9, 24.0) if ctx.config.model == "tiny" else Size(768, 512, 121, 24.0)


def make_shared() -> dict:
    import gradio as gr

    return {"clip": gr.State(None), "mask": gr.State(None), "lora": gr.State(None)}


# ---------------------------------------------------------------------------------------------- LoRA choices

def demo_folder() -> Path:
    """Shared, read-only data for every user (like the assets): outside the outputs folder, whose files belong to
    their owners. A folder that cannot be written falls back to one in the system's temp folder."""
    from pipelines.config import cache_dir

    return cache_dir() / DEMO_DIR


def build_demos() -> dict[str, Path]:
    """The demo IC-LoRAs for the tiny model (pipelines.models.demo_loras), built at first start."""
    import logging
    import tempfile

    from pipelines.models.demo_loras import build_demo_loras

    try:
        return build_demo_loras(demo_folder())
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / "iclora-studio" / DEMO_DIR
        logging.getLogger("studio").warning("cannot write demo LoRAs in %s (%s); using %s", demo_folder(), exc,
                                            fallback)
        return build_demo_loras(fallback)


def real_loras(ctx) -> list[str]:
    from pipelines.models.registry import list_loras

    return list_loras(ctx.models_dir)


def lora_label(path: str | None) -> str:
    """A LoRA as a person reads it: the demo's label, else the file name (never a temp folder path)."""
    if not path:
        return NONE
    from pipelines.models.demo_loras import demo_for

    d = demo_for(path)
    return d.label if d else Path(str(path)).name


def lora_choices(ctx, purpose: str) -> tuple[list[tuple[str, str]], str | None]:
    """(dropdown choices as (label, path), default path) for a tab. Real files in models/loras come first and
    take over the default (a file whose name says its purpose); the demo files for the tiny model follow, and
    are the default while no real file fits and the studio runs the tiny model."""
    from pipelines.models.demo_loras import DEMO_LORAS

    real = real_loras(ctx)
    demos = getattr(ctx, "demo_loras", None) or {}
    choices = [(Path(p).name, p) for p in real]
    choices += [(d.label, str(demos[d.key])) for d in DEMO_LORAS if d.key in demos]
    words = PURPOSE_WORDS.get(purpose, ())
    default = next((p for p in real if any(w in Path(p).name.lower() for w in words)), None)
    if default is None and ctx.config.model == "tiny":
        default = next((str(demos[d.key]) for d in DEMO_LORAS if d.purpose == purpose and d.key in demos), None)
    return choices, default


def with_choice(choices: list[tuple[str, str]], path: str | None) -> list[tuple[str, str]]:
    """The choices plus ``path`` (an uploaded or trained file) labelled by name, if it is not there yet."""
    if not path or any(v == path for _, v in choices):
        return choices
    return choices + [(lora_label(path), path)]


def downscale_of(path: str | None) -> int:
    return lora_downscale([path]) if path and path != NONE else 1


def size_note(d: int) -> str:
    return f"**Output size**: {size_hint(d)}."


# ---------------------------------------------------------------------------------------------- hand-off checks

def clip_text(clip: dict | None) -> str:
    if not clip:
        return "No studio clip yet: make a control in the Union tab (or upload a clip here)."
    what = "clip and control" if clip.get("control") else "clip"
    return (f"Studio {what} from **{clip.get('source', 'another tab')}**: {Path(str(clip['clip'])).name}, "
            f"{clip['width']}x{clip['height']}, {clip['frames']} frames @ {clip['fps']:g} fps"
            + (f", D={clip['downscale']}" if clip.get("downscale", 1) != 1 else "") + ".")


def mask_text(mask: dict | None) -> str:
    if not mask:
        return "No mask from the Mask painter yet: the control applies everywhere (scaled by attention strength)."
    return (f"Mask from the painter: **{Path(str(mask['path'])).name}** ({mask['width']}x{mask['height']}, "
            f"{mask['frames']} frames, D={mask['downscale']}).")


def check_mask_for(mask: dict, width, height, frames, downscale) -> None:
    """A painter mask handed to a generator must be painted for the generator's size, frames and D."""
    want = (int(width), int(height), int(frames), int(downscale))
    got = (int(mask["width"]), int(mask["height"]), int(mask["frames"]), int(mask["downscale"]))
    if want != got:
        raise UserError(f"the mask was painted for {got[0]}x{got[1]}, {got[2]} frames, D={got[3]}; this generation is "
                        f"{want[0]}x{want[1]}, {want[2]} frames, D={want[3]}. In the Mask painter press 'Use the "
                        "studio clip' (it takes this size), paint again and press 'Use this mask'.")


def check_clip_for_mask(clip: dict | None, width, height, frames, downscale) -> None:
    """The painter's size must be the studio clip's when that clip has a control (the mask goes with it)."""
    if clip and clip.get("control"):
        check_mask_for({"width": width, "height": height, "frames": frames, "downscale": downscale},
                       clip["width"], clip["height"], clip["frames"], clip.get("downscale", 1))


__all__ = ["NONE", "Size", "default_size", "make_shared", "build_demos", "lora_label", "lora_choices", "with_choice",
           "downscale_of", "clip_text", "mask_text", "check_mask_for", "check_clip_for_mask", "size_note"]
