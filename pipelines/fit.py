"""Does a generation fit together? Sizes against the IC-LoRA's reference downscale factor, a mask against the
reference size, an output size against a source's aspect. Cheap checks (file headers only, no torch) that the
studio runs when a request is handed over or submitted, so a mismatch is refused at once instead of failing after
the job waited its turn in the queue. The numbers come from one place: the VAE's 32x spatial compression
(pipelines.masks.LATENT_SPATIAL) times D.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from pipelines.errors import UserError
from pipelines.masks import LATENT_SPATIAL


def size_multiple(downscale: int = 1) -> int:
    """Width and height must be multiples of this: 32 (the VAE) times the IC-LoRA's D."""
    return LATENT_SPATIAL * max(1, int(downscale))


def size_hint(downscale: int = 1) -> str:
    """The rule in words, as the size fields show it (the same number the errors use)."""
    m = size_multiple(downscale)
    if downscale > 1:
        return f"multiples of {m} ({LATENT_SPATIAL} x D={downscale} of this IC-LoRA); frames 8n+1"
    return f"multiples of {m}; frames 8n+1"


def _metadata(path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001  unreadable: precheck_loras says why
        return None


def is_ic_lora(path) -> bool:
    """Whether a LoRA file declares the IC-LoRA contract (a reference scale factor) in its metadata."""
    meta = _metadata(path) or {}
    return "reference_downscale_factor" in meta or "reference_temporal_scale_factor" in meta


def lora_downscale(paths) -> int:
    """The reference downscale factor D of a LoRA stack, from the files' metadata only (headers, no tensors):
    a file without the key has D = 1; the stack takes the factor that is not 1. Files that cannot be read are
    left to the full LoRA check (it names them)."""
    factors = set()
    for p in paths or []:
        meta = _metadata(p)
        if meta is None:
            continue
        raw = meta.get("reference_downscale_factor")
        try:
            d = int(float(raw)) if raw is not None else 1
        except ValueError:
            continue
        if d > 1:
            factors.add(d)
    if len(factors) > 1:
        raise UserError(f"the LoRAs use different reference downscale factors ({', '.join(map(str, sorted(factors)))})"
                        " and cannot be combined")
    return factors.pop() if factors else 1


def mask_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape of a mask .npy, read from its header."""
    import numpy as np

    try:
        return tuple(np.load(str(path), mmap_mode="r", allow_pickle=False).shape)
    except FileNotFoundError:
        raise UserError(f"mask {Path(path).name} does not exist (paint it again and press 'Use this mask')") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"mask {Path(path).name} is not a readable .npy mask ({exc})") from None


def check_mask(path, width: int, height: int, frames: int, downscale: int) -> None:
    """A mask must be (H/D, W/D) or (F or 1, H/D, W/D) for this output: UserError saying what to change."""
    shape = mask_shape(path)
    rh, rw = height // downscale, width // downscale
    name = Path(path).name
    if len(shape) not in (2, 3) or shape[-2:] != (rh, rw):
        got = "x".join(str(s) for s in shape[-2:][::-1]) if len(shape) >= 2 else str(shape)
        raise UserError(f"mask {name} is {got} px but this output ({width}x{height}, D={downscale}) needs a "
                        f"{rw}x{rh} mask: paint it at {width}x{height} with D={downscale} (Mask painter: "
                        "'Use the studio clip' takes the size from here)")
    if len(shape) == 3 and shape[0] not in (1, frames):
        raise UserError(f"mask {name} has {shape[0]} frames but the output has {frames}: set Frames to {frames} in "
                        "the Mask painter and use the mask again")


def check_request(request: dict) -> None:
    """The fit checks for a generate request dict: sizes for the IC-LoRA's D, the mask's shape."""
    loras = [lo.get("path") for lo in request.get("loras") or [] if isinstance(lo, dict) and lo.get("path")]
    d = lora_downscale(loras)
    try:
        w, h, f = int(request.get("width")), int(request.get("height")), int(request.get("frames"))
    except (TypeError, ValueError):
        return  # GenerateRequest.validate names the field
    if request.get("controls") and d > 1 and (w % size_multiple(d) or h % size_multiple(d)):
        raise UserError(f"{w}x{h} does not fit this IC-LoRA: with reference downscale factor D={d} width and height "
                        f"must be {size_hint(d)}")
    if request.get("mask") and request.get("controls"):
        check_mask(request["mask"], w, h, f, d if request.get("controls") else 1)


def fit_aspect(src_w: int, src_h: int, cur_w: int, cur_h: int, multiple: int) -> tuple[int, int]:
    """An output size on the ``multiple`` grid with the source's aspect (exact when the grid allows one within
    1/4..8x the current area), else the closest aspect in that range. Ties go to the size nearest the current area."""
    aspect = src_w / max(1, src_h)
    area = max(1, cur_w * cur_h)
    best, key = (cur_w, cur_h), None
    for h in range(multiple, 16 * multiple * max(1, int(math.sqrt(area) // multiple + 1)), multiple):
        for w in {max(multiple, math.floor(h * aspect / multiple) * multiple),
                  max(multiple, math.ceil(h * aspect / multiple) * multiple)}:
            a = w * h
            if not area / 4 <= a <= area * 8 or w > 2048 or h > 2048:
                continue
            k = (round(abs(math.log((w / h) / aspect)), 2), abs(math.log(a / area)))
            if key is None or k < key:
                best, key = (w, h), k
    return best


__all__ = ["size_multiple", "size_hint", "is_ic_lora", "lora_downscale", "mask_shape", "check_mask", "check_request", "fit_aspect"]
