"""Server-side jobs: persisted, owned, cancellable work that outlives the browser tab.

The shape::

    manager = JobManager(outputs_dir)                   # opens outputs_dir/jobs.sqlite3, starts workers
    manager.register("generate", run_generate)          # fn(request: dict, ctx: JobContext) -> dict
    manager.register("probe", run_probe, lane="light")  # never waits behind GPU work
    job_id = manager.submit("alice", "generate", request)
    manager.get(job_id, "alice").progress                # what a gr.Timer poll reads
    manager.cancel(job_id, "alice")

Lanes. ``gpu`` jobs run on ``gpu_workers`` threads (default 1: strictly one at a time, FIFO in submit order),
because one model on one GPU is the scarce thing. ``light`` jobs (probe, previews, track rendering) run on a
separate small pool so a 10-minute generation never delays them.

Persistence. Every job is a row in SQLite (WAL mode) beside the outputs: status, request, result, progress,
message, preview, error. A page reopened after closing its tab reads the rows back. Progress updates
overwrite the row (never append), and pure-fraction updates are throttled to one write per
``progress_interval`` seconds, so a sampler calling back every step costs nothing.

Restart. When a JobManager opens a database, rows left ``running`` or ``queued`` by a previous process are
marked ``interrupted``. Queued jobs are NOT re-queued on purpose: after a crash or restart nobody is watching
them, their inputs may have been temporary uploads, and GPU minutes should not be spent on work the user may
no longer want. Kinds registered with ``resumable=True`` (training) keep that flag in the row, and
``manager.resume(job_id, owner)`` submits the same request again as a new job whose ``ctx.resume_from`` is
the old job's folder (where its checkpoints are). One database is meant for one server process at a time.

Failures. A job that raises UserError is ``failed`` with that message shown as-is; any other exception is
logged with its traceback under a short log id and shown as ``internal error (log id XXXX)``. Workers catch
everything, so no job can take the server down.

Ownership. Every read or cancel takes the owner. A job of another owner is reported exactly like a missing
one (JobNotFound), so ids cannot be probed. Outputs go to ``outputs_dir/<owner>/<job id>/``, a fresh folder
per job: outputs are never overwritten.

Executors. Where a job's work runs is an executor (studio.executors): by default in-process, in the lane thread,
as above; with ``executor=RayExecutor(...)`` the gpu lane gets one thread per Ray worker and the kinds that
register a ``WorkFn`` run on those workers. Either way this store is the one truth: the row records the worker
(``worker``) and how many tries it took (``attempts``: a lost worker is written into the row and the job runs once
more elsewhere), and progress, previews, outputs, cancels and the final state go through the same code.

Pure Python: no gradio, no torch.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import Cancelled, UserError, plain_error
from studio.security import validate_username

__all__ = [
    "DB_NAME", "Job", "JobCancelled", "JobCheck", "JobContext", "JobFn", "JobKind", "JobManager", "JobNotFound", "JobStatus",
    "JobStore", "Lane",
]

log = logging.getLogger("studio.jobs")

DB_NAME = "jobs.sqlite3"
SCHEMA_VERSION = 2  # 2: worker, attempts


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the server stopped while the job was queued or running

    @property
    def active(self) -> bool:
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def terminal(self) -> bool:
        return not self.active


class Lane(str, enum.Enum):
    GPU = "gpu"      # one model, one device: few workers, FIFO
    LIGHT = "light"  # cheap CPU work that must answer while the GPU is busy


class JobCancelled(Exception):
    """Raised inside a job (by ``ctx.raise_if_cancelled()``) to stop it; the job ends as ``cancelled``."""


class JobNotFound(UserError, KeyError):
    """No such job for this owner (also raised for other owners' jobs: ids must not be probeable)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, as the UI and API see it."""

    id: str
    seq: int                 # global submit order (SQLite rowid)
    owner: str
    kind: str
    lane: Lane
    status: JobStatus
    request: dict[str, Any]
    result: dict[str, Any] | None
    progress: float          # 0..1
    message: str             # latest human-readable step ("step 12/30", "cancelling...")
    preview: str | None      # path of the latest preview file, if any
    error: str | None        # what to show the user when failed
    log_id: str | None       # for internal errors: grep the server log for it
    outputs: list[str]
    out_dir: str
    resumable: bool
    resumed_from: str | None
    created: float           # unix seconds
    started: float | None
    finished: float | None
    updated: float
    worker: str | None = None  # where it runs or ran ("in-process", "gpu-1 @ host"), once started
    attempts: int = 0          # 1 once started; 2 when a lost worker made it run again elsewhere

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def elapsed(self) -> float | None:
        """Seconds running so far (or in total once finished); None before it starts."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings) for API answers and gr.JSON."""
        d = dataclasses.asdict(self)
        d["lane"], d["status"] = self.lane.value, self.status.value
        return d


# ----------------------------------------------------------------------------------------------------------
# Storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    owner        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    lane         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    request      TEXT    NOT NULL,
    result       TEXT,
    progress     REAL    NOT NULL DEFAULT 0,
    message      TEXT    NOT NULL DEFAULT '',
    preview      TEXT,
    error        TEXT,
    log_id       TEXT,
    outputs      TEXT    NOT NULL DEFAULT '[]',
    out_dir      TEXT    NOT NULL,
    resumable    INTEGER NOT NULL DEFAULT 0,
    resumed_from TEXT,
    created      REAL    NOT NULL,
    started      REAL,
    finished     REAL,
    updated      REAL    NOT NULL,
    worker       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, lane, seq);
