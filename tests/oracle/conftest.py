"""Oracle tests: Lightricks' own ltx-core / ltx-pipelines (PyPI, installed with --no-deps from
requirements-oracle.txt) judge our loading and sampling on tiny weights.

They are never skipped: without ltx-core every oracle test FAILS with the install line. The one torchaudio import
of ltx-core is served by a stand-in only when torchaudio cannot be imported (tests/oracle/ltx_env.py explains
why that is honest), and the tiny model's Gemma widths are swapped into ltx-core's hard-coded Gemma 3 12B config
only while the tiny model is built or run by it (tests/oracle/official.py).
"""
from __future__ import annotations

import pytest

from tests.oracle.ltx_env import import_ltx

try:
    import_ltx()
    LTX_IMPORT_ERROR = None
except ImportError as exc:  # reported by every oracle test, below
    LTX_IMPORT_ERROR = str(exc)


@pytest.fixture(autouse=True)
def _require_ltx():
    if LTX_IMPORT_ERROR:
        pytest.fail(LTX_IMPORT_ERROR, pytrace=False)


@pytest.fixture(scope="session")
def official_models_dir(tmp_path_factory):
    """A models folder with an official single-file LTX-2.3 checkpoint built and written by ltx-core's classes
    (tiny config, seed 0), the tiny Gemma folder and a spatial upsampler; no config folder."""
    from tests.oracle.official import write_models_dir

    return write_models_dir(tmp_path_factory.mktemp("official-models"))


@pytest.fixture(scope="session")
def official_checkpoint(official_models_dir):
    return official_models_dir / "ltx-2.3-22b-distilled-1.1.safetensors"


@pytest.fixture(scope="session")
def ltx_components():
    """The same components as in the checkpoint, as ltx-core modules (float32, CPU)."""
    from tests.oracle.official import TINY_LTX23_CONFIG, build_ltx_components

    return build_ltx_components(TINY_LTX23_CONFIG, seed=0)


@pytest.fixture(scope="session")
def official_loaded(official_models_dir):
    """Our loader's LoadedModel for the official checkpoint, in float32 (registry -> ModelCache)."""
    import torch

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import get_spec

    return ModelCache(dtype=torch.float32).get(get_spec("ltx-2.3-distilled", official_models_dir))
