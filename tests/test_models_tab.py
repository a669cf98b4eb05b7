"""The Models tab: the official files and what each is for, and the Download job (a child process that talks to
a local server laid out like the Hub; the studio process stays offline)."""
from __future__ import annotations

import threading

import pytest

from tests.hub_server import FakeHub
from tests.test_download import CKPT, TOKEN, UPS, _blob


class FakeJob:
    """The part of studio.jobs.JobContext a job function uses."""

    def __init__(self, out_dir, cancel_after: int | None = None):
        self.out_dir = str(out_dir)
        self.events: list[tuple[float, str]] = []
        self._cancel = threading.Event()
        self.cancel_after = cancel_after

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_cancelled(self):
        from studio.jobs import JobCancelled

        if self.cancelled:
            raise JobCancelled("cancelled")

    def progress(self, fraction, message=None, preview=None):
        self.events.append((fraction, message or ""))
        if self.cancel_after is not None and len(self.events) >= self.cancel_after:
            self._cancel.set()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    repos = {"Lightricks/LTX-2.3": {CKPT: _blob(8_000_000, 1), UPS: _blob(100_000, 2)},
             "google/gemma-3-12b-it-qat-q4_0-unquantized": {"config.json": b"{}", "model.safetensors": _blob(1000, 3)}}
    with FakeHub(repos, gated={"google/gemma-3-12b-it-qat-q4_0-unquantized": TOKEN}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)  # the child process inherits it
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        server.repos = repos
        yield server


def test_download_job_plans_then_downloads_in_a_child_process(hub, tmp_path):
    import os

    from studio.kinds.download import download_request, run_download_job
    from studio.tabs.models import plan_rows

    models = tmp_path / "models"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # this (studio) process stays offline
    req = download_request("distilled", ["distilled-1.0"], TOKEN, plan_only=True)
    assert TOKEN not in str(req) and req["files"] == ["distilled-1.0"] and req["token_ref"]
    job = FakeJob(tmp_path / "job1")
    res = run_download_job(download_request("distilled", [], TOKEN, plan_only=True), job, models)
    rows = plan_rows(res["plan"])
    assert [r[1] for r in rows][:2] == [CKPT, UPS] and all(r[4] == "to download" for r in rows)
    assert not models.exists() or not any(models.iterdir())  # a plan writes nothing
    job = FakeJob(tmp_path / "job2")
    res = run_download_job(download_request("distilled", [], TOKEN, plan_only=False), job, models)
    assert (models / CKPT).read_bytes() == hub.repos["Lightricks/LTX-2.3"][CKPT]
    assert (models / "gemma-3-12b-it" / "model.safetensors").is_file() and len(res["files"]) == 4
    fractions = [f for f, _ in job.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 3
    assert any("plan: 4 of 4 files" in m for _, m in job.events)


def test_download_job_reports_the_gated_repo_and_cancels(hub, tmp_path):
    from pipelines.errors import UserError
    from studio.jobs import JobCancelled
    from studio.kinds.download import download_request, run_download_job

    models = tmp_path / "models"
    with pytest.raises(UserError, match="is gated: accept its licence"):
        run_download_job(download_request("distilled", [], None, plan_only=True), FakeJob(tmp_path / "j"), models)
    with pytest.raises(UserError, match="no models folder"):
        run_download_job(download_request("distilled", [], None, plan_only=True), FakeJob(tmp_path / "j"), None)
    job = FakeJob(tmp_path / "j3", cancel_after=3)
    with pytest.raises(JobCancelled):
        run_download_job({"variant": None, "files": ["distilled-1.1"], "plan_only": False}, job, models)


def test_models_tab_lists_every_official_file_with_its_purpose(tmp_path):
    from studio.tabs.models import catalog_rows

    (tmp_path / CKPT).write_bytes(b"x")
    rows = {r[0]: r for r in catalog_rows(tmp_path)}
    for name in ("ltx-2.3-22b-dev.safetensors", "ltx-2.3-22b-distilled.safetensors", CKPT,
                 "ltx-2.3-22b-distilled-fp8.safetensors", "ltx-2.3-22b-dev-fp8.safetensors",
                 "ltx-2.3-spatial-upscaler-x2-1.0.safetensors", UPS, "ltx-2.3-temporal-upscaler-x2-1.0.safetensors",
                 "ltx-2.3-22b-distilled-lora-384-1.1.safetensors", "gemma-3-12b-it"):
        assert name in rows and rows[name][4], name
    assert rows[CKPT][3] == "here" and rows["ltx-2.3-22b-dev.safetensors"][3] == "—"
    assert rows["ltx-2.3-22b-distilled-fp8.safetensors"][1] == "Lightricks/LTX-2.3-fp8"


def test_download_requests_are_checked_at_submit(tmp_path):
    from types import SimpleNamespace

    from pipelines.errors import UserError
    from studio.kinds.download import check_download, download_request

    from studio.context import StudioConfig

    ctx = SimpleNamespace(models_dir=tmp_path, config=StudioConfig())
    req = download_request("dev", ["temporal-upscaler-x2-1.0", "dev"], None, plan_only=False)
    assert req["files"] == ["temporal-upscaler-x2-1.0"] and req["token_ref"] is None  # "dev" is in the set
    assert check_download(ctx, "local", req) is req
    for bad, msg in (({"variant": "huge"}, "unknown set"), ({"variant": None, "files": ["nope"]}, "unknown files"),
                     ({"variant": None, "files": []}, "nothing to download")):
        with pytest.raises(UserError, match=msg):
            check_download(ctx, "local", bad)
    with pytest.raises(UserError, match="no models folder"):
        check_download(SimpleNamespace(models_dir=None, config=StudioConfig()), "local", req)
    # on a shared studio (--auth) only the admins may fill the models folder everyone uses
    shared = SimpleNamespace(models_dir=tmp_path, config=StudioConfig(auth_file="users.json", admins=("alice",)))
    assert check_download(shared, "alice", req) is req
    with pytest.raises(UserError, match="only its admins"):
        check_download(shared, "bob", req)
