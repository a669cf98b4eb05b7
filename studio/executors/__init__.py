"""Where jobs run: an executor behind one small interface (submit, progress, cancel, result).

The job system (studio.jobs) owns the queue, the SQLite rows, ownership and the final states; an executor only
runs the work of a job somewhere and reports back. Two executors exist:

    InProcessExecutor   the default: the work runs in the job's own lane thread, in this process, exactly as the
                        studio always ran it (progress is written straight into the row by the JobContext).
    RayExecutor         optional (``python app.py --ray auto`` / ``--ray ray://HEAD:10001``, studio.executors.ray):
                        GPU work runs in Ray actors, one model resident per actor; progress, previews, outputs,
                        cancels and results cross the boundary and land in the same SQLite row.

A job kind opts in by registering a ``WorkFn`` instead of a plain function: ``WorkFn("studio.kinds.generate:
generate_work", ...)``. Its target is a module-level function ``fn(request, jc, env)`` importable by name on any
worker; ``env`` (``WorkerEnv``) holds what the worker process owns (the engine service and its model cache, the
models folder). Called with a request and a JobContext, the WorkFn builds a ``Work`` and drives it through the job's
executor with ``execute``: submit, then progress and cancel until the result, and one more try on another worker
when a worker is lost.

Interface (``Executor``)::

    ticket = executor.submit(work, jc)        # may wait for a free worker (a cancel ends the wait)
    executor.progress(ticket) -> [Update]     # what the work reported since the last call
    executor.cancel(ticket)                   # the work stops at its next check, on its worker
    executor.result(ticket, timeout) -> dict  # TimeoutError while it runs; the work's own error, or WorkerLost

No gradio, no torch, no Ray here (Ray is imported only by studio.executors.ray, only when asked for).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import UserError

log = logging.getLogger("studio.executors")

__all__ = ["Executor", "InProcessExecutor", "Update", "Work", "WorkFn", "WorkerEnv", "WorkerLost", "execute",
           "resolve_target", "POLL_SECONDS"]

POLL_SECONDS = 0.25  # how often a job's driver thread relays progress and checks for a cancel


class WorkerLost(UserError):
    """The worker running a job went away (its process died, its node was lost, the cluster connection broke).

    A UserError so the job's final state shows the message as-is when the job cannot run again."""

    def __init__(self, message: str, worker: str | None = None):
        super().__init__(message)
        self.worker = worker


@dataclass
class Work:
    """One job's work as an executor sees it (plain data: it crosses process and host boundaries)."""

    job_id: str
    owner: str
    kind: str
    target: str                     # "package.module:function", called as fn(request, jc, env)
    request: dict
    out_dir: str
    resume_from: str | None = None
    gpus: int = 1                   # GPUs the work needs; 0 = CPU work (always runs in-process)
    model: str | None = None        # the model the work loads: dispatch prefers a worker that holds it
    needs_shared: bool = False      # the worker must see the studio's outputs folder itself (training)
    seq: int = 0                    # the job's submit order (FIFO among waiting work)
    attempt: int = 1
    avoid: str | None = None        # a worker not to use (the one just lost)
    # in-process only, never shipped: the kind's own call fn(request, jc) with the studio's engine service
    local: Callable | None = field(default=None, repr=False, compare=False)

    def shippable(self) -> dict:
        """The plain fields (what a remote worker receives)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "local"}


@dataclass
class Update:
    """Progress the work reported: any of a fraction, a message, a preview file, finished output files."""

    fraction: float | None = None
    message: str | None = None
    preview: str | None = None
    outputs: list[str] = field(default_factory=list)


class WorkerEnv:
    """What a worker process owns and every job run there shares: the engine service (its model cache holds one
    model), the models folder. One per process: the studio's own for in-process work, one per Ray actor."""

    def __init__(self, models_dir: str | os.PathLike | None = None, service: Any = None, name: str = "in-process"):
        self.models_dir = os.fspath(models_dir) if models_dir else None
        self._service = service
        self.name = name

    @property
    def service(self):
        if self._service is None:
            from pipelines.service import EngineService

            self._service = EngineService(models_dir=self.models_dir)
        return self._service


