"""The real LTX-2.3 22B layout, without the weights: ltx-core builds every full-size component on the meta device
from the config the released checkpoints carry; our config mapping builds the diffusers components on the meta
device; every checkpoint key must map to a diffusers tensor of the same shape and none may be left over. This is
what a user's 46 GB file meets (and what bench/gpu_suite.py fills with random weights on a GPU)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def full_layout():
    from tests.oracle.official import FULL_LTX23_CONFIG, build_ltx_components, official_state_dict

    comps = build_ltx_components(FULL_LTX23_CONFIG, device="meta")
    return official_state_dict(comps)


def _meta_model(cls, config):
    with torch.device("meta"):
        return cls(**config)


def _check(ours: dict, model, what: str):
    theirs = {k: v for k, v in model.state_dict().items()}
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    assert not missing and not extra, f"{what}: missing {missing[:3]} extra {extra[:3]}"
    wrong = [k for k in ours if tuple(ours[k].shape) != tuple(theirs[k].shape)]
    assert not wrong, f"{what}: shapes differ for {wrong[:3]}"


def test_full_size_checkpoint_maps_onto_diffusers_components(full_layout):
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    from pipelines.models import official as off
    from tests.oracle.official import FULL_LTX23_CONFIG as cfg

    groups = off.split_state_dict(full_layout)
    assert not groups["unknown"]
    n_params = sum(v.numel() for k, v in groups["transformer"].items())
    assert 18.5e9 < n_params < 19.5e9  # "~19B transformer" (SPEC.md 1)
    text_in = off.text_projection_in_features(groups["connectors"])
    assert text_in == 3840 * 49  # Gemma 3 12B: hidden 3840, 48 layers + embeddings
    connectors_cfg = off.connectors_config(cfg, text_in, 3840)
    assert connectors_cfg["text_proj_in_factor"] == 49
    vae_cfg = off.video_vae_config(cfg)
    assert vae_cfg["block_out_channels"] == (256, 512, 1024, 1024)
    assert vae_cfg["decoder_block_out_channels"] == (256, 512, 512, 1024)
    assert vae_cfg["upsample_factor"] == (2, 2, 1, 2)
    assert vae_cfg["upsample_type"] == ("spatiotemporal", "spatiotemporal", "temporal", "spatial")
    assert (vae_cfg["spatial_compression_ratio"], vae_cfg["temporal_compression_ratio"]) == (32, 8)
    _check(off.convert_transformer(groups["transformer"]),
           _meta_model(LTX2VideoTransformer3DModel, off.transformer_config(cfg)), "transformer")
    _check(off.convert_connectors(groups["connectors"]), _meta_model(LTX2TextConnectors, connectors_cfg), "connectors")
    _check(off.convert_video_vae(groups["vae"]), _meta_model(AutoencoderKLLTX2Video, vae_cfg), "video VAE")
    _check(off.convert_audio_vae(groups["audio_vae"]),
           _meta_model(AutoencoderKLLTX2Audio, off.audio_vae_config(cfg)), "audio VAE")
    _check(off.convert_vocoder(groups["vocoder"]), _meta_model(LTX2VocoderWithBWE, off.vocoder_config(cfg)),
           "vocoder")


def test_without_our_fixes_the_full_size_file_does_not_map(full_layout):
    """diffusers 0.42.1's converters alone (no prompt_adaln rename, no decoder up_blocks.7/8 fix) leave keys of
    the real file unmapped: the two fixes are needed at full size, not only on the tiny model."""
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers, convert_ltx2_vae_to_diffusers

    from pipelines.models import official as off

    groups = off.split_state_dict(full_layout)
    plain = convert_ltx2_transformer_to_diffusers(dict(groups["transformer"]))
    assert any(k.startswith("prompt_adaln_single.") for k in plain)
    assert not any(k.startswith("prompt_adaln_single.") for k in off.convert_transformer(groups["transformer"]))
    plain_vae = convert_ltx2_vae_to_diffusers(dict(groups["vae"]))
    fixed_vae = off.convert_video_vae(groups["vae"])
    assert set(plain_vae) != set(fixed_vae)
    assert any(k.startswith("decoder.up_blocks.3.") for k in fixed_vae)
