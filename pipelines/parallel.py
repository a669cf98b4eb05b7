"""One video across several GPUs: context (sequence) parallelism through diffusers' own support (SPEC.md 12).

K processes (one per GPU; gloo on a CPU) each hold the whole model; diffusers' ``enable_parallelism`` splits the
video tokens over them and its attention dispatch (Ulysses all-to-all over heads, or ring attention) makes video
self-attention span every rank. Everything else of the run (prompt encoding, references, schedule, decoding) is
the ordinary engine, run identically on every rank from the same request and seed; rank 0 writes the file and
reports progress.

What the studio adds to diffusers 0.42.1 (``cp_plan``):

- its LTX-2 ``_cp_plan`` splits the RoPE tensors on dim 1 expecting 3 dims: right for LTX-2.0's interleaved RoPE
  ([B, T, D]), but LTX-2.3's split RoPE is [B, H, T, D/2], so diffusers skips the split (a warning) and the
  attention shapes do not match. The plan here splits dim 2 of 4-D RoPE, and the video cross-attention RoPE too
  (audio<->video attention);
- the engine gives every token its own timestep (clean reference tokens, denoise mask x sigma): ``timestep`` is
  split with the tokens (diffusers' hook needs every argument of the plan in every call, so only arguments the
  engine always passes are in it);
- text and audio stay whole on every rank, and the attentions that only read them (text cross-attention, audio
  self- and text attention, audio->video) run locally: a query shard against complete keys is exact without any
  communication. Video self-attention and video->audio attention (complete audio queries against split video
  keys) go through diffusers' context-parallel dispatch.
- our attn1 processor (pipelines.sampler.attention) routes its padded q'/k'/v' through ``dispatch_attention_fn``
  with the bias channels written for the rank's own slice of tokens, so the reference log-bias stays exact.

Ulysses needs nothing but all-to-all, so it runs on gloo: ``tests/test_parallel.py`` checks 2 CPU processes
against 1 (the transformer within 1e-5, a whole generation's frames at PSNR >= 45 dB). Ring attention is GPU-only:
diffusers' ring merges partial attentions by their log-sum-exp, and its only CPU backend (``native``, torch SDPA)
refuses ``return_lse``; on CUDA the split attentions use ``_native_cudnn`` (bf16/fp16), and
``python bench/scale.py --cp`` is the GPU check (both modes against one GPU). On gloo the video tokens must also
divide by the number of ranks (gloo cannot all-gather shards of different sizes; NCCL can, diffusers' "anything"
modes are used there). On a CPU build of torch diffusers computes the rank's device as
``rank % torch.accelerator.device_count()`` (0 devices: a division by zero); the ranks here stand in 1.

Without CUDA (a CPU box: tests, a laptop) "K GPUs" means K CPU processes over gloo. With CUDA, K GPUs must be
visible to the process (``check_devices``: refused plainly otherwise).

The K processes are kept between jobs (``ParallelGroup``; this process's ``ParallelPool`` holds one): they load
the model once (a 22B model: minutes) and then run request after request from their queues; another model, tier,
models folder, K or mode replaces the group, and ``idle_timeout`` seconds without a job (``ICLORA_SP_IDLE_S``,
the studio's ``--sp-idle``, default 600) or ``close()`` release it. On CUDA the studio's own copy is released
before a group starts, so rank 0 has GPU 0's memory, and a warm group is released before the studio loads a
model itself. Faults: a cancel and a UserError leave the group in service; a rank that exits, any other failure,
or ranks that do not come back after one fail the job with ``RankLost`` and shut the group down (no automatic
retry: out of memory or a device fault would strike again after minutes of loading; the next job starts anew).

    generate_parallel(request, out, world=2)   # what `python -m pipelines generate --sp 2` and a studio job with
                                               # "GPUs per job" 2 run (on this process's warm group)
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from pipelines.errors import Cancelled, UserError

log = logging.getLogger(__name__)

__all__ = ["cp_plan", "check_devices", "enable_context_parallel", "generate_parallel", "LOCAL_ATTENTIONS",
           "CP_MODES", "RING_BACKEND", "ParallelGroup", "ParallelPool", "RankLost", "shared_pool",
           "release_shared_group"]

CP_MODES = ("ulysses", "ring")
# attentions whose keys/values are whole on every rank (text, audio): they run locally, no communication
LOCAL_ATTENTIONS = ("attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn")
# ring attention's backend for the split attentions: it must return the log-sum-exp (torch's cuDNN SDPA does)
RING_BACKEND = "_native_cudnn"
DEFAULT_IDLE_S = 600.0  # a warm group's processes are released after this long without a job


def cp_plan(transformer) -> dict:
    """diffusers' context-parallel plan for an LTX-2 transformer, fixed for LTX-2.3 (module docstring)."""
    from diffusers.models._modeling_parallel import ContextParallelInput as In
    from diffusers.models._modeling_parallel import ContextParallelOutput as Out

    split_rope = getattr(transformer.config, "rope_type", "interleaved") == "split"
    rope = In(split_dim=2, expected_dims=4, split_output=True) if split_rope else \
        In(split_dim=1, expected_dims=3, split_output=True)
    return {
        "": {"hidden_states": In(split_dim=1, expected_dims=3, split_output=False),
             "timestep": In(split_dim=1, expected_dims=2, split_output=False)},  # per token; a [B] one stays whole
        "rope": {0: rope, 1: rope},
        "cross_attn_rope": {0: rope, 1: rope},
        "proj_out": Out(gather_dim=1, expected_dims=3),
    }


