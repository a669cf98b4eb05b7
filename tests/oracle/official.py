"""An official LTX-2.3 single-file checkpoint, built by Lightricks' own code (ltx-core 1.0.0), for the oracle tests.

The model components are made by ltx-core's own model configurators from a config dict (the same dict the real
checkpoint carries in its safetensors metadata under "config"): the transformer (LTXModelConfigurator), the video
VAE encoder and decoder, the audio VAE encoder and decoder, the vocoder with bandwidth extension, and the text
connectors + text projection (EmbeddingsProcessorConfigurator). Weights are random from a fixed seed. The file is
written in the layout ltx-core's loaders read back (key prefixes inverted from ltx-core's own SDOps, config and
model_version in the metadata) and `check_roundtrip` proves it: ltx-pipelines' ModelLedger rebuilds every component
from the file and gets exactly the weights we wrote. So the checkpoint comes from the official code, not from
inverting our converters.

Parameterised by config: TINY_LTX23_CONFIG builds in about a second on a CPU; FULL_LTX23_CONFIG is the real
LTX-2.3 22B config (as shipped in ltx-2.3-22b-*.safetensors), for a GPU machine (bench/gpu_suite.py), where
`write_official_checkpoint(..., device="cuda", dtype=torch.bfloat16)` writes a full-size random checkpoint.

Gemma: ltx-core hard-codes the Gemma 3 12B text config (ltx_core.text_encoders.gemma.config.GEMMA3_CONFIG_FOR_LTX)
for the text projection's input width (hidden 3840 x 49 layers) and for its text encoder. `ltx_gemma_config(...)`
swaps that constant for the tiny Gemma's while the tiny model is built or run by ltx-core; the full config leaves
it alone. Documented here and in README's test section.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from pathlib import Path

from tests.oracle.ltx_env import import_ltx

MODEL_VERSION = "2.3.0"

# The config block of the released LTX-2.3 22B checkpoints (safetensors metadata "config"), as ltx-core reads it.
FULL_LTX23_CONFIG: dict = {
    "transformer": {
        "_class_name": "AVTransformer3DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
        "attention_head_dim": 128, "attention_type": "default", "caption_channels": 3840, "cross_attention_dim": 4096,
        "double_self_attention": False, "dropout": 0.0, "in_channels": 128, "norm_elementwise_affine": False,
        "norm_eps": 1e-06, "norm_num_groups": 32, "num_attention_heads": 32, "num_embeds_ada_norm": 1000,
        "num_layers": 48, "num_vector_embeds": None, "only_cross_attention": False, "cross_attention_norm": True,
        "out_channels": 128, "upcast_attention": False, "use_linear_projection": False, "qk_norm": "rms_norm",
        "standardization_norm": "rms_norm", "positional_embedding_type": "rope", "positional_embedding_theta": 10000.0,
        "positional_embedding_max_pos": [20, 2048, 2048], "timestep_scale_multiplier": 1000,
        "av_ca_timestep_scale_multiplier": 1000.0, "causal_temporal_positioning": True, "audio_num_attention_heads": 32,
        "audio_attention_head_dim": 64, "use_audio_video_cross_attention": True, "share_ff": False,
        "audio_out_channels": 128, "audio_cross_attention_dim": 2048, "audio_positional_embedding_max_pos": [20],
        "av_cross_ada_norm": True, "use_embeddings_connector": True, "connector_attention_head_dim": 128,
        "connector_num_attention_heads": 32, "connector_num_layers": 8, "connector_positional_embedding_max_pos": [4096],
        "connector_num_learnable_registers": 128, "connector_norm_output": True, "use_middle_indices_grid": True,
        "apply_gated_attention": True, "connector_apply_gated_attention": True,
        "caption_projection_first_linear": False, "caption_projection_second_linear": False,
        "caption_proj_input_norm": False, "connector_learnable_registers_std": 1, "caption_proj_before_connector": True,
        "audio_connector_attention_head_dim": 64, "audio_connector_num_attention_heads": 32,
        "cross_attention_adaln": True, "text_encoder_norm_type": "per_token_rms", "rope_type": "split",
        "frequencies_precision": "float64",
    },
    "vae": {
        "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
        "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 6}], ["compress_time_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 4}], ["compress_all_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 1}],
                           ["res_x", {"num_layers": 2}]],
        "decoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}],
                           ["res_x", {"num_layers": 6}], ["compress_time", {"multiplier": 2}],
                           ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
                           ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}],
                           ["res_x", {"num_layers": 2}]],
        "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
        "use_quant_conv": False, "causal_decoder": False, "timestep_conditioning": False,
        "normalize_latent_channels": False, "encoder_base_channels": 128, "decoder_base_channels": 128,
        "spatial_padding_mode": "zeros",
    },
    "scheduler": {"_class_name": "RectifiedFlowScheduler", "_diffusers_version": "0.25.1", "num_train_timesteps": 1000,
                  "shifting": None, "base_resolution": None, "sampler": "LinearQuadratic"},
    "audio_vae": {
        "model": {"params": {"ddconfig": {
            "double_z": True, "mel_bins": 64, "z_channels": 8, "resolution": 256, "downsample_time": False,
            "in_channels": 2, "out_ch": 2, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [],
            "dropout": 0.0, "mid_block_add_attention": False, "norm_type": "pixel", "causality_axis": "height"},
            "sampling_rate": 16000}},
        "preprocessing": {"audio": {"sampling_rate": 16000, "max_wav_value": 32768.0, "duration": 5.12, "stereo": True,
                                    "causal_padding": 3},
                          "stft": {"filter_length": 1024, "hop_length": 160, "win_length": 1024, "causal": True},
                          "mel": {"n_mel_channels": 64, "mel_fmin": 0, "mel_fmax": 8000}},
    },
    "vocoder": {
        "vocoder": {"upsample_initial_channel": 1536, "resblock": "AMP1", "upsample_rates": [5, 2, 2, 2, 2, 2],
                    "resblock_kernel_sizes": [3, 7, 11], "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
                    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "stereo": True,
                    "use_tanh_at_final": False, "activation": "snakebeta", "use_bias_at_final": False},
        "bwe": {"upsample_initial_channel": 512, "resblock": "AMP1", "upsample_rates": [6, 5, 2, 2, 2],
                "resblock_kernel_sizes": [3, 7, 11], "upsample_kernel_sizes": [12, 11, 4, 4, 4],
                "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "stereo": True,
                "use_tanh_at_final": False, "activation": "snakebeta", "use_bias_at_final": False,
                "apply_final_activation": False, "input_sampling_rate": 16000, "output_sampling_rate": 48000,
                "hop_length": 80, "n_fft": 512, "win_size": 512, "num_mels": 64},
    },
}


def _tiny_config() -> dict:
    """The real config with tiny widths and depths; every structural flag of LTX-2.3 kept (gated attention,
    cross-attention AdaLN, split RoPE in float64, per-modality text projection, 32x/8x video VAE with the 2.3 decoder
    stage order, the 4x audio VAE, the vocoder with bandwidth extension). Not shrunk, because Lightricks' code fixes
    them: 128 video latent channels and 8 x 16 = 128 audio latent channels (ltx-pipelines' PipelineComponents and
    AudioLatentShape defaults, so its pipelines run this model unchanged), 128 connector registers, 64 mel bins
    (the vocoder's input is 2 x 64), the vocoder upsample rates (sampling rates)."""
    c = copy.deepcopy(FULL_LTX23_CONFIG)
    c["transformer"].update(
        num_layers=2, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, in_channels=128,
        out_channels=128, caption_channels=TINY_GEMMA_TEXT["hidden_size"], audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, audio_in_channels=128, audio_out_channels=128,
        connector_num_attention_heads=2, connector_attention_head_dim=16, connector_num_layers=1,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8)
    c["vae"].update(
        latent_channels=128, encoder_base_channels=128, decoder_base_channels=8,
        encoder_blocks=[["res_x", {"num_layers": 1}], ["compress_space_res", {"multiplier": 1}],
                        ["res_x", {"num_layers": 1}], ["compress_time_res", {"multiplier": 1}],
                        ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 1}],
                        ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 1}],
                        ["res_x", {"num_layers": 1}]],
        decoder_blocks=[["res_x", {"num_layers": 1}], ["compress_space", {"multiplier": 2}],
                        ["res_x", {"num_layers": 1}], ["compress_time", {"multiplier": 2}],
                        ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}],
                        ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 2}],
                        ["res_x", {"num_layers": 1}]])
    # Audio latent channels = z_channels x mel_bins / 4 = 8 x 16 = 128 = ch (ltx-core sizes its per-channel
    # statistics by ch) = the transformer's audio_in_channels. Narrow stages: ch_mult 1 (still two 2x downsamples).
    c["audio_vae"]["model"]["params"]["ddconfig"].update(ch_mult=[1, 1, 1], num_res_blocks=1)
    c["vocoder"]["vocoder"].update(upsample_initial_channel=64, resblock_kernel_sizes=[3],
                                   resblock_dilation_sizes=[[1, 3, 5]])
    c["vocoder"]["bwe"].update(upsample_initial_channel=32, resblock_kernel_sizes=[3],
                               resblock_dilation_sizes=[[1, 3, 5]])
    return c


