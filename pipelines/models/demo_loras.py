"""Demo IC-LoRAs for the built-in tiny model, so every tab reaches a finished video on a fresh machine.

They are random weights in the OFFICIAL LoRA file format (SPEC.md 4): safetensors, PEFT keys
``diffusion_model.transformer_blocks.N.<module>.lora_A.weight`` / ``lora_B.weight`` on the video branch, alpha
equal to rank (nothing to fold), and the IC-LoRA contract in the metadata (``reference_downscale_factor``). They
exercise exactly the code a real Union-Control / Motion-Track / face IC-LoRA goes through (reading, validation,
D=2 reference sizing, loading into the transformer), and they are labelled as what they are: demo files with
random weights, whose output on the tiny model is noise like everything else it makes.

Built from code and a seed at first start (never downloaded), written atomically, rebuilt only when missing or
from an older version of this module. numpy + safetensors only: no torch import at start-up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.models.tiny import TINY_HEAD_DIM, TINY_HEADS, TINY_LAYERS

DEMO_VERSION = "1"
DEMO_KEY = "studio_demo"  # metadata key every demo file carries (its value says what the file is)
DEMO_RANK = 4
# The video-branch modules an IC-LoRA trains (SPEC.md 8), with (in, out) features on the tiny transformer:
# attention width = heads x head dim, feed-forward inner width 4x (diffusers' FeedForward default).
_INNER = TINY_HEADS * TINY_HEAD_DIM
TINY_TARGETS = {
    "attn1.to_q": (_INNER, _INNER), "attn1.to_k": (_INNER, _INNER), "attn1.to_v": (_INNER, _INNER),
    "attn1.to_out.0": (_INNER, _INNER),
    "attn2.to_q": (_INNER, _INNER), "attn2.to_k": (_INNER, _INNER), "attn2.to_v": (_INNER, _INNER),
    "attn2.to_out.0": (_INNER, _INNER),
    "ff.net.0.proj": (_INNER, 4 * _INNER), "ff.net.2": (4 * _INNER, _INNER),
}


@dataclass(frozen=True)
class DemoLora:
    key: str          # "union-control"
    title: str        # what a person reads in a dropdown
    purpose: str      # "union" | "motion_track" | "face" | "detailer": which tab defaults to it
    downscale: int    # reference_downscale_factor (D) written in the metadata
    seed: int

    @property
    def file_name(self) -> str:
        return f"demo-{self.key}-tiny.safetensors"

    @property
    def label(self) -> str:
        return f"demo · {self.title} (random weights, tiny model, D={self.downscale})"


DEMO_LORAS = (
    DemoLora("union-control", "Union control", "union", 2, seed=101),   # like LTX-2.3 Union-Control: D=2
    DemoLora("motion-track", "Motion track", "motion_track", 2, seed=102),  # like LTX-2.3 Motion-Track: D=2
    DemoLora("face", "Face identity", "face", 1, seed=103),             # what the Face trainer makes: D=1
    DemoLora("detailer", "Detailer", "detailer", 2, seed=104),          # the upscale pass's Detailer: video at 1/2
)


def demo_tensors(demo: DemoLora, rank: int = DEMO_RANK) -> dict:
    """{official key: float32 array} for every target module of every tiny block, deterministic for the seed.
    lora_A ~ N(0, 1/in), lora_B ~ N(0, 0.05^2): an update small enough to keep activations finite."""
    import numpy as np

    rng = np.random.default_rng(demo.seed)
    out = {}
    for block in range(TINY_LAYERS):
        for mod, (fan_in, fan_out) in TINY_TARGETS.items():
            name = f"diffusion_model.transformer_blocks.{block}.{mod}"
            out[f"{name}.lora_A.weight"] = (rng.standard_normal((rank, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
            out[f"{name}.lora_B.weight"] = (rng.standard_normal((fan_out, rank)) * 0.05).astype(np.float32)
    return out


def demo_metadata(demo: DemoLora, rank: int = DEMO_RANK) -> dict[str, str]:
    return {
        "reference_downscale_factor": str(demo.downscale),
        DEMO_KEY: f"{demo.title} demo for the built-in tiny model: random weights, output is noise",
        "demo_version": DEMO_VERSION, "demo_purpose": demo.purpose, "base_model": "tiny",
        "rank": str(rank), "alpha": str(rank), "format": "ltx-2.3 ic-lora (official / ComfyUI keys)",
    }


def _current(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return (f.metadata() or {}).get("demo_version") == DEMO_VERSION
    except Exception:  # noqa: BLE001  a truncated or foreign file: rebuild it
        return False


def build_demo_lora(demo: DemoLora, folder: str | os.PathLike) -> Path:
    """The demo file in ``folder``, written (atomically) unless an up-to-date one is there."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    path = folder / demo.file_name
    if path.is_file() and _current(path):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{demo.file_name}.{os.getpid()}.tmp"
    try:
        save_file(demo_tensors(demo), str(tmp), metadata=demo_metadata(demo))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_demo_loras(folder: str | os.PathLike) -> dict[str, Path]:
    """{key: path} of every demo IC-LoRA, built in ``folder`` when missing."""
    return {d.key: build_demo_lora(d, folder) for d in DEMO_LORAS}


def demo_for(path: str | os.PathLike | None) -> DemoLora | None:
    """The DemoLora a file is (by its name and its metadata), or None for any other file."""
    if not path:
        return None
    p = Path(path)
    for d in DEMO_LORAS:
        if p.name == d.file_name and p.is_file() and _current(p):
            return d
    return None


__all__ = ["DEMO_LORAS", "DEMO_KEY", "DemoLora", "TINY_TARGETS", "build_demo_lora", "build_demo_loras", "demo_for",
           "demo_metadata", "demo_tensors"]
