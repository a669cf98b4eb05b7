"""The oracle's own set-up: installed as documented, never skipped, the torchaudio stand-in honest."""
from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_installed_oracle_is_the_pinned_one():
    pins = dict(re.findall(r"^([a-z-]+)==([\w.]+)", (ROOT / "requirements-oracle.txt").read_text(), re.M))
    assert pins == {"ltx-core": "1.0.0", "ltx-pipelines": "1.0.0"}
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version


def test_readme_test_command_installs_the_oracle_and_ci_runs_it_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Run the tests", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert len(block.strip().splitlines()) == 1
    cmd = block.strip()
    assert "pip install --no-deps -r requirements-oracle.txt" in cmd and cmd.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmd in ci.splitlines()


def test_torchaudio_stand_in_only_where_ltx_core_imports_it_and_it_raises_on_use():
    from tests.oracle.ltx_env import STANDIN_ATTR, TorchaudioStandInError, install_torchaudio_standin

    reason = install_torchaudio_standin()
    ops = sys.modules["ltx_core.model.audio_vae.ops"]
    try:
        import torchaudio  # noqa: F401
        real = True
    except Exception:  # noqa: BLE001
        real = False
    if real:
        assert reason is None and not hasattr(ops.torchaudio, STANDIN_ATTR)
        return
    assert reason and "torchaudio" in reason
    assert "torchaudio" not in sys.modules  # only ltx-core's ops module holds it; transformers sees it missing
    from transformers.utils import is_torchaudio_available

    assert not is_torchaudio_available()
    with pytest.raises(TorchaudioStandInError, match="tests/oracle/ltx_env.py"):
        ops.AudioProcessor(target_sample_rate=16000, mel_bins=64, mel_hop_length=160, n_fft=1024)


def test_oracle_tests_fail_rather_than_skip_without_ltx_core(tmp_path):
    """With ltx_core made unimportable, an oracle test errors in its set-up, which fails the run (exit code 1),
    with the install line; it is not skipped and does not pass."""
    import subprocess

    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "ltx_core.py").write_text("raise ImportError('ltx_core hidden by the test')\n")
    test = ROOT / "tests" / "oracle" / "test_oracle_setup.py::test_installed_oracle_is_the_pinned_one"
    env = dict(__import__("os").environ, PYTHONPATH=f"{hide}:{ROOT}")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert ("1 error" in r.stdout or "1 failed" in r.stdout) and "skipped" not in r.stdout and "passed" not in r.stdout
    assert "requirements-oracle.txt" in r.stdout
