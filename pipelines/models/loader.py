"""Loading models in one place, cached by (spec, memory tier). The sampler and trainer get a LoadedModel handed
to them; nothing reads a global "current model".

- tiny: built from code and a seed (pipelines.models.tiny), float32 on CPU or bf16 on GPU.
- diffusers folder: LTX2InContextPipeline.from_pretrained(folder, local_files_only=True).
- official single file: every component (transformer, video VAE, audio VAE, vocoder, text connectors) from the
  one checkpoint and the config in its metadata (pipelines.models.official), the Gemma 3 text encoder from its
  folder; always offline.

The model layer knows nothing of the sampler: whoever runs a model installs what it needs on it (the engine and
the trainer install the reference-bias attention processor, pipelines.sampler.attention).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pipelines.errors import UserError
from pipelines.models.registry import ModelKind, ModelSpec
from pipelines.requests import MemoryTier

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    pipe: object  # diffusers LTX2InContextPipeline
    device: str
    dtype: object  # torch dtype for compute
    tier: MemoryTier
    max_sequence_length: int
    upsampler: object | None = None
    bias_state: object | None = None  # set by the sampler when it installs its attention processor
    extras: dict = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.spec.is_tiny


# The LTX-2.3 key fixes live with the rest of the official-format mapping (pipelines.models.official).
from pipelines.models.official import finish_vae_keys, fix_transformer_keys, protect_vae_keys  # noqa: E402,F401


def _device_and_dtype(tiny: bool):
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", (torch.float32 if tiny else torch.bfloat16)


def _build_tiny(spec: ModelSpec, dtype):
    from diffusers import LTX2InContextPipeline

    from pipelines.models.tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_components, build_tiny_upsampler

    pipe = LTX2InContextPipeline(**build_tiny_components(seed=0))
    return pipe, build_tiny_upsampler(seed=0), TINY_MAX_SEQUENCE_LENGTH


def _build_diffusers(spec: ModelSpec, dtype):
    from diffusers import LTX2InContextPipeline

    try:
        pipe = LTX2InContextPipeline.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise UserError(f"could not load the diffusers folder {spec.path}: {exc}") from None
    return pipe, _load_upsampler(spec), 1024


def _empty_model(cls, config: dict):
    """A diffusers model with its parameters on the meta device (no 88 GB of random fp32 init for a 22B model);
    buffers computed at construction (filters, RoPE tables) stay real. load_into(..., assign=True) fills the rest."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls.from_config(config)


def _cast(model, dtype):
    """To `dtype` only when needed (a bf16 file for a bf16 run is not copied)."""
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype)
    return model


def load_text_encoder(folder: str, dtype):
    """Gemma 3 text encoder + tokenizer from a local folder (the only component outside the checkpoint)."""
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    try:
        text_encoder = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  a half-downloaded or foreign folder
        raise UserError(f"could not load the Gemma 3 text encoder from {folder}: {exc}") from None
    return text_encoder.eval(), tokenizer


def build_official_pipeline(checkpoint: str, gemma_folder: str, dtype):
    """An LTX2InContextPipeline from one official LTX-2.3 checkpoint + the Gemma folder, configs derived from the
    checkpoint's metadata (no config folder). fp8 checkpoints are dequantised to `dtype`."""
    from safetensors.torch import load_file

    from pipelines.models import official as off

    config, _meta = off.read_metadata(checkpoint)
    try:
        sd = load_file(checkpoint)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not read {checkpoint}: {exc} (is the download complete?)") from None
    return official_pipeline(config, sd, lambda: load_text_encoder(gemma_folder, dtype), dtype, source=checkpoint)


def official_pipeline(config: dict, sd: dict, load_text, dtype, source: str = "the checkpoint"):
    """What build_official_pipeline does once the file is read: the checkpoint's config dict and state dict (in
    memory) -> the pipeline; load_text() -> (text_encoder, tokenizer). Tensors already in `dtype` are assigned, not
    copied (bench/gpu_suite.py shares one set of full-size random weights with ltx-core's modules this way)."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2InContextPipeline, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    from pipelines.models import official as off

    sd = off.dequantize_fp8(sd, dtype)
    groups = off.split_state_dict(sd)
    del sd
    for part in ("transformer", "connectors", "vae", "audio_vae", "vocoder"):
        if not groups[part]:
            raise UserError(f"{source} has no {part} weights: it is not a complete official LTX-2.3 checkpoint")
    if groups["unknown"]:
        log.warning("%s: %d keys of no known component ignored, e.g. %s", source, len(groups["unknown"]),
                    next(iter(groups["unknown"])))
    text_encoder, tokenizer = load_text()
    caption_channels = text_encoder.config.text_config.hidden_size
    text_in = off.text_projection_in_features(groups["connectors"])
    parts = {
        "transformer": (LTX2VideoTransformer3DModel, off.transformer_config(config),
                        off.convert_transformer(groups.pop("transformer"))),
        "connectors": (LTX2TextConnectors, off.connectors_config(config, text_in, caption_channels),
                       off.convert_connectors(groups.pop("connectors"))),
        "vae": (AutoencoderKLLTX2Video, off.video_vae_config(config), off.convert_video_vae(groups.pop("vae"))),
        "audio_vae": (AutoencoderKLLTX2Audio, off.audio_vae_config(config),
                      off.convert_audio_vae(groups.pop("audio_vae"))),
        "vocoder": (LTX2VocoderWithBWE, off.vocoder_config(config), off.convert_vocoder(groups.pop("vocoder"))),
    }
    models = {}
    for name, (cls, cfg, state) in parts.items():
        model = _empty_model(cls, cfg)
        off.load_into(model, state, name, source)
        models[name] = _cast(model, dtype).eval()
    pipe = LTX2InContextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**off.scheduler_config()),
                                 text_encoder=text_encoder, tokenizer=tokenizer, **models)
    return pipe


def _build_single_file(spec: ModelSpec, dtype):
    gemma = spec.component("text_encoder").path
    pipe = build_official_pipeline(spec.path, gemma, dtype)
    return pipe, _load_upsampler(spec), 1024


def load_official_upsampler(path: str):
    """A latent upsampler from an official file (ltx-2.3-spatial-upscaler-*.safetensors): its config is in the
    metadata, its keys are diffusers' names already (diffusers 0.42.1 has no single-file loader for it)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise UserError(f"{path} has no config in its metadata: not an official LTX-2.3 upsampler")
    return official_upsampler(json.loads(meta["config"]), load_file(path), source=path)


