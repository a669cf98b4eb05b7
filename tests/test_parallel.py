"""One video across several processes (pipelines.parallel): diffusers' context parallelism (Ulysses) over 2 gloo
processes on this CPU, against the same work in 1 process.

Stated tolerances (tiny model, float32):
- the transformer's output (video and audio), split over 2 ranks: within 1e-5 of one process (observed ~4e-7:
  float sums in another order);
- the decoded video of a whole generation (8 steps, the VAE, an h264 mp4): PSNR >= 45 dB against one process.
  A 1e-7 difference in the floats can flip a rounding to uint8, and h264 (on the tiny model's noise) turns some
  of those into a few levels over a block; observed: identical frames (inf dB) for most requests, ~54 dB for
  the others. A split whose biased attention stays within each rank's shard scores 32 dB.
Ring attention needs CUDA (diffusers' ring merges partial attentions by their log-sum-exp, which its CPU backend
does not return): `python bench/scale.py --cp` checks ulysses and ring on GPUs against one GPU.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _frames(path) -> np.ndarray:
    from pipelines.video_io import read_video

    return read_video(path)[0].astype(int)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def assert_same_video(a: np.ndarray, b: np.ndarray) -> None:
    """The stated tolerance for a whole generation (module docstring): PSNR >= 45 dB against one process."""
    assert a.shape == b.shape
    assert psnr(a, b) >= 45.0, (psnr(a, b), int(np.abs(a - b).max()), float((np.abs(a - b) > 1).mean()))


T, N = 24, 12  # video tokens of the transformer test, of which targets (the rest: two reference groups)


def _transformer_inputs(tr):
    import torch

    g = torch.Generator().manual_seed(1)
    ts = torch.full((1, T), 500.0)
    ts[:, N:] = 0.0  # clean reference tokens: per-token timesteps, as the engine passes them
    mask = torch.ones(1, 8)
    mask[:, :3] = 0  # a left-padded prompt
    return dict(hidden_states=torch.randn(1, T, tr.config.in_channels, generator=g),
                audio_hidden_states=torch.randn(1, 3, tr.config.audio_in_channels, generator=g),
                encoder_hidden_states=torch.randn(1, 8, tr.config.cross_attention_dim, generator=g),
                audio_encoder_hidden_states=torch.randn(1, 8, tr.config.audio_cross_attention_dim, generator=g),
                timestep=ts, audio_timestep=torch.tensor([500.0]), sigma=torch.tensor([0.5]),
                audio_sigma=torch.tensor([0.5]), encoder_attention_mask=mask, audio_encoder_attention_mask=mask,
                num_frames=2, height=3, width=4, audio_num_frames=3, isolate_modalities=False,
                use_cross_timestep=True, return_dict=False)


def _forward_rank(rank: int, world: int, port: int, queue) -> None:
    """One rank of the transformer test: the 1-process answer first, then the same call split over the ranks."""
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from pipelines.models.tiny import build_tiny_components
    from pipelines.parallel import enable_context_parallel
    from pipelines.sampler.attention import install_reference_bias

    tr = build_tiny_components(seed=0)["transformer"].float().eval()
    state = install_reference_bias(tr)
    w = torch.rand(T - N, generator=torch.Generator().manual_seed(5)).clamp(0.05, 1.0)
    w[0] = 0.0  # a hard-masked reference token
    state.set(N, w, torch.tensor([0] * 6 + [1] * 6))  # two reference groups: the group channels too
    with torch.no_grad():
        ref_v, ref_a = tr(**_transformer_inputs(tr))
    calls = state.calls
    enable_context_parallel(tr, world)
    with torch.no_grad():
        v, a = tr(**_transformer_inputs(tr))
    if rank == 0:
        queue.put((float((v - ref_v).abs().max()), float((a - ref_a).abs().max()), float(ref_v.abs().max()),
                   state.calls - calls, calls, tuple(v.shape)))
    dist.destroy_process_group()


def test_the_transformer_split_over_two_processes_equals_one():
    """Our attn1 processor under diffusers' context parallelism: reference log-bias with a hard-masked token and two
    reference groups, audio<->video attention on, a padded prompt, per-token timesteps."""
    import multiprocessing as mp

    from pipelines.parallel import _free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_forward_rank, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    dv, da, scale, cp_calls, calls, shape = q.get(timeout=5)
    assert shape == (1, T, 16) and calls > 0 and cp_calls == calls  # the biased path ran, in both runs
    assert dv <= 1e-5 and da <= 1e-5, (dv, da, scale)


@pytest.fixture(scope="module")
def control():
    from pipelines.config import ASSETS_DIR

    return str(ASSETS_DIR / "sample_motion.mp4")


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie is an exited child nobody waited for)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _gone(pids, within: float = 60.0) -> bool:
    import time

    end = time.monotonic() + within
    while any(_running(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def _released(pool, pids, within: float = 60.0) -> bool:
    """The pool's group is released (idle) and its processes gone, within a bounded wait."""
    import time

    end = time.monotonic() + within
    while pool.group is not None and time.monotonic() < end:
        time.sleep(0.1)
    return pool.group is None and _gone(pids, max(1.0, end - time.monotonic()))


