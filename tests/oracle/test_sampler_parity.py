"""Sampling parity: our engine against Lightricks' own pipelines (ltx-pipelines 1.0.0) on the same official-format
tiny checkpoint (tests/oracle/official.py), the same files and the same seed; the harness is tests/oracle/ltx_run.py.

Each test names the official function it compares with, and says which of our fixes it fails without (each was
checked by reverting that fix alone).

Tolerance: both sides do the same float32 maths in a different order (PEFT's x A^T B^T vs a fused W + B A, SDPA vs
explicit attention): per op ~1e-7 relative, growing through 2 layers x 8-11 steps. We require
max |ours - theirs| <= 2e-4 x (1 + max |theirs|) on the final video and audio latents, the decoded video and the
waveform; measured: <= 3e-7 (latents) and <= 3e-6 (decoded video). Every fix checked by reverting it moves these
numbers to 4e-4 ... 5 relative.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oracle.ltx_run import (compare, contexts, control, image, ltx_cpu_float32, run_ic_lora_pipeline,
                                  run_ours, write_lora)


@pytest.fixture(scope="module")
def engine(official_loaded):
    from pipelines.sampler.engine import Engine

    return Engine(official_loaded)


# ------------------------------------------------------------------------------------------------ the tests

def test_distilled_one_stage_ic_lora_equals_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """ltx_pipelines.ic_lora.ICLoraPipeline(skip_stage_2=True) == our one-stage distilled run at its size: an
    official D=1 IC-LoRA (no factor key in its metadata), one control, the soundtrack generated jointly (the video
    and audio streams are not isolated, as there). Fails (1.4 abs on the video latent) with the modalities isolated
    as the previous engine ran them."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    lora = write_lora(engine, tmp_path / "ic_d1.safetensors")
    ctl = control(tmp_path, "c.mp4", 64, 64)
    req = GenerateRequest(prompt="a red ball rolling", width=64, height=64, frames=9, fps=24.0, seed=11,
                          controls=[ControlInput(ctl)], loras=[LoraSpec(lora, 1.0)])
    ours, res = run_ours(engine, req, monkeypatch)
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=11, height=128, width=128, num_frames=9, frame_rate=24.0, images=[],
                                  video_conditioning=[(ctl, 1.0)], skip_stage_2=True)
    compare(ours, theirs)


def test_two_stage_ic_lora_equals_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """ltx_pipelines.ic_lora.ICLoraPipeline (two stages, its default) == our stages=2: the IC-LoRA and the control
    only in the half-size stage 1, the latent upsampler, stage 2 built with NO LoRAs, the first-frame image encoded
    again at full size for stage 2, the audio latent re-noised and refined with the video. Fails with the LoRA kept
    in stage 2 (2.9 abs), or without the image in stage 2 (4.8 abs)."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec
    from ltx_pipelines.utils.args import ImageConditioningInput

    lora = write_lora(engine, tmp_path / "ic_d1.safetensors")
    ctl = control(tmp_path, "c.mp4", 64, 64, seed=2)
    img = image(tmp_path, "first.png")
    req = GenerateRequest(prompt="a red ball rolling", width=128, height=128, frames=9, fps=24.0, seed=5, stages=2,
                          controls=[ControlInput(ctl)], loras=[LoraSpec(lora, 1.0)], image=img, image_strength=0.9)
    ours, _ = run_ours(engine, req, monkeypatch)
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=5, height=128, width=128, num_frames=9, frame_rate=24.0,
                                  images=[ImageConditioningInput(img, 0, 0.9)], video_conditioning=[(ctl, 1.0)])
    compare(ours, theirs)


def test_strength_and_spatiotemporal_mask_equal_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """ICLoraPipeline with conditioning_attention_strength 0.5 and a pixel mask that changes over space and time
    (ICLoraPipeline._downsample_mask_to_latent x strength -> ConditioningItemAttentionStrengthWrapper -> the log bias
    of TransformerArgsPreprocessor._prepare_self_attention_mask), and a control strength of 0.7 (the reference
    tokens at timestep 0.3 sigma, blended each step). Fails with diffusers' x0 of conditioned tokens from the
    global sigma (0.07 abs), or with fractional weights turned into a hard mask (0.6 abs)."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    lora = write_lora(engine, tmp_path / "ic_d1.safetensors")
    ctl = control(tmp_path, "c.mp4", 64, 64, seed=3)
    mask = np.ones((9, 64, 64), np.float32)
    mask[:, :, :40] = 0.0  # left part off
    mask[5:, 20:, :] = 0.25  # lower part weaker in the second latent frame
    np.save(tmp_path / "mask.npy", mask)
    req = GenerateRequest(prompt="a red ball rolling", width=64, height=64, frames=9, fps=24.0, seed=9,
                          controls=[ControlInput(ctl, strength=0.7)], loras=[LoraSpec(lora, 1.0)],
                          attention_strength=0.5, mask=str(tmp_path / "mask.npy"))
    ours, _ = run_ours(engine, req, monkeypatch)
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=9, height=128, width=128, num_frames=9, frame_rate=24.0, images=[],
                                  video_conditioning=[(ctl, 0.7)], skip_stage_2=True,
                                  conditioning_attention_strength=0.5,
                                  conditioning_attention_mask=torch.from_numpy(mask)[None, None])
    compare(ours, theirs)