def resolve_target(target: str) -> Callable:
    """``"pkg.module:function"`` -> the function (imported on the worker that runs it)."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"a work target is 'package.module:function', got {target!r}")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


class Executor:
    """Runs jobs' work somewhere. Subclasses implement the four calls; ``workers()`` feeds the Workers panel."""

    name = "executor"
    capacity = 1  # how many jobs it runs at once (the job system gives its GPU lane this many threads)

    def submit(self, work: Work, jc) -> Any:
        raise NotImplementedError

    def progress(self, ticket) -> list[Update]:
        raise NotImplementedError

    def cancel(self, ticket) -> None:
        raise NotImplementedError

    def result(self, ticket, timeout: float | None = None) -> dict:
        raise NotImplementedError

    def where(self, ticket) -> str:
        return self.name

    def workers(self) -> list[dict]:
        return []

    def drain(self, worker: str) -> bool:
        """Stop giving new jobs to ``worker``; its current job finishes first. False if there is no such worker."""
        return False

    def close(self) -> None:
        pass


@dataclass
class _LocalTicket:
    work: Work
    outcome: Any = None
    error: BaseException | None = None


class InProcessExecutor(Executor):
    """Today's behaviour: the work runs at once, in the calling (lane) thread, on this process's WorkerEnv."""

    name = "in-process"

    def __init__(self, env: WorkerEnv | None = None):
        self.env = env or WorkerEnv()
        self._lock = threading.Lock()
        self._running: dict[str, Work] = {}

    @property
    def capacity(self) -> int:  # the job system's gpu_workers decides; one model, one device
        return 1

    def submit(self, work: Work, jc) -> _LocalTicket:
        ticket = _LocalTicket(work)
        with self._lock:
            self._running[work.job_id] = work
        _set_worker(jc, self.name, work.attempt)  # before it runs: the queue shows where it runs
        try:
            if work.local is not None:
                ticket.outcome = work.local(work.request, jc)
            else:
                ticket.outcome = resolve_target(work.target)(work.request, jc, self.env)
        except BaseException as exc:  # noqa: BLE001  handed to result(), where the job system sees it
            ticket.error = exc
        finally:
            with self._lock:
                self._running.pop(work.job_id, None)
        return ticket

    def progress(self, ticket) -> list[Update]:
        return []  # the work wrote its progress into the job's row itself

    def cancel(self, ticket) -> None:
        pass  # the work reads the job's own cancel flag

    def result(self, ticket: _LocalTicket, timeout: float | None = None) -> dict:
        if ticket.error is not None:
            raise ticket.error
        return ticket.outcome

    def workers(self) -> list[dict]:
        from pipelines.devices import memory_report, resident_models

        with self._lock:
            running = list(self._running.values())
        from pipelines.parallel import warm_group

        rows = [{"name": "in-process", "executor": self.name, "host": _hostname(), "state":
                 "busy" if running else "idle", "model": ", ".join(resident_models()) or None,
                 "jobs": [{"id": w.job_id, "owner": w.owner, "kind": w.kind} for w in running],
                 "memory": memory_report(), "gpus": None, "restarts": 0}]
        group = warm_group()
        if group is not None:  # the split generations' K processes, warm between jobs (pipelines.parallel)
            rows.append({"name": f"split group ({group['world']} x {group['mode']})", "executor": self.name,
                         "host": _hostname(), "state": f"warm · {group['jobs']} job(s) · idle {group['idle_s']:.0f} s",
                         "model": f"{group['model']} ({group['tier']})", "jobs": [], "memory": None,
                         "gpus": [str(i) for i in range(group["world"])], "restarts": 0})
        return rows


def _hostname() -> str:
    import socket

    return socket.gethostname()


