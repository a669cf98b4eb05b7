"""Control clean-up before generation: what the IC-LoRA docs ask of a control signal ("smooth temporal
transitions", "apply temporal filtering to the control signal", "remove noise and artifacts", "ensure control
FPS matches"), as explicit, measured steps.

    frames, steps = clean_control(frames, CleanupOptions(temporal_smooth=1.5, denoise=1), kind="canny")

Steps, in this order (each one skipped when off):

1. fps match (``match_fps``, before conforming): the control resampled to the target's frame rate, either by the
   nearest frame in time (exact pixels: edges and skeletons stay crisp) or by blending the two neighbouring
   frames by their distance in time (smooth for depth and other continuous signals).
2. denoise: a spatial median filter per frame (removes isolated specks of an edge map, salt noise of a LiDAR
   render) without moving edges the way a blur does.
3. deflicker: each frame's mean brightness pulled to a temporally smoothed mean (per-frame gain flicker, the
   usual artefact of per-frame depth normalisation).
4. temporal smoothing: a centred Gaussian over time (sigma in frames). Centred, so it adds no lag (an EMA does).
5. edge thickness (canny, passthrough): dilation by a fixed number of px, the same on every frame.
6. edge contrast (canny, passthrough): a gain around mid-gray; brings edges that temporal smoothing turned gray
   back towards black and white.

Every step that ran leaves a ``CleanupStep`` with what it did in words and a measured figure (the mean absolute
frame-to-frame change before and after, on 0..255), recorded in the control's report and the output metadata.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import UserError

FPS_MODES = ("nearest", "blend")
EDGE_KINDS = ("canny", "passthrough")  # kinds whose maps are edges or the user's own signal
_CHUNK_ROWS = 64  # rows per block when filtering over time (bounds the float32 working copy)


@dataclass
class CleanupOptions:
    """Clean-up of a control video. The defaults do nothing."""

    fps_mode: str = "nearest"     # how a control at another frame rate is matched to the target's: nearest | blend
    denoise: int = 0              # median filter radius in px (0 = off; 1 = 3x3, 2 = 5x5 ...)
    deflicker: bool = False       # pull each frame's mean brightness to a temporally smoothed mean
    temporal_smooth: float = 0.0  # Gaussian sigma over time, in frames (0 = off; 1-2 calms flicker)
    edge_thickness: int = 0       # dilate edges by this many px (canny / passthrough)
    edge_contrast: float = 1.0    # gain around mid-gray (1 = off; 2-4 re-sharpens smoothed edges)

    def validate(self) -> "CleanupOptions":
        if self.fps_mode not in FPS_MODES:
            raise UserError(f"clean-up fps_mode={self.fps_mode!r} must be one of: {', '.join(FPS_MODES)}")
        if not (0 <= int(self.denoise) <= 5):
            raise UserError(f"clean-up denoise must be a radius between 0 and 5 px; got {self.denoise}")
        if not (0.0 <= float(self.temporal_smooth) <= 8.0):
            raise UserError(f"clean-up temporal_smooth must be a sigma between 0 and 8 frames; got {self.temporal_smooth}")
        if not (0 <= int(self.edge_thickness) <= 10):
            raise UserError(f"clean-up edge_thickness must be between 0 and 10 px; got {self.edge_thickness}")
        if not (0.25 <= float(self.edge_contrast) <= 8.0):
            raise UserError(f"clean-up edge_contrast must be between 0.25 and 8; got {self.edge_contrast}")
        return self

    @property
    def active(self) -> bool:
        """Whether any step after conforming changes pixels (fps_mode matters only when the rates differ)."""
        return bool(self.denoise or self.deflicker or self.temporal_smooth > 0 or self.edge_thickness
                    or self.edge_contrast != 1.0)

    @property
    def edges(self) -> bool:
        return bool(self.edge_thickness or self.edge_contrast != 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: "dict | CleanupOptions | None") -> "CleanupOptions":
        if isinstance(data, CleanupOptions):
            return data.validate()
        data = dict(data or {})
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise UserError(f"unknown clean-up option(s): {', '.join(unknown)}; known: {', '.join(names)}")
        kw = {}
        for k, v in data.items():
            if v is None:
                continue
            default = getattr(cls(), k)
            try:
                if isinstance(default, bool):
                    kw[k] = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    kw[k] = int(v)
                elif isinstance(default, float):
                    kw[k] = float(v)
                else:
                    kw[k] = str(v).strip().lower()
            except (TypeError, ValueError):
                raise UserError(f"clean-up option {k}={v!r} is not a number") from None
        return cls(**kw).validate()


@dataclass
class CleanupStep:
    """One step that ran: its name, what it did in words, and the measured frame-to-frame change around it."""

    name: str
    text: str
    change_before: float
    change_after: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- measures

def frame_change(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames, on 0..255 (0 for a single frame). The flicker figure."""
    f = np.asarray(frames)
    if len(f) < 2:
        return 0.0
    total = 0.0
    for t in range(1, len(f)):  # frame by frame: no [T,H,W,3] int16 copy of a long clip
        total += float(cv2.absdiff(f[t], f[t - 1]).mean()) if f.dtype == np.uint8 else \
            float(np.abs(f[t].astype(np.float32) - f[t - 1]).mean())
    return total / (len(f) - 1)


