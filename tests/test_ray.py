"""The studio's jobs on Ray (studio.executors.ray_executor), on a CPU box with declared fake GPUs.

One local Ray cluster for the whole module (num_cpus=2, num_gpus=2: two "GPU" actors), shut down at the end.
The studio is built as `python app.py --ray auto` builds it (build_context with ray="auto", every kind, the
path checks), so jobs go through the same submit checks, SQLite rows, ownership and History as without Ray.
Skipped when Ray (an optional extra) is not installed.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from studio.executors import WorkFn  # noqa: E402

TINY = dict(width=64, height=64, frames=9)


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def studio(cluster, tmp_path_factory):
    from studio.context import StudioConfig, build_context
    from studio.routes import install_path_checks

    out = tmp_path_factory.mktemp("ray-outputs")
    ctx = build_context(StudioConfig(outputs_dir=str(out), ray="auto"))
    ctx.jobs.register("wait", WorkFn("tests.workloads:wait_work", model=lambda r: r.get("model")), lane="gpu")
    install_path_checks(ctx)
    ex = ctx.jobs.executor
    assert ex.name == "ray" and ex.capacity == 2
    _wait_idle(ex, 2)
    yield ctx
    ctx.jobs.shutdown(timeout=10)


def _wait_idle(ex, n: int, timeout: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = ex.workers()
        if sum(1 for w in rows if w["state"] == "idle") >= n:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"workers not idle: {ex.workers()}")


def _overlap(a, b) -> bool:
    return a.started < b.finished and b.started < a.finished


def test_six_generations_from_three_users_run_on_two_actors_at_once(studio):
    """6 tiny generations from 3 users: both actors run them, two at a time; every user's outputs lie in their
    own folder and are theirs only; the video equals the same request run in-process (same seed)."""
    from pipelines.errors import UserError
    from pipelines.service import EngineService
    from pipelines.video_io import read_video

    users = ["alice", "bob", "carol"]
    ids = {u: [studio.submit(u, "generate", dict(TINY, prompt=f"a ball for {u}", seed=10 + i)) for i in range(2)]
           for u in users}
    jobs = {u: [studio.jobs.wait(j, timeout=600) for j in js] for u, js in ids.items()}
    every = [j for js in jobs.values() for j in js]
    assert all(j.status.value == "done" for j in every), [(j.status, j.error) for j in every]
    workers = {j.worker.split(" @ ")[0] for j in every}
    assert workers == {"gpu-0", "gpu-1"}, workers
    assert any(_overlap(a, b) for i, a in enumerate(every) for b in every[i + 1:]), "never two at once"
    outputs = Path(studio.outputs_dir)
    for u, js in jobs.items():
        for j in js:
            assert Path(j.out_dir).parent == outputs / u
            assert j.outputs and all(Path(p).is_file() and Path(p).resolve().is_relative_to(outputs / u)
                                     for p in j.outputs)
            other = next(x for x in users if x != u)
            with pytest.raises(UserError):
                studio.jobs.get(j.id, other)
            assert all(x.id != j.id for x in studio.jobs.list(other, 100))
    # the same request in this process gives the same video (the actor's output is the engine's, not a copy)
    first = jobs["alice"][0]
    here = EngineService().generate(dict(TINY, prompt="a ball for alice", seed=10), Path(first.out_dir).parent
                                    / "here.mp4")
    a = read_video(first.result["video"])[0].astype(int)
    b = read_video(here["video"])[0].astype(int)
    assert a.shape == b.shape == (9, 64, 64, 3)
    assert abs(a - b).max() <= 2, abs(a - b).max()  # 1-thread actor vs this process: float sums in another order


def test_dispatch_prefers_the_actor_that_holds_the_model(studio):
    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    first = studio.jobs.wait(studio.submit("alice", "wait", {"seconds": 0.2, "model": "big-a"}), timeout=60)
    holder = first.worker.split(" @ ")[0]
    # the other actor is idle longer, yet the next job for the same model goes where the model is
    for _ in range(2):
        again = studio.jobs.wait(studio.submit("bob", "wait", {"seconds": 0.2, "model": "big-a"}), timeout=60)
        assert again.worker.split(" @ ")[0] == holder
    other = studio.jobs.wait(studio.submit("bob", "wait", {"seconds": 0.2, "model": "big-b"}), timeout=60)
    assert other.worker.split(" @ ")[0] != holder  # a new model goes to the actor that holds none of it
    assert {w["name"]: w["model"] for w in ex.workers()}[holder] == "big-a"
    from studio.tabs.workers import summary, worker_rows

    rows = {r[0]: r for r in worker_rows(studio, "alice")}  # the Workers tab: one row per actor, its GPU, model
    assert set(rows) == {"gpu-0", "gpu-1"} and rows[holder][4] == "big-a" and rows[holder][8] == "shared"
    assert {rows["gpu-0"][2], rows["gpu-1"][2]} == {"0", "1"} and "on **Ray**: 2 worker(s)" in summary(studio)


def test_cancel_reaches_the_actor_between_steps(studio, tmp_path):
    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    marker = studio.user_dir("alice", "markers") / "cancel.pid"
    jid = studio.submit("alice", "wait", {"seconds": 30, "started_marker": str(marker)})
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    job = studio.jobs.get(jid, "alice")
    assert job.status.value == "running" and job.progress > 0 and job.message.startswith("step ")  # relayed
    t = time.monotonic()
    assert studio.jobs.cancel(jid, "alice")
    job = studio.jobs.wait(jid, timeout=30)
    assert job.status.value == "cancelled" and time.monotonic() - t < 5
    assert job.progress < 0.5  # it stopped, it did not run to the end
    rows = _wait_idle(ex, 2)  # the actor is free again, not lost
    assert all(w["restarts"] == 0 for w in rows)


def test_a_killed_actor_requeues_its_job_once_and_it_finishes(studio):
    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    marker = studio.user_dir("bob", "markers") / "kill.pid"
    jid = studio.submit("bob", "wait", {"seconds": 3, "started_marker": str(marker)})
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-job
    job = studio.jobs.wait(jid, timeout=120)
    assert job.status.value == "done", (job.status, job.error)
    assert job.attempts == 2 and "worker lost" in job.message, job.message
    assert job.result["pid"] != pid and job.result["owner"] == "bob"
    assert "attempt 2" in Path(job.result["file"]).read_text()
    rows = _wait_idle(ex, 2)  # the lost actor was replaced
    assert sum(w["restarts"] for w in rows) == 1
    assert not any(j.status.value == "running" for j in studio.jobs.list("bob", 100))


def test_a_job_lost_twice_fails_plainly_and_nothing_stays_running(studio):
    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    marker = studio.user_dir("carol", "markers") / "twice.pid"
    jid = studio.submit("carol", "wait", {"seconds": 20, "started_marker": str(marker)})
    for _ in range(2):
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(marker.read_text())
        marker.unlink()
        os.kill(pid, signal.SIGKILL)
    job = studio.jobs.wait(jid, timeout=120)
    assert job.status.value == "failed" and "worker lost twice" in job.error and job.attempts == 2
    _wait_idle(ex, 2)


def test_training_on_two_gpus_of_one_node_borrows_both_actors(studio, tmp_path):
    """A train job with gpus=2 takes both GPUs of the node: the two actors step aside, one 2-GPU actor runs
    torchrun with 2 processes (gloo here), then the two actors come back."""
    import subprocess

    import imageio_ffmpeg

    from studio.kinds.train import submit_training
    from tests.helpers import textured_frames

    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    clips = []
    for i, motion in enumerate([(1, 0), (-1, 0), (0, 1), (0, -1)]):
        path = tmp_path / f"clip{i}.mp4"
        data = textured_frames(9, 64, 64, seed=11, motion=motion)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt",
                        "rgb24", "-s", "64x64", "-r", "24", "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt",
                        "yuv420p", str(path)], input=data.tobytes(), check=True)
        (tmp_path / f"clip{i}.txt").write_text("subj a textured subject moving")
        clips += [path, tmp_path / f"clip{i}.txt"]
    fields = {"preset": "face", "model": "tiny", "gpus": 2,
              "overrides": {"steps": 2, "checkpoint_every": 0, "sample_every": 0, "rank": 4, "alpha": 4}}
    jid = submit_training(studio, "alice", [str(c) for c in clips], fields)
    seen_group = False
    while not studio.jobs.get(jid, "alice").status.terminal:
        names = [w["name"] for w in ex.workers()]
        seen_group = seen_group or "gpu-0+gpu-1" in names or "gpu-1+gpu-0" in names
        time.sleep(0.2)
    job = studio.jobs.wait(jid, timeout=5)
    assert job.status.value == "done", (job.error, job.message)
    assert seen_group and "+" in job.worker and job.result["gpus"] == 2 and job.result["step"] == 2
    assert Path(job.result["lora"]).is_file()
    assert any(p.endswith("lora.safetensors") for p in job.outputs)
    rows = _wait_idle(ex, 2)
    assert sorted(w["name"] for w in rows) == ["gpu-0", "gpu-1"]


def test_a_generation_over_two_gpus_borrows_both_actors(studio):
    """A user's "GPUs per generation" = 2 (Workers tab) on Ray: the job takes both GPUs of the node (one 2-GPU
    actor, context parallel over 2 processes there: gloo on this CPU box), records gpus=2, and gives the node's
    two actors back; a request for more GPUs than a host has is refused with one plain line."""
    import json

    from pipelines.requests import GenerateRequest
    from studio.tabs.workers import set_gpus

    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    set_gpus(studio, "alice", 2)  # with Ray the cluster decides at dispatch: nothing to check here
    try:
        req = GenerateRequest(prompt="a red ball", seed=7, audio=False, **TINY).to_dict()
        job = studio.jobs.wait(studio.submit("alice", "generate", req), timeout=600)
        assert job.status.value == "done", (job.error, job.message)
        assert "+" in job.worker and job.request["gpus"] == 2
        assert json.loads(Path(job.result["settings"]).read_text())["request"]["gpus"] == 2
        rows = _wait_idle(ex, 2)
        assert sorted(w["name"] for w in rows) == ["gpu-0", "gpu-1"]
        big = studio.jobs.wait(studio.submit("alice", "generate", dict(req, gpus=4)), timeout=120)
        assert big.status.value == "failed" and "needs 4 GPUs on one host" in big.error, big.error
    finally:
        studio.prefs.pop("alice", None)
    _wait_idle(ex, 2)


def test_files_go_through_the_object_store_when_the_worker_does_not_share_them(cluster, tmp_path):
    """A worker that does not see the studio's folders: the request's input files are shipped, the outputs come
    back into the job's own folder, and every path (result, preview, settings .json) names the studio's files.
    A training job (it needs its run folder while it runs) is refused with the way out."""
    from studio.executors.ray_executor import RayExecutor
    from studio.jobs import JobManager

    out = tmp_path / "out"
    # a third, CPU-only actor beside the module's two (whose GPUs and CPUs are all taken)
    ex = RayExecutor(None, outputs_dir=out, workers=1, gpus_per_worker=0, cpus_per_worker=0, share_files=False)
    m = JobManager(out, executor=ex, gpu_workers=ex.capacity, progress_interval=0.0)
    try:
        m.register("copy", WorkFn("tests.workloads:copy_work"), lane="gpu")
        m.register("gen", WorkFn("studio.kinds.generate:generate_work"), lane="gpu")
        m.register("train", WorkFn("tests.workloads:wait_work", needs_shared=True), lane="gpu")
        clip = out / "alice" / "uploads" / "in.bin"
        clip.parent.mkdir(parents=True)
        clip.write_bytes(b"0123456789" * 1000)
        job = m.wait(m.submit("alice", "copy", {"clip": str(clip)}), timeout=120)
        assert job.status.value == "done", job.error
        assert [w["files"] for w in ex.workers()] == ["object store"]
        video = Path(job.result["video"])
        assert video.parent == Path(job.out_dir) and video.read_bytes() == clip.read_bytes()[::-1]
        assert job.result["read_from"] == str(clip)  # the worker's scratch path mapped back
        import json

        side = json.loads(Path(job.result["settings"]).read_text())
        assert side == {"clip": str(clip), "video": str(video)}
        assert job.preview == str(Path(job.out_dir) / "preview" / "p.txt") and Path(job.preview).is_file()
        assert job.outputs == [str(video)]
        # a real generation with a control video from the user's folder: shipped there, the mp4 back here
        from pipelines.config import ASSETS_DIR
        import shutil

        control = out / "alice" / "uploads" / "control.mp4"
        shutil.copy(ASSETS_DIR / "sample_motion.mp4", control)
        gen = m.wait(m.submit("alice", "gen", dict(TINY, prompt="a ball", seed=3, controls=[{"path": str(control)}])),
                     timeout=600)
        assert gen.status.value == "done", gen.error
        assert Path(gen.result["video"]).parent == Path(gen.out_dir) and Path(gen.result["video"]).stat().st_size
        assert str(control) in Path(gen.result["settings"]).read_text()  # the studio's path, not the worker's
        refused = m.wait(m.submit("alice", "train", {"seconds": 0.1}), timeout=60)
        assert refused.status.value == "failed" and "--shared-dir" in refused.error
    finally:
        m.shutdown(timeout=10)


def test_draining_a_worker_finishes_its_job_first(studio):
    """Last in the module: it takes both workers out of service for good (gpu-1 from the studio, gpu-0 by Ray)."""
    ex = studio.jobs.executor
    _wait_idle(ex, 2)
    a = studio.submit("alice", "wait", {"seconds": 2})
    b = studio.submit("bob", "wait", {"seconds": 2})
    deadline = time.monotonic() + 60
    while sum(1 for w in ex.workers() if w["state"] == "busy") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert studio.jobs.drain("gpu-1")
    assert {w["name"]: w["state"] for w in ex.workers()}["gpu-1"] == "draining"
    ja, jb = studio.jobs.wait(a, timeout=60), studio.jobs.wait(b, timeout=60)
    assert ja.status.value == jb.status.value == "done"
    assert {w["name"]: w["state"] for w in ex.workers()}["gpu-1"] == "stopped"
    later = studio.jobs.wait(studio.submit("carol", "wait", {"seconds": 0.1}), timeout=60)
    assert later.status.value == "done" and later.worker.startswith("gpu-0")
    # Ray's own drain of the node (`ray drain-node`, an autoscaler scale-down): gpu-0 finishes its job, then stops
    from ray.core.generated import autoscaler_pb2

    c = studio.submit("alice", "wait", {"seconds": 4})
    while {w["name"]: w["state"] for w in ex.workers()}["gpu-0"] != "busy":
        time.sleep(0.05)
    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    accepted, why = gcs.drain_node(ray.get_runtime_context().get_node_id(),
                                   autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "test",
                                   int(time.time() * 1000) + 600_000)
    assert accepted, why
    deadline = time.monotonic() + 10
    while {w["name"]: w["state"] for w in ex.workers()}["gpu-0"] != "draining" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {w["name"]: w["state"] for w in ex.workers()}["gpu-0"] == "draining"
    assert studio.jobs.wait(c, timeout=60).status.value == "done"
    assert {w["name"]: w["state"] for w in ex.workers()}["gpu-0"] == "stopped"
    none_left = studio.jobs.wait(studio.submit("bob", "wait", {"seconds": 0.1}), timeout=60)
    assert none_left.status.value == "failed" and "no Ray worker is available" in none_left.error
