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
# files the studio rebuilds from code (the demo IC-LoRAs) go to a test cache, not the user's ~/.cache
os.environ.setdefault("ICLORA_CACHE_DIR", os.path.join(__import__("tempfile").gettempdir(), "iclora-studio-test-cache"))

import pytest  # noqa: E402

from tests.helpers import synthetic_video  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture
def make_video(tmp_path):
    """Factory: make_video(name, frames=..., width=..., height=..., fps=...) -> Path of an h264 mp4 with a
    moving textured pattern (deterministic)."""

    def _make(name="clip.mp4", **kw):
        return synthetic_video(tmp_path / name, **kw)

    return _make


# ---------------------------------------------------------------- the tiny model, the app, a client, a browser

@pytest.fixture(scope="session")
def tiny_model():
    """The tiny LTX-2.3 stack loaded once per session (LoadedModel)."""
    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import tiny_spec

    return ModelCache().get(tiny_spec())


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    from pipelines.sampler.engine import Engine

    return Engine(tiny_model)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory):
    """The studio launched once per session on a free port (tiny model, temp outputs). Yields (url, ctx, demo)."""
    from studio.app import launch
    from studio.context import StudioConfig

    out = tmp_path_factory.mktemp("studio-outputs")
    cfg = StudioConfig(outputs_dir=str(out), port=_free_port())
    demo, ctx = launch(cfg, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{cfg.port}/"
    yield url, ctx, demo
    demo.close()
    ctx.jobs.shutdown(timeout=5)


@pytest.fixture(scope="session")
def studio_client(studio_server):
    from gradio_client import Client

    url, _, _ = studio_server
    return Client(url, download_files=False, verbose=False)


ARTIFACTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian Chromium through Playwright (no browser download). Skips when chromium is missing."""
    import shutil

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(exe):
        pytest.skip("chromium not installed (apt-get install chromium)")
    pw_mod = pytest.importorskip("playwright.sync_api")
    home = tmp_path_factory.mktemp("chromium-home")
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    pw = pw_mod.sync_playwright().start()
    ctx = pw.chromium.launch_persistent_context(
        str(home / "profile"), executable_path=exe, env=env, viewport={"width": 1400, "height": 1000},
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    yield ctx
    ctx.close()
    pw.stop()


@pytest.fixture
def page(browser):
    p = browser.new_page()
    yield p
    p.close()


def screenshot(page, name: str):
    """Save a full-page screenshot as a test artifact (artifacts/NAME.png) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