def enable_context_parallel(transformer, world: int, mode: str = "ulysses") -> None:
    """Split ``transformer``'s video tokens over the ``world`` ranks of the default process group (call in every
    rank, after the attention processors are installed: diffusers hands its config to the processors present)."""
    import torch
    from diffusers import ContextParallelConfig

    check_mode(mode)
    if not torch.cuda.is_available() and torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1  # diffusers: device = rank % device_count() (module docstring)
    # On CUDA (NCCL) diffusers' "anything" modes split any token and head count as evenly as they go; gloo cannot
    # all-gather shards of different sizes, so on a CPU the token count must divide by the ranks
    cuda = torch.cuda.is_available()
    config = (ContextParallelConfig(ring_degree=world, ring_anything=True) if mode == "ring" else
              ContextParallelConfig(ulysses_degree=world, ulysses_anything=cuda))
    transformer.enable_parallelism(config=config, cp_plan=cp_plan(transformer))
    ring_backend = None
    if mode == "ring":
        from diffusers.models.attention_dispatch import AttentionBackendName

        ring_backend = AttentionBackendName(RING_BACKEND)
    for block in transformer.transformer_blocks:
        for name, attn in block.named_children():
            if not hasattr(getattr(attn, "processor", None), "_parallel_config"):
                continue
            if name in LOCAL_ATTENTIONS:
                attn.processor._parallel_config = None
            elif ring_backend is not None:
                attn.processor._attention_backend = ring_backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankLost(RuntimeError):
    """A process of a context-parallel group stopped, or did not answer in time: the group was shut down (its
    job fails; the next split job starts a new group)."""


def _idle_default() -> float:
    try:
        return float(os.environ.get("ICLORA_SP_IDLE_S", "") or DEFAULT_IDLE_S)
    except ValueError:
        return DEFAULT_IDLE_S


