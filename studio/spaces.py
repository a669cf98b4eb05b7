"""Hugging Face Spaces: detection, the spaces.GPU wrapper, and defaults sized to ZeroGPU.

On ZeroGPU the GPU exists only inside a ``@spaces.GPU`` call (capped duration, per-visitor quota), never in a
background thread. So on ZeroGPU a generation runs inside the request's own call (``JobManager.run_now``
wrapped with ``gpu_wrap``) and long LoRA training is not offered. Everywhere else ``gpu_wrap`` returns the
function unchanged and ``spaces`` is never imported.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

F = TypeVar("F", bound=Callable)

ZEROGPU_VRAM_GB = 70          # what a ZeroGPU slice offers (an H200 half)
ZEROGPU_MAX_DURATION_S = 300  # per-call cap we size requests to
TRAINING_UNAVAILABLE = ("LoRA training is not available on ZeroGPU: the GPU exists only for a few minutes inside "
                        "each request, and training needs it for much longer. Duplicate this Space to a "
                        "dedicated GPU, or run the studio on your own machine (`python app.py`) to train.")

SPACES_README_FRONT_MATTER = """---
title: IC-LoRA Studio
emoji: 🎬
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: 6.31.0
python_version: "3.11"
app_file: app.py
pinned: false
license: apache-2.0
short_description: In-Context LoRAs for LTX-2.3 video (generate, control, train)
---
"""


def on_spaces(env: dict | None = None) -> bool:
    """True when running on Hugging Face Spaces (SYSTEM == "spaces" and a SPACE_ID)."""
    env = os.environ if env is None else env
    return env.get("SYSTEM") == "spaces" and bool(env.get("SPACE_ID"))


def on_zero_gpu(env: dict | None = None) -> bool:
    """True on a ZeroGPU Space (SPACES_ZERO_GPU == "true")."""
    env = os.environ if env is None else env
    return on_spaces(env) and str(env.get("SPACES_ZERO_GPU", "")).lower() == "true"


def training_available(env: dict | None = None) -> tuple[bool, str]:
    """(available, reason): the training tab shows ``reason`` and disables itself when not available."""
    if on_zero_gpu(env):
        return False, TRAINING_UNAVAILABLE
    return True, ""


def gpu_wrap(fn: F, duration: int = ZEROGPU_MAX_DURATION_S, env: dict | None = None) -> F:
    """``spaces.GPU(duration=duration)(fn)`` on Spaces, ``fn`` itself elsewhere (``spaces`` imported lazily:
    it must be imported before anything touches CUDA, which on Spaces the caller arranges by calling this at
    app build time)."""
    if not on_spaces(env):
        return fn
    import spaces  # noqa: PLC0415  only on Spaces

    return spaces.GPU(duration=int(min(duration, ZEROGPU_MAX_DURATION_S)))(fn)


@dataclass(frozen=True)
class RequestLimits:
    """Upper bounds the UI and API apply to one request on this host."""

    max_width: int
    max_height: int
    max_frames: int
    max_steps: int
    default_tier: str
    vram_gb: float | None
    max_duration_s: int | None
    queue_max_size: int | None
    training: bool

    def to_dict(self) -> dict:
        return asdict(self)


def default_limits(env: dict | None = None) -> RequestLimits:
    """Request limits for this host. ZeroGPU: 70 GB and 300 s per call, so a 22B distilled run at 768x512 x
    121 frames (about 1-2 min on an H200 slice) fits; larger sizes are refused up front rather than killed
    at the time cap. Other Spaces hardware and local runs are bounded only by the model."""
    if on_zero_gpu(env):
        return RequestLimits(max_width=1024, max_height=1024, max_frames=121, max_steps=40, default_tier="fp8",
                             vram_gb=ZEROGPU_VRAM_GB, max_duration_s=ZEROGPU_MAX_DURATION_S, queue_max_size=20,
                             training=False)
    return RequestLimits(max_width=2048, max_height=2048, max_frames=257, max_steps=200, default_tier="auto",
                         vram_gb=None, max_duration_s=None, queue_max_size=None, training=True)


def check_limits(request: dict, limits: RequestLimits) -> None:
    """UserError when a GenerateRequest dict exceeds ``limits`` (says which field and the bound)."""
    from pipelines.errors import UserError

    for field, bound in (("width", limits.max_width), ("height", limits.max_height), ("frames", limits.max_frames)):
        v = request.get(field)
        if isinstance(v, int) and v > bound:
            raise UserError(f"{field}={v} is over this host's limit of {bound}"
                            + (" (ZeroGPU: 300 s per call)" if limits.max_duration_s else ""))
    steps = request.get("steps")
    if request.get("schedule") == "full" and isinstance(steps, int) and steps > limits.max_steps:
        raise UserError(f"steps={steps} is over this host's limit of {limits.max_steps}")
