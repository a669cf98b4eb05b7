"""The Ray actor that runs studio jobs (one per GPU, or one per K GPUs for a multi-GPU job).

It is a plain class here; studio.executors.ray_executor makes it a Ray actor (``ray.remote(...)``) with
``max_concurrency`` > 1, so ``poll``, ``cancel`` and ``info`` answer while ``run`` works. One job runs at a time;
its model stays resident in the actor's model cache (pipelines' ModelCache keeps one) for the next job.

The job function gets a ``RemoteJobContext``: the same calls as studio.jobs.JobContext (progress, add_output,
cancelled, raise_if_cancelled, out_dir, resume_from, owner, job_id); what it reports is buffered here and
collected by the studio's ``poll`` calls, which write it into the job's SQLite row.

Imports no torch itself (the job targets do, through pipelines) and no gradio.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["RemoteJobContext", "StudioWorker", "machine_id"]


def machine_id() -> str:
    """This host's identity (hostname + /etc/machine-id): two processes with the same one share a filesystem."""
    mid = ""
    for f in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            mid = Path(f).read_text().strip()
            break
        except OSError:
            continue
    return f"{socket.gethostname()}/{mid}"


class RemoteJobContext:
    """studio.jobs.JobContext's interface inside a worker: reports are buffered until the studio polls them."""

    def __init__(self, work: dict, out_dir: Path, resume_from: str | None):
        self.job_id = work["job_id"]
        self.owner = work["owner"]
        self.kind = work["kind"]
        self.seq = work.get("seq", 0)
        self.attempt = int(work.get("attempt", 1))
        self.out_dir = Path(out_dir)
        self.resume_from = Path(resume_from) if resume_from else None
        self.fraction = 0.0
        self.message: str | None = None
        self.preview: str | None = None
        self.outputs: list[str] = []
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._new_outputs: list[str] = []

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            from studio.jobs import JobCancelled

            raise JobCancelled(f"job {self.job_id} cancelled")

    def progress(self, fraction: float, message: str | None = None, preview: str | os.PathLike | None = None) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        with self._lock:
            self.fraction = fraction
            self._pending["fraction"] = fraction
            if message is not None and message != self.message:
                self.message = self._pending["message"] = message
            if preview is not None and os.fspath(preview) != self.preview:
                self.preview = self._pending["preview"] = os.fspath(preview)

    def add_output(self, path: str | os.PathLike) -> None:
        p = os.fspath(path)
        with self._lock:
            if p not in self.outputs:
                self.outputs.append(p)
                self._new_outputs.append(p)

    def set_worker(self, worker: str | None, attempt: int = 1) -> None:
        pass  # the studio records where the job runs

    def flush(self) -> None:
        pass

    def take(self) -> dict:
        """What was reported since the last call (latest fraction / message / preview, new outputs)."""
        with self._lock:
            out = dict(self._pending, outputs=list(self._new_outputs))
            self._pending.clear()
            self._new_outputs.clear()
        return out


