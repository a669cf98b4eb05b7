"""The training dataset: a folder or .zip of clips, checked before any GPU work.

`scan_dataset` reads every clip's metadata and a few sampled frames (decoded small, never the whole clip) and
returns a `DatasetReport`: what conforming will do to each clip (8n+1 trim, resize + centre crop to its
bucket), near-duplicate clips (DCT perceptual hash), whether a face is found and how big, how much angles and
lighting vary across clips, and the files it could not read. Problems a person should look at are warnings in
plain words; only "nothing to train on" is an error. Non-face subjects are allowed, so face findings are
warnings, never errors.

Face finding uses OpenCV's bundled Haar cascades (frontal + profile, no downloads) when the installed OpenCV
has them. OpenCV 5 moved `CascadeClassifier` out of the main package; there the report says the face check was
skipped and why instead of claiming "no face". Any callable `rgb -> list[Face]` can be passed instead.
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from pipelines.errors import UserError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts"})
CAPTION_EXTENSION = ".txt"
RECOMMENDED_CLIPS = (15, 40)
DEFAULT_TARGET_AREA = 512 * 512
# Aspect ratios (width / height) of the bucket set. A small set keeps batches of equal shape common.
BUCKET_ASPECTS = (1 / 1, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)
ANALYSIS_SHORT_SIDE = 360  # sampled frames are decoded at this short side (never upscaled)
PHASH_BITS = 64


# --------------------------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class Bucket:
    """A training shape: width and height multiples of the grid, 8n+1 frames."""

    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


def valid_frame_count(n: int) -> int:
    """Largest 8k+1 <= n (the VAE's causal first frame + groups of 8). Same rule as video_io.valid_frame_count."""
    if n < 1:
        raise UserError(f"a clip needs at least 1 frame, got {n}")
    return (n - 1) // 8 * 8 + 1


def bucket_sizes(target_area: int = DEFAULT_TARGET_AREA, multiple: int = 32,
                 aspects: Sequence[float] = BUCKET_ASPECTS) -> list[tuple[int, int]]:
    """(width, height) per aspect: about `target_area` pixels, both sides multiples of `multiple`."""
    if multiple < 1 or target_area < multiple * multiple:
        raise UserError(f"bucket area {target_area} is too small for a grid of {multiple} px")
    sizes: list[tuple[int, int]] = []
    for aspect in aspects:
        w = max(multiple, round(math.sqrt(target_area * aspect) / multiple) * multiple)
        h = max(multiple, round(math.sqrt(target_area / aspect) / multiple) * multiple)
        if (w, h) not in sizes:
            sizes.append((w, h))
    return sizes


def choose_bucket(width: int, height: int, frames: int, *, multiple: int = 32, max_frames: int = 121,
                  target_area: int = DEFAULT_TARGET_AREA) -> Bucket:
    """The bucket whose aspect is closest (in log ratio) to the clip's; frames trimmed to 8n+1 <= max_frames."""
    aspect = width / height
    w, h = min(bucket_sizes(target_area, multiple), key=lambda s: abs(math.log((s[0] / s[1]) / aspect)))
    return Bucket(w, h, min(valid_frame_count(frames), valid_frame_count(max_frames)))


def conform_plan(name: str, width: int, height: int, frames: int, bucket: Bucket,
                 max_frames: int) -> tuple[list[str], list[str]]:
    """What conforming will do to this clip, in words: (changes, warnings)."""
    changes: list[str] = []
    warnings: list[str] = []
    if frames > bucket.frames:
        if bucket.frames == valid_frame_count(frames):
            changes.append(f"trim {frames} -> {bucket.frames} frames (8n+1)")
            warnings.append(f"{name} has {frames} frames; it will be trimmed to {bucket.frames} (8n+1)")
        else:
            changes.append(f"trim {frames} -> {bucket.frames} frames (longest bucket, max_frames={max_frames})")
    if bucket.frames == 1:
        warnings.append(f"{name} has only {frames} frame(s); fewer than 9 frames trains as a single still")
    scale = max(bucket.width / width, bucket.height / height)
    rw, rh = max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale))
    if (rw, rh) != (width, height):
        changes.append(f"resize {width}x{height} -> {rw}x{rh}")
    if (rw, rh) != (bucket.width, bucket.height):
        changes.append(f"centre-crop {rw}x{rh} -> {bucket.width}x{bucket.height}")
    if scale > 1.05:
        warnings.append(f"{name} is {width}x{height}, smaller than its bucket {bucket.width}x{bucket.height}; "
                        f"it will be upscaled {scale:.1f}x (soft training data)")
    return changes, warnings


