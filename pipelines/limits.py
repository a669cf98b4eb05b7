"""Size limits for every kind of work, in one place: the studio (UI and API) and the CLI check the same bounds.

One request must never be able to take a server down: a 2048x2048 track render of 1000 frames, or a control
made from 100001 frames, allocates tens of gigabytes. So every kind of work (generate, preprocess, tracks
render, mask build, training buckets and steps, dataset zips) is bounded on

    frames                   ``max_frames``
    width x height           ``max_pixels`` (and ``max_side``, ``max_aspect``)
    frames x width x height  ``max_volume`` (what a uint8 video of that size costs: 3 bytes each)

plus the counts a request can carry (prompt length, controls, LoRAs, tracks), the queued jobs per user and
what a dataset zip may expand to. Checks run at SUBMIT, before anything is allocated from the request's sizes,
and raise one UserError that names the bound and how to change it (a server flag:
``python app.py --max-frames N``; on the CLI ``python -m pipelines --max-frames N ...``).

``active()`` is the process's limits: the studio sets them once from its flags (``configure``), the CLI from
its global options; tests swap them with ``using(...)``. ``zero_gpu()`` is the profile a ZeroGPU Space runs
with (70 GB, 300 s per call). Inputs named in a request (control videos, images, masks) are probed here too:
``probe_video_input`` / ``probe_image_input`` / ``probe_mask_input`` read headers only, then check what
decoding them would cost.

Pure Python at import (numpy, cv2 and the video code are imported inside the probes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import UserError

__all__ = ["Limits", "active", "configure", "using", "zero_gpu", "check_generate_inputs", "probe_video_input",
           "probe_image_input", "probe_mask_input", "FLAGS"]

# field -> the command-line flag that sets it (the same on `python app.py` and `python -m pipelines`)
FLAGS = {
    "max_frames": "--max-frames",
    "max_pixels": "--max-pixels",
    "max_volume": "--max-volume",
    "max_queued_jobs": "--max-queued-jobs",
}

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Upper bounds on one request. Defaults suit a local or LAN server with one large GPU."""

    max_frames: int = 257               # frames of any video the studio makes or reads for a request
    max_pixels: int = 2048 * 2048       # width x height of one frame
    max_volume: int = 257 * 1024 * 1024  # frames x width x height (257 frames at 1024x1024)
    max_side: int = 4096                # longest side in pixels
    max_aspect: float = 8.0             # long side / short side (the track renderer's canvas grows with it)
    max_steps: int = 200                # sampling steps of a full-schedule generation
    max_prompt_chars: int = 20_000      # the text encoder reads ~1024 tokens; far longer text is a mistake
    max_controls: int = 8               # reference (control) videos in one generation
    max_loras: int = 16                 # LoRAs stacked in one generation
    max_tracks: int = 1024              # tracks in one track file
    max_track_points: int = 200_000     # points over all tracks of one track file
    max_track_file_bytes: int = 32 * MIB
    max_mask_file_bytes: int = 4 * GIB  # a .npy mask (float32 F x H x W at the reference size)
    max_train_steps: int = 100_000
    max_queued_jobs: int = 16           # jobs one user may have waiting in the queue
    input_volume_factor: int = 4        # a source clip may cost this many times max_volume to decode
    zip_max_entries: int = 2000         # files in a dataset zip
    zip_max_bytes: int = 16 * GIB       # total uncompressed size of a dataset zip
    zip_max_ratio: float = 200.0        # uncompressed / compressed (videos barely compress: ~1)
    profile: str = "default"
    how: str = "studio"                 # "studio" or "cli": which command the messages tell people to change

    # -- construction ------------------------------------------------------------------------------------
    def with_overrides(self, **values: Any) -> "Limits":
        """A copy with the given fields changed (None values are ignored); each must be positive."""
        changes = {k: v for k, v in values.items() if v is not None}
        for k, v in changes.items():
            if k in ("profile", "how"):
                continue
            if not hasattr(self, k):
                raise UserError(f"unknown limit {k!r}")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise UserError(f"{_flag(k) or k} must be a positive number (got {v!r})")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def max_input_volume(self) -> int:
        return self.max_volume * self.input_volume_factor

    # -- messages --------------------------------------------------------------------------------------------
    def change_hint(self, field: str) -> str:
        flag = _flag(field)
        if self.profile == "zerogpu":
            return "ZeroGPU: 300 s of GPU per call; duplicate the Space to a dedicated GPU for larger runs"
        if flag is None:
            return "a fixed bound of this studio"
        if self.how == "cli":
            return f"pass `python -m pipelines {flag} N ...` to change it"
        return f"the server's owner can raise it: `python app.py {flag} N`"

    def _over(self, what: str, text: str, field: str) -> UserError:
        return UserError(f"{what}: {text} ({self.change_hint(field)})")

    # -- checks ----------------------------------------------------------------------------------------------
    def check_video(self, what: str, width: Any, height: Any, frames: Any = 1) -> None:
        """Frames, frame size, side, aspect and frames x pixels of a video ``what`` is about to make or read."""
        w, h, f = _whole(width, f"{what}: width"), _whole(height, f"{what}: height"), _whole(frames, f"{what}: frames")
        if f > self.max_frames:
            raise self._over(what, f"{f} frames is over the limit of {self.max_frames} frames", "max_frames")
        if max(w, h) > self.max_side:
            raise self._over(what, f"{w}x{h} has a side over the limit of {self.max_side} px", "max_side")
        if w * h > self.max_pixels:
            raise self._over(what, f"{w}x{h} = {w * h:,} pixels per frame is over the limit of "
                                   f"{self.max_pixels:,} ({_square(self.max_pixels)})", "max_pixels")
        if max(w, h) > self.max_aspect * min(w, h):
            raise self._over(what, f"{w}x{h} is wider than {self.max_aspect:g}:1", "max_aspect")
        if f * w * h > self.max_volume:
            raise self._over(what, f"{f} frames at {w}x{h} = {f * w * h:,} frame pixels is over this server's "
                                   f"limit of {self.max_volume:,} (frames x width x height; e.g. "
                                   f"{self.max_volume // max(1, w * h)} frames at {w}x{h})", "max_volume")

    def check_input_clip(self, what: str, width: int, height: int, frames: int) -> None:
        """A clip the studio must DECODE (at its own size) before conforming it: frames x its pixels."""
        if width * height > self.max_pixels * self.input_volume_factor:
            raise self._over(what, f"the clip is {width}x{height}, over the {_square(self.max_pixels * self.input_volume_factor)} "
                                   "this server decodes; downscale it first", "max_pixels")
        if frames * width * height > self.max_input_volume:
            most = self.max_input_volume // max(1, width * height)
            raise self._over(what, f"decoding {frames} frames at {width}x{height} is over the limit "
                                   f"of {self.max_input_volume:,} frame pixels for inputs (at most {most} frames "
                                   "at that size); trim or downscale the clip first", "max_volume")

    def check_count(self, what: str, n: int, field: str, noun: str) -> None:
        bound = getattr(self, field)
        if n > bound:
            raise self._over(what, f"{n:,} {noun} is over the limit of {bound:,}", field)

    def check_text(self, what: str, text: Any) -> None:
        if isinstance(text, str) and len(text) > self.max_prompt_chars:
            raise self._over(what, f"{len(text):,} characters is over the limit of {self.max_prompt_chars:,} "
                                   "(the text encoder reads about 1024 tokens)", "max_prompt_chars")

    def check_generate(self, request: dict) -> None:
        """A GenerateRequest dict (as the queue stores it): sizes, steps, text, controls, LoRAs."""
        if not isinstance(request, dict):
            raise UserError("a generation request must be a JSON object")
        self.check_text("prompt", request.get("prompt"))
        self.check_text("negative prompt", request.get("negative_prompt"))
        controls, loras = request.get("controls") or [], request.get("loras") or []
        if isinstance(controls, list):
            self.check_count("controls", len(controls), "max_controls", "control videos")
        if isinstance(loras, list):
            self.check_count("loras", len(loras), "max_loras", "LoRAs")
        w, h, f = request.get("width", 768), request.get("height", 512), request.get("frames", 121)
        if all(_is_whole(v) for v in (w, h, f)):
            self.check_video("generation", w, h, f)
        steps = request.get("steps")
        if request.get("schedule") == "full" and _is_whole(steps) and int(steps) > self.max_steps:
            raise self._over("steps", f"{steps} is over the limit of {self.max_steps}", "max_steps")

    def check_train(self, recipe) -> None:
        """A training recipe (a Recipe or its dict): the buckets it trains on, its validation size, its steps."""
        r = recipe if isinstance(recipe, dict) else recipe.to_dict()
        area, frames = int(r.get("target_area") or 0), int(r.get("max_frames") or 1)
        if frames > self.max_frames:
            raise self._over("training buckets", f"max_frames={frames} is over the limit of "
                                                 f"{self.max_frames} frames", "max_frames")
        if area > self.max_pixels:
            raise self._over("training buckets", f"target_area={area:,} pixels is over the limit of "
                                                 f"{self.max_pixels:,}", "max_pixels")
        if frames * area > self.max_volume:
            raise self._over("training buckets", f"{frames} frames x {area:,} pixels is over the limit of "
                                                 f"{self.max_volume:,} frame pixels", "max_volume")
        self.check_video("validation sample", r.get("validation_width", 256), r.get("validation_height", 256),
                         r.get("validation_frames", 9))
        steps = int(r.get("steps") or 0)
        if steps > self.max_train_steps:
            raise self._over("training", f"steps={steps:,} is over the limit of "
                                         f"{self.max_train_steps:,}", "max_train_steps")

    def check_file_size(self, what: str, path: str | os.PathLike, field: str) -> int:
        size = Path(path).stat().st_size
        bound = getattr(self, field)
        if size > bound:
            raise self._over(what, f"{Path(path).name} is {_bytes(size)}, over the limit of {_bytes(bound)}", field)
        return size


