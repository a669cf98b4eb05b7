"""Attention masks for IC-LoRA conditioning: a spec -> pixel mask (F,H,W) -> latent weights (f,h,w).

The engine gives every REFERENCE token a weight ``w = attention_strength x mask`` (SPEC.md section 2). People
describe that mask in pixels; the model sees it on the latent grid: area-averaged to a 32x coarser grid and,
in time, causally averaged (latent frame 0 <- pixel frame 0, then groups of 8 pixel frames). That is why
sharp edges come out soft, and why this module can show both views.

A mask spec (JSON, versioned) holds the target size and frame count, a global attention ``strength`` and at
most ONE source:

* ``mask``: one spatial mask for every frame,
* ``keyframes``: ``{frame index: mask}``, linearly interpolated in time (held before the first keyframe and
  after the last),
* ``sequence``: a mask video or PNG sequence imported and conformed to the target (see ``import_mask``),

or none of them, which means 1 everywhere (useful with ramps: "control that fades in"). A mask (for ``mask``
or a keyframe) is written in JSON as

* ``"path/to/mask.png"`` or ``{"image": "..."}``: an image at the target size (gray, or alpha when the image
  has a non-opaque alpha channel); relative paths are relative to the spec file,
* ``[shape, ...]`` or ``{"shapes": [...], "background": 0.0}``: shapes painted in order over the background,
* ``{"array": [[...], ...]}``: inline values, shape (height, width),
* a number or ``{"fill": v}``: the same value everywhere.

Shapes, in target pixels with pixel (row i, column j) covering [j, j+1) x [i, i+1):
``{"type": "rect", "x", "y", "w", "h", "value": 1.0, "feather": 0.0}`` (top-left corner and size) and
``{"type": "ellipse", "cx", "cy", "rx", "ry", "value": 1.0, "feather": 0.0}`` (centre and radii). A shape
paints ``value`` with its (feathered) coverage as opacity: ``out = out + coverage * (value - out)``, so a
value-0 ellipse over a value-1 rectangle leaves a hole ("leave the face free").

Order of operations (what ``materialise`` computes):

1. shapes / images / arrays -> one (H,W) mask per keyframe (or the spatial mask, or each sequence frame),
2. feather: Gaussian blur of radius ``feather`` px (sigma = radius / 2, kernel spans +-radius, edges
   replicated) on each of those masks,
3. keyframe interpolation in time,
4. invert: ``1 - m``,
5. ramps: frame t is multiplied by ``min(1, t / fade_in)`` and by ``min(1, (F - 1 - t) / fade_out)``
   (so frame 0 is 0 with a fade in, the last frame is 0 with a fade out),

then values are clipped to [0, 1] against rounding. Steps 2-4 are linear, so the code inverts the few
keyframes before interpolating and folds the ramp into the interpolation weights: one pass over the output.
The global ``strength`` is NOT in the pixel mask; it multiplies the latent weights (``spec_latent_weights``),
as in the engine.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from pipelines.errors import UserError

SPEC_VERSION = 1
LATENT_SPATIAL = 32  # VAE spatial compression
LATENT_TEMPORAL = 8  # VAE temporal compression (causal first frame)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

__all__ = [
    "SPEC_VERSION", "ShapeKind", "RectShape", "EllipseShape", "Shape", "ImageMask", "ShapesMask", "ArrayMask",
    "MaskSource", "MaskSpec", "load_spec", "save_spec", "materialise", "import_mask", "ImportedMask",
    "latent_weights", "reference_pixel_size", "downscale_to_reference", "latent_weights_at_target",
    "spec_latent_weights", "save_npy", "summary", "with_size", "ramp_weights", "paint_shape",
    "nearest_frame_indices", "shape_from_dict", "source_from_json", "check_unit",
]


# ----------------------------------------------------------------------------------------------- shapes

class ShapeKind(str, Enum):
    RECT = "rect"
    ELLIPSE = "ellipse"


def check_unit(value: float, what: str) -> float:
    v = float(value)
    if not (0.0 <= v <= 1.0):  # also rejects NaN
        raise UserError(f"{what} is {value}; it must be between 0 and 1")
    return v


def _check_nonneg(value: float, what: str) -> float:
    v = float(value)
    if not (0.0 <= v < math.inf):
        raise UserError(f"{what} is {value}; it must be a finite number >= 0")
    return v


def _check_positive(value: float, what: str) -> float:
    v = float(value)
    if not (0.0 < v < math.inf):
        raise UserError(f"{what} is {value}; it must be a finite number > 0")
    return v


def _gaussian_sigma(radius: float) -> float:
    """Feather radius in px -> Gaussian sigma. The kernel spans +-radius, i.e. +-2 sigma."""
    return radius / 2.0


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian feather of `radius` px on a float32 (H,W) mask, edges replicated (a mask touching the frame
    border stays 1 there)."""
    if radius <= 0:
        return img
    k = 2 * int(math.ceil(radius)) + 1
    return cv2.GaussianBlur(img, (k, k), sigmaX=_gaussian_sigma(radius), sigmaY=_gaussian_sigma(radius),
                            borderType=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class RectShape:
    """Axis-aligned rectangle: top-left corner (x, y) and size (w, h) in target pixels."""

    x: float
    y: float
    w: float
    h: float
    value: float = 1.0
    feather: float = 0.0
    kind: ShapeKind = field(default=ShapeKind.RECT, init=False)

    def __post_init__(self) -> None:
        for name in ("x", "y"):
            if not math.isfinite(float(getattr(self, name))):
                raise UserError(f"rect {name} is {getattr(self, name)}; it must be a finite number of pixels")
        _check_positive(self.w, "rect w")
        _check_positive(self.h, "rect h")
        check_unit(self.value, "rect value")
        _check_nonneg(self.feather, "rect feather")

    def bbox(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.x + self.w, self.y + self.h

    def coverage(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Hard coverage (0/1) at pixel centres ys (column vector) x xs (row vector)."""
        inside_y = (ys >= self.y) & (ys < self.y + self.h)
        inside_x = (xs >= self.x) & (xs < self.x + self.w)
        return (inside_y & inside_x).astype(np.float32)

    def to_dict(self) -> dict:
        return {"type": self.kind.value, "x": self.x, "y": self.y, "w": self.w, "h": self.h,
                "value": self.value, "feather": self.feather}


@dataclass(frozen=True)
class EllipseShape:
    """Axis-aligned ellipse: centre (cx, cy) and radii (rx, ry) in target pixels."""

    cx: float
    cy: float
    rx: float
    ry: float
    value: float = 1.0
    feather: float = 0.0
    kind: ShapeKind = field(default=ShapeKind.ELLIPSE, init=False)

    def __post_init__(self) -> None:
        for name in ("cx", "cy"):
            if not math.isfinite(float(getattr(self, name))):
                raise UserError(f"ellipse {name} is {getattr(self, name)}; it must be a finite number of pixels")
        _check_positive(self.rx, "ellipse rx")
        _check_positive(self.ry, "ellipse ry")
        check_unit(self.value, "ellipse value")
        _check_nonneg(self.feather, "ellipse feather")

    def bbox(self) -> tuple[float, float, float, float]:
        return self.cx - self.rx, self.cy - self.ry, self.cx + self.rx, self.cy + self.ry

    def coverage(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        dy = ((ys - self.cy) / self.ry) ** 2
        dx = ((xs - self.cx) / self.rx) ** 2
        return ((dy + dx) <= 1.0).astype(np.float32)

    def to_dict(self) -> dict:
        return {"type": self.kind.value, "cx": self.cx, "cy": self.cy, "rx": self.rx, "ry": self.ry,
                "value": self.value, "feather": self.feather}


Shape = Union[RectShape, EllipseShape]
_SHAPE_TYPES: dict[str, type] = {ShapeKind.RECT.value: RectShape, ShapeKind.ELLIPSE.value: EllipseShape}
_SHAPE_FIELDS = {
    ShapeKind.RECT.value: ("x", "y", "w", "h"),
    ShapeKind.ELLIPSE.value: ("cx", "cy", "rx", "ry"),
}


def shape_from_dict(d: Any, where: str = "shape") -> Shape:
    if not isinstance(d, dict):
        raise UserError(f"{where} must be an object like {{\"type\": \"rect\", \"x\": 0, ...}}, got {d!r:.80}")
    kind = d.get("type")
    if kind not in _SHAPE_TYPES:
        raise UserError(f"{where} has unknown type {kind!r}; known shape types: {', '.join(_SHAPE_TYPES)}")
    required = _SHAPE_FIELDS[kind]
    allowed = set(required) | {"type", "value", "feather"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise UserError(f"{where} ({kind}) has unknown field(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in d]
    if missing:
        raise UserError(f"{where} ({kind}) is missing {', '.join(missing)} (pixels)")
    kwargs = {k: v for k, v in d.items() if k != "type"}
    for k, v in kwargs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where} ({kind}) field {k} is {v!r}; it must be a number")
    try:
        return _SHAPE_TYPES[kind](**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def paint_shape(canvas: np.ndarray, shape: Shape) -> None:
    """Paint one shape over `canvas` (float32 (H,W), in place): out += coverage * (value - out).

    Only the shape's bounding box, padded by its feather kernel, is touched, so many small shapes on a large
    frame stay cheap."""
    height, width = canvas.shape
    pad = int(math.ceil(shape.feather)) + 1
    x0, y0, x1, y1 = shape.bbox()
    c0 = max(0, int(math.floor(x0)) - pad)
    r0 = max(0, int(math.floor(y0)) - pad)
    c1 = min(width, int(math.ceil(x1)) + pad)
    r1 = min(height, int(math.ceil(y1)) + pad)
    if c0 >= c1 or r0 >= r1:
        return  # entirely outside the frame
    ys = (np.arange(r0, r1, dtype=np.float64) + 0.5)[:, None]
    xs = (np.arange(c0, c1, dtype=np.float64) + 0.5)[None, :]
    alpha = _blur(shape.coverage(ys, xs), shape.feather)
    roi = canvas[r0:r1, c0:c1]
    roi += alpha * (np.float32(shape.value) - roi)


# ----------------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class ImageMask:
    """A mask image at the target size: gray, or its alpha channel when that is not fully opaque."""

    path: str

    def to_json(self) -> Any:
        return self.path


@dataclass(frozen=True)
class ShapesMask:
    """Shapes painted in order over a constant background (no shapes = a constant mask)."""

    shapes: tuple[Shape, ...] = ()
    background: float = 0.0

    def __post_init__(self) -> None:
        check_unit(self.background, "background")

    def to_json(self) -> Any:
        if not self.shapes:
            return {"fill": self.background}
        out: dict = {"shapes": [s.to_dict() for s in self.shapes]}
        if self.background:
            out["background"] = self.background
        return out


@dataclass(frozen=True, eq=False)
class ArrayMask:
    """Inline values, shape (height, width), in [0, 1]."""

    values: np.ndarray

    def __post_init__(self) -> None:
        arr = np.asarray(self.values, dtype=np.float32)
        if arr.ndim != 2:
            raise UserError(f"inline array has shape {arr.shape}; it must be 2-D (height, width)")
        _check_range(arr, "inline array")
        object.__setattr__(self, "values", arr)

    def to_json(self) -> Any:
        return {"array": self.values.tolist()}


MaskSource = Union[ImageMask, ShapesMask, ArrayMask]


def source_from_json(d: Any, where: str) -> MaskSource:
    """Parse one mask (spatial or keyframe) from its JSON forms (see the module docstring)."""
    if isinstance(d, str):
        return ImageMask(d)
    if isinstance(d, bool):
        raise UserError(f"{where} is {d!r}; give an image path, a list of shapes, {{\"array\": ...}} or a number")
    if isinstance(d, (int, float)):
        return ShapesMask((), check_unit(d, f"{where} fill value"))
    if isinstance(d, list):
        return ShapesMask(tuple(shape_from_dict(s, f"{where} shape {i}") for i, s in enumerate(d)))
    if isinstance(d, dict):
        keys = set(d)
        if keys == {"image"}:
            if not isinstance(d["image"], str):
                raise UserError(f"{where} image must be a file path, got {d['image']!r:.80}")
            return ImageMask(d["image"])
        if keys == {"fill"}:
            return ShapesMask((), check_unit(d["fill"], f"{where} fill value"))
        if keys == {"array"}:
            try:
                arr = np.asarray(d["array"], dtype=np.float32)
            except (TypeError, ValueError):
                raise UserError(f"{where} array must be a rectangular list of rows of numbers") from None
            try:
                return ArrayMask(arr)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        if "shapes" in keys and keys <= {"shapes", "background"}:
            if not isinstance(d["shapes"], list):
                raise UserError(f"{where} shapes must be a list of shapes")
            shapes = tuple(shape_from_dict(s, f"{where} shape {i}") for i, s in enumerate(d["shapes"]))
            return ShapesMask(shapes, check_unit(d.get("background", 0.0), f"{where} background"))
        raise UserError(f"{where} has keys {sorted(keys)}; use exactly one of image, shapes (+ background), "
                        "array, fill")
    raise UserError(f"{where} is {d!r:.80}; give an image path, a list of shapes, {{\"array\": ...}} or a number")


# ----------------------------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class MaskSpec:
    """What the user asked for; `materialise` turns it into pixels. Sizes are the TARGET video's."""

    width: int
    height: int
    frames: int
    strength: float = 1.0
    mask: MaskSource | None = None
    keyframes: dict[int, MaskSource] = field(default_factory=dict)
    sequence: str | None = None
    fade_in: int = 0
    fade_out: int = 0
    invert: bool = False
    feather: float = 0.0
    base_dir: str | None = field(default=None, compare=False)  # where relative paths are resolved
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise UserError(f"mask spec version {self.version} is not supported (this studio reads version "
                            f"{SPEC_VERSION}); re-save the mask from this studio")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % LATENT_SPATIAL:
                raise UserError(f"mask {name} is {v!r}; it must be a positive multiple of {LATENT_SPATIAL} "
                                "(the target video's size)")
        f = self.frames
        if isinstance(f, bool) or not isinstance(f, int) or f < 1 or (f - 1) % LATENT_TEMPORAL:
            hint = ""
            if isinstance(f, int) and f >= 1:
                hint = f" (nearest valid: {(f - 1) // 8 * 8 + 1})"
            raise UserError(f"mask frames is {f!r}; it must be 8n+1 (1, 9, 17, ..., 121){hint}")
        check_unit(self.strength, "strength")
        for name in ("fade_in", "fade_out"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v <= self.frames):
                raise UserError(f"{name} is {v!r}; it must be a whole number of frames between 0 and {self.frames}")
        if not isinstance(self.invert, bool):
            raise UserError(f"invert is {self.invert!r}; it must be true or false")
        _check_nonneg(self.feather, "feather")
        given = [n for n in ("mask", "keyframes", "sequence") if getattr(self, n)]
        if len(given) > 1:
            raise UserError(f"mask spec gives {' and '.join(given)}; give only one of mask, keyframes, sequence")
        for k in self.keyframes:
            if isinstance(k, bool) or not isinstance(k, int) or not (0 <= k < self.frames):
                raise UserError(f"keyframe {k!r} is out of range; frames are numbered 0..{self.frames - 1}")
        for where, src in self._sources():
            if isinstance(src, ArrayMask) and src.values.shape != (self.height, self.width):
                h, w = src.values.shape
                raise UserError(f"{where} inline array is {w}x{h} (width x height); it must be "
                                f"{self.width}x{self.height}, the mask size")

    def _sources(self) -> list[tuple[str, MaskSource]]:
        if self.mask is not None:
            return [("mask", self.mask)]
        return [(f"keyframe {k}", s) for k, s in sorted(self.keyframes.items())]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and self.base_dir:
            p = Path(self.base_dir) / p
        return p

    # ---- JSON

    @classmethod
    def from_dict(cls, d: Any, base_dir: str | os.PathLike | None = None, **overrides: Any) -> "MaskSpec":
        """Parse a spec dict; `overrides` (width/height/frames, e.g. from the CLI) replace its values."""
        if not isinstance(d, dict):
            raise UserError("a mask spec must be a JSON object")
        allowed = {"version", "width", "height", "frames", "strength", "mask", "keyframes", "sequence",
                   "fade_in", "fade_out", "invert", "feather"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise UserError(f"mask spec has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in allowed - {"mask", "keyframes"}}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("width", "height", "frames") if k not in kw]
        if missing:
            raise UserError(f"mask spec is missing {', '.join(missing)} (give them in the spec or on the command line)")
        if d.get("mask") is not None:
            kw["mask"] = source_from_json(d["mask"], "mask")
        keyframes: dict[int, MaskSource] = {}
        raw = d.get("keyframes") or {}
        if not isinstance(raw, dict):
            raise UserError("keyframes must be an object {\"frame index\": mask, ...}")
        for key, value in raw.items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise UserError(f"keyframe key {key!r} is not a frame number") from None
            if idx in keyframes:
                raise UserError(f"keyframe {idx} is given twice")
            keyframes[idx] = source_from_json(value, f"keyframe {key}")
        kw["keyframes"] = keyframes
        if kw.get("sequence") is not None and not isinstance(kw["sequence"], str):
            raise UserError("sequence must be the path of a mask video, a PNG folder or a glob pattern")
        if base_dir is not None:
            kw["base_dir"] = str(base_dir)
        return cls(**kw)

    def to_dict(self) -> dict:
        out: dict = {"version": self.version, "width": self.width, "height": self.height, "frames": self.frames,
                     "strength": self.strength}
        if self.mask is not None:
            out["mask"] = self.mask.to_json()
        if self.keyframes:
            out["keyframes"] = {str(k): s.to_json() for k, s in sorted(self.keyframes.items())}
        if self.sequence:
            out["sequence"] = self.sequence
        out.update({"fade_in": self.fade_in, "fade_out": self.fade_out, "invert": self.invert, "feather": self.feather})
        return out


def load_spec(path: str | os.PathLike, **overrides: Any) -> MaskSpec:
    """Read a spec JSON file; relative image / sequence paths are resolved against its folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"mask spec {p} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read mask spec {p}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"mask spec {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"mask spec {p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return MaskSpec.from_dict(data, base_dir=p.resolve().parent, **overrides)


def _atomic_write(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_spec(spec: MaskSpec, path: str | os.PathLike) -> Path:
    data = json.dumps(spec.to_dict(), indent=2).encode("utf-8")
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """np.save, atomically (temp file in the same folder, then os.replace)."""
    return _atomic_write(Path(path), lambda fh: np.save(fh, array, allow_pickle=False))


# ----------------------------------------------------------------------------------------------- images

def _check_range(arr: np.ndarray, what: str) -> None:
    """UserError unless every value is in [0, 1] (NaN fails too)."""
    if arr.size == 0:
        raise UserError(f"{what} is empty (shape {arr.shape})")
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= 0.0 and hi <= 1.0):
        hint = ""
        if hi > 1.0 and hi <= 255.0 and lo >= 0.0:
            hint = " (it looks like 8-bit values: divide by 255)"
        raise UserError(f"{what} has values from {lo:g} to {hi:g}; mask values must be between 0 and 1{hint}")


def _to_unit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) * np.float32(1 / 255)
    if img.dtype == np.uint16:
        return img.astype(np.float32) * np.float32(1 / 65535)
    return img.astype(np.float32)


def _has_alpha(img: np.ndarray) -> bool:
    """True when the image has a non-opaque alpha channel (that, not the colour, is then the mask)."""
    if img.ndim != 3 or img.shape[2] != 4:
        return False
    full = 255 if img.dtype == np.uint8 else 65535 if img.dtype == np.uint16 else 1.0
    return bool(img[..., 3].min() < full)


def _image_to_mask(img: np.ndarray, use_alpha: bool) -> np.ndarray:
    """cv2 image (gray, BGR or BGRA, 8/16-bit) -> float32 (H,W) in [0,1]."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        return _to_unit(img)
    if use_alpha and img.shape[2] == 4:
        return _to_unit(img[..., 3])
    return cv2.cvtColor(_to_unit(img[..., :3]), cv2.COLOR_BGR2GRAY)


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"mask image {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"mask image {path} could not be read as an image (PNG, JPEG, ...)")
    return img


def _render_source(spec: MaskSpec, where: str, src: MaskSource) -> np.ndarray:
    """One spatial mask -> float32 (H,W) in [0,1] at the spec's size (step 1 of the order of operations)."""
    h, w = spec.height, spec.width
    if isinstance(src, ArrayMask):
        return src.values.copy()
    if isinstance(src, ShapesMask):
        canvas = np.full((h, w), src.background, dtype=np.float32)
        for shape in src.shapes:
            paint_shape(canvas, shape)
        return canvas
    path = spec.resolve(src.path)
    img = _read_image(path)
    if img.shape[:2] != (h, w):
        raise UserError(f"{where} image {path.name} is {img.shape[1]}x{img.shape[0]}; it must be {w}x{h} "
                        "(the mask size). Resize it, or import it with `python -m pipelines mask import`, which "
                        "conforms size and frame count")
    return _image_to_mask(img, _has_alpha(img))


# ----------------------------------------------------------------------------------------------- import

@dataclass
class ImportedMask:
    mask: np.ndarray  # float32 (F,H,W) in [0,1]
    changes: list[str]
    source_frames: int
    source_width: int
    source_height: int

    def text(self) -> str:
        return "; ".join(self.changes) if self.changes else "no changes needed"


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _sequence_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"folder {p} holds no mask images ({', '.join(IMAGE_SUFFIXES)})")
    elif any(c in str(path) for c in "*?["):
        files = [Path(f) for f in glob.glob(str(p)) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise UserError(f"no mask images match {path}")
    else:
        files = [p]
    return sorted(files, key=_natural_key)


def _cover_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to cover (height, width) keeping the aspect ratio, then centre-crop: the same geometry as
    video_io.resize_cover_crop (which conform uses on clips), so the mask stays registered with a conformed
    clip. That function takes uint8 RGB; masks are float (H,W) and grow with INTER_LINEAR (no overshoot)."""
    h, w = frame.shape
    if (h, w) == (height, width):
        return frame
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return resized[top:top + height, left:left + width]


def nearest_frame_indices(source_frames: int, frames: int) -> np.ndarray:
    """Target frame t <- source frame nearest in normalised time (both span the same clip)."""
    t = (np.arange(frames, dtype=np.float64) + 0.5) * source_frames / frames
    return np.minimum(source_frames - 1, np.floor(t)).astype(np.int64)


def import_mask(path: str | os.PathLike, width: int, height: int, frames: int) -> ImportedMask:
    """Import a mask video, a PNG sequence (folder or glob pattern) or a single image, conformed to
    (frames, height, width): gray, or alpha when the images carry a non-opaque alpha channel (decided for the
    whole sequence); resized to cover and centre-cropped; frame count by nearest-frame resampling (a single
    image is held for every frame)."""
    for name, v in (("width", width), ("height", height), ("frames", frames)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f"import target {name} is {v!r}; it must be a positive whole number")
    p = Path(path).expanduser()
    is_video = p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES
    if is_video:
        from pipelines.video_io import read_video

        rgb, _fps = read_video(p)
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]
        source = [_to_unit(g) for g in gray]
        kind = "video"
    else:
        if not any(c in str(path) for c in "*?[") and not p.exists():
            raise UserError(f"mask source {p} does not exist (give a video, an image, a folder of PNGs or a glob)")
        files = _sequence_files(path)
        images = [_read_image(f) for f in files]
        shapes = {im.shape[:2] for im in images}
        if len(shapes) > 1:
            raise UserError(f"the mask images have different sizes ({', '.join(f'{w}x{h}' for h, w in sorted(shapes))}); "
                            "all frames of a sequence must have the same size")
        use_alpha = any(_has_alpha(im) for im in images)
        source = [_image_to_mask(im, use_alpha) for im in images]
        kind = "alpha" if use_alpha else "gray"
    if not source:
        raise UserError(f"mask source {p} has no frames")
    sh, sw = source[0].shape
    changes: list[str] = []
    if not is_video:
        changes.append(f"used the {kind} channel of {len(source)} image(s)")
    if (sh, sw) != (height, width):
        changes.append(f"resized from {sw}x{sh} to cover {width}x{height} and centre-cropped")
    idx = nearest_frame_indices(len(source), frames)
    if len(source) == 1 and frames > 1:
        changes.append(f"held the single frame for all {frames} frames")
    elif len(source) != frames:
        changes.append(f"resampled {len(source)} frames to {frames} (nearest frame)")
    out = np.empty((frames, height, width), dtype=np.float32)
    fitted: dict[int, np.ndarray] = {}
    for t, i in enumerate(idx.tolist()):
        if i not in fitted:
            fitted[i] = np.clip(_cover_resize(source[i], height, width), 0.0, 1.0)
        out[t] = fitted[i]
    return ImportedMask(out, changes, len(source), sw, sh)


# ----------------------------------------------------------------------------------------------- materialise

def ramp_weights(frames: int, fade_in: int = 0, fade_out: int = 0) -> np.ndarray:
    """Per-frame multiplier: min(1, t/fade_in) * min(1, (F-1-t)/fade_out); float64 (F,)."""
    t = np.arange(frames, dtype=np.float64)
    r = np.ones(frames, dtype=np.float64)
    if fade_in > 0:
        r *= np.minimum(1.0, t / fade_in)
    if fade_out > 0:
        r *= np.minimum(1.0, (frames - 1 - t) / fade_out)
    return r


def materialise(spec: MaskSpec) -> np.ndarray:
    """The pixel mask the spec describes: float32 (F,H,W) in [0,1] at the target size (strength NOT applied).

    Order of operations: sources -> feather -> keyframe interpolation -> invert -> ramps (module docstring).
    Work in time is one vectorised pass per output frame (cv2.addWeighted of two keyframes with the ramp
    folded into the weights), never a Python loop over pixels."""
    F, H, W = spec.frames, spec.height, spec.width
    ramp = ramp_weights(F, spec.fade_in, spec.fade_out)

    if spec.sequence:
        imported = import_mask(spec.resolve(spec.sequence), W, H, F)
        out = imported.mask
        for t in range(F):
            frame = _blur(out[t], spec.feather)
            if spec.invert:
                frame = 1.0 - frame
            np.multiply(frame, np.float32(ramp[t]), out=out[t])
        np.clip(out, 0.0, 1.0, out=out)
        return out

    if spec.keyframes:
        keys = sorted(spec.keyframes)
        keys_masks = [_render_source(spec, f"keyframe {k}", spec.keyframes[k]) for k in keys]
    elif spec.mask is not None:
        keys = [0]
        keys_masks = [_render_source(spec, "mask", spec.mask)]
    else:
        keys = [0]
        keys_masks = [np.ones((H, W), dtype=np.float32)]
    prepared = []
    for m in keys_masks:
        m = _blur(m, spec.feather)
        if spec.invert:
            m = 1.0 - m  # linear, so inverting keyframes == inverting the interpolated frames
        prepared.append(np.ascontiguousarray(m, dtype=np.float32))

    out = np.empty((F, H, W), dtype=np.float32)
    key_arr = np.asarray(keys)
    for t in range(F):
        r = float(ramp[t])
        seg = int(np.searchsorted(key_arr, t, side="right")) - 1  # last keyframe <= t
        if seg < 0 or seg >= len(keys) - 1 or keys[seg] == t:
            held = prepared[max(seg, 0)]  # before the first / at or after the last keyframe: hold
            np.multiply(held, np.float32(r), out=out[t])
            continue
        k0, k1 = keys[seg], keys[seg + 1]
        w = (t - k0) / (k1 - k0)
        cv2.addWeighted(prepared[seg], r * (1.0 - w), prepared[seg + 1], r * w, 0.0, dst=out[t])
    np.clip(out, 0.0, 1.0, out=out)
    return out


# ----------------------------------------------------------------------------------------------- latent weights

def _as_mask(mask: Any, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    elif not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise UserError(f"{what} has dtype {arr.dtype}; it must hold numbers in [0, 1]")
    if arr.ndim not in (2, 3):
        raise UserError(f"{what} has shape {arr.shape}; it must be (height, width) or (frames, height, width)")
    if min(arr.shape) < 1:
        raise UserError(f"{what} has shape {arr.shape}; no dimension may be 0")
    if arr.dtype != np.float32 and arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    _check_range(arr, what)
    return arr


def _block_mean(x: np.ndarray, fh: int, fw: int) -> np.ndarray:
    """Exact area average over non-overlapping fh x fw blocks of (N,H,W), accumulated in float64."""
    n, h, w = x.shape
    blocks = x.reshape(n, h // fh, fh, w // fw, fw)
    s = blocks.sum(axis=4, dtype=np.float64).sum(axis=2)
    return s / (fh * fw)


def latent_weights(mask: Any, latent_frames: int | None = None, latent_height: int | None = None,
                   latent_width: int | None = None) -> np.ndarray:
    """Reduce a pixel mask at REFERENCE size to per-token weights, float32 (f, h, w), exactly as the VAE grid
    sees it (SPEC.md 2). Strength is not applied; multiply by it.

    mask: (H,W) or (F,H,W) in [0,1]. Spatial: area average of each frame to (H/32, W/32) by an exact block
    mean (or to (latent_height, latent_width): block mean when they divide H and W, else cv2.INTER_AREA).
    Temporal, causal: latent frame 0 <- pixel frame 0, then consecutive groups of 8 pixel frames averaged;
    F must be 8n+1 (-> n+1 latent frames). A (H,W) or (1,H,W) mask means the same for every latent frame:
    f = 1, or `latent_frames` copies when given."""
    return _reduce(_as_mask(mask), latent_frames, latent_height, latent_width)


def _reduce(m: np.ndarray, latent_frames: int | None, latent_height: int | None,
            latent_width: int | None) -> np.ndarray:
    """`latent_weights` on a mask already checked by `_as_mask` (the range check is a full pass: do it once)."""
    if m.ndim == 2:
        m = m[None]
    F, H, W = m.shape
    lh = latent_height if latent_height is not None else _default_latent_size(H, "height")
    lw = latent_width if latent_width is not None else _default_latent_size(W, "width")
    for name, v, px in (("latent_height", lh, H), ("latent_width", lw, W)):
        if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= px):
            raise UserError(f"{name} is {v!r}; it must be a whole number between 1 and the mask's {px} pixels")

    # Temporal first: it shrinks the data 8x before the spatial pass.
    if F == 1:
        pooled = m
        repeat = 1 if latent_frames is None else latent_frames
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise UserError(f"latent_frames is {latent_frames!r}; it must be a positive whole number")
    else:
        if (F - 1) % LATENT_TEMPORAL:
            raise UserError(f"mask has {F} frames; it must be 8n+1 (1, 9, ..., 121) to map onto latent frames "
                            f"(nearest valid: {(F - 1) // 8 * 8 + 1})")
        n = (F - 1) // LATENT_TEMPORAL
        if latent_frames is not None and latent_frames != n + 1:
            raise UserError(f"mask has {F} pixel frames = {n + 1} latent frames, but {latent_frames} latent frames "
                            "were asked for; give a mask with the video's frame count")
        # Sums of 8 values in [0,1] in float32 are off by < 1e-6; the spatial pass accumulates in float64.
        pooled = np.empty((n + 1, H, W), dtype=np.float32)
        pooled[0] = m[0]
        if n:
            groups = m[1:].reshape(n, LATENT_TEMPORAL, H, W)
            np.sum(groups, axis=1, dtype=np.float32, out=pooled[1:])
            pooled[1:] *= np.float32(1 / LATENT_TEMPORAL)
        repeat = 1

    if H % lh == 0 and W % lw == 0:
        lat = _block_mean(pooled, H // lh, W // lw)
    else:
        lat = np.stack([cv2.resize(f, (lw, lh), interpolation=cv2.INTER_AREA) for f in pooled])
    lat = np.clip(lat, 0.0, 1.0).astype(np.float32)
    if repeat > 1:
        lat = np.repeat(lat, repeat, axis=0)
    return np.ascontiguousarray(lat)


def _default_latent_size(px: int, name: str) -> int:
    if px % LATENT_SPATIAL:
        raise UserError(f"mask {name} is {px} px, not a multiple of {LATENT_SPATIAL}; give the mask at the reference "
                        f"size (a multiple of {LATENT_SPATIAL}) or pass latent_{name}")
    return px // LATENT_SPATIAL


def reference_pixel_size(target_h: int, target_w: int, downscale: int) -> tuple[int, int]:
    """(height, width) of the reference (control) video for an IC-LoRA with reference_downscale_factor D."""
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise UserError(f"downscale factor is {downscale!r}; it must be a whole number >= 1 (the LoRA's "
                        "reference_downscale_factor)")
    step = LATENT_SPATIAL * downscale
    for name, v in (("height", target_h), ("width", target_w)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % step:
            raise UserError(f"target {name} is {v!r}; with downscale factor {downscale} it must be a positive "
                            f"multiple of {step} ({LATENT_SPATIAL} x {downscale})")
    return target_h // downscale, target_w // downscale


def downscale_to_reference(mask: Any, downscale: int = 1) -> np.ndarray:
    """A mask at TARGET size (H,W) or (F,H,W) -> reference size (H/D, W/D) by exact area average, float32."""
    m = _as_mask(mask)
    squeeze = m.ndim == 2
    if squeeze:
        m = m[None]
    reference_pixel_size(m.shape[1], m.shape[2], downscale)
    if downscale == 1:
        out = m.astype(np.float32, copy=False)
    else:
        out = _block_mean(m, downscale, downscale).astype(np.float32)
    return out[0] if squeeze else out


def latent_weights_at_target(mask: Any, downscale: int = 1, latent_frames: int | None = None) -> np.ndarray:
    """Latent weights for a mask drawn at the TARGET size (H,W) or (F,H,W); D = the IC-LoRA's
    reference_downscale_factor. Means: area-average to the reference size (H/D, W/D), then `latent_weights`.
    Nested equal blocks make that one area average over 32*D blocks, which is what runs (after the temporal
    reduction, on 8x less data). Strength not applied."""
    m = _as_mask(mask)
    h, w = reference_pixel_size(m.shape[-2], m.shape[-1], downscale)
    # Area average to (H/D, W/D) then to the 32x grid == one area average over 32*D blocks (nested equal
    # blocks), so do it in one pass, after the temporal reduction that shrinks the data 8x.
    return _reduce(m, latent_frames, h // LATENT_SPATIAL, w // LATENT_SPATIAL)


def spec_latent_weights(spec: MaskSpec, downscale: int = 1, mask: np.ndarray | None = None) -> np.ndarray:
    """What the engine receives for this spec: latent reduction of the pixel mask x spec.strength."""
    pixels = materialise(spec) if mask is None else mask
    weights = latent_weights_at_target(pixels, downscale)
    weights *= np.float32(spec.strength)
    return weights


def summary(array: np.ndarray) -> dict:
    """Short JSON-able description: shape, min/max/mean."""
    return {"shape": list(array.shape), "dtype": str(array.dtype), "min": round(float(array.min()), 6),
            "max": round(float(array.max()), 6), "mean": round(float(array.mean(dtype=np.float64)), 6)}


def with_size(spec: MaskSpec, width: int | None = None, height: int | None = None, frames: int | None = None) -> MaskSpec:
    """The same spec at another size / frame count (re-validated)."""
    kw = {k: v for k, v in (("width", width), ("height", height), ("frames", frames)) if v is not None}
    return replace(spec, **kw) if kw else spec
