"""The tiny LTX-2.3-flavoured stack: random weights, real classes, real shapes' layout, built offline in seconds.

It exists so tests and a fresh machine can run the whole path end to end. Output is noise by construction and
every place a user sees it says so (see TINY_MODEL_NOTICE). The layout follows LTX-2.3 where it matters for the
code paths: VAE with 32x spatial / 8x temporal compression and a causal first frame, a joint audio+video
transformer with the 2.3 flags (gated attention, cross-attention modulation, perturbed attention, split RoPE,
no prompt embeddings in the transformer), per-modality text connectors, a Gemma 3 text encoder and a
word-level tokenizer built locally (no hub access).
"""
from __future__ import annotations

TINY_MODEL_NOTICE = (
    "tiny test model: random weights, output is noise; point --models-dir at LTX-2.3 to generate for real"
)

# Small enough for a 2-core CPU, same structure as LTX-2.3 (SPEC.md 5).
TINY_LATENT_CHANNELS = 16
TINY_HEADS = 2
TINY_HEAD_DIM = 16
TINY_LAYERS = 2
TINY_TEXT_HIDDEN = 32
TINY_TEXT_LAYERS = 2
TINY_MAX_SEQUENCE_LENGTH = 32
_WORDS = (
    "a the of and in on with to at from by is are man woman person face dog cat car city street forest river sea "
    "sky sun light dark night day red green blue white black walking running dancing talking smiling camera "
    "slowly fast close up wide shot cinematic portrait video scene"
).split()


def build_tokenizer():
    """A word-level tokenizer built in memory: lowercase words from a small vocabulary, unknown words -> <unk>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        model_max_length=TINY_MAX_SEQUENCE_LENGTH, padding_side="left",
    )
    return tok


def build_text_encoder(vocab_size: int):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text_config = dict(
        vocab_size=vocab_size, hidden_size=TINY_TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=TINY_TEXT_LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    vision_config = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text_config, vision_config=vision_config, mm_tokens_per_image=4,
                          image_token_index=vocab_size - 1, boi_token_index=vocab_size - 1, eoi_token_index=vocab_size - 1)
    model = Gemma3ForConditionalGeneration(config)
    model.eval()
    return model


def build_tiny_components(seed: int = 0) -> dict:
    """All components of an LTX2InContextPipeline, deterministic for a seed."""
    import torch
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                           LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        text_encoder = build_text_encoder(len(tokenizer))
        inner = TINY_HEADS * TINY_HEAD_DIM
        torch.manual_seed(seed + 1)
        transformer = LTX2VideoTransformer3DModel(
            in_channels=TINY_LATENT_CHANNELS, out_channels=TINY_LATENT_CHANNELS, patch_size=1, patch_size_t=1,
            num_attention_heads=TINY_HEADS, attention_head_dim=TINY_HEAD_DIM, cross_attention_dim=inner,
            vae_scale_factors=(8, 32, 32),
            audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
            audio_cross_attention_dim=16, num_layers=TINY_LAYERS, caption_channels=TINY_TEXT_HIDDEN,
            gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
            perturbed_attn=True, use_prompt_embeddings=False, rope_type="split", rope_double_precision=False,
        )
        torch.manual_seed(seed + 2)
        connectors = LTX2TextConnectors(
            caption_channels=TINY_TEXT_HIDDEN, text_proj_in_factor=TINY_TEXT_LAYERS + 1,
            video_connector_num_attention_heads=2, video_connector_attention_head_dim=16, video_connector_num_layers=1,
            video_connector_num_learnable_registers=8, video_gated_attn=True,
            audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=8, audio_gated_attn=True,
            connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False,
            causal_temporal_positioning=False, rope_type="split", per_modality_projections=True,
            video_hidden_dim=inner, audio_hidden_dim=16, proj_bias=True,
        )
        torch.manual_seed(seed + 3)
        vae = AutoencoderKLLTX2Video(
            in_channels=3, out_channels=3, latent_channels=TINY_LATENT_CHANNELS,
            block_out_channels=(16, 32, 64, 64), decoder_block_out_channels=(16, 32, 64),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=(False, False, False, False),
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=False,
            patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
            spatial_compression_ratio=32, temporal_compression_ratio=8,
        )
        torch.manual_seed(seed + 4)
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
            resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
            mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
        )
        torch.manual_seed(seed + 5)
        vocoder = LTX2Vocoder(
            in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins, hidden_channels=16,
            out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
        )
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
            max_image_seq_len=4096, shift_terminal=0.1,
        )
    finally:
        torch.random.set_rng_state(gen_state)
    for m in (text_encoder, transformer, connectors, vae, audio_vae, vocoder):
        m.eval()
        m.requires_grad_(False)
    return dict(transformer=transformer, vae=vae, audio_vae=audio_vae, scheduler=scheduler, text_encoder=text_encoder,
                tokenizer=tokenizer, connectors=connectors, vocoder=vocoder, audio_scheduler=None)


def build_tiny_upsampler(seed: int = 0):
    import torch
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed + 6)
        up = LTX2LatentUpsamplerModel(in_channels=TINY_LATENT_CHANNELS, mid_channels=32, num_blocks_per_stage=1)
    finally:
        torch.random.set_rng_state(state)
    up.eval().requires_grad_(False)
    return up
