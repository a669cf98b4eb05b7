"""Executors without Ray: the in-process default, the retry of work whose worker is lost, the file transfer
helpers, the jobs table's new columns, and `python app.py` serving and generating with Ray unimportable."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studio.executors import Executor, InProcessExecutor, Update, WorkFn, WorkerLost
from studio.jobs import JobManager

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def manager(tmp_path):
    m = JobManager(tmp_path / "out", progress_interval=0.0)
    yield m
    m.shutdown(timeout=5)


def test_in_process_workfn_runs_in_the_lane_thread_and_records_where(manager):
    """The default executor runs the kind's own call in the gpu lane thread (as the studio always did)."""
    seen = {}

    def local(request, jc):
        seen["thread"] = threading.current_thread().name
        jc.progress(0.5, "half")
        return {"x": request["x"] * 2}

    manager.register("k", WorkFn("tests.workloads:wait_work", local=local), lane="gpu")
    job = manager.wait(manager.submit("alice", "k", {"x": 21}), timeout=10)
    assert job.status.value == "done" and job.result == {"x": 42}
    assert seen["thread"].startswith("jobs-gpu-") and job.worker == "in-process" and job.attempts == 1


def test_plain_job_functions_show_in_process(manager):
    manager.register("plain", lambda r, jc: {"ok": 1}, lane="light")
    job = manager.wait(manager.submit("bob", "plain", {}), timeout=10)
    assert job.status.value == "done" and job.worker == "in-process" and job.attempts == 1


def test_target_runs_by_name_when_no_local_call(manager):
    """A WorkFn without ``local`` imports its target by name (what a remote worker does) and passes the env."""
    manager.register("wait", WorkFn("tests.workloads:wait_work"), lane="gpu")
    job = manager.wait(manager.submit("carol", "wait", {"seconds": 0.1}), timeout=10)
    assert job.status.value == "done" and job.result["owner"] == "carol"
    assert Path(job.result["file"]).parent == Path(job.out_dir) and job.outputs == [job.result["file"]]


class FlakyExecutor(Executor):
    """Loses its worker ``lose`` times, then runs the work in-process; reports progress like a remote one."""

    name = "flaky"

    def __init__(self, lose: int):
        self.lose = lose
        self.submits = []
        self.cancels = 0

    def submit(self, work, jc):
        self.submits.append(work)
        return {"work": work, "n": len(self.submits), "polls": 0}

    def progress(self, ticket):
        ticket["polls"] += 1
        return [Update(fraction=0.25, message=f"remote step (try {ticket['n']})")]

    def cancel(self, ticket):
        self.cancels += 1

    def result(self, ticket, timeout=None):
        if ticket["polls"] < 2:
            time.sleep(min(timeout or 0, 0.01))
            raise TimeoutError
        if ticket["n"] <= self.lose:
            raise WorkerLost(f"w{ticket['n']} died", f"w{ticket['n']}")
        return {"done_on_try": ticket["n"]}

    def where(self, ticket):
        return f"w{ticket['n']}"


def test_a_lost_worker_reruns_the_work_once_elsewhere(tmp_path):
    ex = FlakyExecutor(lose=1)
    m = JobManager(tmp_path / "out", executor=ex, progress_interval=0.0)
    try:
        m.register("k", WorkFn("tests.workloads:wait_work"), lane="gpu")
        job = m.wait(m.submit("alice", "k", {}), timeout=10)
        assert job.status.value == "done" and job.result == {"done_on_try": 2}
        assert job.attempts == 2 and job.worker == "w2" and "worker lost (w1 died)" in job.message
        assert [w.attempt for w in ex.submits] == [1, 2] and ex.submits[1].avoid == "w1"
    finally:
        m.shutdown(timeout=5)


def test_lost_twice_fails_with_a_plain_message(tmp_path):
    ex = FlakyExecutor(lose=5)
    m = JobManager(tmp_path / "out", executor=ex, progress_interval=0.0)
    try:
        m.register("k", WorkFn("tests.workloads:wait_work"), lane="gpu")
        job = m.wait(m.submit("alice", "k", {}), timeout=10)
        assert job.status.value == "failed" and len(ex.submits) == 2
        assert job.error.startswith("worker lost twice (w1 died; then w2 died)") and job.log_id is None
    finally:
        m.shutdown(timeout=5)


def test_cpu_work_never_leaves_the_process(tmp_path):
    """gpus=0 work (canny, passthrough) runs in-process even when a remote executor is configured."""
    ex = FlakyExecutor(lose=5)
    m = JobManager(tmp_path / "out", executor=ex, progress_interval=0.0)
    try:
        m.register("k", WorkFn("tests.workloads:wait_work", gpus=lambda r: 0), lane="light")
        job = m.wait(m.submit("alice", "k", {"seconds": 0.05}), timeout=10)
        assert job.status.value == "done" and not ex.submits and job.worker == "in-process"
    finally:
        m.shutdown(timeout=5)


