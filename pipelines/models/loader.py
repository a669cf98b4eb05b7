"""Loading models in one place, cached by (spec, memory tier). The sampler and trainer get a LoadedModel handed
to them; nothing reads a global "current model".

- tiny: built from code and a seed (pipelines.models.tiny), float32 on CPU or bf16 on GPU.
- diffusers folder: LTX2InContextPipeline.from_pretrained(folder, local_files_only=True).
- official single file: transformer and video VAE from the checkpoint through diffusers' converters plus the two
  LTX-2.3 fixes diffusers 0.42.1 misses (SPEC.md 5), everything else from the config folder, always offline.
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
    bias_state: object | None = None  # ReferenceBiasState installed on the transformer
    extras: dict = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.spec.is_tiny


# -- the two LTX-2.3 key fixes (pure functions over state-dict keys, unit-tested) --

def fix_transformer_keys(state: dict) -> dict:
    """diffusers' converter leaves LTX-2.3's prompt_adaln_single keys unrenamed; the model calls them prompt_adaln."""
    out = {}
    for k, v in state.items():
        k = k.replace("audio_prompt_adaln_single.", "audio_prompt_adaln.").replace("prompt_adaln_single.", "prompt_adaln.")
        out[k] = v
    return out


_VAE_PLACEHOLDERS = {"decoder.up_blocks.7.": "decoder.@UP7@.", "decoder.up_blocks.8.": "decoder.@UP8@."}
_VAE_FINAL = {"decoder.@UP7@.": "decoder.up_blocks.3.upsamplers.0.", "decoder.@UP8@.": "decoder.up_blocks.3."}


def protect_vae_keys(state: dict) -> dict:
    """Before diffusers' VAE converter: hide LTX-2.3's extra decoder blocks 7/8 from its sequential renames."""
    out = {}
    for k, v in state.items():
        for a, b in _VAE_PLACEHOLDERS.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def finish_vae_keys(state: dict) -> dict:
    """After the converter: official decoder up_blocks.7 / 8 -> diffusers up_blocks.3.upsamplers.0 / up_blocks.3."""
    out = {}
    for k, v in state.items():
        for a, b in _VAE_FINAL.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def _device_and_dtype(tiny: bool):
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", (torch.float32 if tiny else torch.bfloat16)


def _build_tiny(spec: ModelSpec):
    from diffusers import LTX2InContextPipeline

    from pipelines.models.tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_components, build_tiny_upsampler

    pipe = LTX2InContextPipeline(**build_tiny_components(seed=0))
    return pipe, build_tiny_upsampler(seed=0), TINY_MAX_SEQUENCE_LENGTH


def _build_diffusers(spec: ModelSpec):
    import torch
    from diffusers import LTX2InContextPipeline

    try:
        pipe = LTX2InContextPipeline.from_pretrained(spec.path, dtype=torch.bfloat16, local_files_only=True)
    except Exception as exc:
        raise UserError(f"could not load the diffusers folder {spec.path}: {exc}") from None
    return pipe, _load_upsampler(spec), 1024


def _build_single_file(spec: ModelSpec):
    import torch
    from diffusers import AutoencoderKLLTX2Video, LTX2InContextPipeline, LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers, convert_ltx2_vae_to_diffusers
    from safetensors.torch import load_file

    comps = {c.name: c.path for c in spec.components}
    cfg = comps["config"]
    try:
        ckpt = load_file(spec.path)
    except Exception as exc:
        raise UserError(f"could not read {spec.path}: {exc}") from None
    tr_sd = {k: v for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}
    vae_sd = {k: v for k, v in ckpt.items() if k.startswith("vae.")}
    if not tr_sd or not vae_sd:
        raise UserError(f"{spec.path} does not look like an official LTX-2.3 checkpoint (no model.diffusion_model.* "
                        "or vae.* keys)")
    tr_sd = fix_transformer_keys(convert_ltx2_transformer_to_diffusers(tr_sd))
    vae_sd = finish_vae_keys(convert_ltx2_vae_to_diffusers(protect_vae_keys(vae_sd)))
    transformer = LTX2VideoTransformer3DModel.from_config(
        LTX2VideoTransformer3DModel.load_config(cfg, subfolder="transformer", local_files_only=True))
    missing, unexpected = transformer.load_state_dict(tr_sd, strict=False, assign=True)
    if missing:
        raise UserError(f"{spec.path}: transformer weights missing for {len(missing)} keys, e.g. {missing[0]}")
    vae = AutoencoderKLLTX2Video.from_config(AutoencoderKLLTX2Video.load_config(cfg, subfolder="vae", local_files_only=True))
    missing_v, _ = vae.load_state_dict(vae_sd, strict=False, assign=True)
    if missing_v:
        raise UserError(f"{spec.path}: VAE weights missing for {len(missing_v)} keys, e.g. {missing_v[0]}")
    gemma = comps.get("text_encoder")
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    text_encoder = Gemma3ForConditionalGeneration.from_pretrained(gemma, dtype=torch.bfloat16, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gemma, local_files_only=True)
    pipe = LTX2InContextPipeline.from_pretrained(
        cfg, transformer=transformer.to(torch.bfloat16), vae=vae.to(torch.bfloat16), text_encoder=text_encoder,
        tokenizer=tokenizer, dtype=torch.bfloat16, local_files_only=True)
    return pipe, _load_upsampler(spec), 1024


def _load_upsampler(spec: ModelSpec):
    path = next((c.path for c in spec.components if c.name == "upsampler"), None)
    if not path:
        return None
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    try:
        if path.endswith(".safetensors"):
            return LTX2LatentUpsamplerModel.from_single_file(path, local_files_only=True)
        return LTX2LatentUpsamplerModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # an optional component: two-stage runs will say it is missing
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
    """Loaded models keyed by (spec name, tier). Loading is serialised; one heavy model at a time on a GPU."""

    def __init__(self, max_models: int = 1):
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self.max_models = max_models

    def get(self, spec: ModelSpec, tier: MemoryTier = MemoryTier.AUTO) -> LoadedModel:
        from pipelines.models.memory import choose_tier
        from pipelines.sampler.attention import install_reference_bias

        with self._lock:
            device, dtype = _device_and_dtype(spec.is_tiny)
            if tier == MemoryTier.AUTO:
                tier = choose_tier(spec, device)
            key = (spec.name, tier.value)
            if key in self._models:
                return self._models[key]
            while len(self._models) >= self.max_models:
                self._models.pop(next(iter(self._models)))
                _empty_cache()
            if spec.kind == ModelKind.TINY:
                pipe, upsampler, max_len = _build_tiny(spec)
            elif spec.kind == ModelKind.DIFFUSERS:
                pipe, upsampler, max_len = _build_diffusers(spec)
            else:
                pipe, upsampler, max_len = _build_single_file(spec)
            pipe.set_progress_bar_config(disable=True)
            tier = apply_tier(pipe, tier, device, dtype)
            if upsampler is not None:
                upsampler.to(device, dtype)
            state = install_reference_bias(pipe.transformer)
            loaded = LoadedModel(spec=spec, pipe=pipe, device=device, dtype=dtype, tier=tier,
                                 max_sequence_length=max_len, upsampler=upsampler, bias_state=state)
            self._models[key] = loaded
            return loaded


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