# ----------------------------------------------------------------------------------------------- the steps

def match_fps(frames: np.ndarray, src_fps: float, dst_fps: float, mode: str = "nearest") -> np.ndarray:
    """Resample uint8 [T,H,W,C] from src_fps to dst_fps over the same span of time. ``nearest`` picks the frame
    shown at each output instant (as video_io.conform does); ``blend`` mixes the two source frames around it by
    their distance in time. The count is floor((T-1) * dst/src) + 1 either way."""
    from pipelines.video_io import resample_fps_indices

    if mode not in FPS_MODES:
        raise UserError(f"fps mode {mode!r} must be one of: {', '.join(FPS_MODES)}")
    n = len(frames)
    if n < 2 or abs(src_fps - dst_fps) <= 1e-3 * src_fps:
        return frames
    if mode == "nearest":
        return np.ascontiguousarray(frames[resample_fps_indices(n, src_fps, dst_fps)])
    ratio = Fraction(src_fps).limit_denominator(100000) / Fraction(dst_fps).limit_denominator(100000)
    m = int(math.floor((n - 1) / ratio)) + 1
    out = np.empty((m,) + frames.shape[1:], np.uint8)
    for i in range(m):
        pos = float(i * ratio)
        lo = min(int(math.floor(pos)), n - 1)
        hi = min(lo + 1, n - 1)
        w = pos - lo
        if w < 1e-6 or hi == lo:
            out[i] = frames[lo]
        else:
            out[i] = cv2.addWeighted(frames[lo], 1.0 - w, frames[hi], w, 0.0)
    return out