# The tiny Gemma 3 of pipelines/models/tiny.py (text side), as ltx-core's Gemma3TextConfig fields.
TINY_GEMMA_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=2048,
                       sliding_window=64)
TINY_LTX23_CONFIG: dict = _tiny_config()


@contextlib.contextmanager
def ltx_gemma_config(text_overrides: dict | None):
    """Swap ltx-core's hard-coded Gemma 3 12B config for one with `text_overrides` while the block runs (None:
    leave the real one). ltx-core reads it at model-build time in encoder_configurator (text projection width and
    the Gemma text encoder)."""
    if not text_overrides:
        yield
        return
    import dataclasses

    import_ltx()
    from ltx_core.text_encoders.gemma import config as gcfg
    from ltx_core.text_encoders.gemma.encoders import encoder_configurator as enc

    original = enc.GEMMA3_CONFIG_FOR_LTX
    enc.GEMMA3_CONFIG_FOR_LTX = dataclasses.replace(
        original, text_config=dataclasses.replace(original.text_config, **text_overrides))
    try:
        yield
    finally:
        enc.GEMMA3_CONFIG_FOR_LTX = original
        assert gcfg.GEMMA3_CONFIG_FOR_LTX is original


def gemma_overrides_for(config: dict) -> dict | None:
    """The Gemma overrides a config needs: the tiny ones for a config whose caption_channels is the tiny Gemma's."""
    if config["transformer"].get("caption_channels") == TINY_GEMMA_TEXT["hidden_size"]:
        return dict(TINY_GEMMA_TEXT)
    return None


