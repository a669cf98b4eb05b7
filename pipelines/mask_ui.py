"""Pure helpers for the Mask painter tab: painted alpha -> [0,1] mask, keyframes -> MaskSpec, preview images.

No gradio here (pipelines/ never imports it): the tab hands us the ImageMask value as the plain dict Gradio
gives (``{"background": arr, "layers": [rgba, ...], "composite": arr}``) and shows the arrays we return.

Geometry: the painting is edited at the TARGET size times an integer display scale (tiny targets such as
96x64 would be unpaintable at 1:1); alphas come back to the target size by an exact area average. Keyframe
masks are kept at the target size; the file handed to the generators is at the REFERENCE size (target / D),
as the engine expects (SPEC.md 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines import masks
from pipelines.errors import UserError

PAINT_RGB = (255, 51, 85)  # brush colour of the painted layer at value 1
# Values the brush paints (multi-region strength): each is PAINT_RGB darkened to that value; a stroke's value is
# its shade (brightest channel / 255) times its alpha, so a 0.5 stroke over a 1.0 region sets it to 0.5.
PAINT_LEVELS = (1.0, 0.75, 0.5, 0.25)
LATENT_CELL = masks.LATENT_SPATIAL

__all__ = [
    "PAINT_LEVELS", "paint_color", "paint_hex", "layer_values", "editor_scale", "fit_frame", "blank_frame", "alpha_from_editor", "resize_alpha", "layer_from_alpha",
    "editor_value", "paint_shapes", "shape_from_box", "KeyframeRow", "keyframe_rows", "build_spec",
    "reference_mask", "latent_frame_index", "pixel_overlay", "latent_overlay", "weights_table",
    "preview_strip",
]


# ----------------------------------------------------------------------------------------------- editor I/O

def editor_scale(width: int, height: int, min_long_side: int = 480) -> int:
    """Integer display scale so that the canvas' long side is at least `min_long_side` px (1 for big targets)."""
    return max(1, math.ceil(min_long_side / max(int(width), int(height))))


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 RGB frame -> (height, width, 3) by cover-resize + centre-crop (video_io.conform's geometry, so the
    mask stays registered with a conformed control clip)."""
    from pipelines.video_io import resize_cover_crop

    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise UserError(f"frame has shape {arr.shape}; expected an RGB image")
    arr = np.ascontiguousarray(arr[..., :3].astype(np.uint8, copy=False))
    out, _ = resize_cover_crop(arr[None], int(width), int(height))
    return out[0]


def blank_frame(width: int, height: int) -> np.ndarray:
    """A neutral checker frame to paint on when there is no clip."""
    yy, xx = np.mgrid[0:height, 0:width]
    checker = ((yy // 16 + xx // 16) % 2).astype(np.uint8)
    frame = np.where(checker[..., None] == 1, 96, 72).astype(np.uint8)
    return np.repeat(frame, 3, axis=2)


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscale (blocky on purpose: it shows pixels as they are)."""
    if scale == 1:
        return img
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def paint_color(value: float) -> tuple[int, int, int]:
    """The brush colour that paints `value` (PAINT_RGB darkened to it)."""
    v = min(max(float(value), 0.0), 1.0)
    return tuple(int(round(c * v)) for c in PAINT_RGB)


def paint_hex(value: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*paint_color(value))


def layer_values(layer: np.ndarray) -> np.ndarray:
    """Painted values of an RGBA layer in [0, 1]: alpha x shade, the shade being the brightest channel relative to
    PAINT_RGB's (1 for the full-value brush, 0.5 for the half-value one)."""
    rgba = np.asarray(layer)
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    shade = rgba[..., :3].max(axis=-1).astype(np.float32) / float(max(PAINT_RGB))
    return np.clip(alpha * np.minimum(shade, 1.0), 0.0, 1.0)


