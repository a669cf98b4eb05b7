"""studio.jobs: lanes, ordering, ownership, cancel, failures, restart. Pure Python, no gradio; ~3 s."""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.errors import UserError
from studio.jobs import JobManager, JobNotFound, JobStatus, Lane

WAIT = 10.0  # generous per-job timeout; the whole file runs in a few seconds


@pytest.fixture
def outputs(tmp_path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def manager(outputs):
    m = JobManager(outputs, progress_interval=0.0)
    yield m
    m.shutdown(timeout=5)


def wait_until(predicate, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Gate:
    """A job function that reports it started, then blocks until released (or cancelled)."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()
        self.ran: list[str] = []

    def __call__(self, request: dict, ctx) -> dict:
        self.ran.append(ctx.job_id)
        self.started.set()
        deadline = time.monotonic() + WAIT
        while not self.release.is_set() and time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            time.sleep(0.005)
        return {"released": self.release.is_set()}


def test_gpu_lane_is_fifo_and_one_at_a_time_under_concurrent_submits(manager):
    records: list[tuple[str, float, float]] = []
    running = [0]
    max_running = [0]
    lock = threading.Lock()

    def gpu_job(request, ctx):
        with lock:
            running[0] += 1
            max_running[0] = max(max_running[0], running[0])
        start = time.perf_counter()
        time.sleep(0.01)
        (ctx.out_dir / "out.txt").write_text(f"{ctx.owner} {request['n']}")
        end = time.perf_counter()
        with lock:
            running[0] -= 1
            records.append((ctx.job_id, start, end))
        return {"owner": ctx.owner, "n": request["n"], "outputs": [str(ctx.out_dir / "out.txt")]}

    manager.register("generate", gpu_job, lane="gpu")
    n_clients, per_client = 6, 4
    barrier = threading.Barrier(n_clients)
    submitted: dict[str, list[str]] = {}

    def client(i: int) -> None:
        owner = f"user{i}"
        barrier.wait()
        submitted[owner] = [manager.submit(owner, "generate", {"n": k}) for k in range(per_client)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    all_ids = [job_id for ids in submitted.values() for job_id in ids]
    assert len(all_ids) == n_clients * per_client
    for job_id in all_ids:
        assert manager.wait(job_id, timeout=WAIT).status is JobStatus.DONE

    # one at a time: sorted by start, every job starts after the previous one ended
    records.sort(key=lambda r: r[1])
    assert max_running[0] == 1
    for (_, _, prev_end), (_, start, _) in zip(records, records[1:]):
        assert start >= prev_end
    # FIFO: start order == submit (seq) order
    seq = {job_id: manager.store.get(job_id).seq for job_id in all_ids}
    started_order = [r[0] for r in records]
    assert started_order == sorted(all_ids, key=seq.__getitem__)
    # every client got its own outputs, in its own folder
    for owner, ids in submitted.items():
        for k, job_id in enumerate(ids):
            job = manager.get(job_id, owner)
            assert job.result == {"owner": owner, "n": k, "outputs": job.outputs}
            out = Path(job.outputs[0])
            assert out.parent == manager.outputs_dir / owner / job_id
            assert out.read_text() == f"{owner} {k}"


def test_light_lane_answers_while_a_gpu_job_runs(manager):
    gate = Gate()
    manager.register("train", gate, lane="gpu")
    manager.register("probe", lambda request, ctx: {"double": request["x"] * 2}, lane=Lane.LIGHT)
    slow = manager.submit("alice", "train", {})
    queued_gpu = manager.submit("alice", "train", {})
    assert gate.started.wait(WAIT)

    t0 = time.perf_counter()
    light = manager.submit("alice", "probe", {"x": 21})
    job = manager.wait(light, timeout=2.0)
    assert time.perf_counter() - t0 < 2.0
    assert job.status is JobStatus.DONE and job.result == {"double": 42} and job.lane is Lane.LIGHT
    assert manager.get(slow, "alice").status is JobStatus.RUNNING
    assert manager.get(queued_gpu, "alice").status is JobStatus.QUEUED
    assert manager.position(slow, "alice") == 0
    assert manager.position(queued_gpu, "alice") == 1

    gate.release.set()
    assert manager.wait(slow, timeout=WAIT).status is JobStatus.DONE
    assert manager.wait(queued_gpu, timeout=WAIT).status is JobStatus.DONE
    assert manager.position(slow, "alice") is None


def test_other_owners_cannot_get_cancel_list_or_wait(manager):
    gate = Gate()
    manager.register("generate", gate)
    job_id = manager.submit("alice", "generate", {"prompt": "a cat"})
    assert gate.started.wait(WAIT)

    with pytest.raises(JobNotFound):
        manager.get(job_id, "bob")
    with pytest.raises(KeyError):  # JobNotFound is a KeyError (and a UserError) for handlers
        manager.get(job_id, "bob")
    with pytest.raises(JobNotFound):
        manager.cancel(job_id, "bob")
    with pytest.raises(JobNotFound):
        manager.wait(job_id, timeout=0.1, owner="bob")
    with pytest.raises(JobNotFound):
        manager.position(job_id, "bob")
    with pytest.raises(JobNotFound):
        manager.resume(job_id, "bob")
    # the message does not reveal that the id exists for someone else
    with pytest.raises(JobNotFound) as missing:
        manager.get("0" * 32, "bob")
    with pytest.raises(JobNotFound) as foreign:
        manager.get(job_id, "bob")
    assert str(missing.value).replace("0" * 32, "X") == str(foreign.value).replace(job_id, "X")

    assert manager.list("bob") == []
    assert [j.id for j in manager.list("alice")] == [job_id]
    assert manager.get(job_id, "alice").status is JobStatus.RUNNING  # bob's cancel did nothing

    gate.release.set()
    assert manager.wait(job_id, timeout=WAIT, owner="alice").status is JobStatus.DONE


def test_list_is_newest_first_and_filters(manager):
    gate = Gate()
    manager.register("generate", gate)
    manager.register("probe", lambda r, ctx: {}, lane="light")
    first = manager.submit("alice", "generate", {})
    assert gate.started.wait(WAIT)
    second = manager.submit("alice", "generate", {})
    probe = manager.submit("alice", "probe", {})
    manager.wait(probe, timeout=WAIT)
    assert [j.id for j in manager.list("alice")] == [probe, second, first]
    assert [j.id for j in manager.list("alice", limit=2)] == [probe, second]
    assert [j.id for j in manager.list("alice", active_only=True)] == [second, first]
    assert [j.id for j in manager.list("alice", kind="probe")] == [probe]
    gate.release.set()
    manager.wait(second, timeout=WAIT)


def test_cancel_queued_job_never_runs(manager):
    gate = Gate()
    manager.register("generate", gate)
    blocker = manager.submit("alice", "generate", {})
    assert gate.started.wait(WAIT)
    victim = manager.submit("alice", "generate", {})
    after = manager.submit("alice", "generate", {})

    assert manager.cancel(victim, "alice") is True
    job = manager.get(victim, "alice")
    assert job.status is JobStatus.CANCELLED and job.started is None and job.finished is not None

    gate.release.set()
    assert manager.wait(blocker, timeout=WAIT).status is JobStatus.DONE
    assert manager.wait(after, timeout=WAIT).status is JobStatus.DONE
    assert victim not in gate.ran
    assert gate.ran == [blocker, after]
    assert manager.get(victim, "alice").status is JobStatus.CANCELLED
    assert not Path(job.out_dir).exists()  # no empty folder for a job that never ran
    assert manager.cancel(victim, "alice") is False  # already finished
    assert manager.cancel(blocker, "alice") is False


def test_cancel_running_job_stops_at_next_check(manager):
    steps: list[int] = []

    def sampler(request, ctx):
        for i in range(10_000):
            ctx.raise_if_cancelled()
            steps.append(i)
            ctx.progress(i / 10_000, f"step {i}")
            time.sleep(0.002)
        return {}

    manager.register("generate", sampler)
    job_id = manager.submit("alice", "generate", {})
    wait_until(lambda: len(steps) >= 5, what="sampler steps")
    assert manager.cancel(job_id, "alice") is True
    job = manager.wait(job_id, timeout=WAIT)
    assert job.status is JobStatus.CANCELLED
    assert len(steps) < 10_000
    assert 0 < job.progress < 1
    assert job.error is None


def test_job_that_ignores_cancel_finishes_as_done(manager):
    gate = Gate()

    def stubborn(request, ctx):
        gate.started.set()
        gate.release.wait(WAIT)
        return {"cancelled_seen": ctx.cancelled}

    manager.register("generate", stubborn)
    job_id = manager.submit("alice", "generate", {})
    assert gate.started.wait(WAIT)
    assert manager.cancel(job_id, "alice") is True
    assert manager.get(job_id, "alice").message == "cancelling..."
    gate.release.set()
    job = manager.wait(job_id, timeout=WAIT)
    assert job.status is JobStatus.DONE
    assert job.result == {"cancelled_seen": True}
    assert job.message == "finished before the cancel took effect"


def test_failing_jobs_are_reported_and_the_worker_keeps_going(manager, caplog):
    def bad_input(request, ctx):
        raise UserError("clip has 117 frames; trim it to 113 (8n+1)")

    def bug(request, ctx):
        ctx.progress(0.25, "loading")
        return {"x": 1 / 0}

    def unserialisable(request, ctx):
        return {"obj": object()}

    def exits(request, ctx):
        raise SystemExit(3)

    manager.register("bad_input", bad_input)
    manager.register("bug", bug)
    manager.register("unserialisable", unserialisable)
    manager.register("exits", exits)
    manager.register("ok", lambda r, ctx: {"ok": True})

    with caplog.at_level(logging.ERROR, logger="studio.jobs"):
        ids = {k: manager.submit("alice", k, {}) for k in ("bad_input", "bug", "unserialisable", "exits", "ok")}
        jobs = {k: manager.wait(v, timeout=WAIT) for k, v in ids.items()}

    user = jobs["bad_input"]
    assert user.status is JobStatus.FAILED
    assert user.error == "clip has 117 frames; trim it to 113 (8n+1)" and user.log_id is None

    for kind in ("bug", "unserialisable", "exits"):
        job = jobs[kind]
        assert job.status is JobStatus.FAILED, kind
        assert job.log_id and job.error == f"internal error (log id {job.log_id})"
        assert "Traceback" not in job.error and "ZeroDivision" not in job.error
        logged = [r for r in caplog.records if job.log_id in r.getMessage()]
        assert logged and logged[0].exc_info is not None, kind
    assert jobs["bug"].progress == 0.25  # last progress kept for the history view

    assert jobs["ok"].status is JobStatus.DONE and jobs["ok"].result == {"ok": True}
    assert all(t.is_alive() for lane in manager._lanes.values() for t in lane.threads)


def test_submit_checks_owner_kind_and_request(manager):
    @dataclass
    class GenerateRequest:
        prompt: str
        seed: int
        path: Path

    seen = []
    manager.register("generate", lambda r, ctx: seen.append(r) or {"seed": r["seed"]})
    with pytest.raises(UserError, match="unknown job kind"):
        manager.submit("alice", "nope", {})
    for owner in ("../bob", "a/b", "", ".hidden", "jobs.sqlite3"):
        with pytest.raises(UserError):
            manager.submit(owner, "generate", {})
    with pytest.raises(TypeError):
        manager.submit("alice", "generate", ["not", "a", "dict"])
    with pytest.raises(TypeError):
        manager.submit("alice", "generate", {"x": object()})

    job_id = manager.submit("alice", "generate", GenerateRequest("a cat", 7, Path("/tmp/x.mp4")))
    job = manager.wait(job_id, timeout=WAIT)
    assert job.status is JobStatus.DONE
    assert seen == [{"prompt": "a cat", "seed": 7, "path": "/tmp/x.mp4"}]  # the stored JSON form
    assert job.request == seen[0]
    json.dumps(job.to_dict())  # API-ready


def test_progress_preview_outputs_persist_and_throttle(outputs):
    manager = JobManager(outputs, progress_interval=60.0)  # fraction-only updates throttled hard
    gate = Gate()
    checkpoints = threading.Event()

    def train(request, ctx):
        preview = ctx.out_dir / "preview_0001.png"
        preview.write_bytes(b"png")
        ctx.progress(0.1, "step 1/10", preview=preview)  # message change: written
        ctx.progress(0.2)                                 # fraction only, within the interval: not written
        ckpt = ctx.out_dir / "ckpt_0002.safetensors"
        ckpt.write_bytes(b"w")
        ctx.add_output(ckpt)
        checkpoints.set()
        gate.release.wait(WAIT)
        ctx.progress(0.3, "step 3/10")
        final = ctx.out_dir / "lora.safetensors"
        final.write_bytes(b"w")
        return {"outputs": [str(final)]}

    try:
        manager.register("train", train)
        job_id = manager.submit("alice", "train", {})
        assert checkpoints.wait(WAIT)
        job = manager.get(job_id, "alice")
        assert job.status is JobStatus.RUNNING
        assert (job.progress, job.message) == (0.1, "step 1/10")
        assert job.preview == str(Path(job.out_dir) / "preview_0001.png")
        assert job.outputs == [str(Path(job.out_dir) / "ckpt_0002.safetensors")]
        assert job.started is not None and job.elapsed >= 0
        gate.release.set()
        job = manager.wait(job_id, timeout=WAIT)
        # its last message was from the middle of the work: a finished job reads "done", not "step 3/10"
        assert job.status is JobStatus.DONE and job.progress == 1.0 and job.message == "done"
        assert [Path(p).name for p in job.outputs] == ["ckpt_0002.safetensors", "lora.safetensors"]
    finally:
        manager.shutdown(timeout=5)


def test_outputs_are_never_overwritten(manager):
    manager.register("generate", lambda r, ctx: (ctx.out_dir / "video.mp4").write_text(r["v"]) and {})
    a = manager.wait(manager.submit("alice", "generate", {"v": "first"}), timeout=WAIT)
    b = manager.wait(manager.submit("alice", "generate", {"v": "second"}), timeout=WAIT)
    assert a.out_dir != b.out_dir
    assert Path(a.out_dir).parent == Path(b.out_dir).parent == manager.outputs_dir / "alice"
    assert (Path(a.out_dir) / "video.mp4").read_text() == "first"
    assert (Path(b.out_dir) / "video.mp4").read_text() == "second"


def test_restart_marks_interrupted_and_the_queue_works_again(outputs):
    first = JobManager(outputs)
    gate = Gate()
    first.register("train", gate, resumable=True)
    first.register("generate", lambda r, ctx: {})
    running = first.submit("alice", "train", {"steps": 100})
    assert gate.started.wait(WAIT)
    queued = first.submit("alice", "generate", {})
    (Path(first.get(running, "alice").out_dir) / "ckpt_0050.safetensors").write_bytes(b"w")

    # "crash": a new server opens the same database while the old one never finished its job
    second = JobManager(outputs)
    try:
        assert second.interrupted_at_start == 2
        old = second.get(running, "alice")
        assert old.status is JobStatus.INTERRUPTED and old.resumable and old.finished is not None
        assert second.get(queued, "alice").status is JobStatus.INTERRUPTED
        assert not second.get(queued, "alice").resumable

        seen = {}

        def train_again(request, ctx):
            seen["request"], seen["resume_from"] = request, ctx.resume_from
            return {"resumed": True}

        second.register("train", train_again, resumable=True)
        second.register("generate", lambda r, ctx: {})
        with pytest.raises(UserError, match="cannot be resumed"):
            second.resume(queued, "alice")
        new_id = second.resume(running, "alice")
        new = second.wait(new_id, timeout=WAIT)
        assert new.status is JobStatus.DONE and new.resumed_from == running
        assert seen == {"request": {"steps": 100}, "resume_from": Path(old.out_dir)}
        assert second.wait(second.submit("alice", "generate", {}), timeout=WAIT).status is JobStatus.DONE
        with pytest.raises(UserError, match="only interrupted"):
            second.resume(new_id, "alice")

        # the dead server's worker finishing late must not overwrite "interrupted"
        gate.release.set()
        first.shutdown(timeout=5)
        assert second.get(running, "alice").status is JobStatus.INTERRUPTED
    finally:
        first.shutdown(timeout=5)
        second.shutdown(timeout=5)

    db = sqlite3.connect(outputs / "jobs.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_shutdown_interrupts_queued_and_refuses_new_jobs(outputs):
    manager = JobManager(outputs)
    gate = Gate()
    manager.register("generate", gate)
    running = manager.submit("alice", "generate", {})
    assert gate.started.wait(WAIT)
    queued = manager.submit("alice", "generate", {})
    manager.shutdown(cancel_running=True, timeout=5)
    assert manager.get(running, "alice").status is JobStatus.CANCELLED
    assert manager.get(queued, "alice").status is JobStatus.INTERRUPTED
    assert gate.ran == [running]
    with pytest.raises(UserError, match="shutting down"):
        manager.submit("alice", "generate", {})


def test_several_gpu_workers_when_configured(outputs):
    manager = JobManager(outputs, gpu_workers=2)
    both = threading.Barrier(2, timeout=WAIT)
    try:
        manager.register("generate", lambda r, ctx: {"i": both.wait()})
        ids = [manager.submit("alice", "generate", {}) for _ in range(2)]
        assert all(manager.wait(i, timeout=WAIT).status is JobStatus.DONE for i in ids)  # ran side by side
    finally:
        manager.shutdown(timeout=5)
    with pytest.raises(ValueError):
        JobManager(outputs / "x", gpu_workers=0)


def test_run_now_runs_in_the_calling_thread_and_is_recorded(manager):
    gate = Gate()
    manager.register("train", gate)
    threads = []

    def generate(request, ctx):
        threads.append(threading.current_thread())
        if request.get("fail"):
            raise UserError("no prompt given; type one")
        return {"ok": True}

    manager.register("generate", generate)
    busy = manager.submit("alice", "train", {})
    assert gate.started.wait(WAIT)
    job = manager.run_now("alice", "generate", {})  # does not wait behind the busy GPU lane
    assert job.status is JobStatus.DONE and job.result == {"ok": True}
    assert threads == [threading.current_thread()]
    assert [j.id for j in manager.list("alice")] == [job.id, busy]
    failed = manager.run_now("alice", "generate", {"fail": True})
    assert failed.status is JobStatus.FAILED and failed.error == "no prompt given; type one"
    gate.release.set()
    assert manager.wait(busy, timeout=WAIT).status is JobStatus.DONE


def test_a_finished_job_keeps_its_summary_but_not_a_phase_it_passed(manager):
    """The panel reads "done · control ready", never "done · writing the mp4" (the upscale pass read so)."""
    def summary(_request, ctx):
        ctx.progress(0.9, "writing the mp4")
        ctx.progress(1.0, "control ready")

    def phase(_request, ctx):
        ctx.progress(0.9, "writing the mp4")

    manager.register("summary", summary, lane="light")
    manager.register("phase", phase, lane="light")
    assert manager.wait(manager.submit("alice", "summary", {}), timeout=WAIT).message == "control ready"
    assert manager.wait(manager.submit("alice", "phase", {}), timeout=WAIT).message == "done"
