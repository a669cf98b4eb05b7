"""Video in and out: probe, read, write and conform clips to what LTX-2.3 accepts.

LTX-2.3 needs 8n+1 frames and a height and width that are multiples of 32 (of 32*D for an IC-LoRA with
reference downscale factor D, of 64 for a two-stage run). Frame-count and size mistakes are the most common
crash in every peer tool, so the studio *conforms* every input clip and tells the user exactly what it did
(``ConformReport``) instead of failing deep inside the model.

Everything goes through the static ffmpeg bundled with imageio-ffmpeg (there is no ffprobe):

- ``probe`` runs ``ffmpeg -i FILE -map 0:V:0 -c copy -f framecrc -`` once: stderr carries the stream header
  (codec, pixel format, size, rotation, audio), stdout one line per video packet with its timestamps. Packets
  give the exact frame count and timing without decoding, and reveal variable frame rates (phone clips).
- ``read_video`` decodes to rgb24 through a pipe. ffmpeg applies the rotation tag by itself (autorotate), so
  frames come out in *display* orientation, which is also what ``VideoInfo.width/height`` report. A variable
  frame-rate clip is re-timed to its average rate with ffmpeg's ``fps`` filter (each output instant takes the
  frame shown at that time), so motion keeps its real speed.
- ``write_video`` encodes h264 yuv420p (BT.709, tagged) mp4 with ``+faststart`` into a temporary file in the
  target folder and moves it into place with ``os.replace``: a crash never leaves a half-written video.

Sizes for ``conform`` when no target size is given: the source size is snapped DOWN to multiples of
``multiple`` (721x403 -> 704x384 for 32) by resize-to-cover then center crop. Rounding down never upscales and
keeps the token count (cost) at or below the source's.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import UserError

__all__ = [
    "VideoInfo",
    "ConformTarget",
    "ConformReport",
    "probe",
    "read_video",
    "write_video",
    "write_video_lossless",
    "LOSSLESS_SUFFIX",
    "valid_frame_count",
    "next_valid_frame_count",
    "conform",
    "conform_file",
    "ffmpeg_exe",
]

# Frame rates people actually use; a measured rate within 0.5% of one of these snaps to it exactly.
_COMMON_FPS = (
    Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30), Fraction(48),
    Fraction(50), Fraction(60000, 1001), Fraction(60), Fraction(90), Fraction(100), Fraction(120),
    Fraction(15), Fraction(12), Fraction(8), Fraction(10), Fraction(16), Fraction(20), Fraction(240),
)
_PROBE_TIMEOUT_S = 300
_VIDEO_SUFFIX_FORMAT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}


# ----------------------------------------------------------------------------------------------------------
# ffmpeg
# ----------------------------------------------------------------------------------------------------------
def ffmpeg_exe() -> str:
    """Path of the bundled static ffmpeg (a function so tests can swap it)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_error_line(stderr: str) -> str:
    """The most telling line of an ffmpeg error output, for a one-line message."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if "invalid data" in low or "no such file" in low or "permission denied" in low or "moov atom" in low:
            return ln
    return lines[-1] if lines else "no output"


def _check_input_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"video file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder, not a video file")
    if p.stat().st_size == 0:
        raise UserError(f"video file is empty (0 bytes): {p}")
    return p


# ----------------------------------------------------------------------------------------------------------
# probe
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learns about a clip. ``width``/``height`` are the DISPLAY size (rotation applied), which
    is the size ``read_video`` returns. ``rotation`` is clockwise degrees (0/90/180/270) the player applies."""

    path: str
    width: int
    height: int
    frames: int
    fps: float
    duration: float
    rotation: int
    has_audio: bool
    codec: str
    pix_fmt: str
    variable_fps: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _split_top_level(text: str) -> list[str]:
    """Split an ffmpeg stream description on commas that are not inside parentheses or brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _parse_rate(token: str) -> Fraction | None:
    """'24 fps' / '29.97 tbr' / '30k tbr' -> Fraction, NTSC-looking decimals snapped to n*1000/1001."""
    m = re.match(r"([\d.]+)(k?)\s", token + " ")
    if not m:
        return None
    value = float(m.group(1)) * (1000 if m.group(2) else 1)
    if value <= 0:
        return None
    ntsc = round(value * 1.001)
    if abs(value * 1.001 - ntsc) < 0.005 and abs(value - ntsc) > 0.005:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(value).limit_denominator(1001)


@dataclass
class _Header:
    width: int = 0
    height: int = 0
    codec: str = ""
    pix_fmt: str = ""
    header_fps: Fraction | None = None
    tbr: Fraction | None = None
    rotation: int = 0
    has_audio: bool = False
    duration: float | None = None
    found_video: bool = False


def _parse_header(stderr: str) -> _Header:
    """Read the first non-cover-art video stream (the one ``-map 0:V:0`` picks) from ``ffmpeg -i`` output."""
    h = _Header()
    in_video_block = False
    for line in stderr.splitlines():
        s = line.strip()
        m = re.match(r"Duration:\s*(\d+):(\d+):([\d.]+)", s)
        if m:
            h.duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            continue
        m = re.match(r"Stream #\d+:\d+.*?:\s*(Video|Audio|Subtitle|Data|Attachment):\s*(.*)", s)
        if m:
            kind, desc = m.group(1), m.group(2)
            in_video_block = False
            if kind == "Audio":
                h.has_audio = True
            elif kind == "Video" and not h.found_video and "(attached pic)" not in desc:
                h.found_video = in_video_block = True
                parts = _split_top_level(desc)
                h.codec = parts[0].split()[0] if parts and parts[0] else "unknown"
                if len(parts) > 1:
                    h.pix_fmt = re.split(r"[\s(]", parts[1], maxsplit=1)[0]
                for part in parts[1:]:
                    sm = re.match(r"(\d+)x(\d+)", part)
                    if sm and not h.width:
                        h.width, h.height = int(sm.group(1)), int(sm.group(2))
                    if part.endswith(" fps"):
                        h.header_fps = _parse_rate(part)
                    elif part.endswith(" tbr"):
                        h.tbr = _parse_rate(part)
            continue
        if s.startswith(("Input #", "Output #", "Stream mapping")):
            in_video_block = False
        if not in_video_block:
            continue
        m = re.search(r"(?:display\s*matrix):\s*rotation of\s*(-?[\d.]+)\s*degrees", s, re.IGNORECASE)
        if m:  # display matrix angle is counter-clockwise; report the clockwise turn the player applies
            h.rotation = int(round(-float(m.group(1)) / 90.0)) * 90 % 360
            continue
        m = re.match(r"rotate\s*:\s*(-?\d+)", s)
        if m and not h.rotation:  # legacy tag, clockwise
            h.rotation = int(round(float(m.group(1)) / 90.0)) * 90 % 360
    return h


def _parse_packets(stdout: str) -> tuple[Fraction | None, list[tuple[int, int]]]:
    """framecrc output -> (time base, [(pts, duration), ...] sorted by pts)."""
    tb = None
    packets = []
    for line in stdout.splitlines():
        if line.startswith("#"):
            m = re.match(r"#tb \d+:\s*(\d+)/(\d+)", line)
            if m:
                tb = Fraction(int(m.group(1)), int(m.group(2)))
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 4:
            try:
                packets.append((int(cols[2]), int(cols[3])))
            except ValueError:
                continue
    packets.sort()
    return tb, packets


def _snap_fps(measured: float, candidates: list[Fraction | None]) -> Fraction:
    for cand in [c for c in candidates if c] + list(_COMMON_FPS):
        if abs(float(cand) - measured) <= 0.005 * measured:
            return cand
    return Fraction(measured).limit_denominator(1001)


def _timing(h: _Header, tb: Fraction | None, packets: list[tuple[int, int]]) -> tuple[int, Fraction, float, bool]:
    """-> (frames, fps, duration seconds, variable_fps) from packet timestamps, the header as fallback."""
    n = len(packets)
    header_rate = h.header_fps or h.tbr
    if n >= 2 and tb:
        pts = [p for p, _ in packets]
        intervals = sorted(b - a for a, b in zip(pts, pts[1:]))
        median = intervals[len(intervals) // 2]
        tol = max(1.5, 0.1 * median)
        variable = median <= 0 or any(abs(iv - median) > tol for iv in intervals)
        last_dur = packets[-1][1] if packets[-1][1] > 0 else median
        duration = float((pts[-1] - pts[0] + last_dur) * tb)
        if variable:
            fps = Fraction(n / duration).limit_denominator(1001) if duration > 0 else (header_rate or Fraction(24))
        else:
            span = float((pts[-1] - pts[0]) * tb)
            measured = (n - 1) / span if span > 0 else float(header_rate or 24)
            fps = _snap_fps(measured, [h.tbr, h.header_fps])
            duration = n / float(fps)
        return n, fps, duration, variable
    fps = header_rate or Fraction(24)
    duration = n / float(fps) if n else (h.duration or 0.0)
    return n, fps, duration, False


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file. UserError when it is missing, empty, not a video, or has no frames."""
    p = _check_input_file(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p), "-map", "0:V:0", "-c", "copy",
           "-f", "framecrc", "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"reading {p} took longer than {_PROBE_TIMEOUT_S} s; is it a regular video file?") from None
    stderr = proc.stderr.decode("utf-8", "replace")
    h = _parse_header(stderr)
    if not h.found_video:
        if "Input #" in stderr:  # the container opened, but holds no picture stream
            raise UserError(f"{p} has no video stream (is it an audio file?)")
        raise UserError(f"{p} is not a readable video ({_ffmpeg_error_line(stderr)}); export it as mp4 (h264) "
                        "and try again")
    tb, packets = _parse_packets(proc.stdout.decode("utf-8", "replace"))
    if proc.returncode != 0 and not packets:
        raise UserError(f"{p} could not be read ({_ffmpeg_error_line(stderr)})")
    frames, fps, duration, variable = _timing(h, tb, packets)
    if frames == 0:
        raise UserError(f"{p} has a video stream with no frames")
    if h.width <= 0 or h.height <= 0:
        raise UserError(f"{p}: could not find the picture size of its video stream")
    width, height = (h.height, h.width) if h.rotation in (90, 270) else (h.width, h.height)
    return VideoInfo(path=str(p), width=width, height=height, frames=frames, fps=float(fps),
                     duration=round(duration, 6), rotation=h.rotation, has_audio=h.has_audio,
                     codec=h.codec, pix_fmt=h.pix_fmt, variable_fps=variable)