"""

_JSON_FIELDS = ("request", "result", "outputs")
_UPDATABLE = frozenset({
    "status", "result", "progress", "message", "preview", "error", "log_id", "outputs", "started", "finished",
    "worker", "attempts",
})
# columns added after version 1: a database written by an older studio gets them on open
_ADDED_COLUMNS = (("worker", "TEXT"), ("attempts", "INTEGER NOT NULL DEFAULT 0"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # small numpy arrays
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, allow_nan=False)


class JobStore:
    """The jobs table in one SQLite file. Thread-safe: one connection guarded by a lock.

    Status changes are conditional (``transition(id, from_statuses, ...)``), so a late writer can never
    overwrite a state it did not expect (e.g. a worker of a dead manager finishing a job already marked
    interrupted).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL; no fsync per progress tick
            self._conn.executescript(_SCHEMA)
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(jobs)").fetchall()}
            for name, decl in _ADDED_COLUMNS:
                if name not in have:
                    self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @staticmethod
    def _row_to_job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], seq=row["seq"], owner=row["owner"], kind=row["kind"], lane=Lane(row["lane"]),
            status=JobStatus(row["status"]), request=json.loads(row["request"]),
            result=json.loads(row["result"]) if row["result"] is not None else None,
            progress=float(row["progress"]), message=row["message"], preview=row["preview"], error=row["error"],
            log_id=row["log_id"], outputs=json.loads(row["outputs"]), out_dir=row["out_dir"],
            resumable=bool(row["resumable"]), resumed_from=row["resumed_from"], created=row["created"],
            started=row["started"], finished=row["finished"], updated=row["updated"], worker=row["worker"],
            attempts=int(row["attempts"] or 0),
        )

    def insert(self, *, job_id: str, owner: str, kind: str, lane: Lane, request: dict, out_dir: str,
               resumable: bool = False, resumed_from: str | None = None) -> Job:
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT INTO jobs (id, owner, kind, lane, status, request, message, out_dir, resumable, resumed_from,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, owner, kind, Lane(lane).value, JobStatus.QUEUED.value, _dumps(request), "queued", out_dir,
                 int(resumable), resumed_from, now, now),
            )
            return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row_to_job(row) if row is not None else None

    def list(self, owner: str, limit: int = 50, *, statuses: Iterable[JobStatus] | None = None,
             kind: str | None = None) -> list[Job]:
        """``owner``'s jobs, newest first."""
        sql, args = "SELECT * FROM jobs WHERE owner = ?", [owner]
        if statuses is not None:
            values = [JobStatus(s).value for s in statuses]
            if not values:
                return []
            sql += f" AND status IN ({','.join('?' * len(values))})"
            args += values
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(max(1, min(int(limit), 10_000)))
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._row_to_job(r) for r in rows]

    def count(self, owner: str, statuses: Iterable[JobStatus]) -> int:
        """How many of ``owner``'s jobs have one of ``statuses``."""
        values = [JobStatus(x).value for x in statuses]
        with self._lock:
            row = self._conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ({','.join('?' * len(values))})",
                [owner, *values]).fetchone()
        return int(row[0])

    def transition(self, job_id: str, from_statuses: Iterable[JobStatus], **fields: Any) -> bool:
        """Update ``fields`` of the job only if its status is one of ``from_statuses``; True if it was."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update job fields {sorted(unknown)}")
        cols, args = ["updated = ?"], [time.time()]
        for name, value in fields.items():
            if name in _JSON_FIELDS:
                value = None if value is None else _dumps(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, os.PathLike):
                value = os.fspath(value)
            cols.append(f"{name} = ?")
            args.append(value)
        states = [JobStatus(s).value for s in from_statuses]
        sql = f"UPDATE jobs SET {', '.join(cols)} WHERE id = ? AND status IN ({','.join('?' * len(states))})"
        with self._lock:
            cur = self._conn.execute(sql, [*args, job_id, *states])
        return cur.rowcount == 1

    def mark_interrupted(self, message: str) -> int:
        """Mark every queued/running row interrupted (they belonged to a process that is gone)."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "UPDATE jobs SET status = ?, message = ?, finished = ?, updated = ? WHERE status IN (?, ?)",
                (JobStatus.INTERRUPTED.value, message, now, now, JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            )
        return cur.rowcount

    def ids_with_status(self, status: JobStatus) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM jobs WHERE status = ? ORDER BY seq", (status.value,)).fetchall()
        return [r[0] for r in rows]

    def ahead_of(self, job: Job) -> int:
        """How many jobs of the same lane run or wait before ``job`` (0: it is next or running)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE lane = ? AND seq < ? AND status IN (?, ?)",
                (job.lane.value, job.seq, JobStatus.QUEUED.value, JobStatus.RUNNING.value),
            ).fetchone()
        return int(row[0])


# ----------------------------------------------------------------------------------------------------------
# Running

class JobContext:
    """What a job function gets besides its request: progress reporting, cancellation, its output folder."""

    def __init__(self, *, job: Job, store: JobStore, cancel_event: threading.Event, out_dir: Path,
                 resume_from: Path | None, progress_interval: float):
        self.job_id = job.id
        self.owner = job.owner
        self.kind = job.kind
        self.seq = job.seq
        self.out_dir = out_dir
        self.resume_from = resume_from  # folder of the interrupted job this one resumes (resumable kinds)
        self._store = store
        self._cancel = cancel_event
        self._interval = progress_interval
        self._last_write = 0.0
        self.fraction = 0.0
        self.message: str | None = None
        self.preview: str | None = None
        self.outputs: list[str] = []
        self._write_failed = False
        # where the job's work runs (studio.executors): set by the JobManager; a WorkFn hands its work to
        # ``executor`` (``local_executor`` for work that needs no GPU)
        self.executor = None
        self.local_executor = None
        self.worker: str | None = None

    @property
    def cancelled(self) -> bool:
        """True once the owner asked to cancel; check it between steps."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.job_id} cancelled")

    def progress(self, fraction: float, message: str | None = None, preview: str | os.PathLike | None = None) -> None:
        """Report progress (0..1), optionally a step message and the path of a preview file.

        Overwrites the job's row. Fraction-only updates are written at most once per ``progress_interval``;
        a new message or preview is always written.
        """
        fraction = min(1.0, max(0.0, float(fraction)))
        fields: dict[str, Any] = {"progress": fraction}
        changed = False
        if message is not None and message != self.message:
            self.message, changed = message, True
            fields["message"] = message
        if preview is not None and os.fspath(preview) != self.preview:
            self.preview, changed = os.fspath(preview), True
            fields["preview"] = self.preview
        self.fraction = fraction
        now = time.monotonic()
        if changed or fraction >= 1.0 or now - self._last_write >= self._interval:
            self._last_write = now
            self._write(**fields)

    def add_output(self, path: str | os.PathLike) -> None:
        """Record a finished output file (shown in history even if the job later fails or is cancelled)."""
        p = os.fspath(path)
        if p not in self.outputs:
            self.outputs.append(p)
            self._write(outputs=self.outputs)

    def set_worker(self, worker: str | None, attempt: int = 1) -> None:
        """Record where the job runs (shown in the queue and History) and which try this is."""
        self.worker = worker
        self._write(worker=worker, attempts=int(attempt))

    def flush(self) -> None:
        """Write the latest throttled fraction (called by the manager when the job ends)."""
        self._write(progress=self.fraction)

    def _write(self, **fields: Any) -> None:
        """Progress and outputs are best effort: a job database that cannot be written (disk full, read-only)
        must not stop the work itself; the outputs stay in memory and go into the final row."""
        try:
            self._store.transition(self.job_id, (JobStatus.RUNNING,), **fields)
        except (sqlite3.Error, OSError) as exc:
            if not self._write_failed:
                log.warning("job %s: progress not saved (%s)", self.job_id, plain_error(exc) or exc)
            self._write_failed = True


