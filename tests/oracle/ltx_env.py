"""Making Lightricks' ltx-core / ltx-pipelines importable in the oracle tests, honestly.

ltx-core 1.0.0 declares `torchaudio`, and no torchaudio wheel matches torch 2.13 on these machines (SPEC.md 11).
Only `ltx_core/model/audio_vae/ops.py` imports it at module level, for `AudioProcessor` (waveform -> log-mel,
used when a pipeline ENCODES input audio). Generating video and audio never calls it. So, in the tests only and
only when `import torchaudio` fails, that one module is imported with a stand-in `torchaudio` whose every use raises
`TorchaudioStandInError` naming this file: an oracle test that reached audio input encoding would fail loudly,
never compute something else silently. The stand-in is in `sys.modules` only during that import (transformers is
imported first and keeps seeing torchaudio as missing); afterwards only `ltx_core.model.audio_vae.ops.torchaudio`
refers to it. With a real, working torchaudio installed nothing is replaced.

Nothing in pipelines/ or studio/ imports this module (or ltx-core).
"""
from __future__ import annotations

import sys
import types

STANDIN_ATTR = "__iclora_standin__"


class TorchaudioStandInError(RuntimeError):
    pass


class _Unavailable:
    """Any attribute or call on it raises: the stand-in can be imported, never used."""

    def __init__(self, name: str, reason: str):
        self._name, self._reason = name, reason

    def _fail(self):
        raise TorchaudioStandInError(
            f"{self._name} was used, but torchaudio is a test stand-in here ({self._reason}); see "
            "tests/oracle/ltx_env.py. Only ltx-core's audio INPUT encoding needs it.")

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}", self._reason)

    def __call__(self, *args, **kwargs):
        self._fail()


def install_torchaudio_standin() -> str | None:
    """Import ltx_core.model.audio_vae.ops with the stand-in if (and only if) the real torchaudio cannot be
    imported. Returns the reason the stand-in was used, or None when the real module is used."""
    ops = sys.modules.get("ltx_core.model.audio_vae.ops")
    if ops is not None:
        return getattr(getattr(ops, "torchaudio", None), STANDIN_ATTR, None)
    try:
        import torchaudio  # noqa: F401
        return None
    except Exception as exc:  # noqa: BLE001  missing (ImportError) or a C library that does not load (OSError)
        reason = f"import torchaudio failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    sys.modules.pop("torchaudio", None)
    import transformers  # noqa: F401  decides now, without the stand-in, that torchaudio is unavailable

    mod = types.ModuleType("torchaudio")
    mod.__doc__ = "Test stand-in for torchaudio (tests/oracle/ltx_env.py); every use raises."
    setattr(mod, STANDIN_ATTR, reason)
    mod.transforms = _Unavailable("torchaudio.transforms", reason)
    mod.functional = _Unavailable("torchaudio.functional", reason)
    sys.modules["torchaudio"] = mod
    try:
        import ltx_core.model.audio_vae.ops  # noqa: F401
    finally:
        if sys.modules.get("torchaudio") is mod:
            del sys.modules["torchaudio"]
    return reason


def import_ltx():
    """Import ltx_core and ltx_pipelines (stand-in first if needed). Raises ImportError with the install line
    when they are missing: the oracle tests then FAIL, they are never skipped."""
    try:
        install_torchaudio_standin()
        import ltx_core  # noqa: F401
        import ltx_pipelines  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the oracle tests need Lightricks' ltx-core and ltx-pipelines ({exc}); install them with "
            "`pip install --no-deps -r requirements-oracle.txt` (their real dependencies are in "
            "requirements-dev.txt)") from exc
    return sys.modules["ltx_core"], sys.modules["ltx_pipelines"]
