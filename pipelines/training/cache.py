"""Preprocess once: conform each clip to its bucket, VAE-encode target and reference, encode the caption the
way LTX2InContextPipeline does (Gemma encode_prompt -> connectors), and cache one safetensors file per clip.

What the transformer needs is stored, nothing more: normalised target latents [C,F,h,w], normalised reference
latents [C,rF,rh,rw], the connectors' video and audio prompt embeddings and their attention mask. Files are
written atomically and carry a key (clip file, size, mtime, bucket, caption, reference, model); an existing
file with the same key is skipped, so an interrupted preprocess resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class CacheItem:
    """One cached clip: where its tensors are and what they are."""

    name: str
    path: str  # the .safetensors file
    caption: str
    width: int
    height: int
    frames: int
    fps: float
    reference: dict  # ReferenceAssignment.to_dict()

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def item_key(clip, caption: str, assignment, recipe, model_name: str) -> str:
    st = Path(clip.path).stat()
    payload = {"v": CACHE_VERSION, "clip": str(Path(clip.path).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
               "bucket": str(clip.bucket), "caption": caption, "ref": assignment.to_dict(),
               "D": recipe.reference_downscale_factor, "rf": recipe.reference_frames, "model": model_name}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _safe_stem(name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(name).stem)
    return stem or "clip"


def encode_video(pipe, frames: np.ndarray, device, dtype):
    """uint8 [T,H,W,3] -> normalised latents [C,F,h,w] float32 on CPU (argmax of the posterior, like the pipeline)."""
    import torch
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import retrieve_latents

    x = torch.from_numpy(np.array(frames, copy=True)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    x = x.to(device=device, dtype=pipe.vae.dtype)
    with torch.no_grad():
        lat = retrieve_latents(pipe.vae.encode(x), sample_mode="argmax")
        lat = pipe._normalize_latents(lat, pipe.vae.latents_mean, pipe.vae.latents_std)
    return lat[0].float().cpu()


def encode_caption(pipe, caption: str, max_sequence_length: int, device):
    """Caption -> (video embeds [L,Dv], audio embeds [L,Da], mask [L]) exactly as the pipeline's __call__ does."""
    import torch

    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(prompt=caption, negative_prompt=None, do_classifier_free_guidance=False,
                                                 num_videos_per_prompt=1, max_sequence_length=max_sequence_length,
                                                 device=device)
        video, audio, cmask = pipe.connectors(embeds, mask, padding_side=pipe.tokenizer_padding_side)
    return video[0].float().cpu(), audio[0].float().cpu(), cmask[0].float().cpu()


def _save_atomic(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cached_key(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # a torn or foreign file: re-encode it
        return None


def preprocess(report, assignments: dict, loaded, cache_dir: str | os.PathLike, recipe,
               on_item: Callable[[int, int, str, bool], None] | None = None) -> list[CacheItem]:
    """Encode every readable clip of `report` (with its reference from `assignments`) into cache_dir.

    on_item(i, total, name, skipped) reports progress. Returns the items in report order.
    """
    from pipelines.training.references import load_reference
    from pipelines.video_io import ConformTarget, conform_file

    if not report.clips:
        raise UserError("the dataset has no readable clips to train on")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    pipe, device, d = loaded.pipe, loaded.device, recipe.reference_downscale_factor
    items: list[CacheItem] = []
    used: set[str] = set()
    for i, clip in enumerate(report.clips):
        caption = clip.caption or ((f"{report.trigger} " if report.trigger else "") + recipe.default_caption)
        b = clip.bucket
        if b.width % (32 * d) or b.height % (32 * d):
            raise UserError(f"bucket {b} of {clip.name} is not a multiple of {32 * d} (needed for D={d})")
        assignment = assignments.get(clip.name)
        if assignment is None:
            raise UserError(f"no reference assigned to {clip.name}")
        stem = _safe_stem(clip.name)
        while stem in used:
            stem += "_"
        used.add(stem)
        path = cache_dir / f"{stem}.safetensors"
        key = item_key(clip, caption, assignment, recipe, loaded.spec.name)
        item = CacheItem(name=clip.name, path=str(path), caption=caption, width=b.width, height=b.height,
                         frames=b.frames, fps=float(clip.fps), reference=assignment.to_dict())
        skipped = path.exists() and _cached_key(path) == key
        if not skipped:
            frames, fps, rep = conform_file(clip.path, ConformTarget(width=b.width, height=b.height, frames=b.frames))
            item.fps = float(fps)
            ref = load_reference(assignment, frames=recipe.reference_frames, size=(b.width // d, b.height // d))
            video, audio, mask = encode_caption(pipe, caption, loaded.max_sequence_length, device)
            tensors = {"latents": encode_video(pipe, frames, device, loaded.dtype),
                       "ref_latents": encode_video(pipe, ref, device, loaded.dtype),
                       "prompt_embeds": video, "audio_prompt_embeds": audio, "prompt_mask": mask}
            meta = {"key": key, "item": json.dumps(item.to_dict()), "conform": rep.text() if rep.changes else ""}
            _save_atomic(path, tensors, meta)
        if on_item is not None:
            on_item(i + 1, len(report.clips), clip.name, skipped)
        items.append(item)
    return items


def load_item(item: CacheItem) -> dict:
    from safetensors.torch import load_file

    return load_file(item.path)


def free_encoders(loaded) -> None:
    """Training needs only the transformer: move the text encoder and VAE off the GPU (no-op on CPU).
    Validation samples move them back for the few seconds they run (pipelines.training.trainer)."""
    if loaded.device == "cpu":
        return
    import torch

    for name in ("text_encoder", "vae", "audio_vae", "vocoder"):
        mod = getattr(loaded.pipe, name, None)
        if mod is not None:
            mod.to("cpu")
    torch.cuda.empty_cache()


def load_encoders(loaded, text: bool = True) -> None:
    """Bring the encoders back to the GPU. text=False leaves the text encoder parked in CPU memory (the
    engine brings it in per new prompt by itself: pipelines.sampler.engine.Engine.encode_prompt)."""
    if loaded.device == "cpu":
        return
    for name in ("text_encoder", "vae", "audio_vae", "vocoder"):
        if name == "text_encoder" and not text:
            continue
        mod = getattr(loaded.pipe, name, None)
        if mod is not None:
            mod.to(loaded.device)


__all__ = ["CacheItem", "preprocess", "load_item", "free_encoders", "load_encoders", "encode_video", "encode_caption"]
