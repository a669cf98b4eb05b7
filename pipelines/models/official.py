"""Official LTX-2.3 single-file checkpoints -> diffusers 0.42.1 components, from the file alone.

One official file (`ltx-2.3-22b-dev.safetensors`, `ltx-2.3-22b-distilled[-1.1].safetensors`, their fp8 variants)
holds the transformer, the video VAE, the audio VAE, the vocoder (with bandwidth extension) and the text connectors
+ text projection; its config is JSON in the safetensors metadata under "config" (the dict Lightricks' ltx-core
builds its models from). This module maps that config to the diffusers classes' configs and the checkpoint keys to
diffusers' names. It uses diffusers' own single-file converters where they are right (transformer, video VAE, audio
VAE) and fixes what they miss for LTX-2.3 (SPEC.md 5):
- transformer: `prompt_adaln_single` / `audio_prompt_adaln_single` are not renamed to `prompt_adaln`;
- video VAE: the 2.3 decoder has a fourth upsampling stage (`up_blocks.7` / `.8`) the converter's sequential
  renames mangle;
- connectors and vocoder: diffusers 0.42.1 has no single-file converter for them (its conversion script only).
The only separate folder is the Gemma 3 text encoder. Pure functions over dicts: no torch import at module level.
"""
from __future__ import annotations

import json
import re

from pipelines.errors import UserError

TRANSFORMER_PREFIX = "model.diffusion_model."
CONNECTOR_PREFIXES = {"model.diffusion_model.video_embeddings_connector.": "video_connector.",
                      "model.diffusion_model.audio_embeddings_connector.": "audio_connector."}
TEXT_PROJECTION_PREFIXES = {"text_embedding_projection.video_aggregate_embed.": "video_text_proj_in.",
                            "text_embedding_projection.audio_aggregate_embed.": "audio_text_proj_in."}


# ----------------------------------------------------------------------------------------------- metadata

