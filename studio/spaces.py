"""Hugging Face Spaces: detection, the spaces.GPU wrapper, and defaults sized to ZeroGPU.

On ZeroGPU the GPU exists only inside a ``@spaces.GPU`` call (capped duration, per-visitor quota), never in a
background thread. So on ZeroGPU a generation runs inside the request's own call (``JobManager.run_now``
wrapped with ``gpu_wrap``) and long LoRA training is not offered. Everywhere else ``gpu_wrap`` returns the
function unchanged and ``spaces`` is never imported.
"""
from __future__ import annotations

import os
from collections.abc import Callable
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


def default_limits(env: dict | None = None):
    """The size limits of this host (pipelines.limits): the ZeroGPU profile on a ZeroGPU Space (70 GB and 300 s
    per call: larger sizes are refused up front rather than killed at the time cap), else the default ones."""
    from pipelines.limits import Limits, zero_gpu

    return zero_gpu() if on_zero_gpu(env) else Limits()


def check_limits(request: dict, limits) -> None:
    """UserError when a GenerateRequest dict exceeds ``limits`` (names the bound and how to change it)."""
    limits.check_generate(request)
