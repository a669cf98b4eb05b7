"""Loading the files users download, judged by Lightricks' ltx-core / ltx-pipelines 1.0.0.

The checkpoint is built and written by ltx-core's own classes (tests/oracle/official.py); ltx-pipelines' ModelLedger
reads it back; our registry + loader build diffusers components from the same file with no config folder; each
component's forward is compared with ltx-core's on the same weights and inputs, in float32 on the CPU.

Tolerances: max |ours - theirs| <= 1e-4 x (1 + max |theirs|) for the networks, exact equality where no arithmetic
happens (positions, weights read back). Observed on this CPU in float32: bitwise equal for every component
(diffusers' LTX-2 modules do the same operations in the same order as ltx-core's). The margin is for other kernels
(another BLAS, a GPU's SDPA), where reordered float32 sums differ by ~1e-6 relative per op; a wrong weight, key,
config flag or modulation index gives differences of order 1e-1 or more (test_a_wrong_weight_is_caught).
"""
from __future__ import annotations

import pytest
import torch

RTOL = 1e-4


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float = RTOL):
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    ours, theirs = ours.double(), theirs.double()
    assert torch.isfinite(theirs).all() and torch.isfinite(ours).all(), f"{what}: non-finite values"
    scale = 1.0 + theirs.abs().max().item()
    err = (ours - theirs).abs().max().item()
    assert err <= rtol * scale, f"{what}: max |ours - ltx-core| = {err:.3g} > {rtol:g} x {scale:.3g}"
    assert theirs.abs().max().item() > 1e-3, f"{what}: ltx-core's output is ~0, the comparison would prove nothing"


# ----------------------------------------------------------------------------------------------- the file itself

def test_checkpoint_written_by_ltx_core_is_read_back_by_ltx_pipelines(official_checkpoint):
    """ModelLedger (ltx-pipelines) + SafetensorsModelStateDictLoader (ltx-core) rebuild all seven components from
    our fixture file with exactly the weights ltx-core's configurators made, and ltx-pipelines picks its LTX-2.3
    defaults from the file's model_version."""
    from ltx_pipelines.utils.constants import LTX_2_3_PARAMS, detect_params

    from tests.oracle.official import check_roundtrip

    built = check_roundtrip(official_checkpoint)
    assert built == ["audio_decoder", "audio_encoder", "embeddings_processor", "transformer", "video_decoder",
                     "video_encoder", "vocoder"]
    assert detect_params(str(official_checkpoint)) is LTX_2_3_PARAMS


def test_single_file_loads_every_component_without_a_config_folder(official_models_dir, official_loaded):
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    assert sorted(p.name for p in official_models_dir.iterdir()) == [
        "gemma-3-12b-it", "ltx-2.3-22b-distilled-1.1.safetensors", "ltx-2.3-spatial-upscaler-x2-1.1.safetensors"]
    pipe = official_loaded.pipe
    for name, cls in (("transformer", LTX2VideoTransformer3DModel), ("vae", AutoencoderKLLTX2Video),
                      ("audio_vae", AutoencoderKLLTX2Audio), ("vocoder", LTX2VocoderWithBWE),
                      ("connectors", LTX2TextConnectors)):
        module = getattr(pipe, name)
        assert isinstance(module, cls), name
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in module.parameters()), name
    assert isinstance(official_loaded.upsampler, LTX2LatentUpsamplerModel)
    assert official_loaded.spec.path.endswith("ltx-2.3-22b-distilled-1.1.safetensors")


# ----------------------------------------------------------------------------------------------- the transformer