def test_two_references_equal_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """Two controls at strength 0.5: ltx-core gives weight 0 between the two reference groups
    (build_attention_mask); our processor's group channels must give the same attention. Fails with all
    references in one group (0.016 abs)."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    lora = write_lora(engine, tmp_path / "ic_d1.safetensors")
    a, b = control(tmp_path, "a.mp4", 64, 64, seed=4), control(tmp_path, "b.mp4", 64, 64, seed=5)
    req = GenerateRequest(prompt="a red ball rolling", width=64, height=64, frames=9, fps=24.0, seed=4,
                          controls=[ControlInput(a), ControlInput(b)], loras=[LoraSpec(lora, 1.0)],
                          attention_strength=0.5)
    ours, _ = run_ours(engine, req, monkeypatch)
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=4, height=128, width=128, num_frames=9, frame_rate=24.0, images=[],
                                  video_conditioning=[(a, 1.0), (b, 1.0)], skip_stage_2=True,
                                  conditioning_attention_strength=0.5)
    compare(ours, theirs)


def test_d2_lora_in_official_format_equals_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """An official-format IC-LoRA with reference_downscale_factor=2 in its metadata (Union-Control / Motion-Track
    style): the reference at half size, its positions scaled by 2 (VideoConditionByReferenceLatent). Fails with the
    positions left unscaled (0.003 abs)."""
    from pipelines.requests import ControlInput, GenerateRequest, LoraSpec

    lora = write_lora(engine, tmp_path / "ic_d2.safetensors", {"reference_downscale_factor": "2"}, seed=8)
    ctl = control(tmp_path, "c.mp4", 64, 64, seed=6)
    req = GenerateRequest(prompt="a red ball rolling", width=128, height=128, frames=9, fps=24.0, seed=6,
                          controls=[ControlInput(ctl)], loras=[LoraSpec(lora, 1.0)])
    ours, res = run_ours(engine, req, monkeypatch)
    assert res.metadata["reference_downscale_factor"] == 2
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=6, height=256, width=256, num_frames=9, frame_rate=24.0, images=[],
                                  video_conditioning=[(ctl, 1.0)], skip_stage_2=True)
    compare(ours, theirs)


def test_keyframe_images_equal_ic_lora_pipeline(engine, official_models_dir, monkeypatch, tmp_path):
    """Images at frame 0 (VideoConditionByLatentIndex) and at frame 12 (VideoConditionByKeyframeIndex: appended
    tokens at 12/fps s), each re-compressed at CRF 33 and with its own strength, with a control: the keyframe and
    the reference are different token groups (0 between them once a mask exists; here strength 0.8). Fails with the
    keyframe and the reference in one group (0.037 abs), or with the causal fix applied to the keyframe's
    positions (4e-4 relative on the decoded video)."""
    from pipelines.requests import ControlInput, GenerateRequest, KeyframeInput, LoraSpec
    from ltx_pipelines.utils.args import ImageConditioningInput

    lora = write_lora(engine, tmp_path / "ic_d1.safetensors")
    ctl = control(tmp_path, "c.mp4", 64, 64, frames=17, seed=7)
    first, key = image(tmp_path, "first.png", seed=2), image(tmp_path, "key.png", w=70, h=90, seed=3)
    req = GenerateRequest(prompt="a red ball rolling", width=64, height=64, frames=17, fps=24.0, seed=12,
                          controls=[ControlInput(ctl)], loras=[LoraSpec(lora, 1.0)], attention_strength=0.8,
                          image=first, image_strength=1.0, keyframes=[KeyframeInput(key, 12, 0.8)])
    ours, _ = run_ours(engine, req, monkeypatch)
    theirs = run_ic_lora_pipeline(monkeypatch, official_models_dir, contexts(engine, req)[0], [(lora, 1.0)],
                                  seed=12, height=128, width=128, num_frames=17, frame_rate=24.0,
                                  images=[ImageConditioningInput(first, 0, 1.0), ImageConditioningInput(key, 12, 0.8)],
                                  video_conditioning=[(ctl, 1.0)], skip_stage_2=True,
                                  conditioning_attention_strength=0.8)
    compare(ours, theirs)


def test_full_guidance_equals_ti2vid_one_stage(engine, official_models_dir, monkeypatch, tmp_path):
    """ltx_pipelines.ti2vid_one_stage.TI2VidOneStagePipeline with LTX_2_3_PARAMS' guiders (video CFG 3, STG 1,
    rescale 0.7, modality 3; audio CFG 7, same STG / rescale / modality; STG on block 28 of 48 -> block 1 of the
    tiny model's 2, given to both) and the LTX2Scheduler sigmas, == our Full run with the request's defaults.
    Fails with a token-count shift of the schedule (1.6 abs) or with CFG-only guidance (1.5 abs)."""
    import ltx_pipelines.ti2vid_one_stage as one
    from ltx_core.components.guiders import MultiModalGuiderParams
    from ltx_pipelines.utils.args import ImageConditioningInput

    from pipelines.requests import GenerateRequest

    img = image(tmp_path, "first.png", seed=4)
    req = GenerateRequest(prompt="a red ball rolling", negative_prompt="blurry", width=64, height=64, frames=9,
                          fps=24.0, seed=21, schedule="full", steps=4, image=img)
    ours, res = run_ours(engine, req, monkeypatch)
    assert res.metadata["stg_blocks_used"] == [1] and res.metadata["model_passes"] == 4 * 4
    pos, neg = contexts(engine, req)
    with ltx_cpu_float32(monkeypatch, one, pos, neg) as theirs:
        pipe = one.TI2VidOneStagePipeline(checkpoint_path=str(Path(official_models_dir) /
                                                              "ltx-2.3-22b-distilled-1.1.safetensors"),
                                          gemma_root=None, loras=[])
        p = dict(stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1])
        with torch.no_grad():
            video, _ = pipe(prompt="p", negative_prompt="n", seed=21, height=64, width=64, num_frames=9,
                            frame_rate=24.0, num_inference_steps=4,
                            video_guider_params=MultiModalGuiderParams(cfg_scale=3.0, **p),
                            audio_guider_params=MultiModalGuiderParams(cfg_scale=7.0, **p),
                            images=[ImageConditioningInput(img, 0, 1.0)])
            list(video)
    compare(ours, theirs)



def test_x0_model_with_references_masks_and_perturbations_equals_ltx_x0model(engine, ltx_components):
    """One model call, the way the guided denoiser makes it: ltx_core.model.transformer.X0Model on a state built by
    ltx-core's conditioning items (a keyframe, a masked reference at strength 0.6, a second reference), with the
    attention mask they build, against our X0Model on the state our builder makes (positions equal exactly) with our
    group-channel attention: plain, with STG (ltx-core SKIP_VIDEO_SELF_ATTN / SKIP_AUDIO_SELF_ATTN on block 1) and
    isolated (SKIP_A2V_CROSS_ATTN + SKIP_V2A_CROSS_ATTN). x0 of the video and audio tokens within 1e-4 relative
    (measured: equal). Fails with STG not skipping our video self-attention (0.96 abs)."""
    from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier
    from ltx_core.conditioning import (ConditioningItemAttentionStrengthWrapper, VideoConditionByKeyframeIndex,
                                       VideoConditionByReferenceLatent)
    from ltx_core.guidance.perturbations import (BatchedPerturbationConfig, Perturbation, PerturbationConfig,
                                                 PerturbationType)
    from ltx_core.model.transformer import X0Model as LtxX0
    from ltx_core.tools import AudioLatentTools, VideoLatentTools
    from ltx_core.types import AudioLatentShape, VideoLatentShape, VideoPixelShape
    from ltx_pipelines.utils.helpers import modality_from_latent_state

    from pipelines.sampler import state as S
    from pipelines.sampler.denoise import PromptContext, X0Model

    from tests.oracle.ltx_run import assert_close

    g = torch.Generator().manual_seed(0)
    target, key = torch.randn(1, 128, 2, 2, 3, generator=g), torch.randn(1, 128, 1, 2, 3, generator=g)
    ref1, ref2 = torch.randn(1, 128, 2, 2, 3, generator=g), torch.randn(1, 128, 1, 1, 2, generator=g)
    mask1 = torch.rand(12, generator=g)
    mask1[:3] = 0.0
    pixel = VideoPixelShape(batch=1, frames=9, height=64, width=96, fps=24.0)
    vtools = VideoLatentTools(VideoLatentPatchifier(patch_size=1), VideoLatentShape.from_pixel_shape(pixel), 24.0)
    theirs_v = vtools.create_initial_state("cpu", torch.float32, target)
    for item in (VideoConditionByKeyframeIndex(key, 8, 0.8),
                 ConditioningItemAttentionStrengthWrapper(VideoConditionByReferenceLatent(ref1, 1, 0.6), mask1),
                 ConditioningItemAttentionStrengthWrapper(VideoConditionByReferenceLatent(ref2, 2, 1.0), 0.5)):
        theirs_v = item.apply_to(theirs_v, vtools)
    ours_v = S.video_state((1, 128, 2, 2, 3), 24.0, torch.float32, "cpu", initial=target)
    ours_v = S.append_keyframe(ours_v, key, 8, 0.8, 24.0)
    ours_v = S.append_reference(ours_v, ref1, 24.0, downscale=1, strength=0.6, attention=mask1)
    ours_v = S.append_reference(ours_v, ref2, 24.0, downscale=2, strength=1.0, attention=0.5)
    assert torch.equal(ours_v.positions, theirs_v.positions) and torch.equal(ours_v.latent, theirs_v.latent)
    ashape = AudioLatentShape.from_video_pixel_shape(pixel)
    alat = torch.randn(ashape.to_torch_shape(), generator=g)
    theirs_a = AudioLatentTools(AudioPatchifier(patch_size=1), ashape).create_initial_state("cpu", torch.float32, alat)
    ours_a = engine._audio_state(ashape.frames, initial=alat)
    assert torch.equal(ours_a.positions, theirs_a.positions)
    ctx = PromptContext(video=torch.randn(1, 128, 32, generator=g), audio=torch.randn(1, 128, 16, generator=g))
    sigma = torch.tensor(0.725)

    ltx = LtxX0(ltx_components["transformer"])
    engine._apply_loras([], [])  # no LoRA left active by an earlier test
    ours = X0Model(engine.m.pipe.transformer, engine.m.bias_state)
    engine._set_attention(ours_v)
    assert engine.m.bias_state.num_groups == 3  # keyframe (before the first masked group), reference 1, reference 2
    cases = {"plain": ({}, None),
             "stg": (dict(skip_video_blocks=(1,), skip_audio_blocks=(1,)),
                     [Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, [1]),
                      Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, [1])]),
             "isolated": (dict(isolate=True), [Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
                                               Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None)])}
    try:
        with torch.no_grad():
            for name, (kw, ptb) in cases.items():
                batched = None if ptb is None else BatchedPerturbationConfig([PerturbationConfig(ptb)])
                tv, ta = ltx(video=modality_from_latent_state(theirs_v, ctx.video, sigma),
                             audio=modality_from_latent_state(theirs_a, ctx.audio, sigma), perturbations=batched)
                ov, oa = ours(ours_v, ours_a, sigma, ctx, **kw)
                assert_close(ov, tv, f"x0 video ({name})", rtol=1e-4)
                assert_close(oa, ta, f"x0 audio ({name})", rtol=1e-4)
    finally:
        engine.m.bias_state.clear()