def read_metadata(path) -> tuple[dict, dict]:
    """(config, raw metadata) of an official checkpoint; a UserError naming the file when it has no config."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001  truncated / not a safetensors file
        raise UserError(f"could not read {path}: {exc} (is the download complete?)") from None
    if "config" not in meta:
        raise UserError(f"{path} has no 'config' in its metadata: it is not an official LTX-2.3 single-file "
                        "checkpoint (get ltx-2.3-22b-*.safetensors from Lightricks/LTX-2.3)")
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: the 'config' metadata is not valid JSON ({exc})") from None
    for part in ("transformer", "vae", "audio_vae", "vocoder"):
        if not isinstance(config.get(part), dict):
            raise UserError(f"{path}: its config has no '{part}' section; an LTX-2.3 checkpoint has transformer, "
                            "vae, audio_vae and vocoder")
    t = config["transformer"]
    if not t.get("caption_proj_before_connector"):
        raise UserError(f"{path} is not an LTX-2.3 checkpoint (LTX-2.0 text projection layout); this studio "
                        "loads LTX-2.3 (ltx-2.3-22b-*.safetensors)")
    return config, meta


# ----------------------------------------------------------------------------------------------- configs

def transformer_config(config: dict) -> dict:
    """ltx-core LTXModelConfigurator fields -> LTX2VideoTransformer3DModel config."""
    t = config["transformer"]
    pos = list(t.get("positional_embedding_max_pos", [20, 2048, 2048]))
    audio_pos = list(t.get("audio_positional_embedding_max_pos", [20]))
    if t.get("qk_norm", "rms_norm") != "rms_norm" or t.get("norm_elementwise_affine", False):
        raise UserError("unsupported LTX transformer normalisation in the checkpoint config")
    gated = bool(t.get("apply_gated_attention", False))
    cross_mod = bool(t.get("cross_attention_adaln", False))
    return dict(
        in_channels=t.get("in_channels", 128), out_channels=t.get("out_channels", 128), patch_size=1, patch_size_t=1,
        num_attention_heads=t.get("num_attention_heads", 32), attention_head_dim=t.get("attention_head_dim", 128),
        cross_attention_dim=t.get("cross_attention_dim", 4096), vae_scale_factors=video_vae_scale_factors(config),
        pos_embed_max_pos=pos[0], base_height=pos[1], base_width=pos[2], gated_attn=gated, cross_attn_mod=cross_mod,
        audio_in_channels=t.get("audio_in_channels", 128), audio_out_channels=t.get("audio_out_channels", 128),
        audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=t.get("audio_num_attention_heads", 32),
        audio_attention_head_dim=t.get("audio_attention_head_dim", 64),
        audio_cross_attention_dim=t.get("audio_cross_attention_dim", 2048), audio_scale_factor=4,
        audio_pos_embed_max_pos=audio_pos[0], audio_sampling_rate=_audio_params(config).get("sampling_rate", 16000),
        audio_hop_length=_audio_stft(config).get("hop_length", 160), audio_gated_attn=gated,
        audio_cross_attn_mod=cross_mod, num_layers=t.get("num_layers", 48),
        activation_fn=t.get("activation_fn", "gelu-approximate"), qk_norm="rms_norm_across_heads",
        norm_elementwise_affine=False, norm_eps=t.get("norm_eps", 1e-6), caption_channels=t.get("caption_channels", 3840),
        attention_bias=bool(t.get("attention_bias", True)), attention_out_bias=True,
        rope_theta=t.get("positional_embedding_theta", 10000.0),
        rope_double_precision=t.get("frequencies_precision") == "float64", causal_offset=1,
        timestep_scale_multiplier=t.get("timestep_scale_multiplier", 1000),
        cross_attn_timestep_scale_multiplier=t.get("av_ca_timestep_scale_multiplier", 1),
        rope_type=t.get("rope_type", "interleaved"), use_prompt_embeddings=False, perturbed_attn=True,
        use_prompt_adaln_single=cross_mod,
    )


_KIND = {"space": "spatial", "time": "temporal", "all": "spatiotemporal"}


def _vae_blocks(blocks: list) -> tuple[list[dict], list[tuple[str, dict]]]:
    res, comp = [], []
    for name, params in blocks:
        params = {"num_layers": params} if isinstance(params, int) else dict(params)
        if name == "res_x":
            res.append(params)
        elif name.startswith("compress_"):
            kind = name[len("compress_"):].removesuffix("_res")
            if kind not in _KIND:
                raise UserError(f"unsupported video VAE block {name!r} in the checkpoint config")
            comp.append((name, params))
        else:
            raise UserError(f"unsupported video VAE block {name!r} in the checkpoint config")
    if len(res) != len(comp) + 1:
        raise UserError("unsupported video VAE layout in the checkpoint config (residual and compression stages)")
    return res, comp


def video_vae_config(config: dict) -> dict:
    """ltx-core VideoEncoder/VideoDecoder config -> AutoencoderKLLTX2Video config.

    Encoder: conv_in maps to latent_channels; each compress block multiplies the width (diffusers'
    block_out_channels are the widths AFTER each stage's downsampler). Decoder: starts at decoder_base_channels x 8
    and runs the blocks in reverse; diffusers' decoder_block_out_channels are the widths BEFORE each upsampler,
    listed in encoder order, with upsample_factor the width reduction of each upsampler."""
    v = config["vae"]
    if v.get("dims", 3) != 3 or v.get("norm_layer", "pixel_norm") != "pixel_norm" \
            or v.get("latent_log_var", "uniform") != "uniform" or v.get("timestep_conditioning", False):
        raise UserError("unsupported video VAE variant in the checkpoint config")
    enc_res, enc_comp = _vae_blocks(v["encoder_blocks"])
    dec_res, dec_comp = _vae_blocks(v["decoder_blocks"])
    latent = v.get("latent_channels", 128)
    width, block_out = latent, []
    for name, p in enc_comp:
        if not name.endswith("_res"):
            raise UserError(f"unsupported encoder block {name!r} (diffusers' LTX-2 encoder downsamplers are residual)")
        width *= p.get("multiplier", 2)
        block_out.append(width)
    # decoder in decode order (reversed blocks), width before each upsampler
    width = v.get("decoder_base_channels", 128) * 8
    before = []
    for name, p in reversed(dec_comp):
        before.append(width)
        width //= p.get("multiplier", 1)
    patch = v.get("patch_size", 4)
    kinds = [_KIND[name[len("compress_"):].removesuffix("_res")] for name, _ in enc_comp]
    spatial = sum(k in ("spatial", "spatiotemporal") for k in kinds)
    temporal = sum(k in ("temporal", "spatiotemporal") for k in kinds)
    pad = v.get("spatial_padding_mode", "zeros")
    return dict(
        in_channels=v.get("in_channels", 3), out_channels=v.get("out_channels", 3), latent_channels=latent,
        block_out_channels=tuple(block_out), down_block_types=("LTX2VideoDownBlock3D",) * len(enc_comp),
        decoder_block_out_channels=tuple(reversed(before)),
        layers_per_block=tuple(p["num_layers"] for p in enc_res),
        decoder_layers_per_block=tuple(p["num_layers"] for p in dec_res),
        spatio_temporal_scaling=(True,) * len(enc_comp), decoder_spatio_temporal_scaling=(True,) * len(dec_comp),
        decoder_inject_noise=tuple(bool(p.get("inject_noise", False)) for p in dec_res),
        downsample_type=tuple(kinds),
        # diffusers' decoder reverses every per-stage tuple except upsample_type, which it reads in decode order
        upsample_type=tuple(_KIND[name[len("compress_"):].removesuffix("_res")] for name, _ in reversed(dec_comp)),
        upsample_residual=tuple(bool(p.get("residual", False)) for _, p in dec_comp),
        upsample_factor=tuple(p.get("multiplier", 1) for _, p in dec_comp),
        timestep_conditioning=False, patch_size=patch, patch_size_t=1, resnet_norm_eps=1e-6,
        scaling_factor=v.get("scaling_factor", 1.0), encoder_causal=True,
        decoder_causal=bool(v.get("causal_decoder", False)), encoder_spatial_padding_mode=pad,
        decoder_spatial_padding_mode=pad, spatial_compression_ratio=patch * 2 ** spatial,
        temporal_compression_ratio=2 ** temporal,
    )


def video_vae_scale_factors(config: dict) -> tuple[int, int, int]:
    c = video_vae_config(config)
    return (c["temporal_compression_ratio"], c["spatial_compression_ratio"], c["spatial_compression_ratio"])


def _audio_params(config: dict) -> dict:
    return config["audio_vae"].get("model", {}).get("params", {})


def _audio_stft(config: dict) -> dict:
    return config["audio_vae"].get("preprocessing", {}).get("stft", {})


def audio_vae_config(config: dict) -> dict:
    """ltx-core AudioEncoder/AudioDecoder config -> AutoencoderKLLTX2Audio config."""
    params = _audio_params(config)
    dd = params.get("ddconfig", {})
    stft = _audio_stft(config)
    mel = config["audio_vae"].get("preprocessing", {}).get("mel", {})
    return dict(
        base_channels=dd.get("ch", 128), output_channels=dd.get("out_ch", 2), ch_mult=tuple(dd.get("ch_mult", (1, 2, 4))),
        num_res_blocks=dd.get("num_res_blocks", 2), attn_resolutions=tuple(dd.get("attn_resolutions") or ()) or None,
        in_channels=dd.get("in_channels", 2), resolution=dd.get("resolution", 256), latent_channels=dd.get("z_channels", 8),
        norm_type=dd.get("norm_type", "pixel"), causality_axis=dd.get("causality_axis", "height"),
        dropout=dd.get("dropout", 0.0), mid_block_add_attention=bool(dd.get("mid_block_add_attention", True)),
        sample_rate=params.get("sampling_rate", 16000), mel_hop_length=stft.get("hop_length", 160),
        is_causal=bool(stft.get("causal", True)), mel_bins=dd.get("mel_bins") or mel.get("n_mel_channels"),
        double_z=bool(dd.get("double_z", True)),
    )


def _generator_config(v: dict, prefix: str = "") -> dict:
    for key, want in (("resblock", "AMP1"), ("activation", "snakebeta")):
        if v.get(key, want) != want:
            raise UserError(f"unsupported LTX-2.3 vocoder {key} {v.get(key)!r} in the checkpoint config")
    if not v.get("stereo", True):
        raise UserError("the checkpoint's vocoder is mono; LTX-2.3 vocoders are stereo")
    return {
        f"{prefix}in_channels": 128, f"{prefix}hidden_channels": v["upsample_initial_channel"],
        f"{prefix}out_channels": 2, f"{prefix}upsample_kernel_sizes": list(v["upsample_kernel_sizes"]),
        f"{prefix}upsample_factors": list(v["upsample_rates"]),
        f"{prefix}resnet_kernel_sizes": list(v["resblock_kernel_sizes"]),
        f"{prefix}resnet_dilations": [list(d) for d in v["resblock_dilation_sizes"]],
        f"{prefix}act_fn": "snakebeta", f"{prefix}leaky_relu_negative_slope": 0.1, f"{prefix}antialias": True,
        f"{prefix}antialias_ratio": 2, f"{prefix}antialias_kernel_size": 12,
        # ltx-core's Vocoder ends with tanh if use_tanh_at_final else a clamp to [-1, 1] (apply_final_activation)
        f"{prefix}final_act_fn": "tanh" if v.get("use_tanh_at_final", True) else "clamp",
        f"{prefix}final_bias": bool(v.get("use_bias_at_final", True)),
    }


def vocoder_config(config: dict) -> dict:
    """ltx-core VocoderConfigurator (2.3: nested vocoder + bwe) -> LTX2VocoderWithBWE config. ltx-core's vocoder
    input is always 128 channels (2 stereo x 64 mel bins); its first stage ends in tanh or a clamp, its BWE
    generator never applies a final activation (apply_final_activation=False)."""
    voc = config["vocoder"]
    if "bwe" not in voc:
        raise UserError("the checkpoint's vocoder has no bandwidth extension: it is not an LTX-2.3 checkpoint")
    v, b = voc["vocoder"], voc["bwe"]
    out = _generator_config(v) | _generator_config(b, "bwe_")
    out["bwe_final_act_fn"] = None
    out.update(filter_length=b["n_fft"], hop_length=b["hop_length"], window_length=b.get("win_size", b["n_fft"]),
               num_mel_channels=b["num_mels"], input_sampling_rate=b["input_sampling_rate"],
               output_sampling_rate=b["output_sampling_rate"])
    return out


def connectors_config(config: dict, text_in_features: int, caption_channels: int) -> dict:
    """ltx-core EmbeddingsProcessor (Gemma features -> per-modality projections -> 1D connectors) ->
    LTX2TextConnectors config. The Gemma width and layer count are not in the checkpoint config (ltx-core hard-codes
    Gemma 3 12B); they are read from the text projection's weight (in_features = hidden x (layers + 1)) and the
    text encoder folder's hidden size."""
    t = config["transformer"]
    if text_in_features % caption_channels:
        raise UserError(f"the checkpoint's text projection takes {text_in_features} features, not a multiple of the "
                        f"text encoder's hidden size {caption_channels}: wrong Gemma folder for this checkpoint?")
    heads = t.get("connector_num_attention_heads", 30)
    dim = t.get("connector_attention_head_dim", 128)
    return dict(
        caption_channels=caption_channels, text_proj_in_factor=text_in_features // caption_channels,
        video_connector_num_attention_heads=heads, video_connector_attention_head_dim=dim,
        video_connector_num_layers=t.get("connector_num_layers", 2),
        # ltx-core 1.0.0 builds every connector with 128 learnable registers (its default; not read from config)
        video_connector_num_learnable_registers=128,
        video_gated_attn=bool(t.get("connector_apply_gated_attention", False)),
        audio_connector_num_attention_heads=t.get("audio_connector_num_attention_heads", heads),
        audio_connector_attention_head_dim=t.get("audio_connector_attention_head_dim", dim),
        audio_connector_num_layers=t.get("audio_connector_num_layers", t.get("connector_num_layers", 2)),
        audio_connector_num_learnable_registers=128,
        audio_gated_attn=bool(t.get("connector_apply_gated_attention", False)),
        connector_rope_base_seq_len=list(t.get("connector_positional_embedding_max_pos", [1]))[0],
        rope_theta=t.get("positional_embedding_theta", 10000.0),
        rope_double_precision=t.get("frequencies_precision") == "float64", causal_temporal_positioning=False,
        rope_type=t.get("rope_type", "interleaved"), per_modality_projections=True,
        video_hidden_dim=t.get("num_attention_heads", 32) * t.get("attention_head_dim", 128),
        audio_hidden_dim=t.get("audio_num_attention_heads", 32) * t.get("audio_attention_head_dim", 64),
        proj_bias=True,
    )


def upsampler_config(config: dict) -> dict:
    """ltx-core LatentUpsamplerConfigurator fields (the upsampler file's metadata) -> LTX2LatentUpsamplerModel."""
    return dict(in_channels=config.get("in_channels", 128), mid_channels=config.get("mid_channels", 512),
                num_blocks_per_stage=config.get("num_blocks_per_stage", 4), dims=config.get("dims", 3),
                spatial_upsample=bool(config.get("spatial_upsample", True)),
                temporal_upsample=bool(config.get("temporal_upsample", False)),
                rational_spatial_scale=float(config.get("spatial_scale", 2.0)),
                use_rational_resampler=bool(config.get("rational_resampler", False)))


def scheduler_config() -> dict:
    """FlowMatchEulerDiscreteScheduler as diffusers' LTX-2 pipelines configure it (the sampler sets the sigmas)."""
    return dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                max_image_seq_len=4096, shift_terminal=0.1)