class StudioWorker:
    """A Ray actor's state: its WorkerEnv (engine service, model cache), the job it runs, what it reported."""

    def __init__(self, name: str, models_dir: str | None = None, env_vars: dict | None = None):
        for k, v in (env_vars or {}).items():
            os.environ.setdefault(k, v)
        from studio.executors import WorkerEnv

        self.name = name
        self.env = WorkerEnv(models_dir, name=name)
        self.started = time.time()
        self._lock = threading.Lock()
        self._jobs: dict[str, RemoteJobContext] = {}
        self._shipped: dict[str, set[str]] = {}  # job id -> output files already sent back (relative paths)
        self._scratch: dict[str, Path] = {}
        self.model: str | None = None
        self.jobs_done = 0

    # ---- what the studio asks ----
    def hello(self, probes: dict[str, list[str]]) -> dict:
        """Who and where this worker is, and which of the studio's folders it sees (``probes``: {root:
        [probe file, token]}; a root is seen when the file there holds the token)."""
        import ray

        seen = []
        for root, (path, token) in probes.items():
            try:
                if Path(path).read_text().strip() == token:
                    seen.append(root)
            except OSError:
                pass
        ctx = ray.get_runtime_context()
        return {"host": socket.gethostname(), "machine": machine_id(), "pid": os.getpid(),
                "node": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "seen": seen,
                "python": sys.version.split()[0]}

    def info(self) -> dict:
        from pipelines.devices import memory_report, resident_models

        with self._lock:
            jobs = [{"id": j.job_id, "owner": j.owner, "kind": j.kind, "fraction": j.fraction,
                     "message": j.message} for j in self._jobs.values()]
        return {"model": self.model, "resident": resident_models(), "jobs": jobs, "memory": memory_report(),
                "jobs_done": self.jobs_done}

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            jc = self._jobs.get(job_id)
        if jc is None:
            return False
        jc.cancel()
        return True

    def poll(self, job_id: str) -> dict | None:
        """The job's reports since the last poll; preview and output files included as bytes when the studio
        does not see this worker's job folder. None when the job is not (or no longer) here."""
        with self._lock:
            jc = self._jobs.get(job_id)
            scratch = self._scratch.get(job_id)
        if jc is None:
            return None
        update = jc.take()
        if scratch is not None:
            update["scratch"] = str(jc.out_dir)
            update["files"] = self._ship(job_id, jc.out_dir, [update.get("preview"), *update.get("outputs", [])],
                                         preview=update.get("preview"))
        return update

    def run(self, payload: dict) -> dict:
        """Run one job. ``payload``: {"work": Work fields, "shared": the studio sees this worker's files,
        "files": {studio path: bytes} of inputs to write here first}. Never raises: the outcome says how it
        ended ({"ok": True, "result"} or {"error": "cancelled" | "user" | "internal", ...})."""
        from studio.executors import resolve_target
        from studio.executors.transfer import map_paths

        work = payload["work"]
        job_id = work["job_id"]
        shared = bool(payload.get("shared"))
        request = work["request"]
        scratch = None
        if shared:
            out_dir = Path(work["out_dir"])
            out_dir.mkdir(parents=True, exist_ok=True)
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f"iclora-{job_id[:8]}-"))
            out_dir = scratch / "out"
            out_dir.mkdir()
            inputs = {}
            for i, (orig, data) in enumerate((payload.get("files") or {}).items()):
                dest = scratch / "in" / str(i) / Path(orig).name
                dest.parent.mkdir(parents=True)
                dest.write_bytes(data)
                inputs[orig] = str(dest)
            request = map_paths(request, lambda p: inputs.get(p, p))
        jc = RemoteJobContext(work, out_dir, work.get("resume_from"))
        with self._lock:
            self._jobs[job_id] = jc
            self._shipped[job_id] = set()
            if scratch is not None:
                self._scratch[job_id] = scratch
        t0 = time.perf_counter()
        try:
            jc.raise_if_cancelled()
            result = resolve_target(work["target"])(request, jc, self.env)
            outcome: dict[str, Any] = {"ok": True, "result": result}
            if work.get("model"):
                self.model = work["model"]
        except BaseException as exc:  # noqa: BLE001  every ending is reported, none escapes the actor
            outcome = describe_error(exc)
        outcome["work_seconds"] = time.perf_counter() - t0
        outcome["last"] = jc.take()
        outcome["outputs"] = list(jc.outputs)
        outcome["scratch"] = str(out_dir) if scratch is not None else None
        if scratch is not None:
            done = self._shipped.get(job_id, set())
            outcome["files"] = _pack(out_dir, skip=lambda rel: rel in done)
            shutil.rmtree(scratch, ignore_errors=True)
        with self._lock:
            self._jobs.pop(job_id, None)
            self._shipped.pop(job_id, None)
            self._scratch.pop(job_id, None)
            self.jobs_done += 1
        return outcome

    # ---- helpers ----
    def _ship(self, job_id: str, out_dir: Path, paths: list, preview: str | None) -> dict[str, bytes]:
        files = {}
        done = self._shipped.setdefault(job_id, set())
        for p in paths:
            if not p:
                continue
            try:
                rel = Path(p).resolve().relative_to(out_dir.resolve()).as_posix()
            except ValueError:
                continue  # not in the job folder (e.g. an input): nothing to send
            if rel in done and p != preview:
                continue
            try:
                files[rel] = Path(p).read_bytes()
            except OSError:
                continue
            if p != preview:
                done.add(rel)
        return files


def _pack(folder: Path, skip) -> dict[str, bytes]:
    from studio.executors.transfer import pack_files

    return pack_files(folder, skip=skip)


def describe_error(exc: BaseException) -> dict:
    """How a job ended when it raised: cancelled, a user's mistake, a failure of the machine in plain words
    (pipelines.errors.plain_error), or a bug (type, message and traceback, logged by the studio with a log id)."""
    from pipelines.errors import Cancelled, UserError, plain_error
    from studio.jobs import JobCancelled

    if isinstance(exc, (JobCancelled, Cancelled)):
        return {"error": "cancelled"}
    if isinstance(exc, UserError):
        return {"error": "user", "message": str(exc)}
    plain = plain_error(exc)
    if plain is not None:
        return {"error": "user", "message": plain}
    return {"error": "internal", "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]}
