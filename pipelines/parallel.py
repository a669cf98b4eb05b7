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
visible to the process (``check_devices``: refused plainly otherwise). Every job starts its K processes and loads
the model in each (a 22B model: minutes); the studio's own copy is released first so rank 0 has GPU 0's memory.

    generate_parallel(request, out, world=2)   # what `python -m pipelines generate --sp 2` and a studio job with
                                               # "GPUs per job" 2 run
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from pipelines.errors import Cancelled, UserError

log = logging.getLogger(__name__)

__all__ = ["cp_plan", "check_devices", "enable_context_parallel", "generate_parallel", "LOCAL_ATTENTIONS",
           "CP_MODES", "RING_BACKEND"]

CP_MODES = ("ulysses", "ring")
# attentions whose keys/values are whole on every rank (text, audio): they run locally, no communication
LOCAL_ATTENTIONS = ("attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn")
# ring attention's backend for the split attentions: it must return the log-sum-exp (torch's cuDNN SDPA does)
RING_BACKEND = "_native_cudnn"


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


def generate_parallel(request, out_path: str | os.PathLike, world: int, *, models_dir: str | None = None,
                      progress: Callable | None = None, should_cancel: Callable[[], bool] | None = None,
                      preview_dir: str | os.PathLike | None = None, mode: str = "ulysses",
                      timeout: float | None = None) -> dict:
    """Generate one video with its transformer split over ``world`` processes of this host (GPUs 0..world-1 as
    this process sees them; gloo on a CPU). Same answer as ``EngineService.generate``; progress and previews come
    from rank 0; a cancel stops every rank at the same step. UserError from any rank is raised as is."""
    import multiprocessing as mp

    from pipelines.requests import GenerateRequest

    req = request if isinstance(request, GenerateRequest) else GenerateRequest.from_dict(request)
    req.validate()
    world = int(world)
    if world < 2:
        raise UserError("context parallel needs at least 2 processes (GPUs per job >= 2)")
    check_mode(mode)
    check_devices(world)
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    cancel = ctx.Event()
    port = _free_port()
    scratch = Path(tempfile.mkdtemp(prefix="iclora-sp-"))
    procs = [ctx.Process(target=_rank_main, name=f"sp-rank{r}", daemon=True,
                         args=(r, world, port, req.to_dict(), os.fspath(out_path), models_dir,
                               os.fspath(preview_dir) if preview_dir else None, mode, str(scratch), events, cancel))
             for r in range(world)]
    for p in procs:
        p.start()
    result = None
    error: tuple | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while result is None and error is None:
            if should_cancel is not None and should_cancel() and not cancel.is_set():
                cancel.set()
            try:
                kind, *payload = events.get(timeout=0.25)
            except Exception:  # noqa: BLE001  queue.Empty: look at the ranks
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = ("internal", f"rank {procs.index(dead[0])} exited with code {dead[0].exitcode}", "")
                if deadline is not None and time.monotonic() > deadline:
                    error = ("internal", f"context-parallel generation took longer than {timeout:.0f} s", "")
                continue
            if kind == "progress" and progress is not None:
                progress(*payload)
            elif kind == "done":
                result = payload[0]
            elif kind == "error":
                error = tuple(payload)
    finally:
        if error is not None:
            cancel.set()
        for p in procs:
            p.join(timeout=60 if error is None else 10)
            if p.is_alive():
                p.kill()
                p.join(5)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    if error is not None:
        kind, message, tb = error
        if kind == "cancelled":
            raise Cancelled("cancelled")
        if kind == "user":
            raise UserError(message)
        raise RuntimeError(f"context-parallel generation failed: {message}\n{tb}")
    return result


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


def _rank_main(rank: int, world: int, port: int, request: dict, out_path: str, models_dir: str | None,
               preview_dir: str | None, mode: str, scratch: str, events, cancel) -> None:
    """One rank: join the group, load the model, split its transformer, run the ordinary engine."""
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

        req = GenerateRequest.from_dict(request)  # gpus=world: the files record the request as asked
        loaded = default_cache().get(get_spec(req.model, models_dir), req.tier or MemoryTier.AUTO)
        install_reference_bias(loaded.pipe.transformer)  # before diffusers hands its config to the processors
        enable_context_parallel(loaded.pipe.transformer, world, mode)

        def stop_now() -> bool:  # every rank asks at the same points: the vote keeps them in step
            flag = torch.tensor([1 if cancel.is_set() else 0], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=control)
            return bool(flag.item())

        def report(fraction, message, preview):
            if rank == 0:
                events.put(("progress", fraction, message, preview))

        out = out_path if rank == 0 else str(Path(scratch) / f"rank{rank}" / Path(out_path).name)
        res = EngineService(models_dir=models_dir).generate_here(  # this rank's part: the plain engine
            req, out, progress=report, should_cancel=stop_now, preview_dir=preview_dir if rank == 0 else None)
        if rank == 0:
            meta = dict(res.get("metadata") or {}, context_parallel={"world": world, "mode": mode})
            events.put(("done", dict(res, metadata=meta)))
        dist.barrier(group=control)
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001  every ending is reported to the parent
        from pipelines.errors import plain_error

        if isinstance(exc, AssertionError) and "divisible by mesh size" in str(exc):
            exc = UserError(f"this video's tokens do not split evenly over {world} processes, which gloo (a CPU) "
                            "needs: change the frame count or size, or use GPUs (NCCL splits any count)")
        if isinstance(exc, Cancelled):
            events.put(("error", "cancelled", "cancelled", ""))
        elif isinstance(exc, UserError):
            events.put(("error", "user", str(exc), ""))
        else:
            plain = plain_error(exc)
            events.put(("error", "user" if plain else "internal", plain or f"rank {rank}: {type(exc).__name__}: "
                        f"{exc}", "" if plain else traceback.format_exc()))