def zero_gpu(how: str = "studio") -> Limits:
    """The ZeroGPU profile: 70 GB and 300 s of GPU per call. A 22B distilled run at 768x512 x 121 frames
    (about 1-2 min on an H200 slice) fits; larger sizes are refused up front rather than killed at the time
    cap."""
    return Limits(max_frames=121, max_pixels=1024 * 1024, max_volume=121 * 1024 * 1024, max_side=1024,
                  max_steps=40, max_queued_jobs=4, profile="zerogpu", how=how)


# ----------------------------------------------------------------------------------------------------------
# The process's limits

_lock = threading.Lock()
_active = Limits()


def active() -> Limits:
    """The limits this process applies (set by the studio's flags or the CLI's global options)."""
    return _active


def configure(limits: Limits) -> Limits:
    """Make ``limits`` the process's limits (the studio at start, the CLI in main); returns them."""
    global _active
    if not isinstance(limits, Limits):
        raise TypeError(f"configure needs a Limits, not {type(limits).__name__}")
    with _lock:
        _active = limits
    return limits


@contextlib.contextmanager
def using(limits: Limits):
    """Apply ``limits`` inside a ``with`` block (tests), then restore the previous ones."""
    before = active()
    configure(limits)
    try:
        yield limits
    finally:
        configure(before)


