"""DWPose skeletons rendered the OpenPose way, for the Union IC-LoRA (SPEC.md 6).

Pipeline per clip, following DWPose's own ONNX code (annotator/dwpose: onnxdet.py, onnxpose.py, wholebody.py):
  1. YOLOX person detector (yolox_l.onnx) every `detect_every` frames: letterbox to its input (640x640, top-left,
     pad 114, BGR, raw 0..255), decode the grid outputs, keep persons above 0.3 after NMS 0.45. In between,
     each person's box follows the centroid of its keypoints.
  2. DWPose (dw-ll_ucoco_384.onnx) on every frame: each box padded 1.25x, fixed to the model's aspect ratio,
     affine-cropped to its input (288x384 w,h), ImageNet mean/std on RGB; SimCC outputs decoded by argmax, split
     ratio = simcc width / input width (2 for DWPose).
  3. The 133 COCO-wholebody keypoints -> OpenPose 18 body keypoints (neck = mid-shoulders).
  4. People are tracked across frames by box overlap; a keypoint missing for a short gap is linearly
     interpolated between the frames where it was seen; optional EMA smoothing.
  5. OpenPose render on black: 17 limbs as ellipses in the standard colours dimmed to 60%, then the joints.
Input sizes are read from the ONNX models, not assumed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipelines.control.types import PoseOptions, ProgressFn
from pipelines.errors import UserError

log = logging.getLogger(__name__)

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DET_SCORE = 0.3
DET_NMS = 0.45
BOX_PADDING = 1.25
MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
STD_RGB = np.array([58.395, 57.12, 57.375], np.float32)

# OpenPose 18: nose, neck, r_sho, r_elb, r_wri, l_sho, l_elb, l_wri, r_hip, r_knee, r_ank, l_hip, l_knee, l_ank,
# r_eye, l_eye, r_ear, l_ear. COCO 17: nose, l_eye, r_eye, l_ear, r_ear, l_sho, r_sho, l_elb, r_elb, l_wri, r_wri,
# l_hip, r_hip, l_knee, r_knee, l_ank, r_ank. None = neck (mid-shoulders).
OPENPOSE_FROM_COCO: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
NECK = 1
# 1-based pairs as in OpenPose's util.draw_bodypose; only the first 17 are drawn (the ear-shoulder pairs are not).
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))  # RGB


# --------------------------------------------------------------------------------------------------- models
@dataclass
class DWPoseModels:
    detector: object
    pose: object
    det_hw: tuple[int, int]     # detector input (h, w)
    pose_wh: tuple[int, int]    # pose input (w, h)
    pose_batch: int | None      # fixed batch size of the pose model, None = dynamic
    provider: str
    folder: str


_SESSIONS: dict[tuple[str, str], DWPoseModels] = {}


def _static_dim(value, default: int | None) -> int | None:
    return value if isinstance(value, int) and value > 0 else default


def pick_provider(requested: str | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested and requested.lower().startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise UserError(f"device {requested!r} was asked for but onnxruntime has no CUDA provider here "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if requested is None and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_dwpose(folder: Path, device: str | None = None) -> DWPoseModels:
    """Open both ONNX sessions from local files and read their input shapes."""
    import onnxruntime as ort

    providers = pick_provider(device)
    key = (str(Path(folder).resolve()), providers[0])
    if key in _SESSIONS:
        return _SESSIONS[key]
    sessions = []
    for name in (DETECTOR_FILE, POSE_FILE):
        try:
            sessions.append(ort.InferenceSession(str(Path(folder) / name), providers=providers))
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"could not open {Path(folder) / name} with onnxruntime: {exc}. Get the original "
                            f"file from yzd-v/DWPose") from None
    det, pose = sessions
    det_shape = det.get_inputs()[0].shape
    pose_shape = pose.get_inputs()[0].shape
    if len(det_shape) != 4 or len(pose_shape) != 4:
        raise UserError(f"unexpected DWPose ONNX inputs: detector {det_shape}, pose {pose_shape} (want NCHW)")
    if len(pose.get_outputs()) < 2:
        raise UserError(f"{Path(folder) / POSE_FILE} has {len(pose.get_outputs())} output(s); a DWPose SimCC model has 2 (simcc_x, simcc_y)")
    models = DWPoseModels(
        detector=det, pose=pose,
        det_hw=(_static_dim(det_shape[2], 640), _static_dim(det_shape[3], 640)),
        pose_wh=(_static_dim(pose_shape[3], 288), _static_dim(pose_shape[2], 384)),
        pose_batch=_static_dim(pose_shape[0], None),
        provider=providers[0], folder=str(folder))
    _SESSIONS.clear()
    _SESSIONS[key] = models
    return models


def clear_cache() -> None:
    _SESSIONS.clear()


# ------------------------------------------------------------------------------------------------ detector
def letterbox(rgb: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """YOLOX input: BGR, resized to fit, top-left aligned on a 114-gray canvas, CHW float32 (0..255)."""
    ih, iw = input_hw
    h, w = rgb.shape[:2]
    r = min(ih / h, iw / w)
    nh, nw = int(h * r), int(w * r)
    canvas = np.full((ih, iw, 3), 114, np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb[..., ::-1], (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r


def yolox_grid(input_hw: tuple[int, int], strides=(8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    grids, expanded = [], []
    for s in strides:
        hs, ws = input_hw[0] // s, input_hw[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def detect_people(models: DWPoseModels, rgb: np.ndarray, max_people: int) -> np.ndarray:
    """Person boxes [N,4] xyxy in frame pixels, highest score first."""
    img, ratio = letterbox(rgb, models.det_hw)
    sess = models.detector
    outputs = sess.run(None, {sess.get_inputs()[0].name: img[None]})
    pred = np.asarray(outputs[0], np.float32)
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise UserError(f"the person detector returned shape {pred.shape}; expected YOLOX raw output [1, anchors, 5 + classes]")
    pred = pred[0]
    grids, strides = yolox_grid(models.det_hw)
    if len(pred) != len(grids):
        raise UserError(f"the person detector returned {len(pred)} anchors; a YOLOX model with a "
                        f"{models.det_hw[1]}x{models.det_hw[0]} input has {len(grids)}")
    xy = (pred[:, :2] + grids) * strides
    wh = np.exp(np.minimum(pred[:, 2:4], 20.0)) * strides
    scores = pred[:, 4] * pred[:, 5]  # objectness x person class
    keep = scores > DET_SCORE
    if not keep.any():
        return np.zeros((0, 4), np.float32)
    xy, wh, scores = xy[keep] / ratio, wh[keep] / ratio, scores[keep]
    boxes_xywh = np.concatenate([xy - wh / 2, wh], 1)
    idx = cv2.dnn.NMSBoxes(boxes_xywh.tolist(), scores.tolist(), DET_SCORE, DET_NMS)
    idx = np.array(idx, dtype=int).reshape(-1)[:max_people]
    boxes = np.concatenate([xy[idx] - wh[idx] / 2, xy[idx] + wh[idx] / 2], 1)
    h, w = rgb.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes[(boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)].astype(np.float32)


# ---------------------------------------------------------------------------------------------- keypoints
def box_center_scale(box: np.ndarray, aspect_wh: float, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = box
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    if w > h * aspect_wh:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    return center, np.array([w, h], np.float32)


def crop_matrix(center: np.ndarray, scale: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Affine map from the (center, scale) box to the model input, as DWPose's get_warp_matrix (no rotation)."""
    ow, oh = out_wh
    src = np.float32([center, center + [0, -scale[0] / 2], center + [-scale[0] / 2, 0]])
    dst = np.float32([[ow / 2, oh / 2], [ow / 2, oh / 2 - ow / 2], [0, oh / 2]])
    return cv2.getAffineTransform(src, dst)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """argmax over each SimCC axis -> keypoints [N,K,2] in model-input pixels, score = min of the two maxima."""
    x_locs = simcc_x.argmax(-1)
    y_locs = simcc_y.argmax(-1)
    locs = np.stack([x_locs, y_locs], -1).astype(np.float32) / split_ratio
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locs[scores <= 0] = -1
    return locs, scores


