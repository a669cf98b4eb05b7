"""Typed options and reports for the control preprocessors.

One options dataclass per control kind: it is what the UI form holds, what the CLI builds from its flags and
what is written into the report beside every control video. ``options_from_dict`` turns a plain dict (JSON,
a preset file) into the right dataclass and refuses unknown keys with a message that lists the known ones.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines.errors import UserError

# progress(fraction in [0, 1], short text). Called from the worker thread; must be cheap.
ProgressFn = Callable[[float, str], None]


class ControlKind(str, enum.Enum):
    """The control signals the Union IC-LoRA understands (SPEC.md 6), plus the user's own control video."""

    CANNY = "canny"
    DEPTH = "depth"
    POSE = "pose"
    PASSTHROUGH = "passthrough"

    @classmethod
    def parse(cls, value: "str | ControlKind") -> "ControlKind":
        if isinstance(value, ControlKind):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise UserError(f"unknown control kind {value!r}; choose one of: {known}") from None


class DepthModelSize(str, enum.Enum):
    """Depth-Anything-V2 sizes. Small is Apache-2.0; Base and Large are CC-BY-NC-4.0 (non-commercial)."""

    SMALL = "small"
    BASE = "base"
    LARGE = "large"


class DepthNormalize(str, enum.Enum):
    """How relative depth becomes 0..255. Always over the whole clip, never per frame (per frame flickers)."""

    MINMAX = "minmax"          # global min / max of the clip
    PERCENTILE = "percentile"  # global low / high percentiles of the clip (robust to a few outlier pixels)


class PoseBackend(str, enum.Enum):
    DWPOSE = "dwpose"                # DWPose ONNX through onnxruntime (what the Union LoRA was trained on)
    CONTROLNET_AUX = "controlnet-aux"  # controlnet-aux OpenposeDetector (optional, when installed)


@dataclass
class CannyOptions:
    low_threshold: int = 92     # Union IC-LoRA training values (SPEC.md 6)
    high_threshold: int = 200
    blur_sigma: float = 0.0     # Gaussian pre-blur in px (0 = none); suppresses texture edges on noisy footage
    dilate: int = 0             # extra edge width in px (0 = cv2.Canny's own 1 px lines, same on every frame)

    def validate(self) -> None:
        if not (0 <= self.low_threshold <= self.high_threshold <= 1000):
            raise UserError(f"canny thresholds must satisfy 0 <= low <= high <= 1000; got low={self.low_threshold}, high={self.high_threshold}")
        if self.blur_sigma < 0 or self.blur_sigma > 20:
            raise UserError(f"canny blur_sigma must be between 0 and 20 px; got {self.blur_sigma}")
        if not (0 <= self.dilate <= 10):
            raise UserError(f"canny dilate must be between 0 and 10 px; got {self.dilate}")


@dataclass
class DepthOptions:
    model: DepthModelSize = DepthModelSize.SMALL
    invert: bool = False                 # default: near = white, far = black (Depth-Anything / VDA gray)
    normalize: DepthNormalize = DepthNormalize.PERCENTILE
    percentiles: tuple[float, float] = (1.0, 99.0)
    smoothing: float = 0.0               # EMA weight of the previous frame on raw depth (0 = off, 0.9 = heavy)
    batch_size: int = 8
    device: str | None = None            # None = cuda when available, else cpu

    def validate(self) -> None:
        lo, hi = self.percentiles
        if not (0 <= lo < hi <= 100):
            raise UserError(f"depth percentiles must satisfy 0 <= low < high <= 100; got {self.percentiles}")
        if not (0 <= self.smoothing < 1):
            raise UserError(f"depth smoothing must be in [0, 1); got {self.smoothing}")
        if not (1 <= self.batch_size <= 256):
            raise UserError(f"depth batch_size must be between 1 and 256; got {self.batch_size}")