class ParallelGroup:
    """K spawned processes of this host that join one torch.distributed group, load one model once and split its
    transformer (module docstring), then run requests one after another until ``close()``.

    ``key`` = (model, tier, models_dir, world, mode): a request for anything else needs another group
    (``ParallelPool`` replaces it). Rank 0 reports progress, previews and the result; the ``cancel`` Event reaches
    every rank, which vote on it between steps (all stop at the same step). After a job every rank reports back
    idle; only then is the next job sent. A UserError or a cancel leaves the group in service (every rank ran the
    same request to the same point); any other failure, a rank that exits, or ranks that do not come back within
    ``settle_timeout`` of a failure, shut the whole group down (``broken``) and the job raises ``RankLost``.
    Every wait here is bounded or watches the processes: nothing waits on a dead rank."""

    def __init__(self, world: int, *, model: str = "tiny", tier: str = "auto", models_dir: str | None = None,
                 mode: str = "ulysses", start_timeout: float = 1800.0, settle_timeout: float = 60.0):
        import multiprocessing as mp

        self.world = int(world)
        self.mode = mode
        self.key = group_key(model, tier, models_dir, self.world, mode)
        self.start_timeout = float(start_timeout)
        self.settle_timeout = float(settle_timeout)
        self.ready = False
        self.broken: str | None = None  # why the group was shut down
        self.closed = False
        self.jobs_run = 0
        self.loads: dict[int, int] = {}  # models each rank built (its ModelCache.loads)
        self.last_used = time.monotonic()
        self._job = 0
        self._lock = threading.Lock()
        ctx = mp.get_context("spawn")
        self._events = ctx.Queue()
        self._jobs = [ctx.Queue() for _ in range(self.world)]
        self._cancel = ctx.Event()
        self._scratch = Path(tempfile.mkdtemp(prefix="iclora-sp-"))
        port = _free_port()
        spec = {"model": model, "tier": tier, "models_dir": models_dir, "mode": mode}
        self._procs = [ctx.Process(target=_rank_loop, name=f"sp-rank{r}", daemon=True,
                                   args=(r, self.world, port, spec, str(self._scratch), self._jobs[r], self._events,
                                         self._cancel, os.getpid()))
                       for r in range(self.world)]
        for p in self._procs:
            p.start()
        self.started = time.monotonic()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def healthy(self) -> bool:
        return not self.closed and self.broken is None and all(p.is_alive() for p in self._procs)

    # ---- the wait loop: one place that watches the ranks
    def _next(self, timeout: float):
        """The next event from the ranks, or None after ``timeout``. A rank that exited shuts the group down."""
        import queue

        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            pass
        dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if p.exitcode is not None]
        if dead:
            rank, code = dead[0]
            self._break(f"rank {rank} of {self.world} stopped (exit code {code})")
        return None

    def _break(self, why: str) -> None:
        self.broken = self.broken or why
        log.warning("context-parallel group %s shut down: %s", self.pids, why)
        self.close(timeout=5)
        raise RankLost(f"a process of the split run stopped: {why}. Its group was shut down; the next split "
                       "job starts a new one")

    def _wait_ready(self, progress, should_cancel, deadline) -> None:
        started = self.ready
        if not started and progress is not None:
            progress(0.0, f"starting {self.world} processes, loading the model in each", None)
        ready = set()
        limit = time.monotonic() + self.start_timeout
        while not self.ready:
            if should_cancel is not None and should_cancel():
                raise Cancelled("cancelled")  # the ranks go on loading: the group stays for the next job
            now = time.monotonic()
            if now > limit or (deadline is not None and now > deadline):
                self._break(f"the {self.world} processes did not load the model within {self.start_timeout:.0f} s")
            ev = self._next(0.25)
            if ev is None:
                continue
            if ev[0] == "ready":
                _, rank, _pid, loads = ev
                ready.add(rank)
                self.loads[rank] = loads
                self.ready = len(ready) == self.world
            elif ev[0] == "error":  # a rank could not start: the group is of no use
                _, _job, rank, kind, message, tb = ev
                self.broken = message
                self.close(timeout=10)
                _raise(kind, message, tb)

    def run(self, request, out_path, *, progress: Callable | None = None,
            should_cancel: Callable[[], bool] | None = None, preview_dir=None, timeout: float | None = None) -> dict:
        """One generation on the group (a ``GenerateRequest`` of the group's model and tier). Same answer as
        ``EngineService.generate``."""
        with self._lock:
            if not self.healthy():
                raise RankLost(f"this context-parallel group is shut down ({self.broken or 'closed'})")
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                self._wait_ready(progress, should_cancel, deadline)
                return self._run(request, out_path, progress, should_cancel, preview_dir, deadline, timeout)
            finally:
                self.last_used = time.monotonic()

    def _run(self, req, out_path, progress, should_cancel, preview_dir, deadline, timeout) -> dict:
        self._job += 1
        job = self._job
        self._cancel.clear()  # every rank is idle: nobody is reading it
        message = (job, req.to_dict(), os.fspath(out_path), os.fspath(preview_dir) if preview_dir else None)
        for q in self._jobs:
            q.put(message)
        result, errors, idle, settle = None, [], set(), None
        while len(idle) < self.world:
            if should_cancel is not None and not self._cancel.is_set() and should_cancel():
                self._cancel.set()
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self._break(f"the split generation took longer than {timeout:.0f} s")
            if settle is not None and now > settle:
                self._break(f"after a failure ({errors[0][2]}) rank(s) "
                            f"{sorted(set(range(self.world)) - idle)} did not come back within "
                            f"{self.settle_timeout:.0f} s")
            ev = self._next(0.25)
            if ev is None or ev[1] != job:  # nothing yet, or a late word of an earlier job
                continue
            kind = ev[0]
            if kind == "progress":
                if progress is not None:
                    progress(*ev[2:])
            elif kind == "done":
                result = ev[2]
            elif kind == "error":
                errors.append(ev[2:])  # (rank, kind, message, traceback)
                if settle is None:
                    settle = time.monotonic() + self.settle_timeout
                    self._cancel.set()  # ranks still in the loop stop at their next step
            elif kind == "idle":
                idle.add(ev[2])
                self.loads[ev[2]] = ev[3]
        self.jobs_run += 1
        if result is not None and not any(e[0] == 0 for e in errors):
            if errors:
                log.warning("context parallel: rank 0 finished but rank %s failed: %s", errors[0][0], errors[0][2])
            return result
        rank, kind, message, tb = errors[0]
        if kind not in ("user", "cancelled"):  # the process group may be unusable: a fresh one for the next job
            self.broken = message
            self.close(timeout=10)
        _raise(kind, message, tb)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the ranks (after their current job, if they are idle within ``timeout``; killed otherwise) and
        wait for them: no process of the group is left behind."""
        if self.closed:
            return
        self.closed = True
        for q in self._jobs:
            try:
                q.put(None)
            except Exception:  # noqa: BLE001  a queue whose reader is gone
                pass
        end = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        for q in (*self._jobs, self._events):
            q.cancel_join_thread()  # never block this process on a queue's feeder at exit
            q.close()
        import shutil

        shutil.rmtree(self._scratch, ignore_errors=True)


def _raise(kind: str, message: str, tb: str):
    if kind == "cancelled":
        raise Cancelled("cancelled")
    if kind == "user":
        raise UserError(message)
    raise RankLost(f"context-parallel generation failed: {message}\n{tb}")


def group_key(model: str, tier, models_dir, world: int, mode: str) -> tuple:
    tier = getattr(tier, "value", tier) or "auto"
    return (model or "tiny", str(tier), os.fspath(models_dir) if models_dir else None, int(world), mode)


class ParallelPool:
    """At most one warm ``ParallelGroup`` of this process, reused by every split job of the same model, memory
    tier, models folder, K and mode; another of those replaces it. A group idle for ``idle_timeout`` seconds
    (``ICLORA_SP_IDLE_S`` / the studio's ``--sp-idle``, default 600; 0: closed after every job, as a one-shot
    run; ``inf``: kept until ``close()``) is closed, and so is a group whose rank died (replaced at the next job).
    ``before_start`` runs before a group's processes start (the studio gives its own model copy back on CUDA)."""

    def __init__(self, idle_timeout: float | None = None, *, start_timeout: float = 1800.0,
                 settle_timeout: float = 60.0):
        self.idle_timeout = _idle_default() if idle_timeout is None else float(idle_timeout)
        self.start_timeout = start_timeout
        self.settle_timeout = settle_timeout
        self.group: ParallelGroup | None = None
        self.groups_started = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def run(self, request, out_path, world: int, *, models_dir: str | None = None, mode: str = "ulysses",
            progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None, preview_dir=None,
            timeout: float | None = None, before_start: Callable[[], None] | None = None) -> dict:
        from pipelines.requests import GenerateRequest

        req = request if isinstance(request, GenerateRequest) else GenerateRequest.from_dict(request)
        req.validate()
        world = int(world)
        if world < 2:
            raise UserError("context parallel needs at least 2 processes (GPUs per job >= 2)")
        check_mode(mode)
        check_devices(world)
        key = group_key(req.model, req.tier, models_dir, world, mode)
        with self._lock:
            self._disarm()
            group = self.group
            if group is not None and (group.key != key or not group.healthy()):
                group.close()  # another model / K / mode, or a rank died while idle: replaced
                group = self.group = None
            if group is None:
                if before_start is not None:
                    before_start()
                group = self.group = ParallelGroup(world, model=key[0], tier=key[1], models_dir=models_dir,
                                                   mode=mode, start_timeout=self.start_timeout,
                                                   settle_timeout=self.settle_timeout)
                self.groups_started += 1
            try:
                return group.run(req, out_path, progress=progress, should_cancel=should_cancel,
                                 preview_dir=preview_dir, timeout=timeout)
            finally:
                if not group.healthy() or self.idle_timeout <= 0:  # broken, or one-shot use (idle 0)
                    group.close()
                    if self.group is group:
                        self.group = None
                else:
                    self._arm(group)

    def close(self) -> None:
        """Release the warm group's processes now (waits for a job in progress to end)."""
        with self._lock:
            self._disarm()
            if self.group is not None:
                self.group.close()
                self.group = None

    def status(self) -> dict | None:
        g = self.group
        if g is None or not g.healthy():
            return None
        model, tier, _, world, mode = g.key
        return {"model": model, "tier": tier, "world": world, "mode": mode, "pids": g.pids, "jobs": g.jobs_run,
                "idle_s": round(time.monotonic() - g.last_used, 1), "ready": g.ready}

    def _arm(self, group) -> None:
        if self.idle_timeout == float("inf"):
            return
        self._timer = threading.Timer(self.idle_timeout, self._idle_close, args=(group,))
        self._timer.daemon = True
        self._timer.start()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_close(self, group) -> None:
        with self._lock:
            if self.group is group and time.monotonic() - group.last_used >= self.idle_timeout * 0.99:
                log.info("context-parallel group %s idle for %.0f s: released", group.pids, self.idle_timeout)
                group.close()
                self.group = None
                self._timer = None