def _pose_outputs(sess, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(simcc_x, simcc_y): by output name when the export names them, else in DWPose's order (x, y)."""
    names = [o.name.lower() for o in sess.get_outputs()]
    ix = names.index("simcc_x") if "simcc_x" in names else 0
    iy = names.index("simcc_y") if "simcc_y" in names else 1
    return np.asarray(outputs[ix], np.float32), np.asarray(outputs[iy], np.float32)


def estimate_keypoints(models: DWPoseModels, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wholebody keypoints [N,K,2] (frame pixels) and scores [N,K] for each box."""
    ow, oh = models.pose_wh
    crops, centers, scales = [], [], []
    for box in boxes:
        c, s = box_center_scale(box, ow / oh)
        crop = cv2.warpAffine(rgb, crop_matrix(c, s, (ow, oh)), (ow, oh), flags=cv2.INTER_LINEAR)
        crops.append(((crop.astype(np.float32) - MEAN_RGB) / STD_RGB).transpose(2, 0, 1))
        centers.append(c)
        scales.append(s)
    if not crops:
        return np.zeros((0, 133, 2), np.float32), np.zeros((0, 133), np.float32)
    sess = models.pose
    name = sess.get_inputs()[0].name
    batch = np.stack(crops).astype(np.float32)
    step = models.pose_batch or len(batch)
    xs, ys = [], []
    for i in range(0, len(batch), step):
        chunk = batch[i:i + step]
        n = len(chunk)
        if models.pose_batch and n < models.pose_batch:  # fixed-batch export: pad with zeros
            chunk = np.concatenate([chunk, np.zeros((models.pose_batch - n, *chunk.shape[1:]), np.float32)])
        sx, sy = _pose_outputs(sess, sess.run(None, {name: chunk}))
        xs.append(sx[:n])
        ys.append(sy[:n])
    simcc_x, simcc_y = np.concatenate(xs), np.concatenate(ys)
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[1] < 17:
        raise UserError(f"the pose model returned {simcc_x.shape} / {simcc_y.shape}; expected SimCC [N, K>=17, bins]")
    split = simcc_x.shape[-1] / ow
    locs, scores = simcc_decode(simcc_x, simcc_y, split)
    centers_a, scales_a = np.stack(centers)[:, None], np.stack(scales)[:, None]
    kpts = locs / np.float32([ow, oh]) * scales_a + centers_a - scales_a / 2
    return kpts.astype(np.float32), scores.astype(np.float32)


def to_openpose18(kpts: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO(-wholebody) [N,K,2]/[N,K] -> OpenPose body [N,18,2]/[N,18]; neck = mid-shoulders, score = min."""
    n = len(kpts)
    xy = np.zeros((n, 18, 2), np.float32)
    sc = np.zeros((n, 18), np.float32)
    for j, c in enumerate(OPENPOSE_FROM_COCO):
        if c is None:
            xy[:, j] = (kpts[:, 5] + kpts[:, 6]) / 2
            sc[:, j] = np.minimum(scores[:, 5], scores[:, 6])
        else:
            xy[:, j] = kpts[:, c]
            sc[:, j] = scores[:, c]
    return xy, sc


# ------------------------------------------------------------------------------------------------ tracking
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-6)


@dataclass
class PersonTrack:
    """One person through the clip: OpenPose keypoints per frame (NaN / score 0 where not seen)."""

    xy: np.ndarray                 # [T,18,2]
    score: np.ndarray              # [T,18]
    box: np.ndarray                # current box (last detection, moved with the keypoints)
    det_box: np.ndarray = field(default=None)
    det_centroid: np.ndarray | None = None
    active: bool = True
    last_frame: int = 0            # last frame this person had a box (detected or followed)

    @classmethod
    def new(cls, frames: int, box: np.ndarray) -> "PersonTrack":
        return cls(xy=np.full((frames, 18, 2), np.nan, np.float32), score=np.zeros((frames, 18), np.float32),
                   box=box.copy(), det_box=box.copy())


def _centroid(xy: np.ndarray, score: np.ndarray, thr: float) -> np.ndarray | None:
    seen = score >= thr
    return xy[seen].mean(0) if seen.sum() >= 3 else None


def match_tracks(tracks: list[PersonTrack], boxes: np.ndarray, frame: int, max_gap: int,
                 min_iou: float = 0.3) -> list[int | None]:
    """Greedy best-IoU assignment of new boxes to tracks seen within `max_gap` frames; None = a new person.

    Tracks lost for a few frames (a missed detection, a brief occlusion) are picked up again, so their
    keypoints can be interpolated across the gap instead of the person restarting as someone new."""
    active = [i for i, tr in enumerate(tracks) if tr.active or frame - tr.last_frame <= max_gap + 1]
    iou = box_iou(boxes, np.stack([tracks[i].box for i in active])) if active else np.zeros((len(boxes), 0))
    result: list[int | None] = [None] * len(boxes)
    used: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        b, a = np.unravel_index(flat, iou.shape)
        if iou[b, a] < min_iou:
            break
        if result[b] is None and a not in used:
            result[b] = active[a]
            used.add(a)
    return result


def interpolate_gaps(xy: np.ndarray, score: np.ndarray, thr: float, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill keypoints missing for at most `max_gap` frames linearly between the frames where they were seen."""
    xy, score = xy.copy(), score.copy()
    for j in range(xy.shape[1]):
        seen = np.flatnonzero(score[:, j] >= thr)
        for a, b in zip(seen[:-1], seen[1:]):
            gap = b - a - 1
            if 0 < gap <= max_gap:
                w = ((np.arange(a + 1, b) - a) / (b - a))[:, None].astype(np.float32)
                xy[a + 1:b, j] = (1 - w) * xy[a, j] + w * xy[b, j]
                score[a + 1:b, j] = thr
    return xy, score


def smooth_keypoints(xy: np.ndarray, score: np.ndarray, thr: float, weight: float) -> np.ndarray:
    """EMA over consecutive frames where a keypoint is seen (restarts after a gap)."""
    if weight <= 0:
        return xy
    xy = xy.copy()
    for t in range(1, len(xy)):
        both = (score[t] >= thr) & (score[t - 1] >= thr)
        xy[t, both] = weight * xy[t - 1, both] + (1 - weight) * xy[t, both]
    return xy


# ---------------------------------------------------------------------------------------------- rendering
def default_stick_width(height: int, width: int) -> int:
    return max(1, round(4 * min(height, width) / 512))


def render_openpose(height: int, width: int, people: list[tuple[np.ndarray, np.ndarray]], thr: float,
                    stick_width: int) -> np.ndarray:
    """OpenPose body render on black (RGB): limbs as filled ellipses dimmed to 60%, then joints as dots."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for i in range(17):
        a, b = LIMBS[i][0] - 1, LIMBS[i][1] - 1
        for xy, sc in people:
            if sc[a] < thr or sc[b] < thr:
                continue
            (x0, y0), (x1, y1) = xy[a], xy[b]
            length = math.hypot(x1 - x0, y1 - y0)
            angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
            poly = cv2.ellipse2Poly((int((x0 + x1) / 2), int((y0 + y1) / 2)), (int(length / 2), stick_width),
                                    int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(18):
        for xy, sc in people:
            if sc[j] < thr:
                continue
            cv2.circle(canvas, (int(xy[j, 0]), int(xy[j, 1])), stick_width, COLORS[j], thickness=-1)
    return canvas


# --------------------------------------------------------------------------------------------------- clip
def track_clip(models: DWPoseModels, frames: np.ndarray, options: PoseOptions,
               progress: ProgressFn | None = None) -> list[PersonTrack]:
    t_total = len(frames)
    thr = options.score_threshold
    tracks: list[PersonTrack] = []
    for t in range(t_total):
        rgb = frames[t]
        if t % options.detect_every == 0 or not any(tr.active for tr in tracks):
            boxes = detect_people(models, rgb, options.max_people)
            assigned = match_tracks(tracks, boxes, t, options.max_gap)
            for tr in tracks:
                tr.active = False
            for box, idx in zip(boxes, assigned):
                if idx is None:
                    tracks.append(PersonTrack.new(t_total, box))
                    tr = tracks[-1]
                    tr.last_frame = t
                else:
                    tr = tracks[idx]
                    tr.box, tr.det_box, tr.active = box.copy(), box.copy(), True
                tr.det_centroid = None  # set from this frame's keypoints below
        current = [tr for tr in tracks if tr.active]
        for tr in current:
            tr.last_frame = t
        if current:
            kpts, scores = estimate_keypoints(models, rgb, np.stack([tr.box for tr in current]))
            xy, sc = to_openpose18(kpts, scores)
            for tr, p_xy, p_sc in zip(current, xy, sc):
                tr.xy[t], tr.score[t] = p_xy, p_sc
                c = _centroid(p_xy, p_sc, thr)
                if tr.det_centroid is None:
                    tr.det_centroid = c
                elif c is not None:  # the box follows the person between detections
                    tr.box = tr.det_box + np.tile(c - tr.det_centroid, 2)
        if progress is not None:
            progress(0.9 * (t + 1) / t_total, f"pose {t + 1}/{t_total}")
    return tracks


def run_pose(frames: np.ndarray, options: PoseOptions, weights_dir: Path,
             progress: ProgressFn | None = None) -> tuple[np.ndarray, dict]:
    """uint8 [T,H,W,3] RGB -> uint8 [T,H,W,3] OpenPose skeletons on black, plus details."""
    models = load_dwpose(weights_dir, options.device)
    tracks = track_clip(models, frames, options, progress)
    t_total, h, w = frames.shape[:3]
    thr = options.score_threshold
    people = []
    filled = 0
    for tr in tracks:
        xy, sc = interpolate_gaps(tr.xy, tr.score, thr, options.max_gap)
        filled += int(((sc >= thr) & (tr.score < thr)).sum())
        people.append((smooth_keypoints(xy, sc, thr, options.smoothing), sc))
    stick = options.stick_width or default_stick_width(h, w)
    out = np.empty((t_total, h, w, 3), np.uint8)
    for t in range(t_total):
        out[t] = render_openpose(h, w, [(xy[t], sc[t]) for xy, sc in people], thr, stick)
    if progress is not None:
        progress(1.0, "pose done")
    details = {"provider": models.provider, "people_tracks": len(tracks), "keypoints_interpolated": filled,
               "detector_input": list(models.det_hw), "pose_input_wh": list(models.pose_wh),
               "frames_with_people": int(sum(any((sc[t] >= thr).any() for _, sc in people) for t in range(t_total)))}
    return out, details


def run_controlnet_aux_openpose(frames: np.ndarray, options: PoseOptions, weights_dir: Path,
                                progress: ProgressFn | None = None) -> tuple[np.ndarray, dict]:
    """Second backend: controlnet-aux's OpenposeDetector from a local lllyasviel/Annotators folder.

    Only reachable when controlnet_aux imports (the registry reports "missing package" otherwise). It is not
    installed or tested here: controlnet-aux needs torchvision, which has no CPU wheel (SPEC.md 10)."""
    from controlnet_aux import OpenposeDetector

    detector = OpenposeDetector.from_pretrained(str(weights_dir))
    t_total, h, w = frames.shape[:3]
    out = np.empty_like(frames)
    for t in range(t_total):
        res = detector(frames[t], detect_resolution=min(h, w), image_resolution=min(h, w), output_type="np")
        out[t] = cv2.resize(np.asarray(res, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        if progress is not None:
            progress((t + 1) / t_total, f"openpose {t + 1}/{t_total}")
    return out, {"backend": "controlnet-aux", "note": "no temporal interpolation in this backend"}