# ----------------------------------------------------------------------------------------------------------
# Probing inputs at submit: headers only, then what decoding would cost

def probe_video_input(path: str | os.PathLike, what: str, *, frames: int | None = None,
                      fps: float | None = None, limits: Limits | None = None):
    """Probe a video a request names (exists, is a video, has frames) and check what decoding the frames the
    request needs would cost. ``frames``/``fps`` are the request's target (None: the whole clip). Returns the
    VideoInfo."""
    from pipelines.video_io import probe

    lim = limits or active()
    try:
        info = probe(path)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    needed = info.frames
    if frames is not None:
        ratio = (info.fps / fps) if fps and info.fps and fps > 0 else 1.0
        needed = min(info.frames, int(math.ceil(int(frames) * max(ratio, 1.0))) + 1)
    lim.check_input_clip(what, info.width, info.height, needed)
    return info


def probe_image_input(path: str | os.PathLike, what: str, *, limits: Limits | None = None,
                      decode: bool = True) -> tuple[int, int] | None:
    """An image a request names: its header gives the size (checked before decoding), then (``decode``) it is
    decoded once so a damaged file fails now. Returns (width, height) (None without ``decode`` when the
    header could not be read: the caller's own decoder then says why)."""
    lim = limits or active()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}: image not found: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"{what}: {p.name} is empty (0 bytes)")
    try:
        from PIL import Image

        with Image.open(p) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001  anything PIL cannot open: refused below by the decoder's message
        w = h = None
    if w is not None and w * h > lim.max_pixels * lim.input_volume_factor:
        raise lim._over(what, f"{p.name} is {w}x{h}, over the {_square(lim.max_pixels * lim.input_volume_factor)} "
                              "this server decodes; downscale it first", "max_pixels")
    if not decode:
        return (w, h) if w is not None else None
    from pipelines.video_io import read_image

    try:
        img = read_image(p)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    return int(img.shape[1]), int(img.shape[0])