def official_upsampler(config: dict, sd: dict, source: str = "the upsampler"):
    """The latent upsampler from its official config dict and state dict (in memory)."""
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    from pipelines.models import official as off

    model = _empty_model(LTX2LatentUpsamplerModel, off.upsampler_config(config))
    off.load_into(model, sd, "upsampler", source)
    return model.eval()


def _load_upsampler(spec: ModelSpec):
    comp = spec.component("upsampler")
    path = comp.path if comp else None
    if not path:
        return None
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    try:
        if path.endswith(".safetensors"):
            return load_official_upsampler(path)
        return LTX2LatentUpsamplerModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  an optional component: two-stage runs will say it is missing
        log.warning("could not load the latent upsampler %s: %s", path, exc)
        return None


def apply_tier(pipe, tier: MemoryTier, device: str, dtype) -> MemoryTier:
    """Place the pipeline for a memory tier. On CPU there is one choice (resident)."""
    import torch

    if device == "cpu":
        if dtype != torch.float32:
            pipe.to("cpu", dtype)
        return MemoryTier.BF16
    if tier == MemoryTier.BF16:
        pipe.to(device, dtype)
    elif tier == MemoryTier.FP8:
        pipe.to(device, dtype)
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    elif tier == MemoryTier.OFFLOAD:
        pipe.to(dtype=dtype)
        pipe.enable_model_cpu_offload(device=device)
    elif tier == MemoryTier.GROUP_OFFLOAD:
        pipe.to(dtype=dtype)
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    if device != "cpu":
        pipe.vae.enable_tiling()
        if tier in (MemoryTier.BF16, MemoryTier.FP8):
            park_text_encoder(pipe, device)
    return tier


def park_text_encoder(pipe, device: str) -> bool:
    """Keep the text encoder (Gemma 3 12B: ~24 GB bf16) in CPU memory between runs on the resident tiers; the
    engine brings it to the GPU only to encode a prompt (pipelines.sampler.engine). Refused (and said so in the
    log) if the pipeline would then pick the CPU as its execution device."""
    te = getattr(pipe, "text_encoder", None)
    if te is None:
        return False
    te.to("cpu")
    if getattr(pipe, "_execution_device", None) is not None and str(pipe._execution_device).split(":")[0] != \
            str(device).split(":")[0]:
        te.to(device)
        log.warning("text encoder kept on %s: the pipeline would otherwise run on the CPU", device)
        return False
    return True


class ModelCache:
    """Loaded models keyed by (spec name, tier). Loading is serialised; one heavy model at a time on a GPU.

    `dtype` overrides the compute dtype (tests load the tiny official checkpoint in float32 to compare it with
    Lightricks' code; real models on a CPU would not fit in float32)."""

    def __init__(self, max_models: int = 1, dtype=None):
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self.max_models = max_models
        self.dtype = dtype
        self.loads = 0  # models built (not served from the cache): a warm context-parallel group counts on it

    def get(self, spec: ModelSpec, tier: MemoryTier = MemoryTier.AUTO) -> LoadedModel:
        from pipelines.models.memory import choose_tier

        with self._lock:
            device, dtype = _device_and_dtype(spec.is_tiny)
            dtype = self.dtype or dtype
            if tier == MemoryTier.AUTO:
                tier = choose_tier(spec, device)
            key = (spec.name, tier.value)
            if key in self._models:
                return self._models[key]
            while len(self._models) >= self.max_models:
                self._models.pop(next(iter(self._models)))
                _empty_cache()
            if spec.kind == ModelKind.TINY:
                pipe, upsampler, max_len = _build_tiny(spec, dtype)
            elif spec.kind == ModelKind.DIFFUSERS:
                pipe, upsampler, max_len = _build_diffusers(spec, dtype)
            else:
                pipe, upsampler, max_len = _build_single_file(spec, dtype)
            self.loads += 1
            pipe.set_progress_bar_config(disable=True)
            tier = apply_tier(pipe, tier, device, dtype)
            if upsampler is not None:
                upsampler.to(device, dtype)
            loaded = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, tier=tier,
                                 max_sequence_length=max_len, upsampler=upsampler)
            self._models[key] = loaded
            return loaded

    def clear(self) -> None:
        """Drop every loaded model and give its device memory back (a context-parallel run loads its own)."""
        with self._lock:
            self._models.clear()
            _empty_cache()


def _empty_cache():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_default_cache: ModelCache | None = None


def default_cache() -> ModelCache:
    global _default_cache
    if _default_cache is None:
        _default_cache = ModelCache()
    return _default_cache