@pytest.fixture
def pool():
    """A pool of its own (never released idle unless the test says so); closed after the test, no process left."""
    from pipelines.parallel import ParallelPool

    p = ParallelPool(idle_timeout=float("inf"), settle_timeout=60)
    started = []
    real = p.run

    def run(*a, **kw):
        try:
            return real(*a, **kw)
        finally:
            if p.group is not None:
                started.extend(p.group.pids)
    p.run = run
    yield p
    if p.group is not None:
        started.extend(p.group.pids)
    p.close()
    assert _gone(started), [pid for pid in started if _running(pid)]


@pytest.fixture(autouse=True)
def _no_group_left():
    """Tests that go through the studio or EngineService use this process's shared pool: closed after each."""
    yield
    from pipelines import parallel

    pool = parallel._shared_pool
    if pool is not None and pool.group is not None:
        pids = pool.group.pids
        pool.close()
        assert _gone(pids)


def test_two_processes_equal_one_with_a_biased_reference_and_audio(tmp_path, control):
    """A control reference at attention strength 0.5 (the log-bias path of our attn1 processor, per rank), the
    soundtrack on (audio<->video attention across the split), per-token timesteps: same frames as 1 process."""
    from pipelines.service import EngineService

    req = dict(prompt="a red ball rolling", width=64, height=64, frames=17, seed=3, attention_strength=0.5,
               controls=[{"path": control}])
    one = EngineService().generate(req, tmp_path / "one.mp4")
    seen = []
    two = EngineService().generate(dict(req, gpus=2), tmp_path / "two.mp4",
                                   progress=lambda f, m, p: seen.append((f, m)), preview_dir=tmp_path / "prev")
    a, b = _frames(one["video"]), _frames(two["video"])
    assert a.shape == (17, 64, 64, 3)
    assert_same_video(a, b)
    assert two["metadata"]["context_parallel"] == {"world": 2, "mode": "ulysses"}
    assert any(m.startswith("step 8/8") for _, m in seen) and seen[-1][1] == "done"  # rank 0's progress
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    assert not list(tmp_path.glob("rank*"))  # the other rank's copy is not left beside the output
    # the warm group shows in the Workers panel's rows, beside the studio's own process
    from studio.executors import InProcessExecutor

    rows = {w["name"]: w for w in InProcessExecutor().workers()}
    group = rows["split group (2 x ulysses)"]
    assert group["gpus"] == ["0", "1"] and group["state"].startswith("warm · 1 job(s)") and "tiny" in group["model"]


