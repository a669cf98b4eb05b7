"""Random-weight LTX-2.3 stacks for the GPU suite (bench/gpu_suite.py): the real shapes, no real weights.

Two scales, one code path:
  "full": LTX-2.3 as Lightricks ships it (48 layers, width 4096, audio 32 x 64, the 2.3 video VAE with its
          4 decoder up blocks, 2.3 text connectors, audio VAE, BWE vocoder, x2 latent upsampler); the text encoder
          is Gemma-3-12B-shaped ("gemma12b") or a light stand-in with the same output layout ("light": hidden 3840,
          48 layers -> 49 hidden states, one tiny head, so the connectors see real shapes at ~0.1 B params).
  "tiny": the same structures at toy widths (2 layers, 2 heads x 16, VAE widths /8, the studio's tiny Gemma and
          word-level tokenizer) so `gpu_suite.py --tiny` runs every step on a CPU.

Weights are born on the Lightricks side, as in a real install: ltx-core's own classes (LTXModel, VideoEncoder,
VideoDecoder) are built from the checkpoint-style config dict (`ltx_core_config`), initialised with a fixed seed
on the target device, and laid out as the official single-file checkpoint names them ("model.diffusion_model.*",
"vae.encoder.*", "vae.decoder.*", "vae.per_channel_statistics.*"). The studio's side loads that dict through the
same converters its single-file loader uses (diffusers' converters + pipelines.models.loader's two LTX-2.3 key
fixes) into modules built on the meta device, with assign=True: both sides then hold the SAME tensors (one copy
of the ~38 GB of transformer weights on the GPU), and a wrong config or key fails loudly (strict key and shape
check). The checkpoint dict is exactly what a file would hold; at full size it stays in memory (writing and
re-reading 40 GB would take minutes of the GPU window). When tests/oracle's builder (ltx-core model + official
checkpoint writer) lands, `official_checkpoint` is the one function to swap for it.

Nothing here imports ltx_pipelines; ltx_core is imported lazily (`import_ltx`) behind a torchaudio stand-in on
machines where torchaudio does not load (SPEC.md 10/11: only its audio-input code uses it).
"""
from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field

GB = 1024**3


class StandInUsed(RuntimeError):
    pass