def execute(executor: Executor, work: Work, jc, *, retries: int = 1) -> dict:
    """Run ``work`` on ``executor`` for the job ``jc``: relay its progress into the job's row, pass a cancel on,
    return its result (or raise its error). A lost worker is written into the row ("worker lost ...") and the
    work runs once more on another worker; lost again, the job fails with that message (nothing stays running)."""
    attempt = 1
    lost_first: WorkerLost | None = None
    while True:
        jc.raise_if_cancelled()
        ticket = executor.submit(work, jc)  # returns once a worker took it (in-process: once it ran)
        where = executor.where(ticket)
        if not isinstance(executor, InProcessExecutor):
            _set_worker(jc, where, attempt)
        try:
            result = _drive(executor, ticket, jc)
        except WorkerLost as lost:
            log.warning("job %s: %s (attempt %d)", work.job_id, lost, attempt)
            if attempt > retries:
                raise WorkerLost(f"worker lost twice ({lost_first}; then {lost}); submit the job again",
                                 lost.worker) from None
            lost_first = lost
            attempt += 1
            jc.progress(0.0, f"worker lost ({lost}); running it again on another worker")
            work = dataclasses.replace(work, attempt=attempt, avoid=lost.worker)
            continue
        if lost_first is not None:  # the row keeps the story: where it finished, and why it ran twice
            jc.progress(1.0, f"worker lost ({lost_first}); done on {where} at the second try")
        return result


def _drive(executor: Executor, ticket, jc) -> dict:
    cancel_sent = False
    while True:
        if jc.cancelled and not cancel_sent:
            executor.cancel(ticket)
            cancel_sent = True
        try:
            result = executor.result(ticket, timeout=POLL_SECONDS)
        except TimeoutError:
            _relay(executor.progress(ticket), jc)
            continue
        except BaseException:
            _relay(_safe_progress(executor, ticket), jc)  # what it finished before failing stays listed
            raise
        _relay(executor.progress(ticket), jc)
        return result


def _safe_progress(executor: Executor, ticket) -> list[Update]:
    try:
        return executor.progress(ticket)
    except Exception:  # noqa: BLE001  a lost worker has nothing more to say
        return []


def _relay(updates: list[Update], jc) -> None:
    for u in updates:
        for path in u.outputs:
            jc.add_output(path)
        if u.fraction is not None or u.message is not None or u.preview is not None:
            jc.progress(u.fraction if u.fraction is not None else jc.fraction, u.message, u.preview)


def _set_worker(jc, worker: str | None, attempt: int) -> None:
    setter = getattr(jc, "set_worker", None)
    if setter is not None:
        setter(worker, attempt)


class WorkFn:
    """A job function whose work may run on another worker (registered with ``JobManager.register``).

    ``target`` is ``"module:function"``, called as ``fn(request, jc, env)`` on a remote worker; ``local``, when
    given, is what runs in-process instead (``local(request, jc)``, e.g. bound to the studio's own engine
    service), so the default path is exactly the kind's plain job function. ``prepare(request, jc) -> request``
    runs here, in the studio process, before the work is handed over (what needs the studio's context: resolving
    a user's paths, naming the run folder). ``gpus(request)``,
    ``model(request)`` tell the dispatcher what the work needs (0 GPUs: it always runs in-process);
    ``needs_shared``: the worker must see the outputs folder itself (work that reads files the studio writes
    while it runs, e.g. a training run's control files). Whatever wraps this (the path checks of studio.routes)
    still runs here, in the studio process, before the work is handed over.
    """

    def __init__(self, target: str, *, local: Callable | None = None, prepare: Callable | None = None,
                 gpus: Callable[[dict], int] | int = 1, model: Callable[[dict], str | None] | None = None,
                 needs_shared: bool = False):
        self.target = target
        self.local = local
        self.prepare = prepare
        self._gpus = gpus
        self._model = model
        self.needs_shared = needs_shared

    def gpus(self, request: dict) -> int:
        return int(self._gpus(request) if callable(self._gpus) else self._gpus)

    def __call__(self, request: dict, jc) -> dict:
        if self.prepare is not None:
            request = self.prepare(dict(request), jc)
        work = Work(job_id=jc.job_id, owner=jc.owner, kind=jc.kind, target=self.target, request=dict(request),
                    out_dir=os.fspath(jc.out_dir), resume_from=os.fspath(jc.resume_from) if jc.resume_from else None,
                    gpus=self.gpus(request), model=self._model(request) if self._model else None,
                    needs_shared=self.needs_shared, seq=getattr(jc, "seq", 0), local=self.local)
        local = getattr(jc, "local_executor", None) or InProcessExecutor()
        executor = getattr(jc, "executor", None) or local
        if work.gpus <= 0:
            executor = local
        return execute(executor, work, jc)

    def __repr__(self) -> str:
        return f"WorkFn({self.target!r})"


def now() -> float:
    return time.time()
