"""What every tab shares: configuration, the job manager, the engine service. Built once per server.

No tensor math and no torch import here: the job kinds (studio.kinds) hand typed requests to pipelines.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ASSETS_DIR, Paths
from pipelines.errors import UserError

LOCAL_OWNER = "local"


@dataclass
class StudioConfig:
    models_dir: str | None = None
    outputs_dir: str | None = None
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = 7860
    auth_file: str | None = None
    max_file_size: str = "2gb"
    gpu_workers: int = 1
    # size limits (pipelines.limits) over this host's profile; None keeps the profile's value
    max_frames: int | None = None
    max_pixels: int | None = None
    max_volume: int | None = None
    max_queued_jobs: int | None = None
    admins: tuple[str, ...] = ()  # with auth: who may change what every user shares (the models folder)
    # where GPU jobs run (studio.executors): None = in this process; "auto" or "ray://HEAD:10001" = Ray actors
    ray: str | None = None
    ray_workers: int | None = None       # actors (default: one per GPU of the cluster)
    shared_dir: str | None = None        # a folder every Ray host mounts at the same path
    gpus_per_job: int = 1                # default GPUs of one generation (context parallel, --sp)
    sp_idle_s: float | None = None       # a warm split group's idle release (--sp-idle; None: env or 600 s)

    def is_admin(self, owner: str) -> bool:
        """Without --auth the one local user runs the box; with it, only the names given with --admins."""
        return not self.auth_file or owner in self.admins

    def limits(self):
        """This server's limits: the host's profile (ZeroGPU or default) with the flags given applied."""
        from studio.spaces import default_limits

        return default_limits().with_overrides(max_frames=self.max_frames, max_pixels=self.max_pixels,
                                               max_volume=self.max_volume, max_queued_jobs=self.max_queued_jobs)

    @property
    def paths(self) -> Paths:
        return Paths.resolve(self.models_dir, self.outputs_dir)


@dataclass
class StudioContext:
    config: StudioConfig
    jobs: object  # studio.jobs.JobManager
    service: object  # pipelines.service.EngineService
    tabs: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # gr.State objects for cross-tab hand-offs (set by studio.app)
    registered: set = field(default_factory=set)  # tabs whose job kinds are registered
    guard: object = None  # studio.guard.GuardState: the owner ledger of cache files, logins, the users file
    prefs: dict = field(default_factory=dict)  # per-user run settings kept by the server: {owner: {"gpus": K}}
    demo_loras: dict = field(default_factory=dict)  # {key: path} of the tiny model's demo IC-LoRAs (studio.handoff)
    _zero_gpu_run: object = None  # the spaces.GPU-wrapped runner, made on first use on ZeroGPU

    @property
    def outputs_dir(self) -> Path:
        return self.config.paths.outputs_dir

    @property
    def limits(self):
        """The size limits every submit is checked against (pipelines.limits.active(): one per process)."""
        from pipelines.limits import active

        return active()

    @property
    def models_dir(self) -> Path | None:
        return self.config.paths.models_dir

    def owner(self, request) -> str:
        """The job owner for a Gradio request: the logged-in user, else the single local user."""
        from studio.auth import owner_name

        user = getattr(request, "username", None) if request is not None else None
        return owner_name(user) if user else LOCAL_OWNER

    def user_dir(self, owner: str, sub: str) -> Path:
        """``<outputs>/<owner>/<sub>/``, created: where a user's files of one kind go."""
        from studio.security import user_outputs_dir

        d = user_outputs_dir(self.outputs_dir, owner) / sub
        d.mkdir(parents=True, exist_ok=True)
        return d

    def submit(self, owner: str, kind: str, request) -> str:
        """Submit a job; returns its id. Each kind's own check (studio.kinds: size limits, inputs probed, LoRA
        files) runs inside ``jobs.submit``, so a bad request is refused at once, from any tab or the API,
        instead of failing after its turn in the queue.

        On a ZeroGPU Space the GPU exists only inside a ``@spaces.GPU`` call made by the request itself (not in
        a worker thread), so there a gpu-lane job runs right here, inside that call (``JobManager.run_now``),
        and is finished when this returns. Everywhere else: the queue."""
        from studio.spaces import on_zero_gpu

        spec = self.jobs.kinds.get(kind)
        if spec is not None and spec.lane.value == "gpu" and on_zero_gpu():
            if self._zero_gpu_run is None:
                from studio.spaces import gpu_wrap

                self._zero_gpu_run = gpu_wrap(lambda o, k, r: self.jobs.run_now(o, k, r).id)
            return self._zero_gpu_run(owner, kind, request)
        return self.jobs.submit(owner, kind, request)

    def job_state(self, key: str):
        """A gr.BrowserState holding a tab's current job id in the browser's localStorage. Its encryption
        secret is kept beside the outputs, so a page reopened after a server RESTART still finds its job
        (with Gradio's default random secret the stored value becomes unreadable on restart)."""
        import gradio as gr

        return gr.BrowserState(None, storage_key=f"iclora-{key}-job", secret=self.browser_secret())

    def browser_secret(self) -> str:
        import secrets

        path = Path(self.outputs_dir) / ".browser_state_secret"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # first writer wins; everyone then reads the same secret
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return path.read_text().strip()

    def allowed_roots(self) -> list[str]:
        roots = [str(self.outputs_dir), str(ASSETS_DIR)]
        roots += sorted({str(Path(p).parent) for p in self.demo_loras.values()})  # the demo IC-LoRAs' folder
        if self.models_dir:
            roots.append(str(self.models_dir))
        return roots