class _Unavailable(types.ModuleType):
    """A module that can be imported but not used: every attribute is another stand-in, every call raises."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self._reason = reason

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self.__name__}.{item}", self._reason)

    def __call__(self, *args, **kwargs):
        raise StandInUsed(f"{self.__name__} was used, but it is a stand-in here ({self._reason}); "
                          "see bench/ltx23_random.import_ltx")


def import_ltx():
    """Import ltx_core and ltx_pipelines where torchaudio or PyAV does not load: both are imported at module
    level by code the suite never calls (ltx-core's audio-input encoding, ltx-pipelines' media file I/O; SPEC.md
    10/11). Only while ltx-* are imported does a stand-in that raises on any use take their place; transformers
    is imported first, so it keeps seeing them as missing. With the real packages nothing is replaced."""
    if "ltx_pipelines" in sys.modules:
        return sys.modules["ltx_core"]
    reasons = {}
    for name in ("torchaudio", "av"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - ImportError, or a C library that does not load
            reasons[name] = f"import {name} failed: {type(exc).__name__}: {exc}".splitlines()[0][:160]
            for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[k]
    import transformers  # noqa: F401

    standins = {name: _Unavailable(name, why) for name, why in reasons.items()}
    sys.modules.update(standins)
    try:
        import ltx_core  # noqa: F401
        import ltx_core.model.audio_vae  # noqa: F401
        import ltx_pipelines  # noqa: F401
    finally:
        for name, mod in standins.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return sys.modules["ltx_core"]


# ------------------------------------------------------------------------------------------------ configs

_LTX_CORE_FIXED = dict(  # values ltx-core's configurator checks (check_config_value) for an AV model
    dropout=0.0, attention_bias=True, num_vector_embeds=None, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
    use_linear_projection=False, only_cross_attention=False, cross_attention_norm=True, double_self_attention=False,
    upcast_attention=False, standardization_norm="rms_norm", norm_elementwise_affine=False, qk_norm="rms_norm",
    positional_embedding_type="rope", use_audio_video_cross_attention=True, share_ff=False, av_cross_ada_norm=True,
    use_middle_indices_grid=True)


@dataclass
class Scale:
    name: str
    layers: int
    heads: int
    head_dim: int
    audio_heads: int
    audio_head_dim: int
    latent: int  # video latent channels
    vae_base: int  # encoder/decoder base width (128 real)
    vae_layers: tuple  # res blocks per level, encoder order (4, 6, 4, 2, 2 real)
    connector_layers: int
    registers: int
    rope_base: int
    upsampler_mid: int
    upsampler_blocks: int
    audio_vae_base: int
    audio_vae_res: int
    vocoder_hidden: int
    bwe_hidden: int
    max_sequence_length: int
    audio_ch_mult: tuple = (1, 2, 4)
    vocoder_extra: dict = field(default_factory=dict)  # toy-size vocoder options (the real one is all defaults)

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def audio_dim(self) -> int:
        return self.audio_heads * self.audio_head_dim


FULL = Scale("full", layers=48, heads=32, head_dim=128, audio_heads=32, audio_head_dim=64, latent=128, vae_base=128,
             vae_layers=(4, 6, 4, 2, 2), connector_layers=8, registers=128, rope_base=4096, upsampler_mid=1024,
             upsampler_blocks=4, audio_vae_base=128, audio_vae_res=2, vocoder_hidden=1536, bwe_hidden=512,
             max_sequence_length=1024)
TINY = Scale("tiny", layers=2, heads=2, head_dim=16, audio_heads=2, audio_head_dim=8, latent=16, vae_base=16,
             vae_layers=(1, 1, 1, 1, 1), connector_layers=1, registers=8, rope_base=32, upsampler_mid=32,
             upsampler_blocks=1, audio_vae_base=128, audio_vae_res=1, vocoder_hidden=64, bwe_hidden=32,
             max_sequence_length=32, audio_ch_mult=(1, 1, 1),
             vocoder_extra=dict(resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], bwe_resnet_kernel_sizes=[3],
                                bwe_resnet_dilations=[[1, 3, 5]], antialias=False, bwe_antialias=False))
GEMMA_12B_TEXT = dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=256, sliding_window=1024,
                      query_pre_attn_scalar=256, max_position_embeddings=131072)
GEMMA_12B_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        image_size=896, patch_size=14)


def scale_of(name: str) -> Scale:
    return {"full": FULL, "tiny": TINY}[name]


def text_hidden(s: Scale) -> tuple[int, int]:
    """(Gemma hidden size, number of layers) the connectors are built for."""
    from pipelines.models.tiny import TINY_TEXT_HIDDEN, TINY_TEXT_LAYERS

    return (3840, 48) if s.name == "full" else (TINY_TEXT_HIDDEN, TINY_TEXT_LAYERS)


def transformer_config(s: Scale) -> dict:
    """diffusers LTX2VideoTransformer3DModel arguments of LTX-2.3 (diffusers' convert_ltx2_to_diffusers, 2.3)."""
    return dict(in_channels=s.latent, out_channels=s.latent, patch_size=1, patch_size_t=1, num_attention_heads=s.heads,
                attention_head_dim=s.head_dim, cross_attention_dim=s.dim, vae_scale_factors=(8, 32, 32),
                pos_embed_max_pos=20, base_height=2048, base_width=2048, gated_attn=True, cross_attn_mod=True,
                audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1,
                audio_num_attention_heads=s.audio_heads, audio_attention_head_dim=s.audio_head_dim,
                audio_cross_attention_dim=s.audio_dim, audio_scale_factor=4, audio_pos_embed_max_pos=20,
                audio_sampling_rate=16000, audio_hop_length=160, audio_gated_attn=True, audio_cross_attn_mod=True,
                num_layers=s.layers, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
                norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=text_hidden(s)[0], attention_bias=True,
                attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True, causal_offset=1,
                timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, rope_type="split",
                use_prompt_embeddings=False, perturbed_attn=True)


def vae_config(s: Scale) -> dict:
    """diffusers AutoencoderKLLTX2Video arguments of the LTX-2.3 video VAE (4 down and 4 up levels)."""
    b = s.vae_base
    return dict(in_channels=3, out_channels=3, latent_channels=s.latent, block_out_channels=(2 * b, 4 * b, 8 * b, 8 * b),
                decoder_block_out_channels=(2 * b, 4 * b, 4 * b, 8 * b), layers_per_block=s.vae_layers,
                decoder_layers_per_block=s.vae_layers, spatio_temporal_scaling=(True,) * 4,
                decoder_spatio_temporal_scaling=(True,) * 4, decoder_inject_noise=(False,) * 5,
                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"), upsample_residual=(False,) * 4,
                upsample_factor=(2, 2, 1, 2), timestep_conditioning=False, patch_size=4, patch_size_t=1,
                resnet_norm_eps=1e-6, encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
                decoder_spatial_padding_mode="zeros", spatial_compression_ratio=32, temporal_compression_ratio=8)


def ltx_core_config(s: Scale) -> dict:
    """The checkpoint-metadata config ltx-core builds LTX-2.3 from ("transformer" and "vae" sections). Checked
    key-for-key and shape-for-shape against the diffusers configs above through the official converters
    (tests/test_gpu_suite.py, at both scales on the meta device)."""
    l0, l1, l2, l3, l4 = s.vae_layers
    res = lambda n: ["res_x", {"num_layers": n}]  # noqa: E731
    transformer = dict(
        _LTX_CORE_FIXED, num_attention_heads=s.heads, attention_head_dim=s.head_dim, in_channels=s.latent,
        out_channels=s.latent, num_layers=s.layers, cross_attention_dim=s.dim, caption_channels=text_hidden(s)[0],
        audio_num_attention_heads=s.audio_heads, audio_attention_head_dim=s.audio_head_dim, audio_in_channels=128,
        audio_out_channels=128, audio_cross_attention_dim=s.audio_dim, norm_eps=1e-6, positional_embedding_theta=10000.0,
        positional_embedding_max_pos=[20, 2048, 2048], audio_positional_embedding_max_pos=[20],
        timestep_scale_multiplier=1000, av_ca_timestep_scale_multiplier=1000, rope_type="split",
        frequencies_precision="float64", apply_gated_attention=True, cross_attention_adaln=True,
        caption_proj_before_connector=True, caption_projection_first_linear=False, caption_proj_input_norm=False,
        caption_projection_second_linear=False)
    vae = dict(
        dims=3, in_channels=3, out_channels=3, latent_channels=s.latent, patch_size=4, norm_layer="pixel_norm",
        latent_log_var="uniform", spatial_padding_mode="zeros", causal_decoder=False, timestep_conditioning=False,
        decoder_base_channels=s.vae_base,
        encoder_blocks=[res(l0), ["compress_space_res", {"multiplier": 2}], res(l1), ["compress_time_res", {"multiplier": 2}],
                        res(l2), ["compress_all_res", {"multiplier": 2}], res(l3), ["compress_all_res", {"multiplier": 1}],
                        res(l4)],
        decoder_blocks=[res(l0), ["compress_space", {"multiplier": 2}], res(l1), ["compress_time", {"multiplier": 2}],
                        res(l2), ["compress_all", {"multiplier": 1}], res(l3), ["compress_all", {"multiplier": 2}],
                        res(l4)])
    return {"transformer": transformer, "vae": vae}


def connectors_config(s: Scale) -> dict:
    hidden, layers = text_hidden(s)
    return dict(caption_channels=hidden, text_proj_in_factor=layers + 1, video_connector_num_attention_heads=s.heads,
                video_connector_attention_head_dim=s.head_dim, video_connector_num_layers=s.connector_layers,
                video_connector_num_learnable_registers=s.registers, video_gated_attn=True,
                audio_connector_num_attention_heads=s.audio_heads, audio_connector_attention_head_dim=s.audio_head_dim,
                audio_connector_num_layers=s.connector_layers, audio_connector_num_learnable_registers=s.registers,
                audio_gated_attn=True, connector_rope_base_seq_len=s.rope_base, rope_theta=10000.0,
                rope_double_precision=True, causal_temporal_positioning=False, rope_type="split",
                per_modality_projections=True, video_hidden_dim=s.dim, audio_hidden_dim=s.audio_dim, proj_bias=True)


def audio_vae_config(s: Scale) -> dict:
    return dict(base_channels=s.audio_vae_base, output_channels=2, ch_mult=s.audio_ch_mult, num_res_blocks=s.audio_vae_res,
                attn_resolutions=None, in_channels=2, resolution=256, latent_channels=8, norm_type="pixel",
                causality_axis="height", dropout=0.0, mid_block_add_attention=False, sample_rate=16000,
                mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True)


def vocoder_config(s: Scale) -> dict:
    return dict(in_channels=128, hidden_channels=s.vocoder_hidden, out_channels=2, bwe_in_channels=128,
                bwe_hidden_channels=s.bwe_hidden, bwe_out_channels=2, num_mel_channels=64, input_sampling_rate=16000,
                output_sampling_rate=48000, **s.vocoder_extra)


def upsampler_config(s: Scale) -> dict:
    return dict(in_channels=s.latent, mid_channels=s.upsampler_mid, num_blocks_per_stage=s.upsampler_blocks, dims=3,
                spatial_upsample=True, temporal_upsample=False, rational_spatial_scale=2.0, use_rational_resampler=False)


# ------------------------------------------------------------------------------------------------ weights


def init_random_(module, seed: int) -> None:
    """Deterministic random weights in place, on whatever device the module is on: matrices and convolutions
    N(0, 1/fan_in) (activations stay O(1) through 48 residual layers), biases and means 0, norm weights and
    standard deviations 1. Buffers named *std* / *mean* (VAE latent statistics) likewise."""
    import torch

    params = list(module.named_parameters()) + [
        (n, b) for n, b in module.named_buffers()  # computed buffers (filters, windows, RoPE) stay as built
        if b.is_floating_point() and ("std" in n.rsplit(".", 1)[-1] or "mean" in n.rsplit(".", 1)[-1])]
    if not params or params[0][1].is_meta:  # meta: shapes only (the tests' full-size structure checks)
        return
    dev = params[0][1].device
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            leaf = name.rsplit(".", 1)[-1]
            if p.numel() == 0:
                continue
            if "std" in leaf:
                p.fill_(1.0)
            elif "mean" in leaf or leaf == "bias":
                p.zero_()
            elif p.ndim >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            else:
                p.fill_(1.0)


@dataclass
class Official:
    """Lightricks' side: ltx-core modules holding the weights, and the official checkpoint dict (same tensors)."""

    config: dict
    transformer: object  # ltx_core LTXModel
    encoder: object  # ltx_core VideoEncoder
    decoder: object  # ltx_core VideoDecoder
    checkpoint: dict


def official_checkpoint(s: Scale, device: str, dtype, seed: int = 0) -> Official:
    """ltx-core's LTX-2.3 transformer and video VAE built from the config dict, random weights on `device`, and
    the official single-file checkpoint dict naming the same tensors."""
    import torch

    import_ltx()
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator, VideoEncoderConfigurator

    cfg = ltx_core_config(s)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the compute dtype: no fp32 copy of 19 B weights
    try:
        with torch.device(device):
            transformer = LTXModelConfigurator.from_config(cfg)
            encoder = VideoEncoderConfigurator.from_config(cfg)
            decoder = VideoDecoderConfigurator.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    for i, m in enumerate((transformer, encoder, decoder)):
        init_random_(m, seed + i)
        m.eval().requires_grad_(False)
    dstats = decoder.per_channel_statistics  # one set of latent statistics in the file, shared by both halves
    for name, buf in encoder.per_channel_statistics.named_buffers():
        dstats.register_buffer(name, buf)
    ckpt = {f"model.diffusion_model.{k}": v for k, v in transformer.state_dict().items()}
    for k, v in encoder.state_dict().items():
        ckpt[("vae." if k.startswith("per_channel_statistics.") else "vae.encoder.") + k] = v
    ckpt.update({f"vae.decoder.{k}": v for k, v in decoder.state_dict().items()
                 if not k.startswith("per_channel_statistics.")})
    return Official(cfg, transformer, encoder, decoder, ckpt)


def studio_modules_from_checkpoint(s: Scale, ckpt: dict):
    """(transformer, vae) for the studio, built on the meta device and given the checkpoint's tensors through the
    single-file loader's conversion (diffusers' converters + our LTX-2.3 key fixes). Strict: every key and shape
    must match, nothing may stay on the meta device."""
    import torch
    from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers, convert_ltx2_vae_to_diffusers

    from pipelines.models.loader import finish_vae_keys, fix_transformer_keys, protect_vae_keys

    tr_sd = fix_transformer_keys(convert_ltx2_transformer_to_diffusers(
        {k: v for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}))
    vae_sd = finish_vae_keys(convert_ltx2_vae_to_diffusers(protect_vae_keys(
        {k: v for k, v in ckpt.items() if k.startswith("vae.")})))
    with torch.device("meta"):
        transformer = LTX2VideoTransformer3DModel(**transformer_config(s))
        vae = AutoencoderKLLTX2Video(**vae_config(s))
    for name, mod, sd in (("transformer", transformer, tr_sd), ("vae", vae, vae_sd)):
        mod.load_state_dict(sd, strict=True, assign=True)
        left = [n for n, t in list(mod.named_parameters()) + list(mod.named_buffers()) if t.is_meta]
        if left and not next(iter(sd.values())).is_meta:
            raise RuntimeError(f"{name}: {len(left)} tensors not in the checkpoint, e.g. {left[0]}")
        mod.eval().requires_grad_(False)
    return transformer, vae


def build_text_encoder(s: Scale, kind: str, device: str, dtype, vocab_size: int, seed: int = 0):
    """Gemma 3 for the pipeline: "tiny" (the studio's tiny model), "light" (Gemma-3-12B's hidden size and layer
    count, tiny elsewhere: same hidden-state layout for the connectors) or "gemma12b" (Gemma-3-12B's shapes)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    if s.name == "tiny":
        from pipelines.models.tiny import build_text_encoder as tiny_te

        torch.manual_seed(seed)
        return tiny_te(vocab_size).to(device, dtype)
    if kind == "gemma12b":
        text, vision, mm = dict(GEMMA_12B_TEXT), dict(GEMMA_12B_VISION), 256
    else:
        text = dict(vocab_size=max(vocab_size, 256), hidden_size=3840, intermediate_size=64, num_hidden_layers=48,
                    num_attention_heads=1, num_key_value_heads=1, head_dim=64, sliding_window=1024,
                    max_position_embeddings=4096)
        vision, mm = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=28, patch_size=14), 4
    text.update(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=mm)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def _on_device(cls, kwargs: dict, device: str, dtype, seed: int):
    import torch

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            m = cls(**kwargs)
    finally:
        torch.set_default_dtype(prev)
    init_random_(m, seed)
    return m.eval().requires_grad_(False)


@dataclass
class Stack:
    scale: Scale
    pipe: object  # diffusers LTX2InContextPipeline
    upsampler: object
    official: Official | None
    device: str
    dtype: object

    def param_counts(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        p = self.pipe
        return {"transformer": count(p.transformer), "connectors": count(p.connectors), "vae": count(p.vae),
                "text_encoder": count(p.text_encoder), "audio_vae": count(p.audio_vae), "vocoder": count(p.vocoder),
                "upsampler": count(self.upsampler)}

    def drop_official(self) -> None:
        """Forget Lightricks' modules (the studio's keep the shared tensors alive on their own)."""
        self.official = None


def build_stack(scale: str, device: str, dtype, text_encoder: str = "light", seed: int = 0) -> Stack:
    """The whole LTX2InContextPipeline with random LTX-2.3-shaped weights, transformer and VAE shared with
    ltx-core's modules (see the module docstring), plus the x2 latent upsampler."""
    from diffusers import AutoencoderKLLTX2Audio, FlowMatchEulerDiscreteScheduler, LTX2InContextPipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    from pipelines.models.tiny import build_tokenizer

    s = scale_of(scale)
    official = official_checkpoint(s, device, dtype, seed)
    transformer, vae = studio_modules_from_checkpoint(s, official.checkpoint)
    tokenizer = build_tokenizer()
    if s.name == "full":
        tokenizer.model_max_length = s.max_sequence_length
    te = build_text_encoder(s, text_encoder, device, dtype, len(tokenizer), seed + 10)
    pipe = LTX2InContextPipeline(
        transformer=transformer, vae=vae, text_encoder=te, tokenizer=tokenizer,
        connectors=_on_device(LTX2TextConnectors, connectors_config(s), device, dtype, seed + 11),
        audio_vae=_on_device(AutoencoderKLLTX2Audio, audio_vae_config(s), device, dtype, seed + 12),
        vocoder=_on_device(LTX2VocoderWithBWE, vocoder_config(s), device, dtype, seed + 13),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                  base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1),
        audio_scheduler=None)
    pipe.set_progress_bar_config(disable=True)
    up = _on_device(LTX2LatentUpsamplerModel, upsampler_config(s), device, dtype, seed + 14)
    return Stack(s, pipe, up, official, device, dtype)