# --------------------------------------------------------------------------------------------- frames


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def analysis_size(width: int, height: int, short_side: int | None = ANALYSIS_SHORT_SIDE) -> tuple[int, int]:
    """Size sampled frames are decoded at: short side `short_side`, never upscaled, even sides."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    s = short_side / min(width, height)
    return max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)


def sample_indices(frames: int, count: int) -> list[int]:
    """`count` frame numbers spread evenly over the clip, first and last included."""
    if frames <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, frames - 1, num=max(1, min(count, frames)))})


def sample_frames(path: str | os.PathLike, indices: Sequence[int], width: int, height: int,
                  short_side: int | None = ANALYSIS_SHORT_SIDE) -> tuple[np.ndarray, list[int]]:
    """Decode only the frames `indices` (0-based, display orientation), at analysis size.

    Returns uint8 [N,h,w,3] RGB and the frame numbers actually returned (a container that over-reports its
    frame count returns fewer). ffmpeg's `select` filter keeps memory at N frames however long the clip is.
    """
    indices = sorted(set(int(i) for i in indices))
    if not indices:
        return np.zeros((0, height, width, 3), np.uint8), []
    w, h = analysis_size(width, height, short_side)
    select = "+".join(f"eq(n\\,{i})" for i in indices)
    cmd = [_ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0",
           "-vf", f"select='{select}',scale={w}:{h}:flags=area", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    frame_bytes = w * h * 3
    n = len(proc.stdout) // frame_bytes
    if proc.returncode != 0 and n == 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"could not decode frames of {Path(path).name}: {reason[-1] if reason else 'ffmpeg failed'}")
    frames = np.frombuffer(proc.stdout[: n * frame_bytes], np.uint8).reshape(n, h, w, 3)
    return frames, indices[:n]


# --------------------------------------------------------------------------------------------- phash


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash: 32x32 gray, DCT, the 8x8 lowest frequencies above/below their median."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    median = np.median(low[1:])  # the DC term is overall brightness, not structure
    bits = low > median
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def clip_hash_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Distance between two clips' frame hashes: each frame to its nearest frame in the other clip, averaged
    over both directions. Robust to trims and offsets of the same footage."""
    if not a or not b:
        return float(PHASH_BITS)
    ab = np.mean([min(hamming(x, y) for y in b) for x in a])
    ba = np.mean([min(hamming(y, x) for x in a) for y in b])
    return float((ab + ba) / 2)


# --------------------------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class Face:
    """A detected face box in frame pixels; kind is "frontal" or "profile"."""

    x: int
    y: int
    w: int
    h: int
    kind: str = "frontal"

    @property
    def area(self) -> int:
        return self.w * self.h


FaceDetector = Callable[[np.ndarray], list]  # rgb uint8 [H,W,3] -> list[Face]


def _iou(a: Face, b: Face) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a.area + b.area - inter) if inter else 0.0