@dataclass
class PoseOptions:
    backend: PoseBackend = PoseBackend.DWPOSE
    detect_every: int = 4            # run the person detector every k frames; keypoints run on every frame
    max_people: int = 8
    score_threshold: float = 0.3     # keypoint confidence below this counts as missing (DWPose's value)
    max_gap: int = 8                 # interpolate a missing keypoint over at most this many frames
    smoothing: float = 0.0           # EMA weight of the previous frame on keypoint positions (0 = off)
    stick_width: int | None = None   # None = 4 px at 512 px (scaled with the short side), like OpenPose
    device: str | None = None        # None = CUDA provider when onnxruntime has it, else CPU

    def validate(self) -> None:
        if not (1 <= self.detect_every <= 1000):
            raise UserError(f"pose detect_every must be between 1 and 1000 frames; got {self.detect_every}")
        if not (1 <= self.max_people <= 64):
            raise UserError(f"pose max_people must be between 1 and 64; got {self.max_people}")
        if not (0 <= self.score_threshold < 1):
            raise UserError(f"pose score_threshold must be in [0, 1); got {self.score_threshold}")
        if not (0 <= self.max_gap <= 1000):
            raise UserError(f"pose max_gap must be between 0 and 1000 frames; got {self.max_gap}")
        if not (0 <= self.smoothing < 1):
            raise UserError(f"pose smoothing must be in [0, 1); got {self.smoothing}")
        if self.stick_width is not None and not (1 <= self.stick_width <= 64):
            raise UserError(f"pose stick_width must be between 1 and 64 px; got {self.stick_width}")


@dataclass
class PassthroughOptions:
    invert: bool = False       # e.g. a Blender Z pass (far = white) turned into near = white
    gray: bool = False         # collapse to gray 3-channel (a depth pass saved with a colour map stays as is)
    smoothing: float = 0.0     # EMA weight of the previous frame (0 = off); calms a noisy LiDAR render

    def validate(self) -> None:
        if not (0 <= self.smoothing < 1):
            raise UserError(f"passthrough smoothing must be in [0, 1); got {self.smoothing}")


ControlOptions = CannyOptions | DepthOptions | PoseOptions | PassthroughOptions

OPTIONS_TYPES: dict[ControlKind, type] = {
    ControlKind.CANNY: CannyOptions,
    ControlKind.DEPTH: DepthOptions,
    ControlKind.POSE: PoseOptions,
    ControlKind.PASSTHROUGH: PassthroughOptions,
}


def _coerce(value: Any, default: Any, name: str) -> Any:
    """Turn JSON-ish values back into the field's type, judged from its default."""
    if isinstance(default, enum.Enum):
        try:
            return type(default)(value.value if isinstance(value, enum.Enum) else str(value).lower())
        except ValueError:
            known = ", ".join(m.value for m in type(default))
            raise UserError(f"option {name}={value!r} is not one of: {known}") from None
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise UserError(f"option {name}={value!r} is not a yes/no value")
        return bool(value)
    if isinstance(default, tuple):
        return tuple(float(v) for v in value)
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise UserError(f"option {name}={value!r} is not a number") from None
    return value


def options_from_dict(kind: ControlKind | str, data: dict | None) -> ControlOptions:
    """Build and validate the options dataclass for `kind` from a plain dict (unknown keys are refused)."""
    kind = ControlKind.parse(kind)
    cls = OPTIONS_TYPES[kind]
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown {kind.value} option(s): {', '.join(unknown)}; known: {', '.join(fields)}")
    defaults = cls()
    kwargs = {k: (v if v is None else _coerce(v, getattr(defaults, k), k)) for k, v in data.items()}
    opts = cls(**kwargs)
    opts.validate()
    return opts


def resolve_options(kind: ControlKind, options: ControlOptions | dict | None) -> ControlOptions:
    if options is None or isinstance(options, dict):
        return options_from_dict(kind, options)
    expected = OPTIONS_TYPES[kind]
    if not isinstance(options, expected):
        raise UserError(f"{kind.value} needs {expected.__name__}, got {type(options).__name__}")
    options.validate()
    return options


def options_to_dict(options: ControlOptions) -> dict:
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        out[f.name] = v.value if isinstance(v, enum.Enum) else (list(v) if isinstance(v, tuple) else v)
    return out


@dataclass
class ControlReport:
    """What was made and how: written beside the control video, shown in the UI, printed by the CLI."""

    kind: str
    backend: str
    width: int
    height: int
    frames: int
    fps: float
    options: dict
    conform: dict
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    weights: str | None = None   # folder the weights were loaded from, when the backend has weights
    device: str | None = None
    details: dict = field(default_factory=dict)   # backend figures: model input size, depth range, people, ...
    cleanup: dict | None = None   # clean-up options and the steps that ran, measured (pipelines.control.cleanup)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        head = f"{self.kind} ({self.backend}): {self.frames} frames {self.width}x{self.height} @ {self.fps:g} fps in {self.seconds:.1f} s"
        return "; ".join([head, *self.notes])