# ----------------------------------------------------------------------------------------------- state dicts

def split_state_dict(sd: dict) -> dict[str, dict]:
    """Group the checkpoint's keys by component. Keys of no component (a newer file's extras) are returned under
    'unknown' so the caller can report them."""
    groups = {k: {} for k in ("transformer", "connectors", "vae", "audio_vae", "vocoder", "unknown")}
    for k, v in sd.items():
        if any(k.startswith(p) for p in CONNECTOR_PREFIXES) or any(k.startswith(p) for p in TEXT_PROJECTION_PREFIXES):
            groups["connectors"][k] = v
        elif k.startswith(TRANSFORMER_PREFIX):
            groups["transformer"][k] = v
        elif k.startswith("vae."):
            groups["vae"][k] = v
        elif k.startswith("audio_vae."):
            groups["audio_vae"][k] = v
        elif k.startswith("vocoder."):
            groups["vocoder"][k] = v
        else:
            groups["unknown"][k] = v
    return groups


def fix_transformer_keys(state: dict) -> dict:
    """diffusers' converter leaves LTX-2.3's prompt_adaln_single keys unrenamed; the model calls them prompt_adaln."""
    out = {}
    for k, v in state.items():
        k = k.replace("audio_prompt_adaln_single.", "audio_prompt_adaln.").replace("prompt_adaln_single.", "prompt_adaln.")
        out[k] = v
    return out


