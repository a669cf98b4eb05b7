"""Shared fixtures. Environment is set before anything imports huggingface_hub or gradio."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
os.environ.setdefault("no_proxy", "localhost,127.0.0.1")

import pytest  # noqa: E402

from tests.helpers import synthetic_video  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture
def make_video(tmp_path):
    """Factory: make_video(name, frames=..., width=..., height=..., fps=...) -> Path of an h264 mp4 with a
    moving textured pattern (deterministic)."""

    def _make(name="clip.mp4", **kw):
        return synthetic_video(tmp_path / name, **kw)

    return _make