def _ltx_states(d: int = 2, seed: int = 0):
    """Video (target + appended IC-LoRA reference, downscale d) and audio latent states built by ltx-pipelines'
    own helpers (VideoLatentTools, VideoConditionByReferenceLatent, AudioLatentTools), 9 frames at 24 fps,
    64 x 128 px target."""
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
    from ltx_core.conditioning import VideoConditionByReferenceLatent
    from ltx_core.tools import AudioLatentTools, VideoLatentTools
    from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape

    from ltx_pipelines.utils.helpers import state_with_conditionings

    g = torch.Generator().manual_seed(seed)
    pixel = VideoPixelShape(batch=1, frames=9, height=64, width=128, fps=24.0)
    vshape = VideoLatentShape.from_pixel_shape(pixel, latent_channels=128)
    vtools = VideoLatentTools(VideoLatentPatchifier(patch_size=1), vshape, pixel.fps)
    target = torch.randn(vshape.to_torch_shape(), generator=g)
    reference = torch.randn(1, 128, vshape.frames, vshape.height // d, vshape.width // d, generator=g)
    vstate = vtools.create_initial_state("cpu", torch.float32, target)
    vstate = state_with_conditionings(vstate, [VideoConditionByReferenceLatent(reference, downscale_factor=d)], vtools)
    ashape = AudioLatentShape.from_video_pixel_shape(pixel)
    atools = AudioLatentTools(AudioPatchifier(patch_size=1), ashape)
    astate = atools.create_initial_state("cpu", torch.float32, torch.randn(ashape.to_torch_shape(), generator=g))
    return vstate, astate, vshape, reference.shape, ashape


def test_transformer_forward_with_reference_tokens_matches_ltx_core(official_loaded, ltx_components):
    """One forward of our transformer (the checkpoint through diffusers' converter + our fixes) equals ltx-core's
    LTXModel on the same weights: noisy target tokens + clean reference tokens (D=2, timestep 0), audio tokens,
    text context, sigma 0.7. Positions are computed independently on each side (diffusers' RoPE coords, ltx-core's
    patchifier) and must agree first."""
    from ltx_pipelines.utils.helpers import modality_from_latent_state

    vstate, astate, vshape, rshape, ashape = _ltx_states(d=2)
    g = torch.Generator().manual_seed(1)
    video_ctx = torch.randn(1, 256, 32, generator=g)
    audio_ctx = torch.randn(1, 256, 16, generator=g)
    sigma = torch.tensor([0.7])
    video = modality_from_latent_state(vstate, video_ctx, sigma)
    audio = modality_from_latent_state(astate, audio_ctx, sigma)
    n_target = vshape.frames * vshape.height * vshape.width
    assert video.latent.shape[1] == n_target + rshape[2] * rshape[3] * rshape[4]
    assert (video.timesteps[0, n_target:] == 0).all() and (video.timesteps[0, :n_target] == 0.7).all()
    with torch.no_grad():
        ltx_v, ltx_a = ltx_components["transformer"](video, audio, perturbations=None)

    tr = official_loaded.pipe.transformer
    coords = tr.rope.prepare_video_coords(1, vshape.frames, vshape.height, vshape.width, "cpu", fps=24.0)
    ref_coords = tr.rope.prepare_video_coords(1, rshape[2], rshape[3], rshape[4], "cpu", fps=24.0)
    ref_coords[:, 1:3] = ref_coords[:, 1:3] * 2
    video_coords = torch.cat([coords, ref_coords], dim=2)
    audio_coords = tr.audio_rope.prepare_audio_coords(1, ashape.frames, "cpu")
    torch.testing.assert_close(video_coords.float(), video.positions.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(audio_coords.float(), audio.positions.float(), rtol=0, atol=1e-6)
    with torch.no_grad():
        out = tr(hidden_states=video.latent, audio_hidden_states=audio.latent, encoder_hidden_states=video_ctx,
                 audio_encoder_hidden_states=audio_ctx, timestep=video.timesteps * 1000,
                 audio_timestep=audio.timesteps * 1000, sigma=sigma * 1000, audio_sigma=sigma * 1000,
                 video_coords=video_coords, audio_coords=audio_coords, use_cross_timestep=True, return_dict=False)
    assert_close(out[0], ltx_v, "video velocity (target + reference tokens)")
    assert_close(out[1], ltx_a, "audio velocity")


# ----------------------------------------------------------------------------------------------- the other parts

def test_video_vae_encode_and_decode_match_ltx_core(official_loaded, ltx_components):
    """Encoder (normalised means) and decoder (from normalised latents) against ltx-core's VideoEncoder /
    VideoDecoder; exercises the 2.3 decoder's fourth upsampling stage (checkpoint up_blocks.7/8)."""
    vae = official_loaded.pipe.vae
    g = torch.Generator().manual_seed(2)
    video = torch.rand(1, 3, 9, 64, 96, generator=g) * 2 - 1
    mean = vae.latents_mean.view(1, -1, 1, 1, 1)
    std = vae.latents_std.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        theirs = ltx_components["video_encoder"](video)
        ours = (vae.encode(video).latent_dist.mean - mean) * vae.config.scaling_factor / std
        assert_close(ours, theirs, "video VAE encode")
        z = torch.randn(1, 128, 2, 2, 3, generator=g)
        theirs = ltx_components["video_decoder"](z)
        ours = vae.decode(z * std / vae.config.scaling_factor + mean, return_dict=False)[0]
    assert_close(ours, theirs, "video VAE decode")


def test_audio_decoder_and_vocoder_match_ltx_core(official_loaded, ltx_components):
    pipe = official_loaded.pipe
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 8, 4, 16, generator=g)  # (B, z_channels, latent frames, latent mel bins)
    with torch.no_grad():
        theirs = ltx_components["audio_decoder"](z)
        packed = z.transpose(1, 2).flatten(2)  # (B, T, C * M), as diffusers' pipeline packs audio latents
        packed = packed * pipe.audio_vae.latents_std + pipe.audio_vae.latents_mean
        ours = pipe.audio_vae.decode(packed.unflatten(2, (8, 16)).transpose(1, 2), return_dict=False)[0]
        assert_close(ours, theirs, "audio VAE decode (mel)")
        mel = theirs
        voc = ltx_components["vocoder"]
        voc.vocoder.apply_final_activation = False
        try:
            first = voc.vocoder(mel)
        finally:
            voc.vocoder.apply_final_activation = True
        assert (first.abs() > 1).any()  # the first stage's final clamp matters for this input
        wav = voc(mel)
        assert (wav.abs() < 0.999).float().mean() > 0.75  # mostly not hidden by the last clamp to [-1, 1]
        assert_close(pipe.vocoder(mel), wav, "vocoder + bandwidth extension (48 kHz)")


def test_text_connectors_match_ltx_core(official_loaded, ltx_components):
    """Gemma hidden states (3 layers of the tiny Gemma, left padding) -> per-modality projection -> connectors,
    against ltx-core's EmbeddingsProcessor.process_hidden_states."""
    g = torch.Generator().manual_seed(4)
    hidden = tuple(torch.randn(1, 256, 32, generator=g) for _ in range(3))
    mask = torch.zeros(1, 256, dtype=torch.int64)
    mask[:, -40:] = 1  # 40 real tokens, left padded
    with torch.no_grad():
        theirs = ltx_components["embeddings_processor"].process_hidden_states(hidden, mask, padding_side="left")
        ours = official_loaded.pipe.connectors(torch.stack(hidden, dim=-1), mask, padding_side="left")
    assert_close(ours[0], theirs.video_encoding, "video text embedding")
    assert_close(ours[1], theirs.audio_encoding, "audio text embedding")
    assert torch.equal(ours[2].to(torch.int64), theirs.attention_mask.to(torch.int64))


def test_spatial_upsampler_matches_ltx_core(official_loaded):
    from tests.oracle.official import build_ltx_upsampler

    z = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_close(official_loaded.upsampler(z), build_ltx_upsampler()(z), "latent upsampler x2")


def test_a_wrong_weight_is_caught(official_loaded, ltx_components):
    """The comparison can fail: one modulation table of ours perturbed -> the transformer no longer matches."""
    from ltx_pipelines.utils.helpers import modality_from_latent_state

    vstate, astate, vshape, _, ashape = _ltx_states(d=1)
    ctx_v, ctx_a = torch.randn(1, 256, 32), torch.randn(1, 256, 16)
    sigma = torch.tensor([0.5])
    video = modality_from_latent_state(vstate, ctx_v, sigma)
    audio = modality_from_latent_state(astate, ctx_a, sigma)
    tr = official_loaded.pipe.transformer
    table = tr.transformer_blocks[0].scale_shift_table
    saved = table.detach().clone()
    try:
        with torch.no_grad():
            table.add_(0.05)
            out = tr(hidden_states=video.latent, audio_hidden_states=audio.latent, encoder_hidden_states=ctx_v,
                     audio_encoder_hidden_states=ctx_a, timestep=video.timesteps * 1000,
                     audio_timestep=audio.timesteps * 1000, sigma=sigma * 1000, audio_sigma=sigma * 1000,
                     video_coords=video.positions, audio_coords=audio.positions, use_cross_timestep=True,
                     return_dict=False)
            ltx_v, _ = ltx_components["transformer"](video, audio, perturbations=None)
        with pytest.raises(AssertionError, match="video"):
            assert_close(out[0], ltx_v, "video")
    finally:
        with torch.no_grad():
            table.copy_(saved)


def test_official_checkpoint_generates_through_the_engine(official_loaded, tmp_path):
    """The loaded official checkpoint runs our whole generation path (engine, encoders, connectors, VAE)."""
    import numpy as np

    from pipelines.requests import GenerateRequest
    from pipelines.sampler.engine import Engine

    req = GenerateRequest(prompt="a red ball rolling", width=64, height=64, frames=9, seed=5,
                          model="ltx-2.3-distilled")
    frames = Engine(official_loaded).generate(req, write=False, previews=False).frames
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8 and frames.std() > 1


def test_fp8_checkpoint_is_dequantised_on_load(official_checkpoint, tmp_path):
    """An fp8 file as Lightricks/LTX-2.3-fp8 ships them (Linear weights float8_e4m3fn + per-tensor weight_scale +
    input_scale): with only that file present the distilled model resolves to it and loads W = q x weight_scale."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pipelines.models.loader import ModelCache
    from pipelines.models.registry import get_spec

    with safe_open(str(official_checkpoint), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(official_checkpoint))
    expect = {}
    for k in [k for k in sd if ".transformer_blocks." in k and k.endswith(("to_q.weight", "ff.net.2.weight"))]:
        w = sd[k].float()
        scale = w.abs().max() / 448.0
        q = (w / scale).to(torch.float8_e4m3fn)
        sd[k], sd[k[:-len("weight")] + "weight_scale"] = q, scale.reshape(())
        sd[k[:-len("weight")] + "input_scale"] = torch.tensor(1.0)
        expect[k] = q.float() * scale
    assert len(expect) >= 4
    models = tmp_path / "models"
    models.mkdir()
    save_file(sd, str(models / "ltx-2.3-22b-distilled-fp8.safetensors"), metadata=meta)
    shutil.copytree(official_checkpoint.parent / "gemma-3-12b-it", models / "gemma-3-12b-it")
    spec = get_spec("ltx-2.3-distilled", models)
    assert spec.path.endswith("ltx-2.3-22b-distilled-fp8.safetensors")
    tr = ModelCache(dtype=torch.float32).get(spec).pipe.transformer
    got = tr.state_dict()
    for k, w in expect.items():
        name = k[len("model.diffusion_model."):].replace(".q_norm", ".norm_q")
        assert torch.equal(got[name], w), name
