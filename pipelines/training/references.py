"""Reference frames for the face recipe: the best frame of each clip, cropped around the subject.

An IC-LoRA for identity learns "make the person in the reference do this". The reference should be sharp,
well exposed, with a large frontal-to-3/4 face, and by default it comes from ANOTHER clip of the same subject
than the target: a reference cut from the target's own footage lets the LoRA learn to copy pixels instead of
identity (SPEC.md 8).

- `pick_reference(frames)` scores frames (sharpness = variance of the Laplacian, exposure = mean near mid grey
  with little clipping, face size and frontal-ness) and returns the best frame and a crop box: the face box
  grown by `margin`, or a centre crop when no face is found.
- `assign_references(report, ...)` picks a reference for every clip of a `DatasetReport`, deterministic for a
  seed; users can replace any choice with their own image.
- A reference is a still (1 frame, one latent frame) or a looped still as a short 8n+1 video
  (`still_to_video`).
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from pipelines.errors import UserError
from pipelines.training.dataset import (
    DatasetReport, Face, FaceDetector, default_face_detector, sample_frames, sample_indices,
)
from pipelines.video_io import read_image, write_image

DEFAULT_MARGIN = 1.8
REFERENCE_SHORT_SIDE = 512  # frames are scored at this short side (never upscaled)
# Weights of the frame score; each term is in [0, 1]. The face matters most for an identity LoRA.
W_FACE, W_SHARP, W_EXPOSURE = 0.45, 0.35, 0.20
PROFILE_WEIGHT = 0.5  # a profile-only face is a weaker reference than a frontal / 3/4 one
FULL_FACE_HEIGHT = 0.30  # a face this tall (fraction of frame height) or taller gets the full size score


class ReferenceStrategy(str, Enum):
    OTHER_CLIP = "other_clip"  # reference from another clip of the subject (default: learns identity)
    SAME_CLIP = "same_clip"  # reference from the target clip itself


@dataclass(frozen=True)
class ReferenceChoice:
    """The chosen frame (index into the frames given), crop box (x0, y0, x1, y1) in that frame's pixels,
    score in [0, 1] and the reasons in words."""

    frame_index: int
    box: tuple[int, int, int, int]
    score: float
    reasons: list[str] = field(default_factory=list)
    face: Face | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


@dataclass(frozen=True)
class ReferenceAssignment:
    """Which reference a target clip trains with.

    kind "clip": frame `frame` (a frame number of the source clip) cropped to `box` (source display pixels);
    kind "image": the user's image at `source_path`, used whole.
    """

    target: str
    kind: str
    source: str  # clip name, or the image file name
    source_path: str
    frame: int | None = None
    box: tuple[int, int, int, int] | None = None
    score: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = None if self.box is None else list(self.box)
        return d


# --------------------------------------------------------------------------------------------- scoring


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (blur lowers it), mapped to [0, 1) by v / (v + 100)."""
    v = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    return v / (v + 100.0)


def exposure(gray: np.ndarray) -> tuple[float, float, float]:
    """(score, mean brightness 0-1, clipped share): best at mid grey, penalised for crushed/blown pixels."""
    mean = float(gray.mean()) / 255.0
    clipped = float(np.mean((gray <= 3) | (gray >= 252)))
    score = max(0.0, 1.0 - 2.0 * abs(mean - 0.5)) * max(0.0, 1.0 - 5.0 * clipped)
    return score, mean, clipped