def check_generate_inputs(request: dict, limits: Limits | None = None) -> None:
    """Probe every file a GenerateRequest dict names (controls, first-frame image, mask) so a missing, empty
    or undecodable file, or one too big to decode, is refused when the request is submitted, not after its
    turn in the queue. Sizes of the request itself: ``Limits.check_generate``."""
    from pipelines.video_io import IMAGE_EXTS  # what the engine reads as a still

    lim = limits or active()
    frames, fps = request.get("frames"), request.get("fps")
    for i, c in enumerate(request.get("controls") or []):
        path = c.get("path") if isinstance(c, dict) else getattr(c, "path", None)
        if not path:
            raise UserError(f"controls[{i}]: no file given")
        if Path(path).suffix.lower() in IMAGE_EXTS:
            probe_image_input(path, f"controls[{i}]", limits=lim)
        else:
            probe_video_input(path, f"controls[{i}]", frames=frames, fps=fps, limits=lim)
    if request.get("image"):
        probe_image_input(request["image"], "image", limits=lim)
    if request.get("mask"):
        probe_mask_input(request["mask"], "mask", limits=lim)


def probe_mask_input(path: str | os.PathLike, what: str = "mask", *, limits: Limits | None = None) -> tuple:
    """A .npy mask a request names: the header is read (no data), its shape checked against the limits.
    Returns the shape. Empty, truncated, pickled or non-.npy files are refused with a message."""
    import numpy as np

    lim = limits or active()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}: mask file not found: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"{what}: {p.name} is empty (0 bytes); save the mask again")
    lim.check_file_size(what, p, "max_mask_file_bytes")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
        shape, dtype = tuple(arr.shape), arr.dtype
        del arr
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{what}: {p.name} is not a readable .npy mask ({_short(exc)}); save it with "
                        "numpy.save or the Mask painter") from None
    if dtype.kind not in "biuf":
        raise UserError(f"{what}: {p.name} holds {dtype} values; a mask holds numbers in [0, 1]")
    if len(shape) not in (2, 3) or 0 in shape:
        raise UserError(f"{what}: {p.name} has shape {shape}; a mask is (H,W) or (F,H,W)")
    f, h, w = (1, *shape) if len(shape) == 2 else shape
    lim.check_video(what, w, h, f)
    return shape


# ----------------------------------------------------------------------------------------------------------

def _flag(field: str) -> str | None:
    return FLAGS.get(field)


def _is_whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _whole(v: Any, what: str) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a whole number (got {v!r})") from None
    if n != v and not (isinstance(v, float) and v == n):
        raise UserError(f"{what} must be a whole number (got {v!r})")
    if n < 1:
        raise UserError(f"{what} must be at least 1 (got {n})")
    return n


def _square(pixels: int) -> str:
    side = int(math.isqrt(int(pixels)))
    return f"{side}x{side}" if side * side == pixels else f"{pixels:,} pixels"


def _bytes(n: int) -> str:
    for unit, size in (("GB", GIB), ("MB", MIB), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