_shared_pool: ParallelPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> ParallelPool:
    """This process's pool (the studio's and the CLI's split jobs); closed at exit."""
    global _shared_pool
    with _shared_lock:
        if _shared_pool is None:
            import atexit

            _shared_pool = ParallelPool()
            atexit.register(_shared_pool.close)
        return _shared_pool


def warm_group() -> dict | None:
    """This process's warm split group as the Workers panel shows it (None when there is none); never starts one."""
    pool = _shared_pool
    return pool.status() if pool is not None else None


def release_shared_group() -> None:
    """Close this process's warm group, if there is one (on CUDA before this process loads a model itself: the
    ranks hold GPUs 0..K-1)."""
    pool = _shared_pool
    if pool is not None and pool.group is not None:
        pool.close()


def generate_parallel(request, out_path: str | os.PathLike, world: int, *, models_dir: str | None = None,
                      progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
                      preview_dir: str | os.PathLike | None = None, mode: str = "ulysses",
                      timeout: float | None = None, pool: ParallelPool | None = None) -> dict:
    """Generate one video with its transformer split over ``world`` processes of this host (GPUs 0..world-1 as
    this process sees them; gloo on a CPU), on ``pool``'s warm group (default: this process's shared pool).
    Same answer as ``EngineService.generate``; progress and previews come from rank 0; a cancel stops every rank
    at the same step. UserError from any rank is raised as is."""
    return (pool or shared_pool()).run(request, out_path, world, models_dir=models_dir, mode=mode,
                                       progress=progress, should_cancel=should_cancel, preview_dir=preview_dir,
                                       timeout=timeout)


