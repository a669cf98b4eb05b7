"""The Ray executor: the studio's GPU jobs on Ray actors, across the GPUs of one box or of several hosts.

    python app.py --ray auto                 # a local Ray that sees every GPU of this box (or the Ray already
                                             # started on it with `ray start --head`)
    python app.py --ray ray://HEAD:10001     # an existing cluster (Ray client)

One actor per GPU (``gpus_per_worker`` GPUs each), created at start and kept: a model loaded by a job stays
resident in its actor for the next job. The dispatcher hands a job to a free actor, preferring one that already
holds the job's model (a 22B reload costs minutes), then an empty one, then the longest idle. Jobs are granted
in submit order (the oldest waiting job first), so a job that needs several GPUs is not starved by small ones.
A job that needs K GPUs (``Work.gpus``) borrows K idle actors' GPUs on one node: those actors are stopped, one
actor with K GPUs runs the job (pinned to that node), and the K actors come back afterwards.

The studio's SQLite store stays the one truth: the job's thread in the studio relays the actor's progress,
previews and outputs into the row (``studio.executors.execute``), passes a cancel on (the actor's job sees it at
its next check), and writes the final state. Files: a worker that sees the studio's outputs folder (same host,
or ``shared_dir`` mounted at the same path) reads and writes it directly; any other gets its inputs through Ray's
object store and sends its outputs back the same way (studio.executors.transfer).

Faults: an actor that dies (its process, or its node) while running a job raises ``WorkerLost``; the job's row
says so and ``execute`` runs it once more on another actor; the lost actor is replaced. A node Ray is draining
(``ray drain-node``, an autoscaler scale-down) and a worker drained from the studio (``drain``) take no new job
and stop once their current job is finished.

Ray is imported here only, and only when a RayExecutor is made (it is an optional extra:
``pip install -r requirements-ray.txt``).
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from studio.executors import Executor, Update, Work, WorkerLost

log = logging.getLogger("studio.executors.ray")

__all__ = ["RayExecutor", "import_ray"]

PROBE_NAME = ".iclora-worker-probe"
# the environment every actor gets (no network lookups, no telemetry: as the studio itself)
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
              "GRADIO_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


def import_ray():
    """Ray, or a UserError that says how to get it (Ray is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, an optional extra: pip install -r requirements-ray.txt") from None
    return ray


@dataclass
class _Slot:
    """One actor of the pool, as the dispatcher sees it."""

    name: str
    gpus: float
    handle: Any = None
    state: str = "starting"      # starting | idle | busy | lent | lost | stopped | failed
    draining: bool = False
    model: str | None = None
    work: Work | None = None
    info: dict = field(default_factory=dict)    # hello(): host, machine, pid, node, gpu_ids, seen
    status: dict = field(default_factory=dict)  # info(): memory, resident models (refreshed by the monitor)
    ready_ref: Any = None
    last_used: float = 0.0
    restarts: int = 0
    failures: int = 0            # starts that failed in a row
    error: str | None = None
    node: str | None = None      # pin to this node (the borrowed GPUs of a multi-GPU job)
    group: list = field(default_factory=list)  # a multi-GPU slot: the pool slots whose GPUs it borrowed
    spawned: float = 0.0


@dataclass
class _Ticket:
    work: Work
    slot: _Slot
    ref: Any
    shared: bool
    inputs: dict = field(default_factory=dict)  # studio path -> (shipped) for mapping paths back
    t_submit: float = 0.0
    t_granted: float = 0.0
    done: bool = False
    final: list = field(default_factory=list)    # updates that arrived with the outcome
    scratch: str | None = None
    mapper: Any = None                           # worker paths -> the studio's (None: the same)


class RayExecutor(Executor):
    """GPU jobs on a pool of Ray actors (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = "auto", *, outputs_dir: str | os.PathLike,
                 models_dir: str | os.PathLike | None = None, shared_dir: str | os.PathLike | None = None,
                 workers: int | None = None, gpus_per_worker: float = 1.0, cpus_per_worker: float = 1.0,
                 start_timeout: float = 600.0,
                 ship_code: bool | None = None, share_files: bool = True, init_kwargs: dict | None = None,
                 monitor_interval: float = 2.0):
        ray = import_ray()
        self._ray = ray
        self.address = address
        self.outputs_dir = Path(outputs_dir).resolve()
        self.models_dir = os.fspath(models_dir) if models_dir else None
        self.shared_dir = Path(shared_dir).resolve() if shared_dir else None
        self.start_timeout = float(start_timeout)
        self.monitor_interval = float(monitor_interval)
        self._own_cluster = False
        self.ships_code = False
        if not ray.is_initialized():
            self._connect(address, init_kwargs or {}, ship_code)
        # each actor: the studio's environment; this checkout on the path unless the code was shipped
        self._runtime_env = {"env_vars": dict(WORKER_ENV)}
        if not self.ships_code:
            from pipelines.config import PROJECT_ROOT

            self._runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        total_gpus = float(ray.cluster_resources().get("GPU", 0))
        if total_gpus <= 0:  # a CPU-only cluster: one actor per worker, no GPU asked for
            gpus_per_worker = 0.0
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)  # reserved per actor (video encoding, data loading)
        if workers is None:
            workers = max(1, int(total_gpus // gpus_per_worker)) if gpus_per_worker > 0 else 1
        # share_files=False: every worker gets its files through the object store, even on this host
        self._probes = self._write_probes() if share_files else {}
        self._me = _machine()
        self._cond = threading.Condition(threading.RLock())
        self._waiting: list[Work] = []
        self._slots: list[_Slot] = []
        self._closed = False
        self.timings: deque = deque(maxlen=10_000)  # per job: wait, dispatch overhead, work seconds
        for i in range(int(workers)):
            slot = _Slot(name=f"gpu-{i}" if gpus_per_worker > 0 else f"worker-{i}", gpus=gpus_per_worker)
            self._slots.append(slot)
            self._spawn(slot)
        self._monitor = threading.Thread(target=self._monitor_loop, name="ray-executor-monitor", daemon=True)
        self._monitor.start()

    # ---- setup ------------------------------------------------------------------------------------------

    def _connect(self, address, kwargs: dict, ship_code: bool | None) -> None:
        """Connect (or start a local Ray). A cluster the studio did not start may have hosts without this
        checkout: then Ray ships the ``studio`` and ``pipelines`` packages to every worker (runtime_env
        py_modules, a job-level setting), unless ``ship_code`` says otherwise."""
        ray = self._ray
        kwargs = dict(kwargs)
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", True)
        join = {k: v for k, v in kwargs.items() if k in ("log_to_driver", "namespace")}

        def shipped(on: bool) -> dict:
            if not on:
                return {}
            import pipelines
            import studio

            self.ships_code = True
            return {"runtime_env": {"py_modules": [os.path.dirname(pipelines.__file__),
                                                   os.path.dirname(studio.__file__)],
                                    "excludes": ["__pycache__", "*.pyc"], "env_vars": dict(WORKER_ENV)}}

        addr = None if address in (None, "", "auto") else address
        try:
            if addr is None:
                try:  # the Ray already running on this host (`ray start --head`), if any
                    ray.init(address="auto", **join, **shipped(ship_code is not False))
                except ConnectionError:
                    self.ships_code = False
                    ray.init(address="local", **kwargs)  # our own, on this machine only
                    self._own_cluster = True
            else:
                ray.init(address=addr, **join, **shipped(ship_code is not False))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  a user's address: say what failed, plainly
            raise UserError(f"--ray {address}: cannot connect to Ray ({type(exc).__name__}: {exc})") from None

    def _write_probes(self) -> dict[str, list[str]]:
        """A token file in each folder a worker may share with the studio: a worker that reads it back sees it."""
        from pipelines.files import atomic_write_text

        token = secrets.token_hex(16)
        probes = {}
        for root in (self.outputs_dir, self.shared_dir):
            if root is None:
                continue
            try:
                root.mkdir(parents=True, exist_ok=True)
                path = atomic_write_text(root / PROBE_NAME, token)
            except OSError as exc:
                log.warning("cannot write the worker probe in %s (%s): workers will get files by value", root, exc)
                continue
            probes[str(root)] = [str(path), token]
        return probes

    def _actor_class(self):
        if getattr(self, "_actor_cls", None) is None:
            from studio.executors.ray_worker import StudioWorker

            self._actor_cls = self._ray.remote(StudioWorker)
        return self._actor_cls

    def _spawn(self, slot: _Slot) -> None:
        ray = self._ray
        opts: dict[str, Any] = {"num_gpus": slot.gpus, "num_cpus": self.cpus_per_worker, "max_concurrency": 8,
                                "runtime_env": self._runtime_env, "max_restarts": 0, "name": None}
        if slot.node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=slot.node, soft=False)
        slot.handle = self._actor_class().options(**opts).remote(slot.name, self.models_dir, dict(WORKER_ENV))
        slot.ready_ref = slot.handle.hello.remote(self._probes)
        slot.state, slot.model, slot.work, slot.info, slot.status = "starting", None, None, {}, {}
        slot.spawned = time.monotonic()
        del ray

    # ---- the Executor interface ------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return max(1, len(self._slots))

    def submit(self, work: Work, jc) -> _Ticket:
        t0 = time.perf_counter()
        slot = self._acquire(work, jc)
        t1 = time.perf_counter()
        try:
            shared = self._sees_outputs(slot)
            payload, inputs = self._payload(work, slot, shared)
            ref = slot.handle.run.remote(payload)
        except BaseException:
            self._release(slot, work, ok=False)
            raise
        return _Ticket(work=work, slot=slot, ref=ref, shared=shared, inputs=inputs, t_submit=t0, t_granted=t1)

    def progress(self, ticket: _Ticket) -> list[Update]:
        if ticket.final:
            out, ticket.final = ticket.final, []
            return out
        if ticket.done:
            return []
        try:
            raw = self._ray.get(ticket.slot.handle.poll.remote(ticket.work.job_id), timeout=10)
        except Exception:  # noqa: BLE001  a worker that does not answer: result() decides what happened
            return []
        return [self._update(ticket, raw)] if raw else []

    def cancel(self, ticket: _Ticket) -> None:
        try:
            ticket.slot.handle.cancel.remote(ticket.work.job_id)
        except Exception:  # noqa: BLE001  a lost worker: result() reports it
            log.debug("cancel of %s not sent", ticket.work.job_id, exc_info=True)

    def result(self, ticket: _Ticket, timeout: float | None = None) -> dict:
        ray = self._ray
        ready, _ = ray.wait([ticket.ref], timeout=timeout)
        if not ready:
            raise TimeoutError
        slot, work = ticket.slot, ticket.work
        try:
            outcome = ray.get(ticket.ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                ray.exceptions.RaySystemError, ConnectionError) as exc:
            ticket.done = True
            where = self._describe(slot)
            self._lost(slot, exc)
            raise WorkerLost(f"{where} stopped while running the job: {_short(exc)}", slot.name) from None
        except ray.exceptions.RayTaskError as exc:  # the actor's run() itself failed (e.g. an unpicklable result)
            ticket.done = True
            self._release(slot, work, ok=False)
            raise RuntimeError(f"{slot.name}: {exc}") from None
        ticket.done = True
        t_end = time.perf_counter()
        try:
            final = self._finish_files(ticket, outcome)
        finally:
            self._release(slot, work, ok=bool(outcome.get("ok")))
        ticket.final = final
        work_s = float(outcome.get("work_seconds") or 0.0)
        self.timings.append({"job": work.job_id, "wait": ticket.t_granted - ticket.t_submit, "work": work_s,
                             "overhead": (t_end - ticket.t_granted) - work_s, "worker": slot.name})
        if outcome.get("ok"):
            from studio.executors.transfer import map_strings

            result = outcome.get("result")
            return map_strings(result, ticket.mapper) if ticket.mapper is not None and result else result
        raise _rebuild_error(outcome, slot.name)

    def where(self, ticket: _Ticket) -> str:
        return self._describe(ticket.slot)

    # ---- dispatch --------------------------------------------------------------------------------------

    def _acquire(self, work: Work, jc) -> _Slot:
        """A free actor for ``work`` (waits in submit order; a cancel or a closed executor ends the wait)."""
        from studio.jobs import JobCancelled

        need = self._slots_needed(work)
        with self._cond:
            self._waiting.append(work)
            self._waiting.sort(key=lambda w: (w.seq, w.job_id))
            told = False
            no_worker_since = None
            try:
                while True:
                    if jc.cancelled:
                        raise JobCancelled(f"job {work.job_id} cancelled")
                    if self._closed:
                        raise UserError("the studio is shutting down; submit the job again after it restarts")
                    if self._waiting and self._waiting[0] is work:
                        slot = self._pick(work, need)
                        if slot is not None:
                            return slot
                    alive = [s for s in self._slots if s.state in ("starting", "idle", "busy", "lent")
                             and not s.draining]
                    if not alive:
                        no_worker_since = no_worker_since or time.monotonic()
                        if time.monotonic() - no_worker_since > min(self.start_timeout, 5.0):
                            raise UserError("no Ray worker is available to run this job (every worker is drained, "
                                            "lost or failed to start; see the Workers panel)")
                    else:
                        no_worker_since = None
                    if need > 1:
                        self._check_fits(work, need)
                    if not told:
                        jc.progress(0.0, "waiting for a free worker")
                        told = True
                    self._cond.wait(0.2)
            finally:
                if work in self._waiting:
                    self._waiting.remove(work)
                self._cond.notify_all()

    def _slots_needed(self, work: Work) -> int:
        if self.gpus_per_worker <= 0 or work.gpus <= self.gpus_per_worker:
            return 1
        return int(math.ceil(work.gpus / self.gpus_per_worker))

    def _check_fits(self, work: Work, need: int) -> None:
        by_node: dict[str, int] = {}
        for s in self._slots:
            if s.state in ("idle", "busy", "starting") and not s.draining and s.info.get("node") and not s.group:
                by_node[s.info["node"]] = by_node.get(s.info["node"], 0) + 1
        starting = any(s.state == "starting" for s in self._slots)
        if by_node and not starting and max(by_node.values()) < need:
            raise UserError(f"this job needs {work.gpus:g} GPUs on one host; the largest host of the Ray cluster "
                            f"has {max(by_node.values()) * self.gpus_per_worker:g} free for the studio")

    def _eligible(self, slot: _Slot, work: Work) -> bool:
        if slot.state != "idle" or slot.draining or slot.group:
            return False
        if work.needs_shared and not self._sees_outputs(slot):
            return False
        return True

    def _pick(self, work: Work, need: int) -> _Slot | None:
        """Under the lock: the best idle actor (or group of actors on one node) for ``work``, marked busy."""
        free = [s for s in self._slots if self._eligible(s, work)]
        if work.needs_shared and not free and not any(
                self._sees_outputs(s) for s in self._slots if s.state in ("idle", "busy") and not s.draining):
            if any(s.state in ("idle", "busy") for s in self._slots):
                raise UserError("this job reads and writes its run folder while it runs (training), so its Ray "
                                "worker must see the studio's outputs folder: run the workers on this host, or "
                                "put --outputs-dir inside a folder every host mounts at the same path "
                                "(--shared-dir); see README 'Scale out'")
        if not free:
            return None
        if need == 1:
            # the actor holding the model, then an empty one, then the one idle longest; never the one just lost
            free.sort(key=lambda s: (s.name == work.avoid,
                                     0 if (work.model and s.model == work.model) else (1 if s.model is None else 2),
                                     s.last_used))
            slot = free[0]
            slot.state, slot.work = "busy", work
            return slot
        by_node: dict[str, list[_Slot]] = {}
        for s in free:
            by_node.setdefault(s.info.get("node"), []).append(s)
        for node, slots in by_node.items():
            if node and len(slots) >= need:
                return self._borrow(work, node, sorted(slots, key=lambda s: s.last_used)[:need])
        return None

    def _borrow(self, work: Work, node: str, members: list[_Slot]) -> _Slot:
        """Stop ``members`` (their GPUs go back to Ray) and start one actor with all their GPUs on ``node``."""
        for s in members:
            s.state, s.work = "lent", work
            self._kill(s)
        group = _Slot(name="+".join(s.name for s in members), gpus=sum(s.gpus for s in members), node=node,
                      group=members)
        self._slots.append(group)
        self._spawn(group)
        deadline = time.monotonic() + self.start_timeout
        while group.state == "starting":  # the monitor marks it ready; the lock is released while waiting
            if time.monotonic() > deadline:
                self._give_back(group)
                raise UserError(f"a {group.gpus:g}-GPU worker did not start within {self.start_timeout:.0f} s")
            self._cond.wait(0.2)
        if group.state != "idle":
            self._give_back(group)
            raise WorkerLost(f"the {group.gpus:g}-GPU worker {group.name} failed to start: {group.error}", group.name)
        group.state, group.work = "busy", work
        return group

    def _give_back(self, group: _Slot) -> None:
        """Under the lock: end a multi-GPU actor and restart the pool actors whose GPUs it borrowed."""
        self._kill(group)
        group.state = "stopped"
        if group in self._slots:
            self._slots.remove(group)
        for s in group.group:
            if s.draining:
                s.state = "stopped"
            else:
                self._spawn(s)
        self._cond.notify_all()

    def _release(self, slot: _Slot, work: Work, ok: bool) -> None:
        with self._cond:
            if slot.group:
                self._give_back(slot)
                return
            if slot.state == "busy":
                slot.work = None
                slot.last_used = time.monotonic()
                if ok and work.model:
                    slot.model = work.model
                if slot.draining:
                    self._kill(slot)
                    slot.state = "stopped"
                    log.info("worker %s drained: its job is finished, it is stopped", slot.name)
                else:
                    slot.state = "idle"
            self._cond.notify_all()

    def _lost(self, slot: _Slot, exc: BaseException | None) -> None:
        """An actor died: its slot gets a fresh actor (unless drained); a multi-GPU one gives its GPUs back."""
        with self._cond:
            log.warning("worker %s lost: %s", slot.name, _short(exc) if exc else "")
            slot.error = _short(exc) if exc else "lost"
            self._kill(slot)
            if slot.group:
                self._give_back(slot)
                return
            slot.work = None
            if slot.draining or self._closed:
                slot.state = "stopped"
            else:
                slot.restarts += 1
                slot.node = None
                self._spawn(slot)
            self._cond.notify_all()

    def _kill(self, slot: _Slot) -> None:
        if slot.handle is not None:
            try:
                self._ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001  already gone
                pass

    # ---- files -----------------------------------------------------------------------------------------

    def _same_host(self, slot: _Slot) -> bool:
        return bool(slot.info) and slot.info.get("machine") == self._me

    def _sees_outputs(self, slot: _Slot) -> bool:
        return str(self.outputs_dir) in (slot.info.get("seen") or [])

    def _sees(self, slot: _Slot, path: str) -> bool:
        if self._same_host(slot) and self._sees_outputs(slot):
            return True  # one filesystem
        p = Path(path)
        roots = [Path(r) for r in slot.info.get("seen") or []]
        if self.models_dir:
            roots.append(Path(self.models_dir).resolve())  # models: every worker host has them at the same path
        return any(p == r or p.is_relative_to(r) for r in roots)

    def _payload(self, work: Work, slot: _Slot, shared: bool) -> tuple[dict, dict]:
        from studio.executors.transfer import request_paths

        files = {}
        for p in request_paths(work.request):
            if not os.path.isabs(p) or self._sees(slot, p):
                continue
            path = Path(p)
            if path.is_dir():
                raise UserError(f"{path.name} is a folder and worker {slot.name} does not see the studio's files: "
                                "share the outputs folder with the workers (--shared-dir)")
            if path.is_file():
                files[p] = path.read_bytes()
        return {"work": work.shippable(), "shared": shared, "files": files}, files

    def _update(self, ticket: _Ticket, raw: dict) -> Update:
        files = raw.get("files") or {}
        out_dir = Path(ticket.work.out_dir)
        mapper = self._mapper(ticket, raw.get("scratch") or ticket.scratch)
        if files:
            from studio.executors.transfer import unpack_files

            unpack_files(files, out_dir)
        return Update(fraction=raw.get("fraction"), message=raw.get("message"),
                      preview=mapper(raw["preview"]) if raw.get("preview") else None,
                      outputs=[mapper(p) for p in raw.get("outputs") or []])

    def _mapper(self, ticket: _Ticket, scratch: str | None):
        from studio.executors.transfer import prefix_mapper

        if ticket.shared:
            return lambda s: s
        scratch = scratch or ticket.scratch
        if scratch is None:
            return lambda s: s
        ticket.scratch = scratch
        return prefix_mapper([(scratch, ticket.work.out_dir)])

    def _finish_files(self, ticket: _Ticket, outcome: dict) -> list[Update]:
        """Write what the outcome carries into the job folder; map its paths to the studio's. Returns the last
        progress updates (the job's final outputs among them)."""
        from studio.executors.transfer import prefix_mapper, text_rewriter, unpack_files

        scratch = outcome.get("scratch")
        if ticket.shared or not scratch:
            mapper = None
        else:
            ticket.scratch = scratch
            scratch_in = str(Path(scratch).parent / "in")
            # inputs were at scratch/in/<i>/<name>: map them back to the studio's own paths
            pairs = [(scratch, ticket.work.out_dir)]
            for i, orig in enumerate(ticket.inputs):
                pairs.append((f"{scratch_in}/{i}/{Path(orig).name}", orig))
            mapper = prefix_mapper(pairs)
            unpack_files(outcome.get("files") or {}, ticket.work.out_dir,
                         rewrite=text_rewriter(mapper, [p for p, _ in pairs]))
        last = outcome.get("last") or {}
        updates = []
        if last.get("files") or last.get("fraction") is not None or last.get("message") or last.get("preview"):
            updates.append(Update(fraction=last.get("fraction"), message=last.get("message"),
                                  preview=_apply(mapper, last.get("preview"))))
        updates.append(Update(outputs=[_apply(mapper, p) for p in outcome.get("outputs") or []]))
        ticket.mapper = mapper
        return updates

    # ---- workers, draining, the monitor ----------------------------------------------------------------

    def workers(self) -> list[dict]:
        with self._cond:
            slots = list(self._slots)
        rows = []
        for s in slots:
            if s.state == "lent":
                continue  # shown through the multi-GPU worker that borrowed it
            jobs = []
            if s.work is not None:
                jobs = [{"id": s.work.job_id, "owner": s.work.owner, "kind": s.work.kind}]
            rows.append({"name": s.name, "executor": self.name, "host": s.info.get("host"),
                         "state": ("draining" if s.draining and s.state in ("idle", "busy") else s.state),
                         "model": s.model, "resident": s.status.get("resident"), "jobs": jobs,
                         "memory": s.status.get("memory"), "gpus": s.info.get("gpu_ids"), "restarts": s.restarts,
                         "pid": s.info.get("pid"), "node": s.info.get("node"), "error": s.error,
                         "files": ("shared" if self._sees_outputs(s) else "object store") if s.info else None})
        return rows

    def drain(self, worker: str) -> bool:
        with self._cond:
            for s in self._slots:
                if s.name == worker:
                    self._drain_slot(s)
                    return True
        return False

    def drain_node(self, node_id: str) -> int:
        """Drain every worker on a Ray node (what the monitor does for a node Ray itself is draining)."""
        n = 0
        with self._cond:
            for s in self._slots:
                if s.info.get("node") == node_id and not s.draining and s.state not in ("stopped", "lost"):
                    self._drain_slot(s)
                    n += 1
        return n

    def _drain_slot(self, s: _Slot) -> None:
        s.draining = True
        if s.state in ("idle", "starting", "failed"):
            self._kill(s)
            s.state = "stopped"
        log.info("worker %s draining (%s)", s.name, s.state)
        self._cond.notify_all()

    def _monitor_loop(self) -> None:
        last_status = 0.0
        while not self._closed:
            try:
                self._check_starting()
                if time.monotonic() - last_status >= self.monitor_interval:
                    last_status = time.monotonic()
                    self._refresh_status()
                    self._check_draining_nodes()
            except Exception:  # noqa: BLE001  the monitor must keep going
                log.exception("ray executor monitor")
            time.sleep(0.1)

    def _check_starting(self) -> None:
        ray = self._ray
        with self._cond:
            starting = [s for s in self._slots if s.state == "starting" and s.ready_ref is not None]
        if not starting:
            return
        ready, _ = ray.wait([s.ready_ref for s in starting], num_returns=len(starting), timeout=0)
        for s in starting:
            if s.ready_ref not in ready:
                if time.monotonic() - s.spawned > self.start_timeout:
                    self._start_failed(s, f"did not start within {self.start_timeout:.0f} s")
                continue
            try:
                info = ray.get(s.ready_ref)
            except Exception as exc:  # noqa: BLE001
                self._start_failed(s, _short(exc))
                continue
            with self._cond:
                if s.state != "starting":
                    continue
                s.info, s.ready_ref, s.state, s.failures, s.error = info, None, "idle", 0, None
                s.last_used = time.monotonic()
                log.info("worker %s ready on %s (pid %s, GPUs %s, files: %s)", s.name, info.get("host"),
                         info.get("pid"), info.get("gpu_ids"), "shared" if self._sees_outputs(s) else "object store")
                self._cond.notify_all()

    def _start_failed(self, s: _Slot, why: str) -> None:
        with self._cond:
            s.failures += 1
            s.error = why
            self._kill(s)
            if s.failures >= 3 or s.group or self._closed:
                s.state = "failed"
                log.error("worker %s failed to start (%s)", s.name, why)
            else:
                log.warning("worker %s failed to start (%s); trying again", s.name, why)
                self._spawn(s)
            self._cond.notify_all()

    def _refresh_status(self) -> None:
        ray = self._ray
        with self._cond:
            live = [s for s in self._slots if s.state in ("idle", "busy") and s.handle is not None]
        if not live:
            return
        refs = {s.name: (s, s.handle.info.remote()) for s in live}
        ready, _ = ray.wait([r for _, r in refs.values()], num_returns=len(refs), timeout=5)
        ready_set = set(ready)
        for s, ref in refs.values():
            if ref not in ready_set:
                continue
            try:
                s.status = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                with self._cond:
                    if s.state == "idle":  # a busy one is reported by its job's result()
                        self._lost(s, exc)
            except Exception:  # noqa: BLE001
                pass

    def _check_draining_nodes(self) -> None:
        try:
            from ray._private.state import state as gstate

            draining = gstate.get_draining_nodes()
        except Exception:  # noqa: BLE001  not available (e.g. Ray client): only the studio's own drain works
            return
        for node_id in draining or {}:
            if self.drain_node(node_id):
                log.info("Ray is draining node %s: its workers finish their jobs, then stop", node_id)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for s in self._slots:
                self._kill(s)
                s.state = "stopped"
            self._cond.notify_all()
        for root, (path, _) in self._probes.items():
            try:
                os.unlink(path)
            except OSError:
                pass
        if self._own_cluster:
            try:
                self._ray.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def _describe(self, slot: _Slot) -> str:
        host = slot.info.get("host")
        return f"{slot.name} @ {host}" if host else slot.name


def _apply(mapper, path: str | None) -> str | None:
    return mapper(path) if (mapper is not None and path) else path


def _machine() -> str:
    from studio.executors.ray_worker import machine_id

    return machine_id()


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


class RemoteJobError(RuntimeError):
    """A bug inside a job on a worker: its type, message and the worker's traceback (logged with a log id)."""


def _rebuild_error(outcome: dict, worker: str) -> BaseException:
    from studio.jobs import JobCancelled

    kind = outcome.get("error")
    if kind == "cancelled":
        return JobCancelled("cancelled")
    if kind == "user":
        return UserError(outcome.get("message") or "failed")
    return RemoteJobError(f"{outcome.get('type')}: {outcome.get('message')} (on worker {worker})\n"
                          f"{outcome.get('traceback') or ''}")