# ----------------------------------------------------------------------------------------------------------
# read
# ----------------------------------------------------------------------------------------------------------
def read_video(path: str | os.PathLike, max_frames: int | None = None, *,
               info: VideoInfo | None = None, frame_fn=None) -> tuple[np.ndarray, float]:
    """Decode a clip to uint8 [T,H,W,3] RGB in display orientation, plus its fps.

    A variable frame-rate clip is re-timed to its average rate with constant spacing (frames repeated or
    dropped where the source's spacing was uneven) so that motion plays at its real speed.
    ``info`` skips the probe when the caller already has one. ``frame_fn`` maps each decoded frame (a scratch
    buffer, valid only during the call) to the uint8 [h,w,3] kept instead: a 4K clip conformed to 768x512 then
    holds one 4K frame at a time, not all of them.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    info = info or probe(path)
    fps = Fraction(info.fps).limit_denominator(1001)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(info.path), "-map", "0:V:0",
           "-an", "-sn", "-dn"]
    if info.variable_fps:
        cmd += ["-vf", f"fps={fps.numerator}/{fps.denominator}"]
    if max_frames is not None:
        cmd += ["-frames:v", str(max_frames)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]

    h, w = info.height, info.width
    frame_bytes = h * w * 3
    capacity = max(1, min(info.frames + 2, max_frames or info.frames + 2))
    scratch = np.empty((h, w, 3), np.uint8) if frame_fn is not None else None
    buf = np.empty((capacity, h, w, 3), np.uint8) if frame_fn is None else None
    n = 0
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        try:
            while True:
                if max_frames is not None and n >= max_frames:
                    break
                if frame_fn is None and n == buf.shape[0]:
                    buf = np.concatenate([buf, np.empty_like(buf)], axis=0)
                view = memoryview(scratch if frame_fn is not None else buf[n]).cast("B")
                got = 0
                while got < frame_bytes:
                    k = proc.stdout.readinto(view[got:])
                    if not k:
                        break
                    got += k
                if got < frame_bytes:
                    break
                if frame_fn is not None:
                    small = frame_fn(scratch)
                    if buf is None:
                        buf = np.empty((capacity,) + small.shape, np.uint8)
                    elif n == buf.shape[0]:
                        buf = np.concatenate([buf, np.empty_like(buf)], axis=0)
                    buf[n] = small
                n += 1
        finally:
            proc.stdout.close()
            rc = proc.wait()
        errf.seek(0)
        err = errf.read().decode("utf-8", "replace")
    if n == 0:
        raise UserError(f"no frames could be decoded from {info.path} ({_ffmpeg_error_line(err)})")
    if rc != 0 and n < min(info.frames, max_frames or info.frames) // 2:
        raise UserError(f"{info.path} is damaged: decoding stopped after {n} of {info.frames} frames "
                        f"({_ffmpeg_error_line(err)})")
    out = buf[:n]
    if n < buf.shape[0] // 2:
        out = out.copy()
    return out, float(fps)


# ----------------------------------------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------------------------------------
def output_mp4(out_path: str | os.PathLike | None) -> Path:
    """The .mp4 a generating run writes to, checked (an .mp4 path) and its folder made."""
    if out_path is None:
        raise UserError("no output path given")
    out = Path(out_path)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"output must be an .mp4 file (got {out.name})")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, comment: str | None = None,
                crf: int = 17, *, preset: str = "medium") -> Path:
    """Encode uint8 [T,H,W,3] RGB frames as h264 yuv420p mp4 (BT.709, +faststart), atomically.

    H and W must be even (yuv420p halves chroma). ``comment`` goes into the container's 'comment' tag (the
    studio stores the request JSON there); it reaches ffmpeg as an FFMETADATA file, never on its command line,
    so any size works. The file appears complete or not at all.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T,H,W,3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise UserError("cannot write a video with no frames")
    if h % 2 or w % 2:
        raise UserError(f"video size {w}x{h} must be even for h264 yuv420p; conform or crop it first")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise UserError(f"fps must be a positive number, got {fps}")
    out = Path(path)
    fmt = _VIDEO_SUFFIX_FORMAT.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot write {out}: use a .mp4 (or .mov) file name")
    return _encode_atomic(out, frames, fps, comment, [
        "-vf", "scale=out_color_matrix=bt709:out_range=tv",
        "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
        "-movflags", "+faststart", "-f", fmt])