def build_context(config: StudioConfig) -> StudioContext:
    from pipelines.service import EngineService
    from studio.jobs import JobManager
    from studio.kinds import register_all

    paths = config.paths
    paths.outputs_dir.mkdir(parents=True, exist_ok=True)
    if config.models_dir and not Path(config.models_dir).is_dir():
        raise UserError(f"--models-dir {config.models_dir} is not a folder")
    from pipelines.limits import configure

    limits = configure(config.limits())  # one server per process: every check reads these
    if not 1 <= int(config.gpus_per_job) <= 64:
        raise UserError(f"--sp {config.gpus_per_job}: GPUs per generation must be between 1 and 64")
    if config.gpus_per_job > 1 and not config.ray:  # in this process: the GPUs must be here (Ray: per dispatch)
        from pipelines.parallel import check_devices

        check_devices(config.gpus_per_job)
    if config.sp_idle_s is not None:
        if not config.sp_idle_s >= 0:
            raise UserError(f"--sp-idle {config.sp_idle_s}: give the seconds (0 or more) the processes of a split "
                            "generation stay loaded without a job")
        from pipelines.parallel import shared_pool

        shared_pool().idle_timeout = float(config.sp_idle_s)  # read when a split job ends
    service = EngineService(models_dir=str(paths.models_dir) if paths.models_dir else None)
    jobs = JobManager(paths.outputs_dir, max_queued_per_user=limits.max_queued_jobs, **_executors(config, paths, service))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from studio.handoff import build_demos

    ctx = StudioContext(config=config, jobs=jobs, service=service, guard=_guard_state(config, paths),
                        demo_loras=build_demos())
    register_all(ctx)  # every job kind, whichever tabs are built (the API needs them all)
    return ctx


def _executors(config: StudioConfig, paths: Paths, service) -> dict:
    """The JobManager's executors: in-process (the studio's engine service) and, with --ray, the Ray actors
    (Ray is imported only then), whose count sets the GPU lane's threads."""
    from studio.executors import InProcessExecutor, WorkerEnv

    models_dir = str(paths.models_dir) if paths.models_dir else None
    local = InProcessExecutor(WorkerEnv(models_dir, service=service))
    if not config.ray:
        return {"gpu_workers": config.gpu_workers, "local_executor": local}
    from studio.executors.ray_executor import RayExecutor

    remote = RayExecutor(config.ray, outputs_dir=paths.outputs_dir, models_dir=models_dir,
                         shared_dir=config.shared_dir, workers=config.ray_workers)
    return {"gpu_workers": remote.capacity, "executor": remote, "local_executor": local}


def _guard_state(config: StudioConfig, paths: Paths):
    """What the front-door middleware (studio.guard) needs: folders, the users file, the cache ledger."""
    from studio.auth import Authenticator, owner_name
    from studio.guard import GuardState
    from studio.routes import upload_dir

    authenticator = Authenticator(config.auth_file) if config.auth_file else None
    return GuardState(outputs_dir=paths.outputs_dir, public_dirs=[ASSETS_DIR], cache_dir=upload_dir(),
                      authenticator=authenticator, owner_of=owner_name)