def alpha_from_editor(value: dict | None, width: int, height: int) -> np.ndarray:
    """The painted mask of an ImageMask value: the values of layers[0] in [0,1] (alpha x brush shade, see
    PAINT_LEVELS), float32 (height, width).

    No value / no layer -> zeros. A layer at another size (the display-scaled canvas) is area-averaged to the
    target; an RGB layer (no alpha) is read as gray."""
    out_shape = (int(height), int(width))
    if not value or not value.get("layers"):
        return np.zeros(out_shape, np.float32)
    layer = np.asarray(value["layers"][0])
    if layer.ndim == 3 and layer.shape[2] == 4:
        alpha = layer_values(layer)
    elif layer.ndim == 3:
        alpha = cv2.cvtColor(np.ascontiguousarray(layer[..., :3]).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    elif layer.ndim == 2:
        alpha = layer
    else:
        raise UserError(f"painted layer has shape {layer.shape}; expected an RGBA image")
    a = alpha.astype(np.float32)
    if a.max(initial=0.0) > 1.0:
        a /= 255.0
    return resize_alpha(np.clip(a, 0.0, 1.0), width, height)


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (h, w) mask to (height, width): exact area average when shrinking, bilinear when growing."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.shape == (height, width):
        return a
    interp = cv2.INTER_AREA if a.shape[0] >= height and a.shape[1] >= width else cv2.INTER_LINEAR
    return np.clip(cv2.resize(a, (int(width), int(height)), interpolation=interp), 0.0, 1.0)


def layer_from_alpha(alpha: np.ndarray, scale: int = 1, rgb: tuple[int, int, int] = PAINT_RGB) -> np.ndarray:
    """A [0,1] (H,W) mask -> the RGBA uint8 layer the editor shows (upscaled by `scale`, nearest)."""
    a = upscale(np.clip(np.asarray(alpha, np.float32), 0, 1), scale)
    layer = np.empty(a.shape + (4,), np.uint8)
    layer[..., :3] = rgb
    layer[..., 3] = np.round(a * 255.0).astype(np.uint8)
    return layer


def editor_value(frame: np.ndarray, alpha: np.ndarray, scale: int) -> dict:
    """The ImageMask value for a (target-size) frame and mask, at the display scale."""
    bg = upscale(np.asarray(frame, np.uint8), scale)
    return {"background": bg, "layers": [layer_from_alpha(alpha, scale)], "composite": None}


# ----------------------------------------------------------------------------------------------- shapes

def shape_from_box(kind: str, x: float, y: float, w: float, h: float, value: float = 1.0,
                   feather: float = 0.0) -> masks.Shape:
    """A rect, or the ellipse inscribed in the same box (one set of number boxes in the UI)."""
    if kind == masks.ShapeKind.ELLIPSE.value:
        return masks.EllipseShape(cx=x + w / 2.0, cy=y + h / 2.0, rx=w / 2.0, ry=h / 2.0, value=value,
                                  feather=feather)
    if kind == masks.ShapeKind.RECT.value:
        return masks.RectShape(x=x, y=y, w=w, h=h, value=value, feather=feather)
    raise UserError(f"unknown shape {kind!r}; choose rect or ellipse")


def paint_shapes(alpha: np.ndarray, shapes: list[masks.Shape]) -> np.ndarray:
    """Shapes painted over a copy of `alpha` (value 1 adds, value 0 cuts a hole)."""
    out = np.array(alpha, dtype=np.float32, copy=True)
    for s in shapes:
        masks.paint_shape(out, s)
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- keyframes -> spec

@dataclass(frozen=True)
class KeyframeRow:
    frame: int
    coverage: float  # fraction of pixels > 0.5
    mean: float

    def as_list(self) -> list:
        return [self.frame, f"{self.coverage * 100:.1f}%", round(self.mean, 3)]


def keyframe_rows(keys: dict[int, np.ndarray]) -> list[KeyframeRow]:
    return [KeyframeRow(int(k), float((keys[k] > 0.5).mean()), float(keys[k].mean())) for k in sorted(keys)]


def build_spec(width: int, height: int, frames: int, keyframes: dict[int, np.ndarray] | None,
               current: np.ndarray | None, *, strength: float = 1.0, fade_in: int = 0, fade_out: int = 0,
               invert: bool = False, feather: float = 0.0) -> masks.MaskSpec:
    """The tab's state as a MaskSpec. With keyframes they alone define the mask (interpolated in time);
    without, the current painting is one spatial mask for every frame. Masks at another size (the target was
    changed after painting) are resized to the target."""
    width, height, frames = int(width), int(height), int(frames)
    kw = dict(width=width, height=height, frames=frames, strength=float(strength), fade_in=int(fade_in or 0),
              fade_out=int(fade_out or 0), invert=bool(invert), feather=float(feather or 0.0))
    if keyframes:
        keys = {int(k): masks.ArrayMask(resize_alpha(v, width, height)) for k, v in keyframes.items()}
        return masks.MaskSpec(keyframes=keys, **kw)
    cur = np.zeros((height, width), np.float32) if current is None else resize_alpha(current, width, height)
    return masks.MaskSpec(mask=masks.ArrayMask(cur), **kw)


def reference_mask(spec: masks.MaskSpec, downscale: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel mask at target size (F,H,W), mask at REFERENCE size (F,H/D,W/D)), both float32 in [0,1]."""
    pixels = masks.materialise(spec)
    return pixels, masks.downscale_to_reference(pixels, int(downscale))


def latent_frame_index(t: int) -> int:
    """Latent frame of pixel frame t (causal: 0 -> 0, then groups of 8)."""
    t = int(t)
    return 0 if t <= 0 else (t - 1) // masks.LATENT_TEMPORAL + 1


# ----------------------------------------------------------------------------------------------- previews

def pixel_overlay(frame: np.ndarray, mask2d: np.ndarray, scale: int = 1, opacity: float = 0.45,
                  rgb: tuple[int, int, int] = PAINT_RGB) -> np.ndarray:
    """The mask at pixel resolution over the frame (both at target size), upscaled for display: masked-out
    areas dimmed, masked-in areas tinted."""
    m = np.clip(np.asarray(mask2d, np.float32), 0, 1)[..., None]
    f = np.asarray(frame, np.float32) * (0.4 + 0.6 * m)  # dim what the control does not reach
    a = m * opacity
    out = f * (1.0 - a) + np.asarray(rgb, np.float32) * a
    return upscale(np.clip(out + 0.5, 0, 255).astype(np.uint8), scale)


def latent_overlay(frame: np.ndarray, weights2d: np.ndarray, scale: int = 1, annotate: bool = True) -> np.ndarray:
    """What the model sees: one block per latent token (each covers frame_size / grid px), coloured by its
    weight (heatmap, 50% over the frame), grid lines, and the weight written in each cell when it fits."""
    f = upscale(np.asarray(frame, np.uint8), scale)
    H, W = f.shape[:2]
    w = np.clip(np.asarray(weights2d, np.float32), 0, 1)
    lh, lw = w.shape
    heat = cv2.applyColorMap(np.round(w * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    heat = cv2.resize(np.ascontiguousarray(heat), (W, H), interpolation=cv2.INTER_NEAREST)
    out = cv2.addWeighted(f, 0.45, heat, 0.55, 0.0)
    ch, cw = H / lh, W / lw
    for i in range(1, lh):
        y = int(round(i * ch))
        out[max(0, y - 1):y, :] = 255
    for j in range(1, lw):
        x = int(round(j * cw))
        out[:, max(0, x - 1):x] = 255
    if annotate and cw >= 30 and ch >= 16:
        font_scale = min(1.0, cw / 90.0)
        thick = 1 if font_scale < 0.6 else 2
        for i in range(lh):
            for j in range(lw):
                text = f"{w[i, j]:.2f}"
                (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
                org = (int(j * cw + (cw - tw) / 2), int(i * ch + (ch + th) / 2))
                cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
                cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def weights_table(weights2d: np.ndarray, decimals: int = 3) -> list[list[float]]:
    """The latent weights of one latent frame as rows of numbers (row = latent row)."""
    return np.round(np.asarray(weights2d, np.float64), decimals).tolist()


def preview_strip(frames: np.ndarray, pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(F,H,2W,3) uint8: per frame, the pixel overlay beside the latent (blocky) overlay; for a preview video.
    frames (F,H,W,3) and pixels (F,H,W) at target size; weights (f,lh,lw) already times strength."""
    F, H, W = pixels.shape
    out = np.empty((F, H, 2 * W, 3), np.uint8)
    for t in range(F):
        out[t, :, :W] = pixel_overlay(frames[t], pixels[t])
        out[t, :, W:] = latent_overlay(frames[t], weights[latent_frame_index(t)], annotate=W >= 256)
    return out