_VAE_PLACEHOLDERS = {"decoder.up_blocks.7.": "decoder.@UP7@.", "decoder.up_blocks.8.": "decoder.@UP8@."}
_VAE_FINAL = {"decoder.@UP7@.": "decoder.up_blocks.3.upsamplers.0.", "decoder.@UP8@.": "decoder.up_blocks.3."}


def _replace_in_keys(state: dict, table: dict) -> dict:
    out = {}
    for k, v in state.items():
        for a, b in table.items():
            k = k.replace(a, b)
        out[k] = v
    return out


def protect_vae_keys(state: dict) -> dict:
    """Before diffusers' VAE converter: hide LTX-2.3's extra decoder blocks 7/8 from its sequential renames."""
    return _replace_in_keys(state, _VAE_PLACEHOLDERS)


def finish_vae_keys(state: dict) -> dict:
    """After the converter: official decoder up_blocks.7 / 8 -> diffusers up_blocks.3.upsamplers.0 / up_blocks.3."""
    return _replace_in_keys(state, _VAE_FINAL)


def convert_transformer(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    return fix_transformer_keys(convert_ltx2_transformer_to_diffusers(dict(sd)))


def convert_video_vae(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

    return finish_vae_keys(convert_ltx2_vae_to_diffusers(protect_vae_keys(dict(sd))))


def convert_audio_vae(sd: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ltx2_audio_vae_to_diffusers

    return convert_ltx2_audio_vae_to_diffusers(dict(sd))


_VOCODER_RENAMES = (("conv_pre.", "conv_in."), ("conv_post.", "conv_out."), ("ups.", "upsamplers."),
                    ("resblocks.", "resnets."), ("act_post.", "act_out."))


def convert_vocoder(sd: dict) -> dict:
    """vocoder.{vocoder,bwe_generator}.{conv_pre,ups,resblocks,act_post,conv_post}, vocoder.mel_stft.* ->
    LTX2VocoderWithBWE names (the renames of diffusers' LTX-2 conversion script, which has no single-file form)."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("vocoder.")
        head, _, rest = k.partition(".")
        if head in ("vocoder", "bwe_generator"):
            for a, b in _VOCODER_RENAMES:
                if rest.startswith(a):
                    rest = b + rest[len(a):]
            k = f"{head}.{rest}".replace(".downsample.lowpass.filter", ".downsample.filter")
        out[k] = v
    return out


def convert_connectors(sd: dict) -> dict:
    """ltx-core connector / text projection keys -> LTX2TextConnectors names."""
    out = {}
    for k, v in sd.items():
        for prefixes in (CONNECTOR_PREFIXES, TEXT_PROJECTION_PREFIXES):
            for a, b in prefixes.items():
                if k.startswith(a):
                    k = b + k[len(a):]
        k = k.replace("transformer_1d_blocks.", "transformer_blocks.")
        k = re.sub(r"\.q_norm\.", ".norm_q.", k)
        k = re.sub(r"\.k_norm\.", ".norm_k.", k)
        out[k] = v
    return out


def text_projection_in_features(sd: dict) -> int:
    w = sd.get("text_embedding_projection.video_aggregate_embed.weight")
    if w is None:
        raise UserError("the checkpoint has no text projection (text_embedding_projection.video_aggregate_embed): "
                        "it is not an LTX-2.3 checkpoint")
    return int(w.shape[1])


def dequantize_fp8(sd: dict, dtype) -> dict:
    """Official fp8 checkpoints (Lightricks/LTX-2.3-fp8) store some Linear weights as float8_e4m3fn with a
    per-tensor `weight_scale` (W = q x weight_scale) and an `input_scale` for fp8 matmul kernels. Dequantize to
    `dtype`; the memory tier decides how the weights are stored afterwards (fp8 layerwise casting or bf16)."""
    import torch

    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_scale") or k.endswith(".input_scale"):
            continue
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale = sd.get(k[: -len("weight")] + "weight_scale") if k.endswith(".weight") else None
            w = v.to(torch.float32)
            if scale is not None:
                w = w * scale.to(torch.float32)
            v = w.to(dtype)
        out[k] = v
    return out


def load_into(model, sd: dict, what: str, path) -> None:
    """Strict load with a message a person can act on: a missing key means a wrong or truncated file, an extra key
    a newer layout this studio does not know."""
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    if missing:
        raise UserError(f"{path}: {what} weights missing for {len(missing)} keys, e.g. {missing[0]} (a truncated or "
                        "different checkpoint?)")
    if unexpected:
        raise UserError(f"{path}: {len(unexpected)} {what} weights this studio does not know, e.g. {unexpected[0]} "
                        "(a newer checkpoint layout?)")