def loaded_model(stack: Stack, tier, name: str = "ltx-2.3-random"):
    """The studio's LoadedModel for a built stack, placed for `tier` by the loader's own apply_tier, with the
    reference-bias attention processors installed (what ModelCache.get does after loading)."""
    from pipelines.models.loader import LoadedModel, apply_tier
    from pipelines.models.registry import ModelKind, ModelSpec, tiny_spec
    from pipelines.sampler.attention import install_reference_bias

    spec = tiny_spec() if stack.scale.name == "tiny" else ModelSpec(name, ModelKind.DIFFUSERS, None, "distilled")
    tier = apply_tier(stack.pipe, tier, stack.device, stack.dtype)
    if stack.upsampler is not None:
        stack.upsampler.to(stack.device, stack.dtype)
    state = install_reference_bias(stack.pipe.transformer)
    return LoadedModel(spec=spec, pipe=stack.pipe, device=stack.device, dtype=stack.dtype, tier=tier,
                       max_sequence_length=stack.scale.max_sequence_length, upsampler=stack.upsampler,
                       bias_state=state)


# ------------------------------------------------------------------------------------------------ FLOPs


def _attn(nq: int, nk: int, dq: int, dkv: int, inner: int, heads: int, gated: bool, core: bool = True) -> float:
    proj = 2 * nq * dq * inner * 2 + 2 * nk * dkv * inner * 2  # q + out on the queries, k + v on the keys
    core = 4 * nq * nk * inner if core else 0  # QK^T and AV
    gate = 2 * nq * dq * heads if gated else 0
    return proj + core + gate