def _encode_atomic(out: Path, frames: np.ndarray, fps: float, comment: str | None, codec: list[str]) -> Path:
    """Pipe validated uint8 [T,H,W,3] RGB frames through ffmpeg with ``codec`` (encoder and muxer arguments)
    into a temporary file beside ``out``, then rename it over ``out``: the file appears complete or not at all.
    ``comment`` reaches the 'comment' tag as an FFMETADATA file, never on the command line."""
    t, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    tmp = meta = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".partial{out.suffix}", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        meta = _metadata_file(out.parent, out.stem, comment) if comment else None
    except OSError as exc:  # a read-only, missing or full output folder, said plainly
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        from pipelines.errors import os_error_message

        raise UserError(f"cannot write {out.name}: {os_error_message(exc, out.parent)}") from None
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{rate.numerator}/{rate.denominator}",
           "-i", "-"]
    if meta is not None:
        cmd += ["-f", "ffmetadata", "-i", str(meta), "-map", "0:v", "-map_metadata", "1"]
    cmd += ["-an", *codec, str(tmp)]
    try:
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=errf)
            broken = False
            try:
                data = np.ascontiguousarray(frames)
                for i in range(t):
                    try:
                        proc.stdin.write(memoryview(data[i]).cast("B"))
                    except (BrokenPipeError, OSError):
                        broken = True
                        break
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    broken = True
                rc = proc.wait()
            errf.seek(0)
            err = errf.read().decode("utf-8", "replace")
        if rc != 0 or broken:
            raise UserError(f"could not write {out}: ffmpeg failed ({_ffmpeg_error_line(err)})")
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise UserError(f"could not write {out}: ffmpeg produced no file")
        # mkstemp makes the file 0600; give the video the usual permissions (or those of the file it replaces)
        os.chmod(tmp, (out.stat().st_mode & 0o777) if out.exists() else 0o644)
        os.replace(tmp, out)
    finally:
        if meta is not None:
            meta.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)  # gone after the rename; a failed run's partial file otherwise
    return out


