"""Gray depth from Depth-Anything-V2 (transformers, local folder only), normalised over the whole clip.

Why the whole clip: per-frame min/max makes the gray levels pump as objects enter and leave (flicker), and
the Union IC-LoRA was trained on Video-Depth-Anything renders, which are temporally consistent. Depth-Anything
predicts relative inverse depth (disparity), so near is bright; metric checkpoints are flipped to match.

Frames are resized and normalised in torch (on the GPU when there is one) with the numbers from the folder's
preprocessor_config.json, so a batch of frames never round-trips through PIL.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipelines.control.types import DepthNormalize, DepthOptions, ProgressFn
from pipelines.errors import UserError

log = logging.getLogger(__name__)

# One loaded model at a time: (folder, device) -> (model, processor). Loading is the slow part of a short clip.
_CACHE: dict[tuple[str, str], tuple] = {}


def pick_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {requested!r} was asked for but CUDA is not available here; use --device cpu")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_depth_model(folder: Path, device: str):
    """(model, processor) from a local transformers folder; never touches the network."""
    key = (str(Path(folder).resolve()), device)
    if key in _CACHE:
        return _CACHE[key]
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    try:
        processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"could not load a depth model from {folder}: {exc}. The folder must be a transformers "
                        f"export such as depth-anything/Depth-Anything-V2-Small-hf (config.json, model.safetensors, "
                        f"preprocessor_config.json)") from None
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    _CACHE.clear()
    _CACHE[key] = (model, processor)
    return model, processor


def clear_cache() -> None:
    _CACHE.clear()


def _multiple(val: float, multiple: int, min_val: int = 0) -> int:
    x = int(round(val / multiple) * multiple)
    if x < min_val:
        x = int(np.ceil(val / multiple) * multiple)
    return max(x, multiple)


def model_input_size(processor, height: int, width: int) -> tuple[int, int]:
    """The (h, w) the processor would resize to: DPT's keep-aspect-ratio / multiple-of-14 rule."""
    size = getattr(processor, "size", None) or {"height": 518, "width": 518}
    th = size["height"] if isinstance(size, dict) else size.height
    tw = size["width"] if isinstance(size, dict) else size.width
    multiple = int(getattr(processor, "ensure_multiple_of", 1) or 1)
    sh, sw = th / height, tw / width
    if getattr(processor, "keep_aspect_ratio", False):
        # DPT scales by the factor closer to 1 on both axes
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh
    return _multiple(sh * height, multiple), _multiple(sw * width, multiple)


def preprocess(batch: np.ndarray, processor, device: str, dtype):
    """uint8 [B,H,W,3] RGB -> normalised float [B,3,h,w] on `device`, like the processor but in torch."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float()
    if getattr(processor, "do_resize", True):
        h, w = model_input_size(processor, x.shape[2], x.shape[3])
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255)
    if getattr(processor, "do_rescale", True):
        x = x * float(getattr(processor, "rescale_factor", 1 / 255))
    if getattr(processor, "do_normalize", True):
        mean = torch.tensor(list(processor.image_mean), device=device).view(1, 3, 1, 1)
        std = torch.tensor(list(processor.image_std), device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(dtype)


def clip_range(depth, options: DepthOptions) -> tuple[float, float]:
    """Low/high over the WHOLE clip (callers pass a strided sample; plenty for percentiles)."""
    arr = depth.numpy() if hasattr(depth, "numpy") else np.asarray(depth)
    if DepthNormalize(options.normalize) is DepthNormalize.MINMAX:
        return float(arr.min()), float(arr.max())
    lo, hi = np.percentile(arr, options.percentiles)
    return float(lo), float(hi)


def run_depth(frames: np.ndarray, options: DepthOptions, weights_dir: Path, progress: ProgressFn | None = None) -> tuple[np.ndarray, dict]:
    """uint8 [T,H,W,3] RGB -> uint8 [T,H,W,3] gray depth (near = white unless inverted), plus details."""
    import torch
    import torch.nn.functional as F

    device = pick_device(options.device)
    model, processor = load_depth_model(weights_dir, device)
    dtype = next(model.parameters()).dtype
    t, h, w = frames.shape[:3]
    raw = []
    with torch.inference_mode():
        for start in range(0, t, options.batch_size):
            x = preprocess(frames[start:start + options.batch_size], processor, device, dtype)
            pred = model(pixel_values=x).predicted_depth
            if pred.ndim == 4:
                pred = pred[:, 0]
            raw.append(pred.float().cpu())
            if progress is not None:
                progress(0.9 * min(t, start + options.batch_size) / t, f"depth {min(t, start + options.batch_size)}/{t}")
    depth = torch.cat(raw)  # [T,h,w] at model resolution
    if getattr(model.config, "depth_estimation_type", "relative") == "metric":
        depth = -depth  # metric depth grows with distance; flip so near is bright like the relative models
    if options.smoothing > 0:
        for i in range(1, t):
            depth[i] = options.smoothing * depth[i - 1] + (1 - options.smoothing) * depth[i]
    def resized(start: int):
        d = depth[start:start + options.batch_size, None]
        return F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[:, 0]

    # pass 1: the clip's range at the output size (what the viewer sees spans exactly lo..hi)
    if DepthNormalize(options.normalize) is DepthNormalize.MINMAX:
        lo, hi = float("inf"), float("-inf")
        for start in range(0, t, options.batch_size):
            d = resized(start)
            lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
    else:
        step = max(1, int(np.sqrt(h * w / 250_000)))
        sample = torch.cat([resized(s)[:, ::step, ::step] for s in range(0, t, options.batch_size)])
        lo, hi = clip_range(sample, options)
    # pass 2: one linear map for every frame
    scale = 255.0 / (hi - lo) if hi > lo else 0.0  # a flat clip maps to black, not to noise
    out = np.empty((t, h, w, 3), np.uint8)
    for start in range(0, t, options.batch_size):
        g = ((resized(start) - lo) * scale).clamp_(0, 255)
        if options.invert:
            g = 255 - g
        out[start:start + len(g)] = g.round().to(torch.uint8).numpy()[..., None]
    if progress is not None:
        progress(1.0, "depth done")
    details = {"device": device, "model_input": list(model_input_size(processor, h, w)), "range": [lo, hi],
               "depth_estimation_type": getattr(model.config, "depth_estimation_type", "relative")}
    return out, details
