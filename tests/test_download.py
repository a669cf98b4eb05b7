"""Getting the weights: the plan, the download, resuming, the gated Gemma repo, the disk check, the CLI, against a
local HTTP server laid out like the Hub (tests/hub_server.py; HF_ENDPOINT points at it). Never the network."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_server import FakeHub

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_test_token"
CKPT = "ltx-2.3-22b-distilled-1.1.safetensors"
UPS = "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"


def _blob(n: int, seed: int) -> bytes:
    out, h = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub with the files of --variant distilled (small stand-in contents), the Gemma repo gated."""
    from huggingface_hub import constants

    repos = {
        "Lightricks/LTX-2.3": {CKPT: _blob(3_000_000, 1), UPS: _blob(200_000, 2), "README.md": b"# LTX-2.3\n"},
        "google/gemma-3-12b-it-qat-q4_0-unquantized": {
            "config.json": b'{"model_type": "gemma3"}', "model-00001-of-00001.safetensors": _blob(500_000, 3),
            "tokenizer.json": b"{}", ".gitattributes": b"*.safetensors filter=lfs\n"},
    }
    with FakeHub(repos, gated={"google/gemma-3-12b-it-qat-q4_0-unquantized": TOKEN}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests run offline; this server is local
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # several progress updates per file
        server.repos = repos
        yield server


def test_plan_lists_repo_file_size_and_destination(hub, tmp_path):
    from pipelines.models.download import plan_download

    plan = plan_download(tmp_path / "models", "distilled", token=TOKEN)
    rows = {(f.repo, f.filename): f for f in plan.files}
    ck = rows[("Lightricks/LTX-2.3", CKPT)]
    assert ck.size == 3_000_000 and ck.dest == str(tmp_path / "models" / CKPT) and ck.remaining == ck.size
    assert ("Lightricks/LTX-2.3", "README.md") not in rows  # only the files of the selection
    gemma = [f for f in plan.files if f.repo.startswith("google/")]
    assert sorted(Path(f.dest).relative_to(tmp_path / "models").as_posix() for f in gemma) == [
        "gemma-3-12b-it/config.json", "gemma-3-12b-it/model-00001-of-00001.safetensors",
        "gemma-3-12b-it/tokenizer.json"]  # the whole repo but .gitattributes, into our folder name
    assert all(f.gated for f in gemma)
    assert plan.needed_bytes == plan.total_bytes == 3_000_000 + 200_000 + 500_000 + 24 + 2
    d = plan.to_dict()
    assert d["fits"] and d["files"][0].keys() >= {"repo", "file", "size", "dest"}
    assert not any(e["method"] == "GET" and "/resolve/" in e["path"] for e in hub.log)  # a plan downloads nothing


def test_download_writes_every_file_and_the_models_folder_is_then_ready(hub, tmp_path):
    from pipelines.models.download import download, plan_download
    from pipelines.models.registry import discover

    models = tmp_path / "models"
    seen = []
    paths = download(plan_download(models, "distilled", token=TOKEN), token=TOKEN,
                     progress=lambda done, total, msg: seen.append((done, total)))
    assert (models / CKPT).read_bytes() == hub.repos["Lightricks/LTX-2.3"][CKPT]
    assert (models / "gemma-3-12b-it" / "config.json").is_file() and len(paths) == 5
    assert not list(models.rglob("*.part"))
    assert seen[-1][0] == seen[-1][1] == 3_700_026 and len(seen) > 10
    assert all(e["auth"] == f"Bearer {TOKEN}" for e in hub.log if "gemma" in e["path"])
    spec = {s.name: s for s in discover(models)}["ltx-2.3-distilled"]
    assert spec.component("checkpoint").found and spec.component("text_encoder").found
    # A second run finds everything complete and transfers nothing.
    hub.log.clear()
    again = plan_download(models, "distilled", token=TOKEN)
    assert again.needed_bytes == 0 and all(f.complete for f in again.files)
    download(again, token=TOKEN)
    assert not any(e["method"] == "GET" and "/resolve/" in e["path"] for e in hub.log)


def test_an_interrupted_download_continues_with_a_range_request(hub, tmp_path):
    """A cancel mid-file keeps `<file>.part`; the next run asks only for the rest (HTTP Range) and the result is
    byte-identical (size and the LFS sha256 checked)."""
    from pipelines.errors import Cancelled
    from pipelines.models.download import download, plan_download

    models = tmp_path / "models"
    calls = []

    def cancel_after_some():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        download(plan_download(models, None, ["distilled-1.1"]), progress=lambda *a: None,
                 should_cancel=cancel_after_some)
    part = models / (CKPT + ".part")
    kept = part.stat().st_size
    assert 0 < kept < 3_000_000 and not (models / CKPT).exists()
    plan = plan_download(models, None, ["distilled-1.1"])
    assert plan.files[0].present == kept and plan.needed_bytes == 3_000_000 - kept
    hub.log.clear()
    download(plan)
    assert hub.ranges(CKPT) == [f"bytes={kept}-"]
    assert (models / CKPT).read_bytes() == hub.repos["Lightricks/LTX-2.3"][CKPT] and not part.exists()


def test_a_corrupt_partial_file_is_detected_and_removed(hub, tmp_path):
    from pipelines.errors import UserError
    from pipelines.models.download import download, plan_download

    models = tmp_path / "models"
    models.mkdir()
    (models / (CKPT + ".part")).write_bytes(b"\0" * 1000)  # not the first 1000 bytes of the file
    with pytest.raises(UserError, match="corrupt.*removed"):
        download(plan_download(models, None, ["distilled-1.1"]))
    assert not (models / CKPT).exists() and not (models / (CKPT + ".part")).exists()


def test_the_gated_gemma_repo_without_a_token_is_a_clear_401_message(hub, tmp_path):
    from pipelines.errors import UserError
    from pipelines.models.download import plan_download

    with pytest.raises(UserError, match=r"gemma-3-12b-it-qat-q4_0-unquantized is gated: accept its licence at "
                                        r"https://huggingface.co/google/.*token"):
        plan_download(tmp_path / "models", "distilled")
    assert any(e["path"].startswith("/api/models/google/") for e in hub.log)
    with pytest.raises(UserError, match="refused the token"):
        plan_download(tmp_path / "models", "distilled", token="hf_wrong")


def test_refuses_before_any_transfer_when_the_disk_is_too_small(hub, tmp_path, monkeypatch):
    from pipelines.errors import UserError
    from pipelines.models import download as dl

    monkeypatch.setattr(dl, "disk_free", lambda path: 2_000_000)
    plan = dl.plan_download(tmp_path / "models", "distilled", token=TOKEN)
    assert not plan.fits and plan.to_dict()["fits"] is False
    with pytest.raises(UserError, match=r"not enough free disk space .* needs 0\.0 GB .* 0\.0 GB are free"):
        dl.download(plan, token=TOKEN)
    assert not any(e["method"] == "GET" and "/resolve/" in e["path"] for e in hub.log)


def test_offline_and_unreachable_hub_messages(monkeypatch, tmp_path):
    import socket

    from huggingface_hub import constants

    from pipelines.errors import UserError
    from pipelines.models.download import plan_download

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1"):
        plan_download(tmp_path, "distilled", token=TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}"):
        plan_download(tmp_path, "distilled", token=TOKEN)


def test_cli_models_download_plan_then_json_progress_then_models_finds_the_1_1_file(hub, tmp_path):
    models = tmp_path / "models"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "pipelines", "models"]
    r = subprocess.run(base + ["download", "--dir", str(models), "--plan"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "gated" in r.stderr  # no token: one line
    r = subprocess.run(base + ["download", "--dir", str(models), "--token", TOKEN, "--progress", "json"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "plan" and events[0]["needed_bytes"] == 3_700_026
    assert any(e["event"] == "progress" for e in events) and events[-1]["event"] == "done"
    r = subprocess.run(base + ["--models-dir", str(models)], env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    spec = next(m for m in out["models"] if m["name"] == "ltx-2.3-distilled")
    assert spec["ready"] and spec["path"].endswith(CKPT)
    files = {f["file"]: f for f in out["files"]}
    assert files[CKPT]["found"] and files[UPS]["found"] and not files["ltx-2.3-22b-dev.safetensors"]["found"]
    assert all(f["purpose"] for f in out["files"])