def _metadata_file(folder: Path, stem: str, comment: str) -> Path:
    """An FFMETADATA file holding the comment ('=', ';', '#', '\\' and newlines backslash-escaped)."""
    escaped = re.sub(r"([=;#\\\n\r])", r"\\\1", comment)
    fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".ffmeta", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # no newline after the value: ffmpeg's reader takes a newline after ANY backslash (even an escaped
            # one) as a continuation, so a comment ending in a backslash would gain a newline
            fh.write(";FFMETADATA1\ncomment=" + escaped)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


LOSSLESS_SUFFIX = ".mkv"


def write_video_lossless(path: str | os.PathLike, frames: np.ndarray, fps: float,
                         comment: str | None = None) -> Path:
    """Encode uint8 [T,H,W,3] RGB frames losslessly: FFV1 (planar RGB, no chroma subsampling, any size) in a
    Matroska ``.mkv``, atomically. ``read_video`` returns exactly ``frames``. ``comment`` goes into the
    'comment' tag through an FFMETADATA file, as in ``write_video``.

    For data a model reads (a control video), where h264's yuv420p would blur colours and shift values;
    browsers cannot play it, so show people a ``write_video`` mp4 beside it."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1:
        raise UserError("cannot write a video with no frames")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise UserError(f"fps must be a positive number, got {fps}")
    out = Path(path)
    if out.suffix.lower() != LOSSLESS_SUFFIX:
        raise UserError(f"cannot write {out}: a lossless video is a {LOSSLESS_SUFFIX} file")
    return _encode_atomic(out, frames, fps, comment,
                          ["-c:v", "ffv1", "-pix_fmt", "gbrp", "-f", "matroska"])


def mux_audio(video: str | os.PathLike, waveform: np.ndarray, sample_rate: int, out: str | os.PathLike,
              bitrate: str = "192k") -> Path:
    """Write `out`: the video stream of the mp4 `video` (copied, not re-encoded, with its metadata) plus
    `waveform` (float [channels, samples] or [samples], values clipped to [-1, 1]) as an AAC track, atomically.
    `video` and `out` may be the same file."""
    wav = np.asarray(waveform, dtype=np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[0] not in (1, 2) or wav.shape[1] < 1:
        raise ValueError(f"waveform must be [channels (1 or 2), samples], got shape {wav.shape}")
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384000):
        raise ValueError(f"sample_rate={sample_rate!r} must be an integer rate in Hz")
    src, dst = Path(video), Path(out)
    data = np.ascontiguousarray(np.clip(np.nan_to_num(wav), -1.0, 1.0).T)  # interleaved [samples, channels]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".partial{dst.suffix}", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(src),
           "-f", "f32le", "-ar", str(sample_rate), "-ac", str(wav.shape[0]), "-i", "-",
           "-map", "0:v:0", "-map", "1:a:0", "-map_metadata", "0", "-c:v", "copy", "-c:a", "aac", "-b:a", bitrate,
           "-movflags", "+faststart", "-f", _VIDEO_SUFFIX_FORMAT.get(dst.suffix.lower(), "mp4"), str(tmp)]
    ok = False
    try:
        proc = subprocess.run(cmd, input=data.tobytes(), capture_output=True)
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            raise UserError(f"could not add the soundtrack to {dst.name}: ffmpeg failed "
                            f"({_ffmpeg_error_line(proc.stderr.decode('utf-8', 'replace'))})")
        os.chmod(tmp, (src.stat().st_mode & 0o777) if src.exists() else 0o644)
        os.replace(tmp, dst)
        ok = True
    finally:
        if not ok:
            tmp.unlink(missing_ok=True)
    return dst


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """The first audio track as float32 [channels, samples] and its rate (resampled to `sample_rate` if given)."""
    p = _check_input_file(path)
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p)], capture_output=True)
    text = info.stderr.decode("utf-8", "replace")
    m = re.search(r"Audio: .*?(\d+) Hz, (mono|stereo|(\d+) channels)", text)
    if not m:
        raise UserError(f"{p.name} has no audio track")
    rate = sample_rate or int(m.group(1))
    ch = 1 if m.group(2) == "mono" else 2 if m.group(2) == "stereo" else int(m.group(3))
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(p), "-map", "0:a:0",
                           "-f", "f32le", "-ar", str(rate), "-ac", str(ch), "-"], capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"could not read the audio of {p.name} ({_ffmpeg_error_line(proc.stderr.decode('utf-8', 'replace'))})")
    return np.frombuffer(proc.stdout, np.float32).reshape(-1, ch).T.copy(), rate


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # a control/reference given as a still image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 [H,W,3] RGB; UserError when it is missing or not an image. (Decoded from bytes,
    so any file name works.)"""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image not found: {p}")
    data = np.fromfile(str(p), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UserError(f"{p.name} is not a readable image (png, jpg, webp, bmp or tiff)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write uint8 RGB [H,W,3] as an image (format from the suffix), atomically: a temp file in the same
    folder, then os.replace, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
            raise UserError(f"cannot write image {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_comment(path: str | os.PathLike) -> str | None:
    """The container's 'comment' tag (where the studio stores the request that made a video), or None."""
    p = _check_input_file(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(p),
                           "-f", "ffmetadata", "-"], capture_output=True, timeout=_PROBE_TIMEOUT_S)
    if proc.returncode != 0:
        raise UserError(f"{p} is not a readable video ({_ffmpeg_error_line(proc.stderr.decode('utf-8', 'replace'))})")
    return _parse_ffmetadata(proc.stdout.decode("utf-8", "replace")).get("comment")


def _parse_ffmetadata(text: str) -> dict[str, str]:
    """Global section of an ffmetadata file; values have '=', ';', '#', '\\' and newlines backslash-escaped."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("["):
            break
        if not line or line.startswith((";", "#")):
            continue
        # join continuation lines (an escaped newline ends the line with a single backslash)
        while _ends_with_escape(line) and i < len(lines):
            line = line[:-1] + "\n" + lines[i]
            i += 1
        key, value = _split_unescaped(line)
        if key is not None:
            out[key] = value
    return out


def _ends_with_escape(line: str) -> bool:
    k = len(line) - len(line.rstrip("\\"))
    return k % 2 == 1


def _split_unescaped(line: str) -> tuple[str | None, str]:
    key, value, cur, esc, seen_eq = None, "", [], False, False
    for ch in line:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == "=" and not seen_eq:
            key, cur, seen_eq = "".join(cur), [], True
        else:
            cur.append(ch)
    if not seen_eq:
        return None, ""
    value = "".join(cur)
    return key.lower(), value


# ----------------------------------------------------------------------------------------------------------
# conform
# ----------------------------------------------------------------------------------------------------------
def valid_frame_count(n: int) -> int:
    """Largest 8k+1 that is <= n (LTX's causal VAE takes 1, 9, 17, ... frames)."""
    if n < 1:
        raise ValueError(f"frame count must be >= 1, got {n}")
    return (n - 1) // 8 * 8 + 1


def next_valid_frame_count(n: int) -> int:
    """Smallest 8k+1 that is >= n."""
    if n < 1:
        raise ValueError(f"frame count must be >= 1, got {n}")
    return (n + 6) // 8 * 8 + 1


@dataclass
class ConformTarget:
    """What to conform a clip to. ``None`` means 'keep the source's, made valid'.

    ``frames`` must be 8n+1; ``width``/``height`` multiples of ``multiple``. ``pad`` holds the last frame to
    reach the frame count instead of trimming down."""

    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: float | None = None
    multiple: int = 32
    pad: bool = False

    def validate(self) -> None:
        if self.multiple < 1:
            raise UserError(f"size multiple must be >= 1, got {self.multiple}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is None:
                continue
            if v < self.multiple:
                raise UserError(f"{name} {v} is too small; it must be at least {self.multiple}")
            if v % self.multiple:
                lo = v // self.multiple * self.multiple
                raise UserError(f"{name} {v} is not a multiple of {self.multiple}, which this model needs; "
                                f"use {lo} or {lo + self.multiple}")
        if self.frames is not None:
            if self.frames < 1 or (self.frames - 1) % 8:
                lo = valid_frame_count(max(1, self.frames))
                raise UserError(f"{self.frames} frames is not a valid count: LTX needs 8n+1 frames "
                                f"(1, 9, 17, ...); use {lo} or {lo + 8}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"fps must be a positive number, got {self.fps}")


@dataclass
class ConformReport:
    """What ``conform`` did, in plain words (``changes``) and in numbers."""

    changes: list[str]
    width: int
    height: int
    frames: int
    fps: float
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        if not self.changes:
            return (f"no changes needed: {self.width}x{self.height}, {self.frames} frames at "
                    f"{_fmt_fps(self.fps)} fps")
        return "; ".join(self.changes)


def _fmt_fps(fps: float) -> str:
    return f"{fps:.3f}".rstrip("0").rstrip(".")


def resample_fps_indices(n: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame index for each output frame: the nearest source frame in time.

    Output frame i sits at time i/dst_fps; only times inside the source span are produced, so the count is
    floor((n-1) * dst/src) + 1."""
    ratio = Fraction(src_fps).limit_denominator(100000) / Fraction(dst_fps).limit_denominator(100000)
    m = int(math.floor((n - 1) / ratio)) + 1 if n > 1 else 1
    idx = np.array([min(n - 1, int(math.floor(i * ratio + Fraction(1, 2)))) for i in range(m)], dtype=np.int64)
    return idx


def _cover_crop_size(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    """Size to resize (w, h) to so that it covers (tw, th) with the aspect kept."""
    scale = max(tw / w, th / h)
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
    return rw, rh


def resize_cover_crop(frames: np.ndarray, tw: int, th: int,
                      indices: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize keeping aspect so the clip covers tw x th, then center-crop. Returns frames and the resize size.

    INTER_AREA when shrinking (no aliasing), INTER_CUBIC when growing. ``indices`` picks (and orders, repeats)
    source frames; each output frame is resized and cropped straight into the result, so a long HD clip is
    never copied whole in between.
    """
    h, w = frames.shape[1:3]
    idx = np.arange(frames.shape[0]) if indices is None else np.asarray(indices)
    rw, rh = _cover_crop_size(w, h, tw, th)
    x0, y0 = (rw - tw) // 2, (rh - th) // 2
    if (rw, rh) == (w, h):
        return np.ascontiguousarray(frames[idx, y0:y0 + th, x0:x0 + tw]), (rw, rh)
    interp = cv2.INTER_AREA if rw * rh < w * h else cv2.INTER_CUBIC
    out = np.empty((len(idx), th, tw, 3), np.uint8)
    last_src, last_out = -1, -1
    for i, src in enumerate(idx):
        if src == last_src:  # held / repeated frame: copy the finished one instead of resizing again
            out[i] = out[last_out]
            continue
        out[i] = cv2.resize(frames[src], (rw, rh), interpolation=interp)[y0:y0 + th, x0:x0 + tw]
        last_src, last_out = src, i
    return out, (rw, rh)


def _target_size(w: int, h: int, target: ConformTarget) -> tuple[int, int]:
    m = target.multiple
    if target.width is not None and target.height is not None:
        return target.width, target.height
    if target.width is not None:
        return target.width, max(m, round(h * target.width / w / m) * m)
    if target.height is not None:
        return max(m, round(w * target.height / h / m) * m), target.height
    return max(m, w // m * m), max(m, h // m * m)


def conform(frames: np.ndarray, fps: float, target: ConformTarget, *,
            source_size: tuple[int, int] | None = None) -> tuple[np.ndarray, ConformReport]:
    """Make a clip valid for LTX: fps resample, then 8n+1 frames, then size on the grid. Reports each step.

    Order matters: the fps resample changes the frame count, so the 8n+1 trim comes after it; resizing comes
    last so it only touches frames that are kept. The time steps only choose source frame indices; pixels
    are produced once at the end (a plain trim returns a view of the input, no copy).

    ``source_size`` (w, h): the frames were already resized and cropped one by one from a clip of that size
    (``conform_file`` does so while decoding, see ``presize``); the size step is then reported, not redone.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 1:
        raise UserError("the clip has no frames")
    if not (fps and math.isfinite(fps) and fps > 0):
        raise UserError(f"the clip's fps must be a positive number, got {fps}")
    target.validate()
    t0, h0, w0, _ = frames.shape
    if source_size is not None:
        w0, h0 = source_size
        if frames.shape[1:3] != _target_size(w0, h0, target)[::-1]:
            raise ValueError(f"frames {frames.shape} were not presized from {w0}x{h0} for this target")
    source = {"width": w0, "height": h0, "frames": t0, "fps": float(fps)}
    changes: list[str] = []
    idx = np.arange(t0)

    # 1. frame rate, by nearest-frame selection in time
    out_fps = float(fps)
    if target.fps is not None and abs(target.fps - fps) > 1e-3 * fps:
        idx = resample_fps_indices(t0, fps, target.fps)
        out_fps = float(target.fps)
        changes.append(f"resampled {_fmt_fps(fps)} fps to {_fmt_fps(out_fps)} fps ({t0} frames became "
                       f"{len(idx)}, nearest frame in time)")

    # 2. frame count: 8n+1
    n = len(idx)
    if target.frames is not None:
        want = target.frames
        if want <= n:
            if want < n:
                idx = idx[:want]
                changes.append(f"trimmed {n} frames to {want} (the frame count you asked for)")
        elif target.pad:
            idx = _hold_last(idx, want)
            changes.append(f"padded {n} frames to {want} by holding the last frame (the clip was too short)")
        else:
            got = valid_frame_count(n)
            idx = idx[:got]
            changes.append(f"asked for {want} frames but the clip has only {n}; used {got} "
                           f"(largest 8n+1 count available; turn on padding to hold the last frame instead)")
    elif (n - 1) % 8:
        if target.pad:
            want = next_valid_frame_count(n)
            idx = _hold_last(idx, want)
            changes.append(f"padded {n} frames to {want} by holding the last frame (LTX needs 8n+1 frames)")
        else:
            want = valid_frame_count(n)
            idx = idx[:want]
            changes.append(f"trimmed {n} frames to {want} (LTX needs 8n+1 frames)")

    # 3. size on the grid: resize to cover, then center-crop
    tw, th = _target_size(w0, h0, target)
    if (tw, th) != (w0, h0):
        if source_size is None:
            out, (rw, rh) = resize_cover_crop(frames, tw, th, indices=idx)
        else:
            plain = np.array_equal(idx, np.arange(len(idx)))  # a trim: a view, no copy
            out = frames[:len(idx)] if plain else frames[idx]
            rw, rh = _cover_crop_size(w0, h0, tw, th)
        why = (f"LTX needs multiples of {target.multiple}" if target.width is None and target.height is None
               else "the size you asked for")
        if (rw, rh) == (tw, th):
            changes.append(f"resized {w0}x{h0} to {tw}x{th} ({why})")
        elif (rw, rh) == (w0, h0):
            changes.append(f"center-cropped {w0}x{h0} to {tw}x{th} ({why})")
        else:
            changes.append(f"resized {w0}x{h0} to {rw}x{rh}, then center-cropped to {tw}x{th} ({why})")
    elif np.array_equal(idx, np.arange(len(idx))):
        out = frames[:len(idx)]
    else:
        out = frames[idx]

    report = ConformReport(changes=changes, width=tw, height=th, frames=int(out.shape[0]), fps=out_fps,
                           source=source)
    return out, report


def _hold_last(idx: np.ndarray, count: int) -> np.ndarray:
    return np.concatenate([idx, np.full(count - len(idx), idx[-1], dtype=idx.dtype)])


def _frames_needed(info: VideoInfo, target: ConformTarget) -> int | None:
    """How many source frames conform can use at most, so long clips are not decoded in full."""
    if target.frames is None:
        return None
    if target.fps is None or abs(target.fps - info.fps) <= 1e-3 * info.fps:
        return target.frames
    return int(math.ceil((target.frames - 1) * info.fps / target.fps)) + 2


def presize(info: VideoInfo, target: ConformTarget):
    """The per-frame resize + crop conform would apply to this clip, when it makes frames smaller (else None):
    done while decoding, a long 4K clip conformed to 768x512 never sits in memory at 4K. Each frame gets the
    same cv2 call as ``resize_cover_crop``, so the result is identical."""
    tw, th = _target_size(info.width, info.height, target)
    if tw * th >= info.width * info.height:
        return None
    return lambda frame: resize_cover_crop(frame[None], tw, th)[0][0]


def conform_file(path: str | os.PathLike, target: ConformTarget) -> tuple[np.ndarray, float, ConformReport]:
    """probe + read + conform. The report's ``source`` carries the probe, and notes rotation / VFR handling.
    Frames are resized while decoding when that shrinks them (``presize``)."""
    target.validate()
    info = probe(path)
    fn = presize(info, target)
    frames, fps = read_video(path, max_frames=_frames_needed(info, target), info=info, frame_fn=fn)
    notes: list[str] = []
    if info.rotation:
        notes.append(f"rotated {info.rotation}° clockwise as the file's rotation tag says "
                     f"(display size {info.width}x{info.height})")
    if info.variable_fps:
        notes.append(f"variable frame rate re-timed to a constant {_fmt_fps(fps)} fps")
    if frames.shape[0] < info.frames and target.frames is not None and frames.shape[0] == target.frames:
        notes.append(f"trimmed {info.frames} frames to {target.frames} (the frame count you asked for)")
    elif frames.shape[0] < info.frames - 1:
        notes.append(f"used the first {frames.shape[0]} of {info.frames} frames")
    out, report = conform(frames, fps, target, source_size=(info.width, info.height) if fn else None)
    report.changes[:0] = notes
    read_frames = report.source["frames"]
    report.source = {**info.to_dict(), "frames_read": read_frames}
    return out, report.fps, report


def report_json(report: ConformReport) -> str:
    """The report as one JSON line (what the CLI and the output metadata carry)."""
    return json.dumps(report.to_dict(), default=str)