def median_denoise(frames: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * int(radius) + 1
    return np.stack([cv2.medianBlur(np.ascontiguousarray(f), k) for f in frames])


def gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def temporal_gaussian(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian over time (edges: the end frames repeated), uint8 in and out. Works on blocks of rows so
    the float copy stays small whatever the clip's length."""
    if sigma <= 0 or len(frames) < 2:
        return frames
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    t = len(frames)
    idx = np.clip(np.arange(-r, t + r), 0, t - 1)
    out = np.empty_like(frames)
    for y0 in range(0, frames.shape[1], _CHUNK_ROWS):
        block = frames[:, y0:y0 + _CHUNK_ROWS].astype(np.float32)[idx]  # [t + 2r, rows, W, C]
        acc = np.zeros((t,) + block.shape[1:], np.float32)
        for j, w in enumerate(k):
            acc += w * block[j:j + t]
        out[:, y0:y0 + _CHUNK_ROWS] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out


def deflicker(frames: np.ndarray, sigma: float = 4.0) -> tuple[np.ndarray, float]:
    """Scale each frame so its mean brightness follows a Gaussian-smoothed (over time, sigma frames) curve of the
    means. Returns (frames, largest gain change applied in %)."""
    means = frames.reshape(len(frames), -1).mean(axis=1).astype(np.float64)
    if len(frames) < 3 or means.max() <= 0:
        return frames, 0.0
    k = gaussian_kernel(sigma).astype(np.float64)
    r = len(k) // 2
    padded = means[np.clip(np.arange(-r, len(means) + r), 0, len(means) - 1)]
    smooth = np.convolve(padded, k, mode="valid")
    gains = np.where(means > 1e-6, smooth / np.maximum(means, 1e-6), 1.0)
    out = np.empty_like(frames)
    for t, g in enumerate(gains):
        out[t] = cv2.convertScaleAbs(frames[t], alpha=float(g)) if abs(g - 1) > 1e-4 else frames[t]
    return out, float(np.abs(gains - 1).max() * 100.0)


def thicken_edges(frames: np.ndarray, px: int) -> np.ndarray:
    k = 2 * int(px) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return np.stack([cv2.dilate(np.ascontiguousarray(f), kernel) for f in frames])


def edge_contrast(frames: np.ndarray, gain: float) -> np.ndarray:
    """(x - 127.5) * gain + 127.5, clipped: a lookup table, so it costs one pass."""
    lut = np.clip(np.rint((np.arange(256, dtype=np.float64) - 127.5) * gain + 127.5), 0, 255).astype(np.uint8)
    return np.stack([cv2.LUT(np.ascontiguousarray(f), lut) for f in frames])


# ----------------------------------------------------------------------------------------------- the pass

def check_kind(options: CleanupOptions, kind: str | None) -> None:
    if options.edges and kind is not None and str(kind) not in EDGE_KINDS:
        raise UserError(f"edge thickness / contrast apply to canny and passthrough controls, not {kind}; "
                        "set them to 0 / 1 or use temporal smoothing and denoise")


def clean_control(frames: np.ndarray, options: CleanupOptions | dict | None, kind: str | None = None,
                  progress=None) -> tuple[np.ndarray, list[CleanupStep]]:
    """Run the clean-up steps (2-6 above; fps matching happens before conforming, see ``match_fps``) on uint8
    [T,H,W,3] control frames. Returns (frames, steps that ran). Frame count and size never change."""
    opts = CleanupOptions.from_dict(options)
    check_kind(opts, kind)
    steps: list[CleanupStep] = []
    if not opts.active:
        return frames, steps
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise UserError(f"control frames must be uint8 [T,H,W,3]; got {arr.dtype} {arr.shape}")
    todo = [s for s, on in (("denoise", opts.denoise), ("deflicker", opts.deflicker),
                            ("temporal smoothing", opts.temporal_smooth > 0), ("edge thickness", opts.edge_thickness),
                            ("edge contrast", opts.edge_contrast != 1.0)) if on]
    before = frame_change(arr)
    for i, name in enumerate(todo):
        if progress is not None:
            progress(i / len(todo), f"clean-up: {name}")
        if name == "denoise":
            arr = median_denoise(arr, opts.denoise)
            text = f"median denoise {2 * opts.denoise + 1}x{2 * opts.denoise + 1} px"
            extra = {}
        elif name == "deflicker":
            arr, pct = deflicker(arr)
            text = f"deflicker: frame brightness pulled to its smoothed curve (largest gain change {pct:.1f}%)"
            extra = {"max_gain_change_percent": round(pct, 3)}
        elif name == "temporal smoothing":
            arr = temporal_gaussian(arr, float(opts.temporal_smooth))
            text = f"temporal smoothing: centred Gaussian, sigma {opts.temporal_smooth:g} frames (no lag)"
            extra = {}
        elif name == "edge thickness":
            arr = thicken_edges(arr, opts.edge_thickness)
            text = f"edges thickened by {opts.edge_thickness} px"
            extra = {}
        else:
            arr = edge_contrast(arr, float(opts.edge_contrast))
            text = f"edge contrast x{opts.edge_contrast:g} around mid-gray"
            extra = {}
        after = frame_change(arr)
        steps.append(CleanupStep(name=name, text=text, change_before=round(before, 4), change_after=round(after, 4),
                                 extra=extra))
        before = after
    if progress is not None:
        progress(1.0, "clean-up done")
    return np.ascontiguousarray(arr), steps


def summary(steps: list[CleanupStep], first_change: float | None = None) -> str:
    """One line for a report: the steps and the overall change in frame-to-frame difference."""
    if not steps:
        return "clean-up: none"
    a = steps[0].change_before if first_change is None else first_change
    b = steps[-1].change_after
    ratio = (a / b) if b > 1e-9 else float("inf")
    names = ", ".join(s.name for s in steps)
    return f"clean-up ({names}): frame-to-frame change {a:.2f} -> {b:.2f} ({ratio:.2f}x lower)" if a >= b else \
        f"clean-up ({names}): frame-to-frame change {a:.2f} -> {b:.2f}"


def record(options: CleanupOptions, steps: list[CleanupStep], fps_note: str | None = None) -> dict:
    """The clean-up as it goes into a control's report and an output's metadata."""
    return {"options": options.to_dict(), "steps": [s.to_dict() for s in steps], "fps": fps_note,
            "summary": summary(steps)}


def control_provenance(path: str | Path) -> dict | None:
    """What made a control video, from the .json report written beside it (save_control): kind, backend, options,
    clean-up. None when there is no readable report (a user's own file)."""
    sidecar = Path(path).with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "kind" not in data or "backend" not in data:
        return None
    return {"file": Path(path).name, "kind": data.get("kind"), "backend": data.get("backend"),
            "options": data.get("options"), "cleanup": data.get("cleanup")}