class HaarFaceDetector:
    """OpenCV's bundled Haar cascades: frontal, then profile (both directions: the cascade sees left-facing
    profiles only, so the mirrored frame finds right-facing ones). A profile box overlapping a frontal one is
    dropped: frontal wins."""

    FRONTAL = "haarcascade_frontalface_default.xml"
    PROFILE = "haarcascade_profileface.xml"

    def __init__(self, min_size_ratio: float = 0.06):
        folder = Path(cv2.data.haarcascades)
        self.frontal = cv2.CascadeClassifier(str(folder / self.FRONTAL))
        self.profile = cv2.CascadeClassifier(str(folder / self.PROFILE))
        if self.frontal.empty() or self.profile.empty():
            raise RuntimeError(f"Haar cascades could not be loaded from {folder}")
        self.min_size_ratio = min_size_ratio

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        h, w = gray.shape
        m = max(20, int(self.min_size_ratio * min(h, w)))
        kw = dict(scaleFactor=1.1, minNeighbors=5, minSize=(m, m))
        faces = [Face(int(x), int(y), int(fw), int(fh), "frontal") for x, y, fw, fh in self.frontal.detectMultiScale(gray, **kw)]
        profiles = [Face(int(x), int(y), int(fw), int(fh), "profile") for x, y, fw, fh in self.profile.detectMultiScale(gray, **kw)]
        profiles += [Face(int(w - x - fw), int(y), int(fw), int(fh), "profile")
                     for x, y, fw, fh in self.profile.detectMultiScale(np.ascontiguousarray(gray[:, ::-1]), **kw)]
        for p in sorted(profiles, key=lambda f: -f.area):
            if all(_iou(p, f) < 0.3 for f in faces):
                faces.append(p)
        return faces


@functools.lru_cache(maxsize=1)
def default_face_detector() -> tuple[FaceDetector | None, str | None]:
    """(detector, None) when OpenCV's Haar cascades are available, else (None, why not). Built once."""
    if not hasattr(cv2, "CascadeClassifier"):
        return None, (f"face check skipped: the installed OpenCV {cv2.__version__} has no Haar cascades "
                      "(OpenCV 5 moved CascadeClassifier out of the main package; opencv-python-headless<5 has it)")
    try:
        return HaarFaceDetector(), None
    except Exception as exc:  # a broken install, reported rather than crashing the whole report
        return None, f"face check skipped: {exc}"


# --------------------------------------------------------------------------------------------- report