def crop_box(width: int, height: int, face: Face | None, margin: float = DEFAULT_MARGIN,
             aspect: float = 1.0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of aspect `aspect` (w/h): the face box grown `margin` times around its centre, shifted
    (then shrunk if needed) to stay inside the frame; the largest centred box when there is no face."""
    if face is None:
        bh = min(height, width / aspect)
        cx, cy = width / 2, height / 2
    else:
        bh = margin * max(face.h, face.w / aspect)
        cx, cy = face.x + face.w / 2, face.y + face.h / 2
    bh = min(bh, height, width / aspect)
    bw = bh * aspect
    x0 = min(max(0.0, cx - bw / 2), width - bw)
    y0 = min(max(0.0, cy - bh / 2), height - bh)
    x0i, y0i = int(round(x0)), int(round(y0))
    return x0i, y0i, min(width, x0i + int(round(bw))), min(height, y0i + int(round(bh)))


def crop(frame: np.ndarray, box: Sequence[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """The box of a frame, optionally resized to size (width, height)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    out = np.ascontiguousarray(frame[y0:y1, x0:x1])
    if out.size == 0:
        raise UserError(f"reference crop box {tuple(box)} is empty for a {frame.shape[1]}x{frame.shape[0]} frame")
    if size is not None and (out.shape[1], out.shape[0]) != tuple(size):
        grow = size[0] * size[1] > out.shape[0] * out.shape[1]
        out = cv2.resize(out, tuple(size), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)
    return out


def _resolve_detector(detector: FaceDetector | str | None) -> tuple[FaceDetector | None, str | None]:
    if detector == "auto":
        return default_face_detector()
    if detector is None:
        return None, "face check off"
    if callable(detector):
        return detector, None
    raise UserError(f"detector must be 'auto', None or a callable, got {detector!r}")


def pick_reference(frames: np.ndarray | Sequence[np.ndarray], *, detector: FaceDetector | str | None = "auto",
                   margin: float = DEFAULT_MARGIN, aspect: float = 1.0) -> ReferenceChoice:
    """Score every frame and return the best one with its crop box.

    score = 0.45 face + 0.35 sharpness + 0.20 exposure, where face = kind weight (frontal 1, profile 0.5) x
    (0.5 + 0.5 min(1, face height / 0.3 frame height)); sharpness is measured on the crop, exposure on the
    face when there is one, else on the crop. Frames without a face score 0 on the face term, so any frame with
    a face beats a faceless one unless it is much blurrier or badly exposed.
    """
    if len(frames) == 0:
        raise UserError("no frames to pick a reference from")
    det, why_not = _resolve_detector(detector)
    best: tuple[float, int, tuple[int, int, int, int], Face | None, dict] | None = None
    for i, frame in enumerate(frames):
        H, W = frame.shape[:2]
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        faces = det(frame) if det else []
        face = max(faces, key=lambda f: (f.kind == "frontal", f.area)) if faces else None
        box = crop_box(W, H, face, margin, aspect)
        cropped = gray[box[1]:box[3], box[0]:box[2]]
        if face is not None:
            region = gray[face.y:face.y + face.h, face.x:face.x + face.w]
            kind_w = 1.0 if face.kind == "frontal" else PROFILE_WEIGHT
            face_term = kind_w * (0.5 + 0.5 * min(1.0, (face.h / H) / FULL_FACE_HEIGHT))
        else:
            region = cropped
            face_term = 0.0
        sharp = sharpness(cropped)  # the crop is what training sees: face, hair, edges
        expo, mean, clipped = exposure(region)  # the face itself should be well lit
        score = W_FACE * face_term + W_SHARP * sharp + W_EXPOSURE * expo
        detail = {"sharp": sharp, "exposure": expo, "mean": mean, "clipped": clipped, "H": H}
        if best is None or score > best[0] + 1e-9:
            best = (score, i, box, face, detail)
    assert best is not None
    score, index, box, face, d = best
    reasons = [f"frame {index} scored best of {len(frames)} sampled frames"]
    if face is not None:
        reasons.append(f"{face.kind} face, {face.h / d['H']:.0%} of frame height; crop {margin:g}x the face box")
    elif why_not:
        reasons.append("face check unavailable; centre crop")
    else:
        reasons.append("no face found; centre crop")
    reasons.append(f"sharpness {d['sharp']:.2f}, exposure {d['exposure']:.2f} "
                   f"(mean brightness {d['mean'] * 255:.0f}/255, {d['clipped']:.1%} clipped)")
    return ReferenceChoice(frame_index=index, box=box, score=round(float(score), 4), reasons=reasons, face=face)


# --------------------------------------------------------------------------------------------- stills


def still_to_video(image: np.ndarray, frames: int) -> np.ndarray:
    """A still as a reference video: the image repeated `frames` times (8n+1: 1, 9, 17, ...), uint8 [F,H,W,3]."""
    img = np.asarray(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"a reference still must be an RGB image [H,W,3], got shape {tuple(np.shape(image))}")
    if frames < 1 or (frames - 1) % 8:
        lower = max(1, (frames - 1) // 8 * 8 + 1)
        raise UserError(f"a reference video needs 8n+1 frames (1, 9, 17, ...); {frames} is not, use {lower} or {lower + 8}")
    return np.ascontiguousarray(np.broadcast_to(img.astype(np.uint8, copy=False), (frames, *img.shape)))


# --------------------------------------------------------------------------------------------- assignment


def pick_clip_reference(clip_path: str | os.PathLike, width: int, height: int, frames: int, *, samples: int = 8,
                        detector: FaceDetector | str | None = "auto", margin: float = DEFAULT_MARGIN,
                        aspect: float = 1.0) -> tuple[int, tuple[int, int, int, int], ReferenceChoice]:
    """Best reference of one clip: (frame number, box in source display pixels, the choice on sampled frames)."""
    imgs, got = sample_frames(clip_path, sample_indices(frames, samples), width, height, short_side=REFERENCE_SHORT_SIDE)
    if len(imgs) == 0:
        raise UserError(f"no frame of {Path(clip_path).name} could be decoded for a reference")
    choice = pick_reference(imgs, detector=detector, margin=margin, aspect=aspect)
    sx, sy = width / imgs.shape[2], height / imgs.shape[1]
    x0, y0, x1, y1 = choice.box
    box = (int(round(x0 * sx)), int(round(y0 * sy)), min(width, int(round(x1 * sx))), min(height, int(round(y1 * sy))))
    return got[choice.frame_index], box, choice


def assign_references(report: DatasetReport, strategy: ReferenceStrategy | str = ReferenceStrategy.OTHER_CLIP,
                      seed: int = 0, *, overrides: Mapping[str, str | os.PathLike] | None = None, samples: int = 8,
                      detector: FaceDetector | str | None = "auto", margin: float = DEFAULT_MARGIN,
                      aspect: float = 1.0) -> dict[str, ReferenceAssignment]:
    """A reference for every readable clip of the report, keyed by clip name.

    other_clip (default): drawn from the OTHER clips, weighted by their reference score, preferring clips where
    a face was found and skipping clips named as near-duplicates of the target; the draw is seeded, so the
    same seed gives the same assignment. With one clip only, it falls back to the clip itself (and says so).
    same_clip: each clip's own best frame. overrides: {clip name: image path} replaces the choice.
    """
    try:
        strategy = ReferenceStrategy(strategy)
    except ValueError:
        raise UserError(f"unknown reference strategy {strategy!r}; use one of: "
                        f"{', '.join(s.value for s in ReferenceStrategy)}") from None
    if not report.clips:
        raise UserError("the dataset has no readable clips to take references from")
    overrides = dict(overrides or {})
    names = [c.name for c in report.clips]
    for key, img in overrides.items():
        if key not in names:
            raise UserError(f"reference override for unknown clip {key!r}; clips: {', '.join(names)}")
        read_image(img)  # fail now, with the file's name, not halfway through training

    picks: dict[str, tuple[int, tuple[int, int, int, int], ReferenceChoice]] = {}
    for c in report.clips:
        picks[c.name] = pick_clip_reference(c.path, c.width, c.height, c.frames, samples=samples, detector=detector,
                                            margin=margin, aspect=aspect)
    dupes = {(d.a, d.b) for d in report.duplicates} | {(d.b, d.a) for d in report.duplicates}
    rng = random.Random(seed)
    out: dict[str, ReferenceAssignment] = {}
    for c in report.clips:
        if c.name in overrides:
            p = Path(overrides[c.name])
            out[c.name] = ReferenceAssignment(target=c.name, kind="image", source=p.name, source_path=str(p),
                                              reasons=["chosen by the user"])
            continue
        note: list[str] = []
        if strategy is ReferenceStrategy.SAME_CLIP:
            source = c.name
        else:
            others = [n for n in names if n != c.name and (c.name, n) not in dupes]
            if not others:
                others = [n for n in names if n != c.name]
            if not others:
                source = c.name
                note.append("only one readable clip: reference taken from the clip itself (add clips so the "
                            "reference can come from other footage)")
            else:
                with_face = [n for n in others if picks[n][2].face is not None]
                pool = with_face or others
                weights = [max(picks[n][2].score, 1e-3) ** 2 for n in pool]
                source = rng.choices(pool, weights=weights, k=1)[0]
                note.append(f"from another clip ({source}) so the LoRA learns identity rather than copying")
        frame, box, choice = picks[source]
        src_clip = report.clip(source)
        reasons = note + [r.replace(f"frame {choice.frame_index} ", f"frame {frame} ", 1) for r in choice.reasons]
        out[c.name] = ReferenceAssignment(target=c.name, kind="clip", source=source, source_path=src_clip.path,
                                          frame=frame, box=box, score=choice.score, reasons=reasons)
    return out


def load_reference(assignment: ReferenceAssignment, frames: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """The reference as uint8 [frames,H,W,3] RGB: a still (frames=1) or a looped still (8n+1 frames),
    optionally resized to size (width, height)."""
    if assignment.kind == "image":
        img = read_image(assignment.source_path)
        if size is not None:
            img = crop(img, crop_box(img.shape[1], img.shape[0], None, aspect=size[0] / size[1]), size)
    else:
        from pipelines import video_io

        info = video_io.probe(assignment.source_path)
        imgs, got = sample_frames(assignment.source_path, [int(assignment.frame or 0)], info.width, info.height,
                                  short_side=None)
        if not got:
            raise UserError(f"frame {assignment.frame} of {assignment.source} could not be decoded")
        img = crop(imgs[0], assignment.box or crop_box(info.width, info.height, None), size)
    return still_to_video(img, frames)


def write_reference_crops(report: DatasetReport, folder: str | os.PathLike, *, seed: int = 0,
                          overrides: Mapping[str, str | os.PathLike] | None = None) -> list[tuple[str, str]]:
    """Assign references (as training will) and save each as folder/<clip stem>.png (atomic writes), for a UI
    to show. Returns [(png path, caption "target <- source (frame n): why")]."""
    items = []
    for name, a in assign_references(report, seed=seed, overrides=overrides or None).items():
        png = write_image(Path(folder) / f"{Path(name).stem}.png", load_reference(a, frames=1)[0])
        why = "; ".join(a.reasons[:2])
        items.append((str(png), f"{name} \u2190 {a.source}" + (f" (frame {a.frame})" if a.frame is not None else "")
                      + (f": {why}" if why else "")))
    return items