# -- building the components with ltx-core's configurators --

COMPONENTS = ("transformer", "video_encoder", "video_decoder", "audio_encoder", "audio_decoder", "vocoder",
              "embeddings_processor")


def build_ltx_components(config: dict, seed: int = 0, device: str = "cpu", dtype=None) -> dict:
    """Every component of an LTX-2.3 checkpoint, built by ltx-core's own configurators from `config`, with
    deterministic random weights (each tensor seeded from `seed` and its own name, so the values do not depend on
    construction order). Returns {name: module}, eval mode, no grad. device="meta" builds shapes only (a full-size
    config in no memory, for checking the layout)."""
    import torch

    import_ltx()
    from ltx_core.model.audio_vae import (AudioDecoderConfigurator, AudioEncoderConfigurator,
                                          VocoderConfigurator)
    from ltx_core.model.transformer import LTXModelConfigurator
    from ltx_core.model.video_vae import VideoDecoderConfigurator, VideoEncoderConfigurator
    from ltx_core.text_encoders.gemma import EmbeddingsProcessorConfigurator

    configurators = dict(transformer=LTXModelConfigurator, video_encoder=VideoEncoderConfigurator,
                         video_decoder=VideoDecoderConfigurator, audio_encoder=AudioEncoderConfigurator,
                         audio_decoder=AudioDecoderConfigurator, vocoder=VocoderConfigurator,
                         embeddings_processor=EmbeddingsProcessorConfigurator)
    out = {}
    with ltx_gemma_config(gemma_overrides_for(config)), torch.device(device):
        for name, conf in configurators.items():
            out[name] = conf.from_config(config)
    for name, module in out.items():
        with torch.no_grad():
            for key, t in _named_tensors(module) if device != "meta" else ():
                _init_tensor(t, f"{name}.{key}", seed)
        if dtype is not None:
            module.to(dtype)
        module.eval().requires_grad_(False)
    # One set of latent statistics per VAE, shared by its encoder and decoder (one key in the file).
    for enc, dec in (("video_encoder", "video_decoder"), ("audio_encoder", "audio_decoder")):
        if device != "meta":
            out[enc].per_channel_statistics.load_state_dict(out[dec].per_channel_statistics.state_dict())
    return out


def _named_tensors(module):
    """Parameters, and the buffers ltx-core leaves empty or zero for the checkpoint to fill (latent statistics, STFT
    and mel bases). Buffers it computes itself (the vocoder's anti-alias filters) keep their values."""
    for key, t in module.named_parameters():
        yield key, t
    for key, t in module.named_buffers():
        if key.endswith(("-of-means", "forward_basis", "inverse_basis", "mel_basis")):
            yield key, t