def transformer_flops(cfg: dict, n_video: int, n_audio: int, n_text: int, n_text_audio: int, av_cross: bool,
                      attention_core: bool = True) -> float:
    """FLOPs of one forward of the LTX-2 joint transformer (multiply-add = 2) counted from its shapes: every
    attention's projections and QK^T/AV, the feed-forwards (4x, GELU), the per-token timestep modulation, the
    in/out projections. Left out: elementwise work (norms, RoPE, gating products, softmax) and the per-sample
    modulations (prompt and audio/video cross-attention AdaLN: a few GFLOP a forward, whatever the tokens)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    da = cfg["audio_num_attention_heads"] * cfg["audio_attention_head_dim"]
    h, ha = cfg["num_attention_heads"], cfg["audio_num_attention_heads"]
    dc, dac = cfg["cross_attention_dim"], cfg["audio_cross_attention_dim"]
    g = bool(cfg.get("gated_attn")) or bool(cfg.get("apply_gated_attention"))
    n, na = n_video, n_audio
    c = attention_core
    blk = (_attn(n, n, d, d, d, h, g, c) + _attn(n, n_text, d, dc, d, h, g, c) + 16 * n * d * d
           + _attn(na, na, da, da, da, ha, g, c) + _attn(na, n_text_audio, da, dac, da, ha, g, c) + 16 * na * da * da)
    if av_cross:
        blk += _attn(n, na, d, da, da, ha, g, c) + _attn(na, n, da, d, da, ha, g, c)
    mods = 9 if (cfg.get("cross_attn_mod") or cfg.get("cross_attention_adaln")) else 6
    per_token_t = 2 * n * (256 * d + d * d + d * mods * d) + 2 * na * (256 * da + da * da + da * mods * da)
    io = 2 * n * cfg["in_channels"] * d * 2 + 2 * na * cfg["audio_in_channels"] * da * 2
    return cfg["num_layers"] * blk + per_token_t + io


class FlopCounter:
    """Counts transformer FLOPs per forward from the token counts a forward-pre-hook sees (studio: diffusers
    kwargs; Lightricks: ltx-core Modality objects)."""

    def __init__(self, cfg: dict):
        self.cfg, self.flops, self.calls, self.last = cfg, 0.0, 0, {}

    def add(self, n_video: int, n_audio: int, n_text: int, n_text_audio: int, av_cross: bool) -> None:
        self.last = dict(video=n_video, audio=n_audio, text=n_text, text_audio=n_text_audio, av_cross=av_cross)
        self.flops += transformer_flops(self.cfg, n_video, n_audio, n_text, n_text_audio, av_cross)
        self.calls += 1

    def studio_hook(self, module, args, kwargs):
        hs, ahs = kwargs["hidden_states"], kwargs.get("audio_hidden_states")
        self.add(hs.shape[1], 0 if ahs is None else ahs.shape[1], kwargs["encoder_hidden_states"].shape[1],
                 kwargs["audio_encoder_hidden_states"].shape[1], not kwargs.get("isolate_modalities", False))

    def ltx_hook(self, module, args, kwargs):
        video, audio = kwargs.get("video"), kwargs.get("audio")
        if video is None and args:
            video, audio = args[0], args[1] if len(args) > 1 else None
        self.add(video.latent.shape[1], 0 if audio is None else audio.latent.shape[1], video.context.shape[1],
                 0 if audio is None else audio.context.shape[1], audio is not None)