JobFn = Callable[[dict, JobContext], "dict | None"]


JobCheck = Callable[[str, dict], "dict | None"]  # (owner, request) -> checked request (None: unchanged)


@dataclass(frozen=True)
class JobKind:
    name: str
    fn: JobFn
    lane: Lane
    resumable: bool
    check: JobCheck | None = None  # run at submit, in the caller's thread, before the job is recorded


_KEEP = object()


class _LaneWorkers:
    """A FIFO of job ids served by ``count`` daemon threads."""

    def __init__(self, lane: Lane, count: int, run: Callable[[str], None]):
        if count < 1:
            raise ValueError(f"the {lane.value} lane needs at least one worker, got {count}")
        self.lane = lane
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._run = run
        self._stopping = False
        self.threads = [
            threading.Thread(target=self._loop, name=f"jobs-{lane.value}-{i}", daemon=True) for i in range(count)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        while True:
            job_id = self.queue.get()
            if job_id is None or self._stopping:
                return
            try:
                self._run(job_id)
            except BaseException:  # never let one job kill the worker
                log.exception("jobs worker %s: unexpected error around job %s", threading.current_thread().name, job_id)

    def stop(self) -> None:
        self._stopping = True
        for _ in self.threads:
            self.queue.put(None)

    def join(self, deadline: float | None) -> None:
        for t in self.threads:
            if t.is_alive():
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class JobManager:
    """Submit, run, watch and cancel jobs; one per server process.

    Args:
        outputs_dir: root of all outputs; jobs write to ``outputs_dir/<owner>/<job id>/``.
        db_path: the SQLite file (default ``outputs_dir/jobs.sqlite3``).
        gpu_workers: threads for the ``gpu`` lane (1 = strictly one GPU job at a time).
        light_workers: threads for the ``light`` lane.
        progress_interval: minimum seconds between fraction-only progress writes of one job.
        start: start the worker threads now (else call ``start()``).
        max_queued_per_user: how many jobs one owner may have waiting (not yet running); None = no cap. A
            submit beyond it is refused with a message (one user cannot fill the queue for everyone).
        executor: where the work of ``WorkFn`` kinds runs (studio.executors); None = in-process, as always.
            With a remote executor (Ray) give the gpu lane ``executor.capacity`` workers.
        local_executor: the in-process executor (its WorkerEnv holds the studio's engine service); made here
            when not given.
    """

    def __init__(self, outputs_dir: str | os.PathLike, *, db_path: str | os.PathLike | None = None,
                 gpu_workers: int = 1, light_workers: int = 2, progress_interval: float = 0.2, start: bool = True,
                 max_queued_per_user: int | None = None, executor=None, local_executor=None):
        if gpu_workers < 1 or light_workers < 1:
            raise ValueError(f"each lane needs at least one worker, got gpu={gpu_workers} light={light_workers}")
        self.outputs_dir = Path(outputs_dir).expanduser().resolve()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(db_path if db_path is not None else self.outputs_dir / DB_NAME)
        self.progress_interval = float(progress_interval)
        self.max_queued_per_user = max_queued_per_user
        self.interrupted_at_start = self.store.mark_interrupted("interrupted: the server stopped before this job finished")
        if self.interrupted_at_start:
            log.warning("marked %d job(s) left by a previous server as interrupted", self.interrupted_at_start)
        self._kinds: dict[str, JobKind] = {}
        self._cond = threading.Condition(threading.RLock())
        self._cancel_events: dict[str, threading.Event] = {}
        # final states the database refused (disk full, read-only): shown from memory, written when it can be
        self._unsaved: dict[str, dict[str, Any]] = {}
        self._retrier: threading.Thread | None = None
        self._lanes = {
            Lane.GPU: _LaneWorkers(Lane.GPU, gpu_workers, self._run),
            Lane.LIGHT: _LaneWorkers(Lane.LIGHT, light_workers, self._run),
        }
        from studio.executors import InProcessExecutor

        self.local_executor = local_executor or InProcessExecutor()
        self.executor = executor or self.local_executor
        self._started = False
        self._closed = False
        if start:
            self.start()

    # -- setup -----------------------------------------------------------------------------------------------

    def register(self, kind: str, fn: JobFn, lane: Lane | str = Lane.GPU, *, resumable: bool = False,
                 check: JobCheck | None | object = _KEEP) -> None:
        """Declare a kind of job. ``fn(request, ctx) -> dict | None`` runs on ``lane``'s workers.

        ``check(owner, request) -> request | None`` runs at every submit of this kind (UI, API, resume), in the
        submitting thread and before anything is recorded: it raises UserError for a request that must not be
        queued (over the size limits, a missing or unreadable input) and may return a normalised request.
        Registering a kind again without ``check`` keeps the check it had (a wrapper of ``fn`` stays checked).
        """
        if not kind or not isinstance(kind, str):
            raise ValueError("job kind must be a non-empty string")
        with self._cond:
            if check is _KEEP:
                old = self._kinds.get(kind)
                check = old.check if old is not None else None
            self._kinds[kind] = JobKind(kind, fn, Lane(lane), bool(resumable), check)  # type: ignore[arg-type]

    @property
    def kinds(self) -> dict[str, JobKind]:
        return dict(self._kinds)

    def start(self) -> None:
        with self._cond:
            if not self._started:
                self._started = True
                for lane in self._lanes.values():
                    lane.start()

    def shutdown(self, *, cancel_running: bool = True, timeout: float | None = 10.0) -> None:
        """Stop the workers after their current job; jobs still queued are marked interrupted.

        ``cancel_running`` flags running jobs as cancelled so they stop at their next check. Workers that do not
        finish within ``timeout`` are left behind (daemon threads); their jobs show as interrupted on next start.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for lane in self._lanes.values():
                lane.stop()
            if cancel_running:
                for event in self._cancel_events.values():
                    event.set()
            for job in self.store.ids_with_status(JobStatus.QUEUED):
                self.store.transition(job, (JobStatus.QUEUED,), status=JobStatus.INTERRUPTED, finished=time.time(),
                                      message="interrupted: the server stopped before this job started")
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._started:
            for lane in self._lanes.values():
                lane.join(deadline)
        if self.executor is not self.local_executor:
            try:
                self.executor.close()
            except Exception:  # noqa: BLE001  shutting down: log, never raise
                log.exception("closing the %s executor failed", self.executor.name)

    def __enter__(self) -> "JobManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- the API event handlers call -------------------------------------------------------------------------

    def submit(self, owner: str, kind: str, request: Any) -> str:
        """Queue a job and return its id. ``request`` is a dict, a dataclass or has ``to_dict()``; it is stored
        as JSON and the job function receives that JSON form back (so a re-run sees exactly what was stored).
        Raises UserError for an invalid owner or an unknown kind, TypeError for a request that is not JSON-able.
        """
        return self._add(owner, kind, request, enqueue=True)

    def run_now(self, owner: str, kind: str, request: Any) -> Job:
        """Record a job and run it in the CALLING thread, bypassing the lanes; returns the finished job.

        For hosts where the GPU exists only inside the request's own call (Hugging Face ZeroGPU: call this
        inside the @spaces.GPU function, and serialise with gradio's concurrency_id instead). The job still gets
        a row, an output folder, progress and history like any other.
        """
        job_id = self._add(owner, kind, request, enqueue=False)
        self._run(job_id)
        return self.store.get(job_id)  # type: ignore[return-value]

    def _add(self, owner: str, kind: str, request: Any, *, enqueue: bool, resume_of: Job | None = None) -> str:
        validate_username(owner)
        spec = self._kinds.get(kind)
        if spec is None:
            raise UserError(f"unknown job kind {kind!r}; known kinds: {', '.join(sorted(self._kinds)) or 'none'}")
        payload = json.loads(_dumps(_request_dict(request)))
        self._check_queue_room(owner)  # cheap: before the (possibly slow) input checks
        if spec.check is not None:
            checked = spec.check(owner, payload)
            if checked is not None:
                payload = json.loads(_dumps(_request_dict(checked)))
        job_id = uuid.uuid4().hex
        out_dir = self.outputs_dir / owner / job_id
        with self._cond:
            if self._closed:
                raise UserError("the server is shutting down; submit the job again after it restarts")
            self._check_queue_room(owner)
            try:
                self.store.insert(job_id=job_id, owner=owner, kind=kind, lane=spec.lane, request=payload,
                                  out_dir=str(out_dir), resumable=spec.resumable,
                                  resumed_from=resume_of.id if resume_of else None)
            except (sqlite3.Error, OSError) as exc:
                plain = plain_error(exc)
                if plain is None:
                    raise
                raise UserError(f"the job could not be recorded on the server ({plain}); try again later") from None
            self._cancel_events[job_id] = threading.Event()
            if enqueue:
                self._lanes[spec.lane].queue.put(job_id)  # under the lock: queue order == seq order
        return job_id

    def _check_queue_room(self, owner: str) -> None:
        cap = self.max_queued_per_user
        if cap is None:
            return
        waiting = self.store.count(owner, (JobStatus.QUEUED,))
        if waiting >= cap:
            raise UserError(f"you already have {waiting} job(s) waiting in the queue, the most one user may have "
                            f"on this server ({cap}); wait for one to start or cancel one (the server's owner can "
                            "raise it: `python app.py --max-queued-jobs N`)")

    def get(self, job_id: str, owner: str) -> Job:
        """The job, if ``owner`` owns it; JobNotFound otherwise (also for other owners' jobs)."""
        job = self._load(job_id) if isinstance(job_id, str) else None
        if job is None or job.owner != owner:
            raise JobNotFound(f"no job {job_id!r} for this user")
        return job

    def _load(self, job_id: str) -> Job | None:
        return self._overlay(self.store.get(job_id))

    def _overlay(self, job: Job | None) -> Job | None:
        """The job as it really is: a final state the database could not store yet wins over its row."""
        if job is None or not self._unsaved or not job.status.active:
            return job
        pending = self._unsaved.get(job.id)
        if pending is None:
            return job
        fields = {k: v for k, v in pending.items() if k in {f.name for f in dataclasses.fields(Job)}}
        if "status" in fields:
            fields["status"] = JobStatus(fields["status"])
        return dataclasses.replace(job, updated=time.time(), **fields)

    def list(self, owner: str, limit: int = 50, *, active_only: bool = False, kind: str | None = None) -> list[Job]:
        """``owner``'s jobs, newest first (``active_only``: queued and running only)."""
        statuses = (JobStatus.QUEUED, JobStatus.RUNNING) if active_only else None
        jobs = [self._overlay(j) for j in self.store.list(owner, limit, statuses=statuses, kind=kind)]
        return [j for j in jobs if j is not None and (not active_only or j.active)]

    def position(self, job_id: str, owner: str) -> int | None:
        """Jobs of the same lane running or waiting before this one (0: next or running); None once finished."""
        job = self.get(job_id, owner)
        return self.store.ahead_of(job) if job.status is JobStatus.QUEUED else (0 if job.active else None)

    def cancel(self, job_id: str, owner: str) -> bool:
        """Cancel ``owner``'s job. A queued job is cancelled at once and never runs; a running one is flagged and
        stops at its next check. Returns False when the job had already finished."""
        with self._cond:
            job = self.get(job_id, owner)
            if job.status is JobStatus.QUEUED and self.store.transition(
                    job_id, (JobStatus.QUEUED,), status=JobStatus.CANCELLED, finished=time.time(),
                    message="cancelled before it started"):
                self._cancel_events.pop(job_id, None)
                self._cond.notify_all()
                return True
            event = self._cancel_events.get(job_id)
            if event is not None and job.status is JobStatus.RUNNING:
                event.set()  # the job stops at its next check, whether or not the message below is saved
                try:
                    self.store.transition(job_id, (JobStatus.RUNNING,), message="cancelling...")
                except (sqlite3.Error, OSError) as exc:
                    log.warning("job %s: 'cancelling' not saved (%s)", job_id, plain_error(exc) or exc)
                return True
            return False

    def workers(self, viewer: str | None = None) -> list[dict]:
        """Every worker of this studio (in-process, or each Ray actor): name, host, state, model, memory, and the
        jobs it runs. Another user's job shows as ``{"id": None, "owner": None, "kind": ...}``: ids stay private.
        ``viewer=None`` (server-side callers, tests) sees everything."""
        rows = self.executor.workers()
        if self.executor is not self.local_executor:
            rows = rows + [w for w in self.local_executor.workers() if w.get("jobs")]  # CPU work, if any
        out = []
        for w in rows:
            w = dict(w)
            w["jobs"] = [j if viewer is None or j.get("owner") == viewer else {"id": None, "owner": None,
                                                                                 "kind": j.get("kind")}
                         for j in w.get("jobs") or []]
            out.append(w)
        return out

    def drain(self, worker: str) -> bool:
        """Take ``worker`` out of service after its current job (see the executor's ``drain``)."""
        return self.executor.drain(worker)

    def resume(self, job_id: str, owner: str) -> str:
        """Submit an interrupted/failed/cancelled job of a resumable kind again; returns the new job id. The new
        job's ``ctx.resume_from`` is the old job's output folder."""
        job = self.get(job_id, owner)
        if not job.resumable:
            raise UserError(f"{job.kind} jobs cannot be resumed; submit a new one")
        if job.status not in (JobStatus.INTERRUPTED, JobStatus.FAILED, JobStatus.CANCELLED):
            raise UserError(f"job {job_id} is {job.status.value}; only interrupted, failed or cancelled jobs resume")
        return self._add(owner, job.kind, job.request, enqueue=True, resume_of=job)

    def wait(self, job_id: str, timeout: float | None = None, *, owner: str | None = None) -> Job:
        """Block until the job finishes (any terminal status) and return it; TimeoutError after ``timeout`` s.
        With ``owner`` the ownership check of ``get`` applies; without it (tests, internal callers) it does not.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self.get(job_id, owner) if owner is not None else self._load(job_id)
                if job is None:
                    raise JobNotFound(f"no job {job_id!r}")
                if job.status.terminal:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))

    # -- the worker side -------------------------------------------------------------------------------------

    def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        """Write the job's final state. A database that refuses it (disk full, read-only) does not leave the job
        'running': the state is kept in memory (every read shows it, waiters wake up), retried every few
        seconds, and a row still 'running' at the next start is marked interrupted."""
        fields = dict(fields, status=status, finished=time.time())
        with self._cond:
            try:
                self._write_final(job_id, fields)
            except (sqlite3.Error, OSError) as exc:
                log.error("job %s: final state %s not saved (%s); kept in memory and retried", job_id,
                          status.value, plain_error(exc) or exc)
                self._unsaved[job_id] = fields
                self._start_retrier()
            self._cancel_events.pop(job_id, None)
            self._cond.notify_all()

    def _write_final(self, job_id: str, fields: dict[str, Any]) -> None:
        last: BaseException | None = None
        for delay in (0.0, 0.05, 0.2):  # a locked or briefly full database often recovers at once
            if delay:
                time.sleep(delay)
            try:
                self.store.transition(job_id, (JobStatus.RUNNING, JobStatus.QUEUED), **fields)
                return
            except (sqlite3.Error, OSError) as exc:
                last = exc
        raise last  # type: ignore[misc]

    def _start_retrier(self) -> None:
        if self._retrier is not None and self._retrier.is_alive():
            return
        self._retrier = threading.Thread(target=self._retry_unsaved, name="jobs-retry-final", daemon=True)
        self._retrier.start()

    def _retry_unsaved(self, interval: float = 2.0) -> None:
        while True:
            time.sleep(interval)
            with self._cond:
                for job_id, fields in list(self._unsaved.items()):
                    try:
                        self.store.transition(job_id, (JobStatus.RUNNING, JobStatus.QUEUED), **fields)
                    except (sqlite3.Error, OSError):
                        continue
                    self._unsaved.pop(job_id, None)
                    log.info("job %s: final state saved after all", job_id)
                if not self._unsaved or self._closed:
                    return

    def _end_fields(self, job: Job, exc: BaseException) -> tuple[JobStatus, dict[str, Any]]:
        """The final state for a job that raised ``exc``: cancelled, a user's mistake, a failure of the machine
        in plain words (disk full, permission denied: <folder>), or a bug (logged with a log id)."""
        if isinstance(exc, (JobCancelled, Cancelled)):
            return JobStatus.CANCELLED, {"message": "cancelled"}
        if isinstance(exc, UserError):
            return JobStatus.FAILED, {"error": str(exc), "message": f"failed: {exc}"}
        plain = plain_error(exc)
        if plain is not None:
            log.warning("job %s (%s, owner %s) failed: %s", job.id, job.kind, job.owner, plain, exc_info=exc)
            return JobStatus.FAILED, {"error": plain, "message": f"failed: {plain}"}
        log_id = secrets.token_hex(4)
        log.error("job %s (%s, owner %s) failed [log id %s]", job.id, job.kind, job.owner, log_id, exc_info=exc)
        text = f"internal error (log id {log_id})"
        return JobStatus.FAILED, {"error": text, "log_id": log_id, "message": text}

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        with self._cond:
            event = self._cancel_events.get(job_id)
            if event is None:
                return  # cancelled (or interrupted) while it waited
            try:
                started = self.store.transition(job_id, (JobStatus.QUEUED,), status=JobStatus.RUNNING,
                                                started=time.time(), message="running", attempts=1)
            except (sqlite3.Error, OSError) as exc:  # it cannot even be marked running: end it, plainly
                status, fields = self._end_fields(job, exc)
                self._finish(job_id, status, **fields)
                return
            if not started:
                return
        spec = self._kinds.get(job.kind)
        ctx: JobContext | None = None
        try:
            if spec is None:
                raise RuntimeError(f"job kind {job.kind!r} is no longer registered")
            out_dir = Path(job.out_dir)
            out_dir.mkdir(parents=True, exist_ok=False)  # a fresh folder: never write over older outputs
            resume_from = None
            if job.resumed_from:
                old = self.store.get(job.resumed_from)
                resume_from = Path(old.out_dir) if old is not None and Path(old.out_dir).is_dir() else None
            ctx = JobContext(job=job, store=self.store, cancel_event=event, out_dir=out_dir, resume_from=resume_from,
                             progress_interval=self.progress_interval)
            ctx.executor, ctx.local_executor = self.executor, self.local_executor
            ctx.raise_if_cancelled()
            result = spec.fn(dict(job.request), ctx)
            result_dict = json.loads(_dumps({} if result is None else _result_dict(result)))
            outputs = _merge_outputs(ctx.outputs, result_dict.get("outputs"))
            # a message reported at 100% is the job's summary ("control ready", "downloaded"); one from before
            # ("writing the mp4") would read as if the finished job were still at it
            final = ctx.message if ctx.message and ctx.fraction >= 1.0 else "done"
            message = "finished before the cancel took effect" if ctx.cancelled else final
            status, fields = JobStatus.DONE, dict(result=result_dict, outputs=outputs, progress=1.0, message=message)
        except BaseException as exc:  # noqa: BLE001  whatever a job raises, it must reach a final state
            status, fields = self._end_fields(job, exc)
            if ctx is not None:
                ctx.flush()  # best effort, never raises
                if ctx.outputs:
                    fields["outputs"] = list(ctx.outputs)  # what it finished stays listed
        if ctx is not None:
            fields["worker"] = ctx.worker or "in-process"  # a plain job function runs in its lane thread
        self._finish(job_id, status, **fields)


def _request_dict(request: Any) -> dict:
    if isinstance(request, Mapping):
        return dict(request)
    if dataclasses.is_dataclass(request) and not isinstance(request, type):
        return dataclasses.asdict(request)
    to_dict = getattr(request, "to_dict", None)
    if callable(to_dict):
        d = to_dict()
        if isinstance(d, Mapping):
            return dict(d)
    raise TypeError(f"a job request must be a dict, a dataclass or have to_dict(), not {type(request).__name__}")


def _result_dict(result: Any) -> dict:
    try:
        return _request_dict(result)
    except TypeError:
        raise TypeError(f"a job function must return a dict or None, not {type(result).__name__}") from None


def _merge_outputs(recorded: list[str], from_result: Any) -> list[str]:
    merged = list(recorded)
    extra = [from_result] if isinstance(from_result, str) else list(from_result or [])
    for p in extra:
        if isinstance(p, str) and p not in merged:
            merged.append(p)
    return merged