def _init_tensor(t, key: str, seed: int):
    """Deterministic values for one tensor from (seed, key): weights ~ N(0, 1/fan_in), vectors ~ N(0, 0.1);
    positive where the model needs it (latent std, mel filterbank)."""
    import torch

    if not t.is_floating_point() or t.numel() == 0:
        return
    # A generator on the tensor's device (a full-size build on a GPU does not round-trip 22B values through the
    # CPU); values are deterministic per (seed, key, device type).
    g = torch.Generator(device=t.device)
    g.manual_seed(int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1))
    kw = dict(generator=g, device=t.device)
    if key.endswith("std-of-means"):
        v = torch.rand(t.shape, **kw) * 0.5 + 0.75
    elif key.endswith("mel_basis"):
        v = torch.rand(t.shape, **kw) * 0.05
    elif t.dim() >= 2:
        fan_in = max(1, t.numel() // t.shape[0])
        v = torch.randn(t.shape, **kw) / fan_in ** 0.5
        if key.startswith("vocoder.") and ".resblocks." in key:
            v = v * 0.2  # an untrained vocoder's residual stacks double the amplitude per stage: keep the
            # waveform mostly inside [-1, 1] so the final clamp does not hide differences, while a few
            # percent of the first stage's samples go past it (its clamp is part of what is compared)
        if key.startswith("vocoder.vocoder.conv_post."):
            v = v * 1.5  # ~2% of the first stage's samples beyond +-1
    else:
        v = torch.randn(t.shape, **kw) * 0.1
    t.copy_(v.to(t.dtype))


# -- the checkpoint layout (the inverse of ltx-core's SDOps in model_ledger / *_configurator) --

def official_state_dict(components: dict) -> dict:
    """{official key: tensor} for all components, the key prefixes ltx-core's loaders strip:
    model.diffusion_model.* (transformer; LTXV_MODEL_COMFY_RENAMING_MAP), vae.encoder.* / vae.decoder.* /
    vae.per_channel_statistics.* (VAE_*_COMFY_KEYS_FILTER), audio_vae.* likewise, vocoder.* (VOCODER_COMFY_KEYS_FILTER),
    model.diffusion_model.{video,audio}_embeddings_connector.* and text_embedding_projection.* (EMBEDDINGS_PROCESSOR_KEY_OPS)."""
    sd = {}

    def put(key, value):
        if key in sd and (sd[key].shape != value.shape
                          or (value.device.type != "meta" and not bool((sd[key] == value).all()))):
            raise AssertionError(f"two components disagree on {key}")
        sd[key] = value.detach().contiguous()

    for k, v in components["transformer"].state_dict().items():
        put("model.diffusion_model." + k, v)
    for comp, prefix in (("video_encoder", "vae.encoder."), ("video_decoder", "vae.decoder."),
                         ("audio_encoder", "audio_vae.encoder."), ("audio_decoder", "audio_vae.decoder.")):
        root = prefix.split(".")[0] + "."
        for k, v in components[comp].state_dict().items():
            put(root + k if k.startswith("per_channel_statistics.") else prefix + k, v)
    for k, v in components["vocoder"].state_dict().items():
        put("vocoder." + k, v)
    for k, v in components["embeddings_processor"].state_dict().items():
        if k.startswith("feature_extractor."):
            put("text_embedding_projection." + k[len("feature_extractor."):], v)
        elif k.startswith("video_connector."):
            put("model.diffusion_model.video_embeddings_connector." + k[len("video_connector."):], v)
        elif k.startswith("audio_connector."):
            put("model.diffusion_model.audio_embeddings_connector." + k[len("audio_connector."):], v)
        else:
            raise AssertionError(f"unexpected embeddings processor key {k}")
    return sd


def write_official_checkpoint(path, config: dict | None = None, seed: int = 0, device: str = "cpu", dtype=None,
                              model_version: str = MODEL_VERSION) -> Path:
    """Build with ltx-core and write one official-layout single-file checkpoint (config JSON under "config" and
    "model_version" in the metadata, as ltx-core and ltx-pipelines read them). Returns the path."""
    from safetensors.torch import save_file

    config = TINY_LTX23_CONFIG if config is None else config
    comps = build_ltx_components(config, seed=seed, device=device, dtype=dtype)
    sd = {k: v.to("cpu") for k, v in official_state_dict(comps).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(sd, str(tmp), metadata={"config": json.dumps(config), "model_version": model_version})
    tmp.replace(path)
    return path


def check_roundtrip(path, config: dict | None = None, seed: int = 0) -> list[str]:
    """Load the file back with ltx-pipelines' ModelLedger (ltx-core's builders, SDOps and metadata reader) and
    compare every component's weights with a fresh build: returns the list of names that were built (raises on a
    difference or a weight the loader did not fill)."""
    import torch

    import_ltx()
    from ltx_pipelines.utils.model_ledger import ModelLedger

    config = TINY_LTX23_CONFIG if config is None else config
    ref = build_ltx_components(config, seed=seed)
    ledger = ModelLedger(dtype=torch.float32, device=torch.device("cpu"), checkpoint_path=str(path))
    built = {}
    with ltx_gemma_config(gemma_overrides_for(config)):
        built["transformer"] = ledger.transformer().velocity_model
        built["video_encoder"] = ledger.video_encoder()
        built["video_decoder"] = ledger.video_decoder()
        built["audio_encoder"] = ledger.audio_encoder()
        built["audio_decoder"] = ledger.audio_decoder()
        built["vocoder"] = ledger.vocoder()
        built["embeddings_processor"] = ledger.gemma_embeddings_processor()
    for name, module in built.items():
        want = ref[name].state_dict()
        got = module.state_dict()
        if set(want) != set(got):
            raise AssertionError(f"{name}: keys differ: {sorted(set(want) ^ set(got))[:5]}")
        for k in want:
            if got[k].device.type == "meta" or not torch.equal(got[k].float(), want[k].float()):
                raise AssertionError(f"{name}.{k} differs after ltx-core loaded the checkpoint")
    return sorted(built)


# -- the spatial upsampler file and a whole models folder --

TINY_UPSAMPLER_CONFIG: dict = {"_class_name": "LatentUpsampler", "in_channels": 128, "mid_channels": 32,
                               "num_blocks_per_stage": 1, "dims": 3, "spatial_upsample": True,
                               "temporal_upsample": False, "spatial_scale": 2.0, "rational_resampler": False}


def build_ltx_upsampler(config: dict | None = None, seed: int = 0, device: str = "cpu"):
    """ltx-core's LatentUpsampler from its configurator, deterministic random weights."""
    import torch

    import_ltx()
    from ltx_core.model.upsampler import LatentUpsamplerConfigurator

    config = TINY_UPSAMPLER_CONFIG if config is None else config
    with torch.device(device):
        model = LatentUpsamplerConfigurator.from_config(config)
    with torch.no_grad():
        for key, t in _named_tensors(model):
            _init_tensor(t, f"upsampler.{key}", seed)
    return model.eval().requires_grad_(False)


def write_official_upsampler(path, config: dict | None = None, seed: int = 0) -> Path:
    """A spatial upsampler file as ltx-core reads it (raw module keys, config in the metadata)."""
    from safetensors.torch import save_file

    config = TINY_UPSAMPLER_CONFIG if config is None else config
    model = build_ltx_upsampler(config, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(config), "model_version": MODEL_VERSION})
    return path


def write_tiny_gemma(folder) -> Path:
    """The tiny Gemma 3 text encoder and tokenizer of pipelines/models/tiny.py, saved as a text encoder folder
    (config.json, model.safetensors, tokenizer files). Its widths are TINY_GEMMA_TEXT's."""
    from pipelines.models.tiny import build_text_encoder, build_tokenizer

    folder = Path(folder)
    tok = build_tokenizer()
    te = build_text_encoder(len(tok))
    assert te.config.text_config.hidden_size == TINY_GEMMA_TEXT["hidden_size"]
    assert te.config.text_config.num_hidden_layers == TINY_GEMMA_TEXT["num_hidden_layers"]
    te.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_models_dir(root, checkpoint: str = "ltx-2.3-22b-distilled-1.1.safetensors", config: dict | None = None,
                     seed: int = 0, upsampler: str | None = "ltx-2.3-spatial-upscaler-x2-1.1.safetensors",
                     gemma: str = "gemma-3-12b-it") -> Path:
    """A models folder as a user has it after downloading the official files: one checkpoint (written by
    ltx-core's classes), the Gemma folder, optionally the spatial upsampler. No config folder."""
    root = Path(root)
    write_official_checkpoint(root / checkpoint, config, seed=seed)
    write_tiny_gemma(root / gemma)
    if upsampler:
        write_official_upsampler(root / upsampler, seed=seed)
    return root