def test_two_jobs_on_a_warm_group_reuse_its_processes_and_load_the_model_once(tmp_path, pool, control):
    """The second and third jobs run in the first job's processes (same pids), no model is loaded again (each
    rank's ModelCache built one), and each equals its 1-process output. An uneven split (a UserError from every
    rank) in between is raised as is and leaves the group in service."""
    from pipelines.errors import UserError
    from pipelines.parallel import generate_parallel
    from pipelines.service import EngineService

    first = dict(prompt="a red ball", width=64, height=64, frames=9, seed=4, audio=False)
    second = dict(prompt="a blue cube", width=64, height=64, frames=17, seed=7, audio=True,
                  attention_strength=0.5, controls=[{"path": control}])
    seen = {0: [], 1: []}
    out = {}
    out[0] = generate_parallel(first, tmp_path / "a.mp4", 2, pool=pool, timeout=600,
                               progress=lambda f, m, p: seen[0].append(m))
    group = pool.group
    pids = group.pids
    assert group.loads == {0: 1, 1: 1} and len(set(pids)) == 2
    with pytest.raises(UserError, match="split evenly"):
        generate_parallel(dict(first, width=96, height=96, frames=17), tmp_path / "odd.mp4", 2, pool=pool,
                          timeout=600)
    assert pool.group is group and group.healthy()
    out[1] = generate_parallel(second, tmp_path / "b.mp4", 2, pool=pool, timeout=600,
                               progress=lambda f, m, p: seen[1].append(m))
    assert pool.group is group and group.pids == pids and pool.groups_started == 1
    assert group.loads == {0: 1, 1: 1} and group.jobs_run == 3  # no second load in either rank
    assert any(m.startswith("starting 2 processes") for m in seen[0])
    assert not any(m.startswith("starting") for m in seen[1]) and seen[1][-1] == "done"
    for i, req in enumerate((first, second)):
        one = EngineService().generate(req, tmp_path / f"one{i}.mp4")
        assert_same_video(_frames(one["video"]), _frames(out[i]["video"]))
    assert not (tmp_path / "odd.mp4").exists()


def test_a_killed_rank_replaces_the_group_and_nothing_hangs(tmp_path, pool):
    """Rank 1 killed mid-job (SIGKILL at step 2 of 30): the job fails plainly within a bounded time (RankLost,
    not a hang on rank 0 waiting in a collective), every process of that group is gone, and the next job runs on
    a new group."""
    import os
    import signal

    from pipelines.parallel import RankLost, generate_parallel

    victims = []

    def progress(f, m, p):
        if m.startswith("step 2/") and not victims:
            victims.append(pool.group.pids)
            os.kill(pool.group.pids[1], signal.SIGKILL)

    req = dict(prompt="a cat", width=64, height=64, frames=9, seed=1, audio=False)
    with pytest.raises(RankLost, match="rank 1 of 2 stopped"):
        generate_parallel(dict(req, schedule="full", steps=30), tmp_path / "x.mp4", 2, pool=pool, progress=progress,
                          timeout=600)
    assert victims and pool.group is None and _gone(victims[0])
    res = generate_parallel(req, tmp_path / "y.mp4", 2, pool=pool, timeout=600)
    assert Path(res["video"]).is_file() and pool.groups_started == 2
    assert not set(pool.group.pids) & set(victims[0])


