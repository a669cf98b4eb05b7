"""Entry points the studio's job system and the CLI call: typed request in, files out. Keeps model caching and
progress plumbing in one place so the UI layer never touches torch."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.requests import GenerateRequest

ProgressFn = Callable[[float, str, "str | None"], None]  # fraction, message, preview image path


@dataclass
class EngineService:
    """Owns the model cache and one Engine per loaded model. One generation at a time (GPU lane)."""

    models_dir: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _engines: dict = field(default_factory=dict, repr=False)

    def engine(self, model: str, tier=None):
        from pipelines.models.loader import default_cache
        from pipelines.models.registry import get_spec
        from pipelines.parallel import release_shared_group, visible_gpus
        from pipelines.requests import MemoryTier
        from pipelines.sampler.engine import Engine

        spec = get_spec(model, self.models_dir)
        if visible_gpus():  # a warm context-parallel group holds GPUs 0..K-1: give them back before loading here
            release_shared_group()
        loaded = default_cache().get(spec, tier or MemoryTier.AUTO)
        key = id(loaded)
        if key not in self._engines:
            self._engines = {key: Engine(loaded)}
        return self._engines[key]

    def generate(self, request: GenerateRequest | dict, out_path: str | os.PathLike,
                 progress: ProgressFn | None = None, should_cancel: Callable[[], bool] | None = None,
                 preview_dir: str | os.PathLike | None = None) -> dict:
        req = request if isinstance(request, GenerateRequest) else GenerateRequest.from_dict(request)
        req.validate()
        if (req.gpus or 1) > 1:  # one video over several GPUs (pipelines.parallel): every rank runs generate_here
            from pipelines.parallel import check_devices, shared_pool

            check_devices(req.gpus)
            with self._lock:  # the GPUs are the ranks' now: no other generation of this process meanwhile
                # this process's warm group of K ranks (started, with the model loaded in each, by the first such
                # job; released after ICLORA_SP_IDLE_S idle seconds)
                return shared_pool().run(req, out_path, req.gpus, models_dir=self.models_dir, progress=progress,
                                         should_cancel=should_cancel, preview_dir=preview_dir,
                                         before_start=self._release_models)
        return self.generate_here(req, out_path, progress, should_cancel, preview_dir)

    def _release_models(self) -> None:
        """Before a context-parallel group starts on CUDA: rank 0 loads its own copy on GPU 0, so this process
        gives its copy back (on a CPU the copies share the host's memory and nothing is released)."""
        from pipelines.parallel import visible_gpus

        if visible_gpus():
            from pipelines.models.loader import default_cache

            self._engines = {}
            default_cache().clear()

    def generate_here(self, req: GenerateRequest, out_path: str | os.PathLike, progress: ProgressFn | None = None,
                      should_cancel: Callable[[], bool] | None = None,
                      preview_dir: str | os.PathLike | None = None) -> dict:
        """The run in this process, whatever ``req.gpus`` says (each rank of a context-parallel run calls this:
        its transformer is already split, and the files record the request as asked, ``gpus`` included)."""
        with self._lock:
            if progress:
                progress(0.0, "loading model", None)
            eng = self.engine(req.model, req.tier)
            on_step = None
            if progress is not None:
                def on_step(ev):
                    path = None
                    if ev.preview is not None and preview_dir is not None:
                        path = _write_preview(Path(preview_dir), ev.preview)
                    # the engine names every phase (encode, denoise step i/n, upsample, decode, audio decode,
                    # write) with a fraction of the whole run that only moves forward
                    progress(ev.fraction, ev.message or f"step {ev.step}/{ev.total}", path)
            res = eng.generate(req, out_path, on_step=on_step, should_cancel=should_cancel,
                               previews=preview_dir is not None)
            if progress:
                progress(1.0, "done", None)
        # "frames": the exact uint8 frames written (before h264): sweeps compare results on them, not on re-decoded
        # files whose compression noise would swamp small differences
        return {"video": str(res.path), "settings": str(res.sidecar), "metadata": res.metadata, "frames": res.frames}


def _write_preview(folder: Path, img) -> str:
    from pipelines.video_io import write_image

    return str(write_image(folder / "preview.png", img))