def check_mode(mode: str) -> None:
    if mode not in CP_MODES:
        raise UserError(f"context parallel mode must be one of {', '.join(CP_MODES)}, not {mode!r}")
    if mode == "ring" and visible_gpus() is None:
        raise UserError("ring attention needs CUDA (diffusers' ring merges partial attentions by their log-sum-exp, "
                        "which its CPU attention does not return): use ulysses on a CPU")


def visible_gpus() -> int | None:
    """CUDA devices this process sees; None without CUDA (then K "GPUs" are K CPU processes over gloo)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else None


def check_devices(world: int) -> None:
    """Refuse plainly a split over more GPUs than this process sees (CUDA_VISIBLE_DEVICES counts)."""
    seen = visible_gpus()
    if seen is not None and seen < world:
        raise UserError(f"one video over {world} GPUs needs {world} GPUs on this host, but it has {seen}: "
                        f"set GPUs per generation (--sp) to {seen} or less")


def _classify(exc: BaseException, world: int) -> tuple[str, str, str]:
    """(kind, message, traceback) of a rank's failure: cancelled, user (plain words) or internal."""
    from pipelines.errors import plain_error

    if isinstance(exc, AssertionError) and "divisible by mesh size" in str(exc):
        exc = UserError(f"this video's tokens do not split evenly over {world} processes, which gloo (a CPU) "
                        "needs: change the frame count or size, or use GPUs (NCCL splits any count)")
    if isinstance(exc, Cancelled):
        return "cancelled", "cancelled", ""
    if isinstance(exc, UserError):
        return "user", str(exc), ""
    plain = plain_error(exc)
    if plain:
        return "user", plain, ""
    return "internal", f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _rank_loop(rank: int, world: int, port: int, spec: dict, scratch: str, jobs, events, cancel,
               parent: int) -> None:
    """One rank of a group: join it, load the model once, split its transformer, then run the jobs it is sent
    (None: stop) with the ordinary engine. Every job ends with an "idle" word; a parent that went away ends it."""
    import queue

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks are on this host
    try:
        import torch
        import torch.distributed as dist

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(rank)
        else:  # the ranks share this host's cores: K x all-cores threads would oversubscribe them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
        control = dist.new_group(backend="gloo")  # cancel votes, on the CPU whatever the device

        from pipelines.models.loader import default_cache
        from pipelines.models.registry import get_spec
        from pipelines.requests import GenerateRequest, MemoryTier
        from pipelines.sampler.attention import install_reference_bias
        from pipelines.service import EngineService

        mode = spec["mode"]
        loaded = default_cache().get(get_spec(spec["model"], spec["models_dir"]), MemoryTier(spec["tier"]))
        loaded.bias_state = install_reference_bias(loaded.pipe.transformer)  # before diffusers configures them
        enable_context_parallel(loaded.pipe.transformer, world, mode)
        service = EngineService(models_dir=spec["models_dir"])  # one engine for the group's life (its caches)
    except BaseException as exc:  # noqa: BLE001  the parent hears of every ending
        events.put(("error", 0, rank, *_classify(exc, world)))
        return
    events.put(("ready", rank, os.getpid(), default_cache().loads))

    def stop_now() -> bool:  # every rank asks at the same points: the vote keeps them in step
        orphan = os.getppid() != parent  # the studio is gone (a Ray actor killed after its job): stop too
        flag = torch.tensor([1 if cancel.is_set() or orphan else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=control)
        return bool(flag.item())

    while True:
        try:
            msg = jobs.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the studio is gone: no orphan rank
                return
            continue
        if msg is None:
            break
        job, request, out_path, preview_dir = msg

        def report(fraction, message, preview, job=job):
            if rank == 0:
                events.put(("progress", job, fraction, message, preview))

        try:
            req = GenerateRequest.from_dict(request)  # gpus=world: the files record the request as asked
            out = out_path if rank == 0 else str(Path(scratch) / f"rank{rank}" / Path(out_path).name)
            res = service.generate_here(req, out, progress=report, should_cancel=stop_now,
                                        preview_dir=preview_dir if rank == 0 else None)
            if rank == 0:
                meta = dict(res.get("metadata") or {}, context_parallel={"world": world, "mode": mode})
                events.put(("done", job, dict(res, metadata=meta)))
            else:
                import shutil

                shutil.rmtree(Path(scratch) / f"rank{rank}", ignore_errors=True)
        except BaseException as exc:  # noqa: BLE001
            events.put(("error", job, rank, *_classify(exc, world)))
        events.put(("idle", job, rank, default_cache().loads))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001  the others may be gone already
        pass