def test_ranks_whose_studio_died_exit_by_themselves(tmp_path):
    """A studio process that dies without closing its group (killed; os._exit here, no atexit): its idle ranks
    see their parent gone and exit, within a bounded wait. No orphan keeps a GPU."""
    import json

    script = tmp_path / "studio.py"
    script.write_text(
        "import json, os, sys\n"
        "from pipelines.parallel import ParallelPool\n"
        "if __name__ == '__main__':\n"
        "    pool = ParallelPool(idle_timeout=float('inf'))\n"
        "    pool.run(dict(prompt='a cat', width=64, height=64, frames=9, seed=1, audio=False), sys.argv[1], 2,\n"
        "             timeout=500)\n"
        "    print(json.dumps(pool.group.pids), flush=True)\n"
        "    os._exit(0)\n")
    # output to files, not pipes: ranks left running would hold a pipe open and make the wait hang
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        r = subprocess.run([sys.executable, str(script), str(tmp_path / "x.mp4")], cwd=ROOT, stdout=out,
                           stderr=err, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, (tmp_path / "err.txt").read_text()[-3000:]
    pids = json.loads((tmp_path / "out.txt").read_text().strip().splitlines()[-1])
    assert len(pids) == 2 and (tmp_path / "x.mp4").is_file()
    left = [] if _gone(pids, within=60) else [p for p in pids if _running(p)]
    for pid in left:  # this test's own processes: not left behind when it fails
        __import__("os").kill(pid, 9)
    assert not left


def test_the_pool_replaces_a_group_for_another_model_world_or_mode_and_a_broken_one(monkeypatch, tmp_path):
    """The pool's choice, without processes: same key -> the same group; another model, tier, K or mode -> the
    old group closed and a new one; a group that is no longer healthy -> replaced; close() releases it."""
    import pipelines.parallel as par

    made = []

    class Fake:
        def __init__(self, world, *, model, tier, models_dir, mode, start_timeout, settle_timeout):
            self.key = par.group_key(model, tier, models_dir, world, mode)
            self.closed, self.ok, self.last_used = False, True, 0.0
            made.append(self)

        def healthy(self):
            return self.ok and not self.closed

        def close(self, timeout=10):
            self.closed = True

        def run(self, req, out, **kw):
            return {"key": self.key}

    monkeypatch.setattr(par, "ParallelGroup", Fake)
    monkeypatch.setattr(par, "check_mode", lambda mode: None)
    pool = par.ParallelPool(idle_timeout=float("inf"))
    base = dict(prompt="x", width=64, height=64, frames=9)
    pool.run(base, tmp_path / "a.mp4", 2)
    pool.run(dict(base, seed=9), tmp_path / "a.mp4", 2)
    assert len(made) == 1
    pool.run(base, tmp_path / "a.mp4", 3)
    pool.run(base, tmp_path / "a.mp4", 3, mode="ring")
    pool.run(dict(base, tier="bf16"), tmp_path / "a.mp4", 3, mode="ring")
    pool.run(dict(base, tier="bf16"), tmp_path / "a.mp4", 3, mode="ring", models_dir=str(tmp_path))
    assert len(made) == 5 and [g.closed for g in made] == [True, True, True, True, False]
    made[-1].ok = False  # a rank died while the group was idle
    pool.run(dict(base, tier="bf16"), tmp_path / "a.mp4", 3, mode="ring", models_dir=str(tmp_path))
    assert len(made) == 6 and made[-2].closed and pool.groups_started == 6
    pool.close()
    assert made[-1].closed and pool.group is None
    pool.idle_timeout = 0  # one-shot: the group is closed as soon as its job ends
    pool.run(base, tmp_path / "a.mp4", 2)
    assert len(made) == 7 and made[-1].closed and pool.group is None


def _cli(tmp_path, name, *args):
    return subprocess.run([sys.executable, "-m", "pipelines", "generate", "--prompt", "a dog", "--seed", "5",
                           "--no-audio", *args, "--out", str(tmp_path / name)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_cli_sp_2_equals_one_process_and_an_uneven_split_is_refused_on_gloo(tmp_path):
    """`python -m pipelines generate --sp 2` (no reference: the stock attention path through diffusers' dispatch)
    gives the frames of the same request in one process. 96x96x17 has 27 video tokens: gloo cannot gather 14 + 13,
    so on a CPU that is one plain error line (NCCL on GPUs splits any count)."""
    from pipelines.service import EngineService

    r = _cli(tmp_path, "sp2.mp4", "--width", "64", "--height", "96", "--frames", "17", "--sp", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    one = EngineService().generate(dict(prompt="a dog", seed=5, audio=False, width=64, height=96, frames=17),
                                   tmp_path / "one.mp4")
    assert_same_video(_frames(tmp_path / "sp2.mp4"), _frames(one["video"]))
    r = _cli(tmp_path, "odd.mp4", "--width", "96", "--height", "96", "--frames", "17", "--sp", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "split evenly" in r.stderr, r.stderr[-2000:]


def test_a_cancel_stops_every_rank_and_the_group_runs_the_next_job(tmp_path, pool, control):
    """Cancelled after step 2 of 30 (Full schedule: 28 more guided steps were left, so the ranks cannot finish
    before the cancel reaches them, however loaded the machine): every rank stops, no file, Cancelled. The same
    processes then run the next job (the cancel Event is cleared for it), which equals one process; idle, the
    group is released and its processes are gone."""
    from pipelines.errors import Cancelled
    from pipelines.parallel import generate_parallel
    from pipelines.service import EngineService

    steps = []
    with pytest.raises(Cancelled):
        generate_parallel(dict(prompt="a cat", width=64, height=64, frames=9, seed=1, audio=False, schedule="full",
                               steps=30), tmp_path / "x.mp4", 2, progress=lambda f, m, p: steps.append(m),
                          should_cancel=lambda: any(m.startswith("step 2/") for m in steps), timeout=600, pool=pool)
    assert not (tmp_path / "x.mp4").exists() and any(m.startswith("step 2/30") for m in steps)
    assert not any(m.startswith("step 30/") for m in steps)
    pids = pool.group.pids
    pool.idle_timeout = 0.5  # read when the next job ends: then the group is released
    req = dict(prompt="a red ball", width=64, height=64, frames=9, seed=4, audio=True, attention_strength=0.5,
               controls=[{"path": control}])
    two = generate_parallel(req, tmp_path / "two.mp4", 2, pool=pool, timeout=600)
    assert pool.groups_started == 1 and pool.group.pids == pids and pool.group.jobs_run == 2
    one = EngineService().generate(req, tmp_path / "one.mp4")
    assert_same_video(_frames(one["video"]), _frames(two["video"]))
    assert _released(pool, pids)


def test_shard_offsets_follow_diffusers_split():
    """The attn1 processor's idea of where a rank's tokens start equals the split diffusers makes."""
    import torch

    from pipelines.sampler.attention import _shard_offset

    class Mesh:
        def __init__(self, rank, world):
            self.rank, self.world = rank, world

        def get_group(self):
            return self

        def size(self):
            return self.world

    class Cfg:
        pass

    import torch.distributed as dist

    real = dist.get_rank
    try:
        dist.get_rank = lambda group=None: group.rank
        for total in (24, 25, 27, 7):
            for world in (2, 3, 4):
                chunks = torch.arange(total).tensor_split(world)
                for rank, chunk in enumerate(chunks):
                    cfg = Cfg()
                    cfg.context_parallel_config = Cfg()
                    cfg.context_parallel_config._flattened_mesh = Mesh(rank, world)
                    start = int(chunk[0]) if len(chunk) else total
                    assert _shard_offset(len(chunk), total, cfg) == start
    finally:
        dist.get_rank = real


def test_bad_gpus_values_are_refused_plainly():
    from pipelines.errors import UserError
    from pipelines.requests import GenerateRequest

    for bad in (0, -1, 65):
        with pytest.raises(UserError, match="gpus"):
            GenerateRequest.from_dict({"prompt": "x", "gpus": bad}).validate()


def test_ring_is_refused_plainly_without_cuda(tmp_path):
    from pipelines.errors import UserError
    from pipelines.parallel import generate_parallel

    with pytest.raises(UserError, match="ring attention needs CUDA"):
        generate_parallel(dict(prompt="x", width=64, height=64, frames=9), tmp_path / "x.mp4", 2, mode="ring")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ the studio's "GPUs per generation"

@pytest.fixture
def studio(tmp_path):
    from studio.context import StudioConfig, build_context
    from studio.routes import install_path_checks

    ctx = build_context(StudioConfig(outputs_dir=str(tmp_path / "out")))
    install_path_checks(ctx)
    yield ctx
    ctx.jobs.shutdown(timeout=10)


def test_a_users_gpus_per_generation_splits_their_jobs_only(studio):
    """alice sets 2 in the Workers tab; her generation (a request that does not say, as every tab sends) runs
    over 2 processes and records gpus=2; bob's runs on one; same frames. The request is built as the tabs build
it (GenerateRequest(...).to_dict(): every field present, gpus None)."""
    import json

    from studio.tabs.workers import set_gpus

    from pipelines.requests import GenerateRequest

    assert "2 GPUs" in set_gpus(studio, "alice", 2)
    req = GenerateRequest(prompt="a red ball", width=64, height=64, frames=9, seed=4, audio=False).to_dict()
    a = studio.jobs.wait(studio.jobs.submit("alice", "generate", req), timeout=600)
    b = studio.jobs.wait(studio.jobs.submit("bob", "generate", req), timeout=600)
    assert a.status.value == "done" and b.status.value == "done", (a.error, b.error)
    assert a.request["gpus"] == 2 and b.request.get("gpus") is None
    assert json.loads(Path(a.result["settings"]).read_text())["request"]["gpus"] == 2
    assert_same_video(_frames(a.result["video"]), _frames(b.result["video"]))
    assert a.preview and Path(a.preview).is_file()  # rank 0's previews reach the job's row


def test_more_gpus_than_this_host_has_are_refused_at_once(studio, monkeypatch):
    """Without Ray the GPUs must be in this process's host: asking for 4 where 2 are visible is refused in the
    Workers tab, at submit, by the CLI and at start (--sp), each with one plain line."""
    import pipelines.parallel
    from pipelines.errors import UserError
    from studio.context import StudioConfig, build_context
    from studio.tabs.workers import set_gpus

    monkeypatch.setattr(pipelines.parallel, "visible_gpus", lambda: 2)
    with pytest.raises(UserError, match="needs 4 GPUs on this host, but it has 2"):
        set_gpus(studio, "alice", 4)
    assert "alice" not in studio.prefs
    assert "2 GPUs" in set_gpus(studio, "alice", 2)
    with pytest.raises(UserError, match="needs 4 GPUs on this host, but it has 2"):
        studio.jobs.submit("alice", "generate", dict(prompt="x", width=64, height=64, frames=9, gpus=4))
    with pytest.raises(UserError, match="needs 3 GPUs"):
        build_context(StudioConfig(outputs_dir=str(studio.outputs_dir), gpus_per_job=3))
    with pytest.raises(UserError, match="between 1 and 64"):
        build_context(StudioConfig(outputs_dir=str(studio.outputs_dir), gpus_per_job=0))
    with pytest.raises(UserError, match="--sp-idle"):
        build_context(StudioConfig(outputs_dir=str(studio.outputs_dir), sp_idle_s=-1))
    from pipelines.parallel import shared_pool

    before = shared_pool().idle_timeout
    try:
        build_context(StudioConfig(outputs_dir=str(studio.outputs_dir), sp_idle_s=30)).jobs.shutdown(timeout=10)
        assert shared_pool().idle_timeout == 30.0  # --sp-idle reaches the pool the studio's split jobs use
    finally:
        shared_pool().idle_timeout = before
    from pipelines.service import EngineService

    with pytest.raises(UserError, match="needs 3 GPUs"):
        EngineService().generate(dict(prompt="x", width=64, height=64, frames=9, gpus=3), studio.outputs_dir / "x.mp4")