def test_a_version_1_jobs_database_gets_the_new_columns(tmp_path):
    db = tmp_path / "out" / "jobs.sqlite3"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL, kind TEXT NOT NULL, lane TEXT NOT NULL, status TEXT NOT NULL, request TEXT NOT NULL,
        result TEXT, progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', preview TEXT, error TEXT,
        log_id TEXT, outputs TEXT NOT NULL DEFAULT '[]', out_dir TEXT NOT NULL, resumable INTEGER NOT NULL DEFAULT 0,
        resumed_from TEXT, created REAL NOT NULL, started REAL, finished REAL, updated REAL NOT NULL);
        INSERT INTO jobs (id, owner, kind, lane, status, request, out_dir, created, updated)
        VALUES ('old1', 'alice', 'generate', 'gpu', 'done', '{}', '/x', 1, 1);
        PRAGMA user_version=1;""")
    con.close()
    m = JobManager(tmp_path / "out")
    try:
        old = m.get("old1", "alice")
        assert old.worker is None and old.attempts == 0 and old.status.value == "done"
        m.register("plain", lambda r, jc: {}, lane="light")
        assert m.wait(m.submit("alice", "plain", {}), timeout=10).worker == "in-process"
    finally:
        m.shutdown(timeout=5)


def test_transfer_maps_exactly_the_path_fields():
    from studio.executors.transfer import map_paths, prefix_mapper, request_paths

    req = {"prompt": "a/b not a path", "image": "/u/a.png", "controls": [{"path": "/u/c.mp4", "strength": 1}],
           "loras": [{"path": "/m/l.safetensors"}], "reference_overrides": {"clip1": "/u/r.png"},
           "preset": "face", "nested": {"mask": "/u/m.npy"}}
    assert request_paths(req) == ["/u/a.png", "/u/c.mp4", "/m/l.safetensors", "/u/r.png", "/u/m.npy"]
    mapped = map_paths(req, lambda p: "X" + p)
    assert mapped["prompt"] == req["prompt"] and mapped["controls"][0] == {"path": "X/u/c.mp4", "strength": 1}
    assert mapped["reference_overrides"] == {"clip1": "X/u/r.png"} and mapped["preset"] == "face"
    f = prefix_mapper([("/tmp/s/out", "/studio/alice/j1")])
    assert f("/tmp/s/out/a.mp4") == "/studio/alice/j1/a.mp4" and f("/tmp/s/out") == "/studio/alice/j1"
    assert f("/tmp/s/outside.mp4") == "/tmp/s/outside.mp4"


def test_unpack_refuses_names_that_leave_the_job_folder(tmp_path):
    from studio.executors.transfer import unpack_files

    with pytest.raises(ValueError):
        unpack_files({"../evil.txt": b"x"}, tmp_path / "job")
    assert not (tmp_path / "evil.txt").exists()


def test_in_process_workers_panel_row(manager):
    rows = manager.workers()
    assert [r["name"] for r in rows] == ["in-process"] and rows[0]["state"] == "idle"
    assert rows[0]["memory"]["rss"] > 0


# ------------------------------------------------------------------------------------ the app with Ray unimportable

BLOCK_RAY = """
import importlib.abc, sys
class _NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError("No module named 'ray' (blocked by the test)", name="ray")
        return None
sys.meta_path.insert(0, _NoRay())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_RAY)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="localhost,127.0.0.1",
               no_proxy="localhost,127.0.0.1", PYTHONUNBUFFERED="1", GRADIO_TEMP_DIR=str(tmp / "cache"))
    env.pop("GRADIO_SERVER_NAME", None)
    return env


def test_the_app_serves_and_generates_with_ray_unimportable(tmp_path):
    """`python app.py` with `import ray` failing: the studio starts, a generation runs in-process, and the
    --ray flag alone says how to get Ray (exit 2, one line, no traceback)."""
    import httpx
    from gradio_client import Client

    env = _env(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "blocked by the test" in r.stderr  # the blocker works
    port = _free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--outputs-dir", str(tmp_path / "out")],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        c = Client(url, download_files=False, verbose=False)
        job = c.predict({"prompt": "a red ball", "width": 64, "height": 64, "frames": 9, "seed": 1},
                        api_name="/generate")
        done = c.predict(job, 300, api_name="/wait")
        assert done["status"] == "done" and done["worker"] == "in-process", done
        assert done["result"]["video"].endswith(".mp4")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text()
    r = subprocess.run([sys.executable, "app.py", "--ray", "auto", "--port", str(_free_port()), "--outputs-dir",
                        str(tmp_path / "out2")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "requirements-ray.txt" in r.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------ the Workers panel

def test_workers_panel_rows_and_queue_hide_other_users_jobs(tmp_path):
    """The Workers tab's tables: the worker with its job (the viewer's by id, another user's by kind only) and
    the viewer's queue with where each job runs and how many are ahead."""
    from studio.context import StudioConfig, StudioContext
    from studio.tabs.workers import queue_rows, summary, worker_rows

    m = JobManager(tmp_path / "out", progress_interval=0.0)
    gate, started = threading.Event(), threading.Event()

    def slow(request, jc):
        started.set()  # the executor has registered the work (the row says running a little earlier)
        gate.wait(60)
        return {}

    m.register("slow", WorkFn("tests.workloads:wait_work", local=slow), lane="gpu")
    ctx = StudioContext(config=StudioConfig(outputs_dir=str(tmp_path / "out")), jobs=m, service=None)
    try:
        a = m.submit("alice", "slow", {})
        b = m.submit("bob", "slow", {})
        assert started.wait(60)
        mine = worker_rows(ctx, "alice")
        assert len(mine) == 1 and mine[0][0] == "in-process" and mine[0][3] == "busy"
        assert mine[0][5] == f"{a[:8]} · slow" and mine[0][6].startswith("RSS ")
        theirs = worker_rows(ctx, "bob")
        assert theirs[0][5] == "another user's slow" and a[:8] not in str(theirs)
        assert queue_rows(ctx, "alice") == [[a[:8], "slow", "running", "", "in-process", 0, "running"]]
        assert queue_rows(ctx, "bob") == [[b[:8], "slow", "queued", 1, "", 0, "queued"]]
        assert "in this process" in summary(ctx)
    finally:
        gate.set()
        m.shutdown(timeout=5)


def test_workers_api_answers_for_the_caller(studio_client):
    rows = studio_client.predict(api_name="/workers")
    assert [r["name"] for r in rows] == ["in-process"] and rows[0]["executor"] == "in-process"
    assert rows[0]["memory"]["rss"] > 0