@dataclass
class FaceStats:
    """Faces in one clip's sampled frames; ratios are relative to the frame height, centres to the frame."""

    sampled: int = 0
    frames_with_face: int = 0
    frontal: int = 0
    profile: int = 0
    heights: list[float] = field(default_factory=list)
    centers: list[tuple[float, float]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.frames_with_face > 0

    @property
    def median_height(self) -> float | None:
        return float(np.median(self.heights)) if self.heights else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["found"] = self.found
        d["median_height"] = None if self.median_height is None else round(self.median_height, 4)
        d["heights"] = [round(v, 4) for v in self.heights]
        d["centers"] = [[round(x, 4), round(y, 4)] for x, y in self.centers]
        return d


@dataclass
class ClipInfo:
    """One readable clip: metadata, its bucket and what conforming will do, hash, faces, brightness."""

    name: str
    path: str
    width: int
    height: int
    frames: int
    fps: float
    duration: float
    bucket: Bucket
    conform: list[str]
    caption: str | None = None
    caption_file: str | None = None
    sampled_frames: list[int] = field(default_factory=list)
    phash: list[str] = field(default_factory=list)  # hex, one per sampled frame
    brightness: float = 0.0  # mean luma 0-255 over sampled frames
    face: FaceStats | None = None  # None when no face detector ran

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bucket"] = asdict(self.bucket)
        d["face"] = None if self.face is None else self.face.to_dict()
        d["brightness"] = round(self.brightness, 2)
        return d

    def line(self) -> str:
        face = "face: not checked"
        if self.face is not None:
            if self.face.found:
                share = f"{self.face.frames_with_face}/{self.face.sampled} frames"
                kind = "frontal" if self.face.frontal >= self.face.profile else "profile"
                face = f"face: {kind}, {self.face.median_height:.0%} of height ({share})"
            else:
                face = "face: none found"
        conform = "; ".join(self.conform) if self.conform else "no change"
        return (f"{self.name}: {self.width}x{self.height} {self.fps:g} fps {self.frames} frames {self.duration:.2f}s "
                f"-> bucket {self.bucket} ({conform}); brightness {self.brightness:.0f}/255; {face}"
                + ("" if self.caption_file else "; no caption"))


@dataclass(frozen=True)
class UnreadableFile:
    name: str
    reason: str


@dataclass(frozen=True)
class DuplicatePair:
    a: str
    b: str
    distance: float


@dataclass
class DatasetReport:
    """Everything known about a dataset before any GPU work. `errors` non-empty means it cannot be trained."""

    source: str
    root: str  # the folder clips are read from (the extraction folder for a zip)
    trigger: str | None
    bucket_multiple: int
    max_frames: int
    target_area: int
    clips: list[ClipInfo] = field(default_factory=list)
    unreadable: list[UnreadableFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    coverage: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    face_check: str = "haar"  # detector used, or the reason it was skipped

    @property
    def ok(self) -> bool:
        return not self.errors

    def clip(self, name: str) -> ClipInfo:
        for c in self.clips:
            if c.name == name:
                return c
        raise UserError(f"no clip named {name!r} in the dataset; clips: {', '.join(c.name for c in self.clips)}")

    @property
    def buckets(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for c in self.clips:
            out.setdefault(str(c.bucket), []).append(c.name)
        return out

    def to_dict(self) -> dict:
        return {
            "source": self.source, "root": self.root, "trigger": self.trigger,
            "bucket_multiple": self.bucket_multiple, "max_frames": self.max_frames, "target_area": self.target_area,
            "clip_count": len(self.clips), "recommended_clips": list(RECOMMENDED_CLIPS),
            "clips": [c.to_dict() for c in self.clips],
            "unreadable": [asdict(u) for u in self.unreadable],
            "ignored": list(self.ignored),
            "duplicates": [asdict(d) for d in self.duplicates],
            "buckets": self.buckets,
            "coverage": self.coverage,
            "face_check": self.face_check,
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "ok": self.ok,
        }

    def text(self) -> str:
        lo, hi = RECOMMENDED_CLIPS
        lines = [f"Dataset: {self.source}" + (f" (extracted to {self.root})" if self.root != self.source else ""),
                 f"{len(self.clips)} readable clip(s), {len(self.unreadable)} unreadable; guidance {lo}-{hi} clips"
                 + (f"; trigger word: {self.trigger}" if self.trigger else "")]
        if self.clips:
            lines.append("")
            lines.append("Clips:")
            lines += [f"  {c.line()}" for c in self.clips]
            lines.append("")
            lines.append("Buckets: " + ", ".join(f"{b} ({len(n)} clip(s))" for b, n in self.buckets.items()))
        if self.unreadable:
            lines.append("")
            lines.append("Unreadable:")
            lines += [f"  {u.name}: {u.reason}" for u in self.unreadable]
        if self.ignored:
            lines.append(f"Ignored (not a clip or caption): {', '.join(self.ignored)}")
        if self.coverage:
            lines.append("")
            lines.append("Coverage:")
            lines += [f"  {line}" for line in _coverage_lines(self.coverage)]
        lines.append("")
        lines.append(f"Warnings ({len(self.warnings)}):" if self.warnings else "Warnings: none")
        lines += [f"  - {w}" for w in self.warnings]
        if self.errors:
            lines.append(f"Errors ({len(self.errors)}):")
            lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


def _coverage_lines(cov: dict) -> list[str]:
    out = []
    b = cov.get("brightness")
    if b:
        out.append(f"brightness (mean luma per clip): {b['min']:.0f}-{b['max']:.0f} of 255, spread {b['std']:.1f}")
    f = cov.get("faces")
    if f:
        out.append(f"face found in {f['clips_with_face']}/{f['clips_checked']} clip(s)")
        if f.get("frontal_share") is not None:
            out.append(f"frontal {f['frontal_share']:.0%} / profile {1 - f['frontal_share']:.0%} of face detections")
        if f.get("height"):
            h = f["height"]
            out.append(f"face height: {h['min']:.0%}-{h['max']:.0%} of frame height (median {h['median']:.0%})")
        if f.get("center_spread"):
            s = f["center_spread"]
            out.append(f"face position spread (std, fraction of frame): x {s['x']:.2f}, y {s['y']:.2f}")
    elif "face_check" in cov:
        out.append(cov["face_check"])
    return out


# --------------------------------------------------------------------------------------------- scanning


def _zip_entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry must not be extracted (a link, or a name that leaves the folder), else None."""
    name = info.filename
    mode = (info.external_attr >> 16) & 0o170000
    if mode == 0o120000:
        return "is a symbolic link"
    if mode not in (0, 0o100000, 0o040000):
        return "is not a regular file"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\x00" in name:
        return "points outside the folder it is extracted to"
    return None


def check_zip(path: str | os.PathLike, limits=None) -> list[zipfile.ZipInfo]:
    """Read a dataset zip's directory (no data) and refuse it when extracting it would be unsafe or too big:
    more entries than ``zip_max_entries``, more uncompressed bytes than ``zip_max_bytes``, a compression ratio
    over ``zip_max_ratio`` (a zip bomb), a symbolic link, or a name that leaves the extraction folder.
    Returns the entries to extract (folders, ``__MACOSX`` and hidden files left out)."""
    from pipelines.limits import active

    lim = limits or active()
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path.name} is not a readable zip file ({exc})") from None
    lim.check_count(path.name, len(infos), "zip_max_entries", "entries in the zip")
    total = packed = 0
    keep = []
    for info in infos:
        why = _zip_entry_problem(info)
        if why:
            raise UserError(f"{path.name}: the entry {info.filename!r} {why}; the zip is refused (make it again "
                            "from plain files in one folder)")
        parts = Path(info.filename).parts
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        total += info.file_size
        packed += info.compress_size
        if info.file_size > (1 << 20) and info.file_size > lim.zip_max_ratio * max(info.compress_size, 1):
            raise lim._over(path.name, f"the entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f} "
                                       f"times (over {lim.zip_max_ratio:g}); it looks like a zip bomb", "zip_max_ratio")
        keep.append(info)
    if total > lim.zip_max_bytes:
        from pipelines.limits import _bytes

        raise lim._over(path.name, f"it expands to {_bytes(total)}, over the limit of {_bytes(lim.zip_max_bytes)}",
                        "zip_max_bytes")
    if total > (1 << 20) and total > lim.zip_max_ratio * max(packed, 1):
        raise lim._over(path.name, f"it expands {total / max(packed, 1):,.0f} times (over {lim.zip_max_ratio:g}); "
                                   "it looks like a zip bomb", "zip_max_ratio")
    return keep


def extract_zip(path: str | os.PathLike, dest: str | os.PathLike, limits=None) -> Path:
    """Extract a dataset zip into ``dest`` after ``check_zip``; every entry is written no longer than its
    directory says (a zip that lies about its sizes is stopped there) and the total is counted as it is
    written. On any failure the files written so far are removed again."""
    from pipelines.limits import active

    lim = limits or active()
    path = Path(path)
    keep = check_zip(path, lim)
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    budget = lim.zip_max_bytes
    try:
        with zipfile.ZipFile(path) as zf:
            for info in keep:
                target = (root / info.filename).resolve()
                if root not in target.parents:  # defence in depth: check_zip refused such names already
                    raise UserError(f"{path.name}: the entry {info.filename!r} points outside the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                left = info.file_size
                with zf.open(info) as src, open(target, "wb") as dst:
                    written.append(target)
                    while True:
                        chunk = src.read(min(1 << 20, left + 1))
                        if not chunk:
                            break
                        left -= len(chunk)
                        budget -= len(chunk)
                        if left < 0 or budget < 0:
                            raise UserError(f"{path.name}: {info.filename!r} holds more data than its directory "
                                            "says; the zip is refused")
                        dst.write(chunk)
    except BaseException as exc:
        for f in written:
            f.unlink(missing_ok=True)
        if isinstance(exc, zipfile.BadZipFile):
            raise UserError(f"{path.name} is damaged ({exc})") from None
        if isinstance(exc, OSError):
            from pipelines.errors import os_error_message

            raise UserError(f"cannot extract {path.name}: {os_error_message(exc, root)}") from None
        raise
    return root


def _open_source(path: Path, extract_dir: str | os.PathLike | None) -> Path:
    """The folder to scan: `path` itself, or a checked extraction of the zip (into ``extract_dir``; without it
    a new temporary folder the caller must remove: ``report.root``)."""
    if not path.exists():
        raise UserError(f"dataset not found: {path} (give a folder of clips or a .zip)")
    if path.is_dir():
        return path
    if path.suffix.lower() != ".zip":
        raise UserError(f"{path.name} is neither a folder nor a .zip of clips")
    check_zip(path)  # refused before any folder is made
    made = extract_dir is None
    dest = Path(tempfile.mkdtemp(prefix="iclora_dataset_")) if made else Path(extract_dir)
    try:
        return extract_zip(path, dest)
    except BaseException:
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        raise


def _list_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(root).parts))


def _caption_for(clip: Path, trigger: str | None) -> tuple[str | None, str | None]:
    """(caption with the trigger word prepended, caption file name) for a clip; caption file = same stem .txt."""
    txt = clip.with_suffix(CAPTION_EXTENSION)
    caption = None
    if txt.is_file():
        caption = " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
    if trigger:
        if not caption:
            caption = trigger
        elif not caption.startswith(trigger):
            caption = f"{trigger} {caption}"
    return caption or None, (txt.name if txt.is_file() else None)


def _analyse_faces(frames: np.ndarray, detector: FaceDetector) -> FaceStats:
    stats = FaceStats(sampled=len(frames))
    for frame in frames:
        faces = detector(frame)
        if not faces:
            continue
        best = max(faces, key=lambda f: f.area)
        H, W = frame.shape[:2]
        stats.frames_with_face += 1
        stats.frontal += best.kind == "frontal"
        stats.profile += best.kind != "frontal"
        stats.heights.append(best.h / H)
        stats.centers.append(((best.x + best.w / 2) / W, (best.y + best.h / 2) / H))
    return stats


def scan_dataset(path: str | os.PathLike, trigger: str | None = None, bucket_multiple: int = 32,
                 max_frames: int = 121, *, target_area: int = DEFAULT_TARGET_AREA, samples: int = 6,
                 face_detector: FaceDetector | str | None = "auto", duplicate_threshold: float = 10.0,
                 extract_dir: str | os.PathLike | None = None) -> DatasetReport:
    """Check a folder or .zip of clips and say, clip by clip, what training will see.

    face_detector: "auto" (OpenCV Haar cascades if available), None (skip the face check) or a callable
    rgb -> list[Face]. duplicate_threshold: mean Hamming distance (of 64 bits) between the clips' sampled
    frame hashes at or under which two clips are named as the same footage.
    Raises UserError only for a missing/unopenable source; a dataset with no readable clip comes back with
    `errors` set.
    """
    from pipelines import video_io

    src = Path(path).expanduser()
    root = _open_source(src, extract_dir)
    trigger = (trigger or "").strip() or None
    if face_detector == "auto":
        detector, why_not = default_face_detector()
    elif face_detector is None:
        detector, why_not = None, "face check skipped (turned off)"
    elif callable(face_detector):
        detector, why_not = face_detector, None
    else:
        raise UserError(f"face_detector must be 'auto', None or a callable, got {face_detector!r}")

    report = DatasetReport(source=str(src), root=str(root), trigger=trigger, bucket_multiple=bucket_multiple,
                           max_frames=max_frames, target_area=target_area,
                           face_check=getattr(detector, "__name__", type(detector).__name__) if detector else why_not)
    files = _list_files(root)
    clip_stems = set()
    hashes: dict[str, list[int]] = {}
    conform_warnings: list[str] = []
    for f in files:
        name = f.relative_to(root).as_posix()
        ext = f.suffix.lower()
        if ext == CAPTION_EXTENSION:
            continue
        if ext not in VIDEO_EXTENSIONS:
            report.ignored.append(name)
            continue
        clip_stems.add(f.with_suffix(""))
        try:
            info = video_io.probe(f)
            if info.frames < 1 or info.width < 1 or info.height < 1:
                raise UserError("no video frames found")
            frames, got = sample_frames(f, sample_indices(info.frames, samples), info.width, info.height)
            if len(frames) == 0:
                raise UserError("no frame could be decoded")
        except UserError as exc:
            report.unreadable.append(UnreadableFile(name, str(exc).replace(str(f), name)))
            continue
        bucket = choose_bucket(info.width, info.height, info.frames, multiple=bucket_multiple,
                               max_frames=max_frames, target_area=target_area)
        changes, warns = conform_plan(name, info.width, info.height, info.frames, bucket, max_frames)
        conform_warnings += warns
        caption, caption_file = _caption_for(f, trigger)
        frame_hashes = [phash(fr) for fr in frames]
        hashes[name] = frame_hashes
        luma = float(np.mean([cv2.cvtColor(fr, cv2.COLOR_RGB2GRAY).mean() for fr in frames]))
        report.clips.append(ClipInfo(
            name=name, path=str(f), width=info.width, height=info.height, frames=info.frames, fps=float(info.fps),
            duration=float(info.duration), bucket=bucket, conform=changes, caption=caption, caption_file=caption_file,
            sampled_frames=got, phash=[f"{h:016x}" for h in frame_hashes], brightness=luma,
            face=_analyse_faces(frames, detector) if detector else None))
        if getattr(info, "variable_fps", False):
            conform_warnings.append(f"{name} has a variable frame rate; it will be resampled to a constant {info.fps:g} fps")

    orphan_captions = [f.relative_to(root).as_posix() for f in files
                       if f.suffix.lower() == CAPTION_EXTENSION and f.with_suffix("") not in clip_stems]
    names = [c.name for c in report.clips]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = clip_hash_distance(hashes[a], hashes[b])
            if d <= duplicate_threshold:
                report.duplicates.append(DuplicatePair(a, b, round(d, 1)))

    report.warnings = _warnings(report, conform_warnings, orphan_captions, why_not)
    report.coverage = _coverage(report, why_not)
    if not report.clips:
        found = f"{len(report.unreadable)} unreadable video file(s)" if report.unreadable else "no video files"
        report.errors.append(f"no readable clips in {src} ({found}); add .mp4, .mov, .webm or .mkv clips")
    return report


def _warnings(report: DatasetReport, conform_warnings: list[str], orphan_captions: list[str],
              face_skip_reason: str | None) -> list[str]:
    w: list[str] = []
    n = len(report.clips)
    lo, hi = RECOMMENDED_CLIPS
    if 0 < n < lo:
        w.append(f"only {n} readable clip(s); {lo}-{hi} clips of the subject is the guidance (few clips overfit fast)")
    elif n > hi:
        w.append(f"{n} clips; more than {hi} rarely helps one subject and makes each epoch longer")
    for u in report.unreadable:
        w.append(f"{u.name} cannot be read and will be skipped: {u.reason}")
    w += conform_warnings
    for d in report.duplicates:
        w.append(f"{d.a} and {d.b} look like the same footage (hash distance {d.distance:g}); keep one")
    missing = [c.name for c in report.clips if not c.caption_file]
    if missing:
        fallback = f"the trigger word '{report.trigger}' alone" if report.trigger else "an empty caption"
        w.append(f"{len(missing)} clip(s) have no caption file ({', '.join(missing)}); {fallback} will be used "
                 f"(add a .txt with the same name beside a clip)")
    for cap in orphan_captions:
        w.append(f"caption {cap} has no clip with the same name; it is ignored")
    fps = sorted({round(c.fps, 3) for c in report.clips})
    if len(fps) > 1:
        w.append(f"clips have different frame rates ({', '.join(f'{f:g}' for f in fps)}); motion speed will differ between clips")
    for c in report.clips:
        if c.brightness < 50:
            w.append(f"{c.name} is dark (mean brightness {c.brightness:.0f}/255)")
        elif c.brightness > 205:
            w.append(f"{c.name} is very bright (mean brightness {c.brightness:.0f}/255); highlights may be clipped")
    if face_skip_reason:
        if report.clips:
            w.append(face_skip_reason)
        return w
    # Face findings: warnings only (a pet, a vehicle or a stylised character is a fine subject too).
    with_face = [c for c in report.clips if c.face and c.face.found]
    for c in report.clips:
        if c.face is not None and not c.face.found:
            w.append(f"no face found in {c.name} (subject may be too small or turned away)")
        elif c.face is not None and c.face.median_height is not None and c.face.median_height < 0.12:
            px = c.face.median_height * c.bucket.height
            w.append(f"the face in {c.name} is small ({c.face.median_height:.0%} of frame height, about {px:.0f} px "
                     f"in its {c.bucket.width}x{c.bucket.height} bucket); closer shots teach identity better")
    if len(with_face) >= 3:
        frontal = sum(c.face.frontal for c in with_face)
        profile = sum(c.face.profile for c in with_face)
        if profile == 0:
            w.append("every detected face is frontal; add 3/4 and profile angles so the LoRA learns the head from all sides")
        elif frontal == 0:
            w.append("no frontal face detected in any clip; add some clips facing the camera")
        heights = [c.face.median_height for c in with_face]
        if max(heights) / max(min(heights), 1e-6) < 1.3:
            w.append(f"face size barely varies ({min(heights):.0%}-{max(heights):.0%} of frame height); mix close-ups and wider shots")
        cx = np.std([np.median([p[0] for p in c.face.centers]) for c in with_face])
        cy = np.std([np.median([p[1] for p in c.face.centers]) for c in with_face])
        if max(cx, cy) < 0.03:
            w.append("the face sits in the same place in every clip; vary framing")
    if n >= 3:
        br = [c.brightness for c in report.clips]
        if max(br) - min(br) < 20:
            w.append(f"lighting barely varies across clips (mean brightness {min(br):.0f}-{max(br):.0f} of 255); "
                     "add clips in other light")
    return w


def _coverage(report: DatasetReport, face_skip_reason: str | None) -> dict:
    if not report.clips:
        return {}
    br = np.array([c.brightness for c in report.clips])
    cov: dict = {"brightness": {"min": round(float(br.min()), 2), "max": round(float(br.max()), 2),
                                "mean": round(float(br.mean()), 2), "std": round(float(br.std()), 2)}}
    if face_skip_reason:
        cov["face_check"] = face_skip_reason
        return cov
    with_face = [c for c in report.clips if c.face and c.face.found]
    faces: dict = {"clips_checked": len(report.clips), "clips_with_face": len(with_face), "frontal_share": None}
    if with_face:
        frontal = sum(c.face.frontal for c in with_face)
        total = sum(c.face.frontal + c.face.profile for c in with_face)
        heights = [c.face.median_height for c in with_face]
        centers = np.array([p for c in with_face for p in c.face.centers])
        faces["frontal_share"] = round(frontal / total, 4)
        faces["height"] = {"min": round(min(heights), 4), "median": round(float(np.median(heights)), 4),
                           "max": round(max(heights), 4)}
        faces["center_spread"] = {"x": round(float(centers[:, 0].std()), 4), "y": round(float(centers[:, 1].std()), 4)}
    cov["faces"] = faces
    return cov
