"""Bundled presets (presets/*.json) and the bundled sample clip (assets/sample_motion.mp4).

A preset file is a starting point for the Union control tab: the generation settings as a GenerateRequest
dict (the same schema as the API payload and the sidecar metadata), plus which control signal to make and
with what options, and which IC-LoRA file to look for::

    {
      "title": "Union · Canny edges",
      "description": "...",
      "control": {"kind": "canny", "strength": 1.0, "options": {"low_threshold": 92, "high_threshold": 200}},
      "ic_lora": {"match": "union-control", "strength": 1.0},
      "request": {"prompt": "...", "width": 768, "height": 512, "frames": 121, ...}
    }

The request carries no control path (the control video is made per clip); everything in it is validated by
GenerateRequest.from_dict(...).validate() and the control options by pipelines.control.options_from_dict, so a
broken preset fails when it is loaded, with the file and field named, never half-way through a generation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.config import ASSETS_DIR, PRESETS_DIR
from pipelines.errors import UserError
from pipelines.requests import GenerateRequest

SAMPLE_CLIP = "sample_motion.mp4"
_TOP_KEYS = {"title", "description", "control", "ic_lora", "request"}
_CONTROL_KEYS = {"kind", "strength", "options"}
_IC_LORA_KEYS = {"match", "strength"}


@dataclass
class Preset:
    """A validated preset. `request` has no controls; `control_options` is the options dataclass as a dict."""

    name: str
    title: str
    description: str
    request: GenerateRequest
    control_kind: str
    control_strength: float = 1.0
    control_options: dict = field(default_factory=dict)
    ic_lora_match: str | None = None  # case-insensitive substring of a file name in <models_dir>/loras
    ic_lora_strength: float = 1.0

    def to_dict(self) -> dict:
        return {
            "title": self.title, "description": self.description,
            "control": {"kind": self.control_kind, "strength": self.control_strength, "options": self.control_options},
            "ic_lora": {"match": self.ic_lora_match, "strength": self.ic_lora_strength},
            "request": self.request.to_dict(),
        }

    def find_ic_lora(self, candidates: list[str]) -> str | None:
        """The first candidate path whose file name contains `ic_lora_match` (case-insensitive), else None."""
        if not self.ic_lora_match:
            return None
        key = self.ic_lora_match.lower()
        for c in candidates:
            if key in Path(c).name.lower():
                return c
        return None


def _bad(path: Path, what: str) -> UserError:
    return UserError(f"preset {path.name}: {what}")


def _strength(path: Path, value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise _bad(path, f"{name}={value!r} is not a number") from None
    hi = 4.0 if name == "ic_lora.strength" else 1.0
    if not (0.0 <= v <= hi):
        rng = f"0..{hi:g}"
        raise _bad(path, f"{name}={v} is out of range ({rng})")
    return v


def parse_preset(data: dict, path: Path) -> Preset:
    """Validate a preset dict (as read from `path`, which names it in errors) into a Preset."""
    from pipelines.control import ControlKind, options_from_dict, options_to_dict

    if not isinstance(data, dict):
        raise _bad(path, "must be a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _bad(path, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}")
    if "request" not in data or "control" not in data:
        raise _bad(path, "needs both a 'request' and a 'control' section")
    req_data = data["request"]
    if not isinstance(req_data, dict):
        raise _bad(path, "'request' must be an object")
    if req_data.get("controls"):
        raise _bad(path, "'request.controls' must be empty: the control video is made from the user's clip")
    try:
        request = GenerateRequest.from_dict(req_data).validate()
    except UserError as exc:
        raise _bad(path, str(exc)) from None

    control = data["control"]
    if not isinstance(control, dict):
        raise _bad(path, "'control' must be an object")
    unknown = sorted(set(control) - _CONTROL_KEYS)
    if unknown:
        raise _bad(path, f"unknown control key(s) {', '.join(unknown)}; known: {', '.join(sorted(_CONTROL_KEYS))}")
    try:
        kind = ControlKind.parse(control.get("kind", ""))
        options = options_to_dict(options_from_dict(kind, control.get("options") or {}))
    except UserError as exc:
        raise _bad(path, str(exc)) from None

    ic = data.get("ic_lora") or {}
    if not isinstance(ic, dict) or sorted(set(ic) - _IC_LORA_KEYS):
        raise _bad(path, f"'ic_lora' must be an object with keys {', '.join(sorted(_IC_LORA_KEYS))}")
    return Preset(
        name=path.stem, title=str(data.get("title") or path.stem), description=str(data.get("description") or ""),
        request=request, control_kind=kind.value,
        control_strength=_strength(path, control.get("strength", 1.0), "control.strength"),
        control_options=options, ic_lora_match=(str(ic["match"]) if ic.get("match") else None),
        ic_lora_strength=_strength(path, ic.get("strength", 1.0), "ic_lora.strength"),
    )


def list_presets(folder: str | os.PathLike = PRESETS_DIR) -> list[str]:
    """Preset names (file stems) in `folder`, sorted."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_preset(name_or_path: str | os.PathLike, folder: str | os.PathLike = PRESETS_DIR) -> Preset:
    """Load and validate a preset by name (a file stem in `folder`) or by path. UserError on anything wrong."""
    p = Path(name_or_path)
    if p.suffix != ".json" or not p.is_file():
        p = Path(folder) / f"{Path(name_or_path).name}.json"
    if not p.is_file():
        known = ", ".join(list_presets(folder)) or "none"
        raise UserError(f"no preset {str(name_or_path)!r} in {folder}; available: {known}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise _bad(p, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except OSError as exc:
        raise _bad(p, f"cannot be read: {exc}") from None
    return parse_preset(data, p)


# ---------------------------------------------------------------------------------------- the sample clip

def sample_clip_frames(frames: int = 49, width: int = 256, height: int = 160) -> np.ndarray:
    """A deterministic clip with clear structure for every control: a textured floor gradient, a ball moving
    left to right, a square orbiting, and a bar sweeping down. uint8 [T,H,W,3] RGB. No randomness."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([40 + 80 * yy / height, 60 + 40 * xx / width, 120 - 60 * yy / height], axis=-1)
    base += 12 * np.sin(xx / 6.0)[..., None] * (yy > height * 0.7)[..., None]  # ridged "floor" for edges
    base = np.clip(base, 0, 255).astype(np.uint8)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        s = t / max(1, frames - 1)
        img = base.copy()
        cx, cy = int(24 + s * (width - 48)), int(height * 0.55 + 18 * np.sin(2 * np.pi * s))
        cv2.circle(img, (cx, cy), 18, (235, 90, 60), -1, lineType=cv2.LINE_AA)
        a = 2 * np.pi * s
        qx, qy = width / 2 + 60 * np.cos(a), height / 2 - 40 * np.sin(a)
        box = cv2.boxPoints(((qx, qy), (30, 30), np.degrees(a)))
        cv2.fillConvexPoly(img, box.astype(np.int32), (250, 220, 70), lineType=cv2.LINE_AA)
        by = int(s * (height - 10))
        cv2.rectangle(img, (width - 40, by), (width - 12, by + 10), (80, 200, 120), -1)
        out[t] = img
    return out


def make_sample_clip(path: str | os.PathLike | None = None, frames: int = 49, width: int = 256, height: int = 160,
                     fps: float = 24.0) -> Path:
    """Write the bundled sample clip (~2 s, 256x160, ~100 KB) and return its path. Deterministic frames."""
    from pipelines.video_io import write_video

    path = Path(path) if path is not None else ASSETS_DIR / SAMPLE_CLIP
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, sample_clip_frames(frames, width, height), fps, comment="iclora-studio sample clip",
                       crf=23)


def sample_clip_path(create: bool = True) -> Path | None:
    """assets/sample_motion.mp4, written on first use when missing (and `create`)."""
    p = ASSETS_DIR / SAMPLE_CLIP
    if not p.is_file() and create:
        try:
            make_sample_clip(p)
        except OSError:
            return None
    return p if p.is_file() else None


if __name__ == "__main__":  # python -m pipelines.presets  -> (re)writes the sample clip, lists presets
    print(make_sample_clip())
    for n in list_presets():
        print(n, "ok" if load_preset(n) else "")
